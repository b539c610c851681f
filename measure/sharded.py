"""Time a transformer block's training step under data and tensor parallel layouts.

    python -m measure.sharded --out results/                          # dp=2, dp=4, tp=2
    python -m measure.sharded --out results/ --layouts dp=2,tp=2 --processes 2

For each layout and method (full, lora) two programs are compiled (`measure.parallel_steps`;
built in `measure.sharded_programs`), checked and timed interleaved, as one config:

- ``step``: the sharded step on dp·tp devices (`jax.shard_map` over a `jax.sharding.Mesh`),
  whose loss and gradients are first checked against the unsharded step on one device;
- ``local``: one device's share of that step (batch/dp; heads/tp and MLP width/tp) run alone
  on one device with no communication, the single-device reference the analysis adds the
  fitted collectives to;
- ``concurrent``: every device runs its share at once, with no communication: on a CPU,
  whose host devices share its cores, the step's compute as it really runs (the analysis
  reports the model built on it apart, to separate core sharing from communication).

The layout dp=1,tp=1 (the plain step on one device) is always measured too. The compiled
step's collectives (kind, bytes, group) are recorded with it. Rows go to
``<out>/sharded.{jsonl,csv,run.json}`` (`measure.comm_schema`), resumable. With
``--processes N`` the devices are spread over N processes joined by `jax.distributed` on
localhost (gloo on the CPU), like `measure.collectives`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from costmodel.cliutil import (
    OneLineArgumentParser,
    UserError,
    add_debug_flag,
    csv_list,
    non_negative_float,
    one_line,
    positive_int,
    run,
)
from measure.comm_schema import SHARDED_COLUMNS, TABLE_VERSION
from measure.parallel_steps import METHODS, BlockShape, Layout, parse_layout
from measure.sharded_programs import prepare_concurrent, prepare_local, prepare_step, programs_of

TABLE = "sharded"
DEFAULT_LAYOUTS: tuple[Layout, ...] = (Layout(2, 1), Layout(4, 1), Layout(1, 2))
DEFAULT_SHAPE = BlockShape(batch=8, seq=32, embed=256, heads=8, hidden=1024, rank=4)
DEFAULT_BUDGET_S = 4.0  # per layout, six programs interleaved: ~0.7 s each
MULTIPROCESS_REPEATS = 9


def _trainable_params(shape: BlockShape, method: str) -> int:
    from measure.parallel_steps import init_params

    return int(sum(v.size for v in init_params(shape, method)[2].values()))


def record(shape: BlockShape, method: str, program: str, layout: Layout, processes: int, *,
           run_id: str, backend: str, device_kind: str, summary=None, prepared=None,
           collectives=(), error: str = "") -> dict[str, Any]:
    from measure.dataset import utc_now

    nan = float("nan")
    ar = float(sum(c.result_bytes for c in collectives if c.collective == "all_reduce"))
    other = float(sum(c.result_bytes for c in collectives if c.collective != "all_reduce"))
    rec: dict[str, Any] = {
        "table_version": TABLE_VERSION, "run_id": run_id, "backend": backend,
        "device_kind": device_kind, "layer": "block", "method": method, "program": program,
        "dp": layout.dp, "tp": layout.tp, "devices": 1 if program == "local" else layout.devices,
        "processes": 1 if program == "local" else processes, "batch": shape.batch,
        "seq": shape.seq, "embed": shape.embed, "heads": shape.heads, "hidden": shape.hidden,
        "rank": shape.rank if method != "full" else 0,
        "targets": ",".join(shape.targets) if method != "full" else "", "dtype": shape.dtype,
        "trainable_params": _trainable_params(shape, method),
        "n_repeats": 0, "calls_per_repeat": 0, "time_median_s": nan, "time_iqr_s": nan,
        "time_min_s": nan, "time_ci_low_s": nan, "time_ci_high_s": nan, "time_cv": nan,
        "unstable": False, "compile_s": nan,
        "hlo_collectives": len(collectives), "hlo_all_reduce_bytes": ar, "hlo_other_bytes": other,
        "hlo_detail": ";".join(f"{c.collective}:{c.result_bytes}:{c.group_size}" for c in collectives),
        "error": error, "timestamp": utc_now(),
    }
    if summary is not None:
        rec.update(summary.as_record())
    if prepared is not None:
        rec["compile_s"] = prepared.compile_s
    return {k: rec[k] for k in SHARDED_COLUMNS}


def run_layout(shape: BlockShape, layout: Layout, methods: Sequence[str], policy, *, run_id: str,
               processes: int = 1, devices: list | None = None) -> list[dict[str, Any]]:
    """Both programs of every method of one layout, timed interleaved; one record each."""
    import jax

    from measure import timing

    devices = list(jax.devices() if devices is None else devices)
    backend, kind = jax.default_backend(), devices[0].device_kind
    programs = programs_of(layout)
    prepared: dict[tuple[str, str], Any] = {}
    colls: dict[str, list] = {}
    errors: dict[tuple[str, str], str] = {}
    for method in methods:
        for program in programs:
            try:
                if program == "step":
                    prepared[method, program], colls[method] = prepare_step(shape, method, layout, devices)
                elif program == "concurrent":
                    prepared[method, program] = prepare_concurrent(shape, method, layout, devices)
                else:
                    mine = next(d for d in devices if d.process_index == jax.process_index())
                    prepared[method, program] = prepare_local(shape, method, layout, mine)
            except Exception as exc:  # noqa: BLE001 -- recorded, the run goes on
                errors[method, program] = f"{type(exc).__name__}: {one_line(exc)}"
    summaries = {}
    if prepared:
        names = {f"{m}/{p}": prep for (m, p), prep in prepared.items()}
        report = timing.time_interleaved(names, policy)
        summaries = {tuple(n.split("/")): s for n, s in report.summaries.items()}
    out = []
    for method in methods:
        for program in programs:
            key = (method, program)
            out.append(record(
                shape, method, program, layout, processes, run_id=run_id, backend=backend,
                device_kind=kind, summary=summaries.get(key), prepared=prepared.get(key),
                collectives=colls.get(method, ()) if program == "step" else (),
                error=errors.get(key, ""),
            ))
    return out


# ----------------------------------------------------------------------------- CLI

def _layout_arg(text: str) -> tuple[Layout, ...]:
    import argparse

    try:
        return tuple(parse_layout(item) for item in text.split(";") if item.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> OneLineArgumentParser:
    import argparse

    p = OneLineArgumentParser(
        prog=PROG,
        description="Time a transformer block's training step (full and LoRA) under data- and "
                    "tensor-parallel layouts, with its one-device share as reference.",
    )
    p.add_argument("--out", required=True, help="output folder (created; resumed if it exists)")
    p.add_argument("--layouts", type=_layout_arg, default=DEFAULT_LAYOUTS,
                   help="';'-separated layouts, e.g. 'dp=2;dp=4;tp=2;dp=2,tp=2' "
                        "(default dp=2;dp=4;tp=2); dp=1,tp=1 is always measured")
    p.add_argument("--methods", type=csv_list(METHODS, "method"), default=METHODS,
                   help="comma-separated subset of full,lora")
    for name in ("batch", "seq", "embed", "heads", "hidden", "rank"):
        p.add_argument(f"--{name}", type=positive_int, default=getattr(DEFAULT_SHAPE, name),
                       help=f"block {name} (default %(default)s)")
    p.add_argument("--targets", type=csv_list(("q", "k", "v", "o", "mlp"), "target"),
                   default=DEFAULT_SHAPE.targets, help="LoRA-adapted matrices (default q,v)")
    p.add_argument("--processes", type=positive_int, default=1,
                   help="spread the devices over N processes joined by jax.distributed on "
                        "localhost (default 1)")
    p.add_argument("--budget-s", type=non_negative_float, default=DEFAULT_BUDGET_S,
                   help="timing-loop seconds per layout (default %(default)s)")
    p.add_argument("--force-merge", action="store_true",
                   help="add to an --out measured on another device or library versions")
    p.add_argument("--retry-errors", action="store_true", help="rerun rows recorded with an error")
    add_debug_flag(p)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    p.add_argument("--coordinator", help=argparse.SUPPRESS)
    return p


PROG = "python -m measure.sharded"


def main(argv: Sequence[str] | None = None) -> int:
    """Under the shared runner: one-line errors (exit 2); SIGINT/SIGTERM keep what is finished
    (exit 130/143) and the same command resumes."""
    return run(PROG, _main, argv)


def _shape(args) -> BlockShape:
    try:
        return BlockShape(batch=args.batch, seq=args.seq, embed=args.embed, heads=args.heads,
                          hidden=args.hidden, rank=args.rank, targets=tuple(args.targets))
    except ValueError as exc:
        raise UserError(one_line(exc)) from None


def _policy(args, multiprocess: bool):
    from measure.timing import TimingPolicy

    if multiprocess:
        return TimingPolicy(min_repeats=MULTIPROCESS_REPEATS, max_repeats=MULTIPROCESS_REPEATS,
                            min_repeat_s=0.0, budget_s=0.0)
    return TimingPolicy(min_repeats=7, max_repeats=300, budget_s=args.budget_s, target_rel_ci=0.02)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    shape = _shape(args)
    if args.worker:
        return _worker(args, shape)
    layouts = [Layout(1, 1)] + [lay for lay in dict.fromkeys(args.layouts) if lay != Layout(1, 1)]
    for lay in layouts:
        try:
            shape.check(lay)
        except ValueError as exc:
            raise UserError(f"layout {lay.label()}: {one_line(exc)}") from None
        if args.processes > 1 and lay.devices > 1 and lay.devices % args.processes:
            raise UserError(f"layout {lay.label()}: {lay.devices} devices do not spread over "
                            f"--processes {args.processes}")
    need = max(lay.devices for lay in layouts)
    if args.processes == 1:
        from measure.launch import ensure_devices

        ensure_devices(need)
    from measure import comm_store
    from measure.dataset import new_session_id
    from measure.launch import comm_fingerprint

    fp = comm_fingerprint()
    session = {"session_id": new_session_id(), "argv": argv, "processes": args.processes}
    table = comm_store.open_table(args.out, TABLE, fp=fp, session=session, force=args.force_merge)

    def done(lay: Layout) -> bool:
        recs = [record(shape, m, p, lay, args.processes, run_id="", backend="", device_kind="")
                for m in args.methods for p in programs_of(lay)]
        return all(table.is_done(comm_store.key_of(r, TABLE), args.retry_errors) for r in recs)

    todo = [lay for lay in layouts if not done(lay)]
    print(f"sharded: {len(todo)} layouts to measure ({len(layouts) - len(todo)} done in {args.out})",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        if args.processes == 1:
            policy = _policy(args, False)
            for lay in todo:
                recs = run_layout(shape, lay, args.methods, policy, run_id=session["session_id"])
                for rec in recs:
                    table.append(rec)
                print(_line(lay, recs), file=sys.stderr, flush=True)
        else:
            _run_processes(args, todo, table, session["session_id"], need)
    except KeyboardInterrupt:
        table.finish("interrupted")
        raise
    df = table.finish("complete")
    n_err = int((df["error"] != "").sum())
    print(f"done in {time.perf_counter() - t0:.1f} s: {len(df)} records in {args.out}/{TABLE}.csv"
          + (f" ({n_err} with errors)" if n_err else ""), file=sys.stderr)
    return 0 if n_err == 0 else 1


def _line(lay: Layout, recs: list[dict[str, Any]]) -> str:
    parts = [
        f"{r['method']}/{r['program']} " + (f"FAILED ({r['error'][:60]})" if r["error"]
                                            else f"{r['time_median_s'] * 1e3:.2f} ms")
        for r in recs
    ]
    return f"{lay.label()}: " + ", ".join(parts)


def _run_processes(args, todo: list[Layout], table, run_id: str, need: int) -> None:
    from measure.launch import run_job

    if not todo:
        return
    job = {"layouts": [[lay.dp, lay.tp] for lay in todo], "run_id": run_id,
           "processes": args.processes, "local_devices": max(1, need // args.processes)}
    argv = ["--out", args.out, "--methods", ",".join(args.methods), "--targets", ",".join(args.targets)]
    for name in ("batch", "seq", "embed", "heads", "hidden", "rank"):
        argv += [f"--{name}", str(getattr(args, name))]
    for rec in run_job("measure.sharded", job, argv, args.processes):
        table.append(rec)
        print(f"{rec['method']}/{rec['program']} dp={rec['dp']},tp={rec['tp']}: "
              + (f"FAILED {rec['error']}" if rec["error"] else f"{rec['time_median_s'] * 1e3:.2f} ms"),
              file=sys.stderr, flush=True)


def _worker(args, shape: BlockShape) -> int:
    from measure.launch import emit, spread_devices, worker_job

    with worker_job(args.worker, args.coordinator, args.process_id) as job:
        import jax

        processes = job["processes"]
        policy = _policy(args, True)
        for dp, tp in job["layouts"]:
            lay = Layout(dp, tp)
            devices = spread_devices(jax.devices(), lay.devices, processes) if lay.devices > 1 else jax.devices()
            if lay.devices == 1:  # the one-device step: every process runs its own copy
                devices = [d for d in jax.devices() if d.process_index == jax.process_index()]
            emit(run_layout(shape, lay, args.methods, policy, run_id=job["run_id"],
                            processes=processes, devices=devices), args.process_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
