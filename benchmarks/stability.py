"""Is the default run's answer stable from run to run? (a benchmark: it prints, it asserts nothing)

    python benchmarks/stability.py [--runs 3] [--batch 2] [--rank 1] [--method lora]

Runs the default main job ``python -m analysis.crossover --json --no-plots`` --runs times,
one after the other, each cold in a fresh empty directory (so each measures the quick grid,
refines its crossovers and measures a device profile), and prints for the chosen curve
(default batch 2, rank 1, lora) each run's fitted d* with its interval, measured d* with its
interval, the wall time and the analysis time, the fitted times per kernel and per call beside
the device profile's (a small-width d* held by the per-kernel term moves with it), then the three
checks of issue 10 §4:

* the measured d* intervals overlap (max of the lows <= min of the highs); a curve measured
  on one side of 1 at every width has its crossing beyond the range: (0, smallest width]
  when LoRA is faster everywhere, [largest width, inf) when slower;
* the fitted d* lie within a factor 1.25 of each other (max / min);
* every run's crossover verdicts agree with its own measurements (every row's
  ``agrees_with_measurements``).

On a shared machine other jobs move the timings; the script prints the load average before
and after each run so a reader can judge.

    python benchmarks/stability.py --reanalyse DIR

measures nothing: it re-runs the analysis (``--data``) on each ``DIR/run-N`` that an earlier
``--keep DIR`` kept, with this checkout's code, and prints the same lines and checks (the
wall time is then the analysis's), so a change of the analysis can be judged on the same
measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(cwd: str, reanalyse: bool = False) -> dict:
    """One default run in `cwd`; with `reanalyse`, the analysis alone of the run kept there
    (its crossover-results folder), into a scratch output folder."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-m", "analysis.crossover", "--json", "--no-plots"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stability-out-") as scratch:
        if reanalyse:
            argv += ["--data", str(Path(cwd) / "crossover-results"), "--out", scratch]
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1]}")
    result = json.loads(proc.stdout)
    profile = json.loads((Path(cwd) / "crossover-results" / "profile.json").read_text())
    return {"wall_s": wall, "analysis_s": result["timing"]["analysis_s"], "result": result,
            "profile": profile}


@contextlib.contextmanager
def _run_folder(i: int, keep: str | None, kept: list[Path]) -> Iterator[str]:
    """Run i's folder: the one a --keep check kept (re-analysis), a new DIR/run-i with
    --keep, else a temporary one, removed after."""
    if kept:
        yield str(kept[i - 1].parent)
    elif keep is not None:
        folder = Path(keep) / f"run-{i}"
        if folder.exists():
            raise SystemExit(f"--keep: {folder} exists; give an empty folder")
        folder.mkdir(parents=True)
        yield str(folder)
    else:
        with tempfile.TemporaryDirectory(prefix="stability-") as tmp:
            yield tmp


def measured_interval(row: dict) -> tuple[float, float] | None:
    """Where the measured crossing lies: its interval; for a curve measured on one side of 1
    at every width, beyond the measured range -- (0, smallest width] when LoRA is faster
    everywhere, [largest width, inf) when slower; None when it crosses more than once."""
    if row["measured_ci_low"] is not None and row["measured_ci_high"] is not None:
        return row["measured_ci_low"], row["measured_ci_high"]
    if row["measured_sign_changes"] == 0 and row.get("measured_lo") is not None:
        if row.get("measured_faster_everywhere"):
            return 0.0, row["measured_lo"]
        if row.get("measured_slower_everywhere"):
            return row["measured_hi"], float("inf")
    return None


