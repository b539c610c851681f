"""Figures of the measurement harness itself (benchmarks, not tests).

    python benchmarks/bench_measure.py [--skip-quick] [--budget-s 2]

Prints:
1. the wall time of ``python -m measure.sweep --grid quick`` (a fresh process, end to end);
2. at the smallest quick config (attention, batch 2, e = h = 64, rank 1): each method's
   median kernel time next to the harness overhead per timed call, i.e. the loop's wall time
   not inside a timed interval (bookkeeping, bootstrap checks) divided by the calls made,
   and the floor of one timed interval (a jitted no-op, blocked);
3. the blog's code (variant seed) at batch 2, e = h = 256, rank 1, timed per call as
   written (a new jitted loss per call, so it compiles every time) and compiled once (aot),
   each mode's two methods interleaved.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quick_grid_wall_s() -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "measure.sweep", "--grid", "quick", "--out", tmp],
            cwd=REPO, env=env, capture_output=True, text=True,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"quick sweep failed: {proc.stderr.strip().splitlines()[-1:]}")
        from measure import dataset

        n = len(dataset.read_csv(Path(tmp) / dataset.CSV_NAME))
    return wall, n


def harness_overhead(budget_s: float) -> None:
    import jax.numpy as jnp

    from measure import grids, sweep, timing

    config = grids.Config("attention", batch=2, embed=64, hidden=64, rank=1)
    prepared = {m: sweep.prepare(config, m, 0) for m in grids.METHODS}
    report = timing.time_interleaved(prepared, timing.TimingPolicy(budget_s=budget_s))
    noop = timing.prepare("noop", lambda x: x + 1.0, (jnp.zeros((1,), jnp.float32),))
    floor = timing.time_interleaved({"noop": noop}, timing.TimingPolicy(budget_s=budget_s))
    print(f"\nsmallest quick config: {config.label()}")
    for m, s in report.summaries.items():  # one k per config, shared by the methods
        ci = timing.ci_half_width_rel(s.time_median_s, s.time_ci_low_s, s.time_ci_high_s)
        print(f"  {m:12s} kernel {s.time_median_s * 1e6:8.1f} µs/call  (n={s.n_repeats}, "
              f"k={s.calls_per_repeat}, CI ±{100 * ci:.1f}%)")
    print(f"  harness overhead outside timed intervals: {report.overhead_per_call_s * 1e6:.2f} µs "
          f"per call ({report.calls} calls, loop {report.loop_wall_s:.2f} s, timed {report.timed_s:.2f} s)")
    print(f"  floor of a timed call (jitted x+1, dispatch + block): "
          f"{floor.summaries['noop'].time_median_s * 1e6:.2f} µs")


def seed_modes(budget_s: float) -> None:
    from measure import seed, timing

    sizes = dict(batch=2, embed=256, hidden=256, rank=1)
    prepared = {
        f"{m}/{mode}": seed.build(m, timing_mode=mode, **sizes)
        for mode in seed.TIMING_MODES for m in seed.METHODS
    }
    # each mode timed as its own config, as the sweep does: one k per config is chosen from
    # its fastest method, and aot's k would make an as-written repeat last seconds
    s = {}
    for mode in seed.TIMING_MODES:
        group = {name: prep for name, prep in prepared.items() if name.endswith(f"/{mode}")}
        s.update(timing.time_interleaved(group, timing.TimingPolicy(budget_s=budget_s)).summaries)
    print("\nblog's code (variant seed), batch 2, e = h = 256, rank 1, per call (median):")
    for mode in seed.TIMING_MODES:
        full, lora = s[f"full/{mode}"], s[f"lora_merged/{mode}"]
        print(f"  {mode:10s} full (blog: vanilla) {full.time_median_s * 1e3:9.3f} ms   "
              f"lora_merged (blog: lora) {lora.time_median_s * 1e3:9.3f} ms   "
              f"lora/full {lora.time_median_s / full.time_median_s:5.2f}   n={full.n_repeats}/{lora.n_repeats}")
    ratio = s["full/as_written"].time_median_s / s["full/aot"].time_median_s
    print(f"  as written / aot (full): {ratio:.0f}x -- the blog timed compilation; "
          f"one-off compile of the aot pair: {prepared['full/aot'].compile_s * 1e3:.0f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skip-quick", action="store_true", help="skip the quick-grid wall time")
    p.add_argument("--budget-s", type=float, default=2.0, help="timing budget per figure")
    args = p.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if not args.skip_quick:
        wall, n = quick_grid_wall_s()
        print(f"python -m measure.sweep --grid quick: {wall:.1f} s wall, {n} records "
              f"(target <= 40 s on a 2-core CPU)")
    harness_overhead(args.budget_s)
    seed_modes(args.budget_s)


if __name__ == "__main__":
    main()
