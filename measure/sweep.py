"""Sweep a grid of configurations, timing every method, into a resumable tidy dataset.

    python -m measure.sweep --grid quick --out results/
    python -m measure.sweep --batch 2,64 --embed 256,1024 --rank 1,4 --out results/
    python -m measure.sweep --grid seed --variant seed --timing as_written --out results/

Configs run in an order shuffled with ``--order-seed`` (the seed and the order are recorded
in run.json, ``sessions[-1].extra.config_order``; ``--bootstrap-seed`` seeds the timing loop's
bootstrap apart); the methods of one config
are compiled, warmed up and timed together, interleaved (see `measure.timing`). Each
finished (config, method) is appended to ``<out>/measurements.jsonl`` at once, so Ctrl-C
(exit 130) or a crash loses at most the config in progress, and rerunning with the same
``--out`` resumes (see `measure.dataset`). A config that fails (out of memory, say) is
recorded with its error and the sweep goes on.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from costmodel.cliutil import Interrupted, UserError, check_stop, exit_status, one_line, run
from measure import grids
from measure.grids import Config, Grid
from measure.schema import CURVE_COLUMNS

# the command line (measure.sweep_args) and one config's build, timing and record
# (measure.sweep_config), re-exported: callers and tests use them as measure.sweep.X
from measure.sweep_args import PROG, build_parser, grid_from_args, shard_of, shard_spec  # noqa: F401
from measure.sweep_config import (  # noqa: F401
    Measured,
    describe,
    describe_model,
    make_record,
    prepare,
    run_config,
)

# ----------------------------------------------------------------------------- the sweep

def _log(bar, line: str) -> None:
    if bar is not None and not bar.disable:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def _fmt_s(t: float) -> str:
    if t != t:  # NaN
        return "n/a"
    return f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s"


def _summary_line(i: int, n: int, config: Config, results, elapsed_s: float) -> str:
    parts = []
    base = None
    for method, (summary, _prep, error, _paired) in results.items():
        if error:
            parts.append(f"{method} FAILED ({error[:60]})")
            continue
        t = summary.time_median_s
        ratio = f" ({t / base:.2f}x)" if base else ""
        if method == "full":
            base = t
        flag = " unstable" if summary.unstable else ""
        parts.append(f"{method} {_fmt_s(t)}{ratio} n={summary.n_repeats}{flag}")
    return f"[{i}/{n}] {config.label()}: " + ", ".join(parts) + f" [{elapsed_s:.1f} s]"


def main(argv: Sequence[str] | None = None) -> int:
    """The sweep under the shared runner: one-line errors (exit 2), SIGINT/SIGTERM kept as
    an interrupted run (exit 130/143; before the output folder opens there is nothing to keep)."""
    return run(PROG, _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    grid = grid_from_args(args)
    todo_pairs: list[tuple[Config, list[dict[str, Any]]]] = []
    for config in grid.configs:
        try:
            bases = [describe(config, m) for m in grid.methods]
        except ValueError as exc:
            raise UserError(f"{config.label()}: {one_line(exc)}") from None
        todo_pairs.append((config, bases))

    from measure import dataset, fingerprint, timing

    budget = args.budget_s if args.budget_s is not None else grids.DEFAULT_BUDGET_S[grid.name]
    if args.max_repeats < args.min_repeats:
        raise UserError(f"--max-repeats {args.max_repeats} is below --min-repeats {args.min_repeats}")
    try:
        policy = timing.TimingPolicy(
            min_repeats=args.min_repeats, max_repeats=args.max_repeats,
            target_rel_ci=args.target_ci or 1e-9, budget_s=budget, seed=args.bootstrap_seed,
        )
    except ValueError as exc:
        raise UserError(one_line(exc)) from None

    # configs in a shuffled order, recorded: a drift over the sweep is not a trend in size
    order = list(range(len(todo_pairs)))
    random.Random(args.order_seed).shuffle(order)
    order = shard_of(order, args.shard)
    fp = fingerprint.fingerprint()
    session = dataset.Session(
        session_id=dataset.new_session_id(), started_utc=dataset.utc_now(), argv=argv,
        grid={**grid.describe(), "layer": grid.configs[0].layer if grid.configs else None,
              "variant": args.variant, "timing_mode": args.timing, "dtype": args.dtypes[0]},
        seeds={"order_seed": args.order_seed, "param_seed": args.param_seed,
               "bootstrap_seed": policy.seed},
        policy={k: getattr(policy, k) for k in policy.__dataclass_fields__},
        extra={"config_order": [todo_pairs[i][0].label() for i in order],
               "shard": list(args.shard) if args.shard else None},
    )
    out = dataset.open_out_dir(args.out, fp=fp, session=session, force_merge=args.force_merge,
                               log=lambda line: _log(None, line))
    try:
        return _sweep(args, grid, todo_pairs, order, out, fp, policy, budget)
    except KeyboardInterrupt as exc:
        # a stop in any phase past the loop's own handler (the final write, say): what is
        # appended stays, and run.json says interrupted, not "running" (the runner holds back
        # a second signal while this runs)
        if not out.finished:
            out.finish("interrupted", reason=str(exc) if isinstance(exc, Interrupted) else "SIGINT")
        raise
    finally:
        out.close()


def _sweep(args, grid: Grid, todo_pairs, order, out, fp, policy, budget) -> int:
    from measure import dataset

    out.grid_keys = {dataset.record_key(b) for _config, bases in todo_pairs for b in bases}
    work = []
    for idx in order:
        config, bases = todo_pairs[idx]
        methods = [
            b["method"] for b in bases
            if not out.is_done(dataset.record_key(b), retry_errors=args.retry_errors)
        ]
        if methods:
            work.append((config, bases, methods))
    grid_left_after = 0
    if args.limit is not None:
        grid_left_after = max(0, len(work) - args.limit)
        work = work[: args.limit]
    skipped = len(order) * len(grid.methods) - sum(len(w[2]) for w in work)

    from tqdm import tqdm

    bar = tqdm(total=len(work), file=sys.stderr, unit="config", disable=not sys.stderr.isatty())
    _log(bar, f"{grid.name}: {len(work)} configs to measure x {len(grid.methods)} methods "
              f"({skipped} (config, method) pairs already in {args.out}); budget {budget:g} s/config")
    t_start = time.perf_counter()
    clock = _Clock(t_start, args.time_limit_s)
    # the refinement bisects our kernels' crossover once the whole grid is in (one shard
    # holds only part of it: run the refinement on the merged folder)
    refine_on = args.refine and args.variant == "clean" and grid_left_after == 0 and not args.shard
    refine_on = refine_on and not grid.whole_model
    try:
        stopped = _measure(out, work, fp, policy, args, bar, clock, refinement=False)
        bar.close()
        if not stopped and refine_on:
            stopped = _refine(out, grid, fp, policy, args, clock)
        if stopped:
            out.finish("interrupted", reason=f"--time-limit-s {args.time_limit_s:g} reached")
            _log(None, f"time limit reached after {clock.elapsed():.1f} s; rerun the same "
                       "command to resume")
            return 0
    except OSError as exc:  # the folder vanished, the disk filled: what was appended stays
        bar.close()
        raise UserError(f"cannot write to --out {args.out}: {one_line(exc)}") from None
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM (the runner's `Interrupted`)
        bar.close()
        name = signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"
        _log(None, f"{name}: stopping; writing what is finished (a second signal is ignored)")
        out.finish("interrupted", reason=str(exc) if isinstance(exc, Interrupted) else "SIGINT")
        _log(None, f"interrupted: {len(out.records)} records kept in {args.out}; "
                   "rerun the same command to resume")
        return exit_status(exc)
    if grid_left_after and args.refine and args.variant == "clean" and not grid.whole_model:
        _log(None, "--limit left configs of the grid: the crossover refinement waits for them")
    df = out.finish("complete")  # "partial" unless every pair of the grid is there
    n_err = int((df["error"] != "").sum())
    counts = out.counts()
    state = (f"{grid.name} grid complete" if out.run["status"] == "complete" else
             f"partial: {counts['pairs_present']} of {counts['pairs_expected']} (config, method) "
             f"pairs of the {grid.name} grid; rerun without --limit to finish it")
    _log(None, f"done in {clock.elapsed():.1f} s: {len(df)} records in "
               f"{Path(args.out) / dataset.CSV_NAME}" + (f" ({n_err} with errors)" if n_err else "")
               + f"; {state}")
    return 0


class _Clock:
    """Seconds since the sweep started, against its --time-limit-s."""

    def __init__(self, t_start: float, limit_s: float | None):
        self.t_start, self.limit_s = t_start, limit_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def over(self) -> bool:
        return self.limit_s is not None and self.elapsed() >= self.limit_s


def _measure(out, work, fp, policy, args, bar, clock: _Clock, refinement: bool) -> bool:
    """Measure `work` [(config, bases, methods)], appending each record; True if the time
    limit stopped it first."""
    for i, (config, bases, methods) in enumerate(work, 1):
        check_stop()  # a stop signal swallowed while the last config ran (JAX's gc callback)
        if clock.over():
            return True
        t0 = time.perf_counter()
        results = run_config(config, methods, policy, args.param_seed)
        by_method = {b["method"]: b for b in bases}
        for method, res in results.items():
            out.append(make_record(
                by_method[method], run_id=out.session_id, backend=fp["backend"],
                device_kind=fp["device_kind"], summary=res.summary, prepared=res.prepared,
                error=res.error, paired=res.paired, refinement=refinement,
            ))
        tag = "refine " if refinement else ""
        _log(bar, tag + _summary_line(i, len(work), config, results, time.perf_counter() - t0))
        if bar is not None:
            bar.update(1)
    return False


def refinement_work(grid: Grid, records: Sequence[dict[str, Any]], tried: set[Config]
                    ) -> list[tuple[Config, list[dict[str, Any]]]]:
    """The widths `measure.refine.assess` proposes next for every curve of `grid`, as
    (config, bases) pairs, each config measured with all the grid's methods; configs in
    `tried` (or that the cost model rejects) are skipped."""
    import dataclasses

    import pandas as pd

    from measure import dataset, refine

    if not records:
        return []
    df = dataset.consolidate(records)
    loras = [m for m in grid.methods if m != "full"]
    if "full" not in grid.methods or not loras:
        return []
    groups: dict[Config, list[Config]] = {}
    for c in grid.configs:
        groups.setdefault(dataclasses.replace(c, embed=1, hidden=1), []).append(c)
    top = max(math.sqrt(c.embed * c.hidden) for c in grid.configs) * refine.MAX_EXPAND_UP
    todo: list[tuple[Config, list[dict[str, Any]]]] = []
    for key, members in groups.items():
        ratios = {c.hidden / c.embed for c in members}
        h_over_e = ratios.pop() if len(ratios) == 1 else 1.0
        sel = pd.Series(True, index=df.index)
        for col in CURVE_COLUMNS:
            sel &= df[col] == getattr(key, col)
        rows = df[sel]
        widths = set()
        for m in loras:
            nxt = refine.assess_rows(rows, m, max_width=top).next_width
            if nxt is not None:
                widths.add(nxt)
        for w in sorted(widths):
            config = dataclasses.replace(key, embed=w, hidden=max(1, round(h_over_e * w)))
            if config in tried:
                continue
            tried.add(config)
            try:
                bases = [{**describe(config, m), "refinement": True} for m in grid.methods]
            except ValueError:
                continue
            todo.append((config, bases))
    return todo


def _refine(out, grid: Grid, fp, policy, args, clock: _Clock) -> bool:
    """Bisect every curve's crossover (`measure.refine`) until nothing is proposed; True if
    the time limit stopped it first. Pairs already recorded are not measured again."""
    from measure import dataset

    tried: set[Config] = set()
    n_done = 0
    while True:
        todo = refinement_work(grid, out.records, tried)
        work = []
        for config, bases in todo:
            methods = [b["method"] for b in bases
                       if not out.is_done(dataset.record_key(b), retry_errors=args.retry_errors)]
            if methods:
                work.append((config, bases, methods))
        if not todo:
            break
        if not work:
            continue
        if clock.over():
            return True
        if n_done == 0:
            _log(None, "crossover refinement (bisection in log width, python -m measure.refine)")
        if _measure(out, work, fp, policy, args, None, clock, refinement=True):
            return True
        n_done += len(work)
    out.run.setdefault("refinement", {})
    out.run["refinement"] = {"configs_measured_this_session": n_done,
                             "configs": int(sum(bool(r.get("refinement")) for r in out.records)
                                            // max(len(grid.methods), 1))}
    return False


if __name__ == "__main__":
    raise SystemExit(main())