def _fmt(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--method", default="lora")
    p.add_argument("--keep", metavar="DIR", help="keep each run's folder as DIR/run-N "
                   "(default: fresh temporary folders, removed after each run)")
    p.add_argument("--reanalyse", metavar="DIR", help="measure nothing: re-analyse the runs "
                   "an earlier --keep DIR kept (DIR/run-N), with this checkout's analysis")
    args = p.parse_args()
    if args.reanalyse is not None and args.keep is not None:
        raise SystemExit("--keep and --reanalyse exclude each other")
    kept = []
    if args.reanalyse is not None:
        kept = sorted(Path(args.reanalyse).glob("run-*/crossover-results"),
                      key=lambda q: int(q.parent.name.split("-")[-1]))
        if not kept:
            raise SystemExit(f"--reanalyse: no run-N/crossover-results under {args.reanalyse}")
        args.runs = len(kept)
    label = "re-analysis" if kept else "cold run"
    rows = []
    for i in range(1, args.runs + 1):
        with _run_folder(i, args.keep, kept) as tmp:
            load0 = os.getloadavg()[0]
            run = one_run(tmp, reanalyse=bool(kept))
            load1 = os.getloadavg()[0]
        xo = run["result"]["crossover"]
        row = next((r for r in xo if r["batch"] == args.batch and r["rank"] == args.rank
                    and r["method"] == args.method), None)
        if row is None:
            raise SystemExit(f"run {i}: no crossover row for batch {args.batch}, rank "
                             f"{args.rank}, {args.method}")
        agree = all(r["agrees_with_measurements"] for r in xo)
        rows.append((row, agree, run))
        factors = {f["key"]: f for f in run["result"]["factors"]}
        where = measured_interval(row)
        span = "-" if where is None else f"[{_fmt(where[0])}, {_fmt(where[1])}]"
        print(f"run {i}: fitted d* {_fmt(row['d_star'])} [{_fmt(row['ci_low'])}, "
              f"{_fmt(row['ci_high'])}]  measured d* {_fmt(row['measured_d_star'])} "
              f"{span} ({row['measured_note']})  "
              f"verdicts agree with measurements: {'yes' if agree else 'NO'}  "
              f"{label} {run['wall_s']:.0f} s "
              f"(analysis {run['analysis_s']:.1f} s)  "
              f"load {load0:.1f} -> {load1:.1f}", flush=True)
        if "kernel_time" in factors:  # the term a small-width d* often rests on
            tau, call = factors["kernel_time"], factors["dispatch_time"]
            print(f"       time per kernel {tau['estimate']:.3g} us ({tau['status']}), per call "
                  f"{call['estimate']:.3g} us ({call['status']}); the profile measured "
                  f"{run['profile']['kernel_overhead_s'] * 1e6:.3g} us per kernel, "
                  f"{run['profile']['extra']['dispatch_overhead_s'] * 1e6:.3g} us per empty "
                  f"call; model form {run['result']['model_form']}", flush=True)
    spans = [measured_interval(r) for r, _, _ in rows]
    fitted = [r["d_star"] for r, _, _ in rows]
    what = "kept runs re-analysed" if kept else "cold runs"
    print(f"\nbatch {args.batch}, rank {args.rank}, {args.method}, {len(rows)} {what}:")
    if None in spans:
        print("  measured d* intervals: a run's curve crosses 1 more than once")
    else:
        lows, highs = [s[0] for s in spans], [s[1] for s in spans]
        overlap = max(lows) <= min(highs)
        print(f"  measured d* intervals overlap: {'yes' if overlap else 'NO'} "
              f"(max low {max(lows):,.0f}, min high {min(highs):,.0f})")
    if None in fitted:
        print("  fitted d*: a run has no single fitted crossing")
    else:
        spread = max(fitted) / min(fitted)
        print(f"  fitted d* spread max/min: {spread:.3f} "
              f"({'within' if spread <= 1.25 else 'NOT within'} 1.25)")
    print(f"  every run's verdicts agree with its own measurements: "
          f"{'yes' if all(a for _, a, _ in rows) else 'NO'}")
    walls = ", ".join(f"{r['wall_s']:.0f}" for _, _, r in rows)
    analysis = ", ".join(f"{r['analysis_s']:.1f}" for _, _, r in rows)
    print(f"  {label} wall time: {walls} s; analysis {analysis} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
