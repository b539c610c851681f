"""Collective microbenchmarks on JAX's own runtime: all-reduce, all-gather, reduce-scatter, ppermute.

    python -m measure.collectives --out results/                 # ~1 min on a 2-core CPU
    python -m measure.collectives --out results/ --full          # 1 KiB .. 256 MiB
    python -m measure.collectives --out results/ --processes 2   # 2 processes, jax.distributed

Each collective is a `jax.shard_map` over a one-axis `jax.sharding.Mesh` of p devices
(``jax.lax.psum``, ``all_gather``, ``psum_scatter``, ``ppermute`` to the next device), compiled
ahead of time, run once and compared with its known answer (small integers, exact in float32
and bfloat16; `measure.collective_ops`), then timed by `measure.timing` with the collectives of
one (p, size) config interleaved. A result that does not match is recorded with its error,
never timed.

Where it runs:

- one process, N devices: on the CPU, N host devices (``jax_num_cpu_devices``, set before JAX
  starts its backends); on GPUs, the GPUs (NCCL);
- ``--processes N``: N processes on this machine joined by `jax.distributed.initialize` over
  a localhost coordinator, each with its share of the devices; on the CPU the collectives go
  through gloo (``jax_cpu_collectives_implementation``), on GPUs through NCCL. This is the
  code path of a multi-host cluster. Every process runs the same configs in the same order
  with a fixed number of repeats (an adaptive stop would let one process leave a collective
  the others still wait in); process 0's timings are recorded (`measure.launch` starts them).

``message_bytes`` is nccl-tests' "size" (see `measure.comm_schema`). Results go to
``<out>/collectives.{jsonl,csv,run.json}`` (`measure.comm_store`): rerunning resumes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from costmodel.cliutil import (
    OneLineArgumentParser,
    UserError,
    add_debug_flag,
    csv_list,
    non_negative_float,
    one_line,
    positive_int,
    positive_int_list,
    run,
)
from costmodel.vocab import KERNEL_DTYPES as DTYPES
from measure.collective_ops import Built, build, check, elements
from measure.comm_schema import COLLECTIVE_COLUMNS, COLLECTIVES, TABLE_VERSION
from measure.launch import (
    comm_fingerprint,
    emit,
    ensure_devices,
    run_job,
    spread_devices,
    worker_job,
)

TABLE = "collectives"
KIB = 1024
#: --full: 1 KiB .. 256 MiB in steps of 4 (the issue's range).
FULL_BYTES: tuple[int, ...] = tuple(KIB * 4**i for i in range(10))
#: default: six sizes spanning latency- and bandwidth-bound, ~1 minute with 2, 4, 8 devices.
DEFAULT_BYTES: tuple[int, ...] = (KIB, 16 * KIB, 256 * KIB, 1024 * KIB, 4096 * KIB, 16384 * KIB)
DEFAULT_DEVICES: tuple[int, ...] = (2, 4, 8)
DEFAULT_BUDGET_S = 0.25
#: fixed repeats in multi-process runs (every process must make the same calls)
MULTIPROCESS_REPEATS = 7


def parse_bytes(text: str) -> int:
    """'64K', '1M', '4096' -> bytes (binary units: K = 1024); ValueError if malformed."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": KIB, "M": KIB**2, "G": KIB**3}.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in "KMG" else t
    try:
        value = int(digits) * mult
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 4096, 64K, 1M)") from None
    if value <= 0:
        raise ValueError(f"size {text!r} must be > 0")
    return value


def _bytes_list(text: str) -> tuple[int, ...]:
    import argparse

    try:
        items = tuple(parse_bytes(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not items:
        raise argparse.ArgumentTypeError("empty list of sizes")
    return items


# ----------------------------------------------------------------------------- configs

@dataclass(frozen=True)
class Config:
    devices: int
    message_bytes: int
    dtype: str
    processes: int

    def label(self) -> str:
        return f"p={self.devices} {self.message_bytes} B {self.dtype}" + (
            f" ({self.processes} processes)" if self.processes > 1 else "")


def record(config: Config, collective: str, *, run_id: str, backend: str, device_kind: str,
           message_bytes: int, summary=None, prepared=None, error: str = "") -> dict[str, Any]:
    from measure.dataset import utc_now

    nan = float("nan")
    rec: dict[str, Any] = {
        "table_version": TABLE_VERSION, "run_id": run_id, "backend": backend,
        "device_kind": device_kind, "collective": collective, "devices": config.devices,
        "processes": config.processes, "dtype": config.dtype, "message_bytes": message_bytes,
        "n_repeats": 0, "calls_per_repeat": 0, "time_median_s": nan, "time_iqr_s": nan,
        "time_min_s": nan, "time_ci_low_s": nan, "time_ci_high_s": nan, "time_cv": nan,
        "unstable": False, "compile_s": nan, "error": error, "timestamp": utc_now(),
    }
    if summary is not None:
        rec.update(summary.as_record())
    if prepared is not None:
        rec["compile_s"] = prepared.compile_s
    return {k: rec[k] for k in COLLECTIVE_COLUMNS}


def run_config(config: Config, collectives: Sequence[str], policy, *, run_id: str,
               devices: list | None = None) -> list[dict[str, Any]]:
    """Build, check and time `collectives` of `config`; one record each (errors recorded)."""
    import jax

    from measure import timing

    devices = list(jax.devices() if devices is None else devices)[: config.devices]
    backend, kind = jax.default_backend(), devices[0].device_kind
    out: dict[str, dict[str, Any]] = {}
    good: dict[str, Built] = {}
    for name in collectives:
        msg = config.message_bytes
        try:
            built = build(name, devices, config.message_bytes, config.dtype)
            msg = built.message_bytes
            error = check(built)
        except Exception as exc:  # noqa: BLE001 -- recorded, the run goes on
            built, error = None, f"{type(exc).__name__}: {one_line(exc)}"
        if error or built is None:
            out[name] = record(config, name, run_id=run_id, backend=backend, device_kind=kind,
                               message_bytes=msg, error=error)
        else:
            good[name] = built
    if good:
        report = timing.time_interleaved({n: b.prepared for n, b in good.items()}, policy)
        for name, b in good.items():
            out[name] = record(config, name, run_id=run_id, backend=backend, device_kind=kind,
                               message_bytes=b.message_bytes, summary=report.summaries[name],
                               prepared=b.prepared)
    return [out[n] for n in collectives]


# ----------------------------------------------------------------------------- CLI

def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(
        prog=PROG,
        description="Time all-reduce, all-gather, reduce-scatter and ppermute over message sizes "
                    "and device counts, each checked against its known answer.",
    )
    p.add_argument("--out", required=True, help="output folder (created; resumed if it exists)")
    p.add_argument("--collectives", type=csv_list(COLLECTIVES, "collective"), default=COLLECTIVES,
                   help="comma-separated subset of " + ",".join(COLLECTIVES))
    p.add_argument("--bytes", type=_bytes_list, dest="sizes",
                   help="message sizes, e.g. 1K,64K,1M (binary units; default "
                        "1K,16K,256K,1M,4M,16M)")
    p.add_argument("--full", action="store_true", help="all sizes 1K, 4K, ..., 256M")
    p.add_argument("--devices", type=positive_int_list, default=DEFAULT_DEVICES,
                   help="group sizes p, each >= 2 (default 2,4,8)")
    p.add_argument("--processes", type=positive_int, default=1,
                   help="N processes on this machine joined by jax.distributed over localhost "
                        "(default 1: one process with N devices)")
    p.add_argument("--dtypes", "--dtype", dest="dtypes", type=csv_list(DTYPES, "dtype"),
                   default=("float32",),
                   help="element types, comma-separated subset of " + ",".join(DTYPES)
                        + " (default float32)")
    p.add_argument("--budget-s", type=non_negative_float, default=DEFAULT_BUDGET_S,
                   help="timing-loop seconds per (p, size) config (default %(default)s)")
    p.add_argument("--min-repeats", type=positive_int, default=5, help="timed repeats at least")
    p.add_argument("--force-merge", action="store_true",
                   help="add to an --out measured on another device or library versions")
    p.add_argument("--retry-errors", action="store_true", help="rerun configs recorded with an error")
    # internal: a worker of a --processes run
    add_debug_flag(p)
    p.add_argument("--worker", help=argparse_suppress())
    p.add_argument("--process-id", type=int, help=argparse_suppress())
    p.add_argument("--coordinator", help=argparse_suppress())
    return p


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


PROG = "python -m measure.collectives"


def main(argv: Sequence[str] | None = None) -> int:
    """Under the shared runner: one-line errors (exit 2); SIGINT/SIGTERM keep what is finished
    (exit 130/143) and the same command resumes."""
    return run(PROG, _main, argv)


def _configs(args) -> list[Config]:
    sizes = FULL_BYTES if args.full else (args.sizes or DEFAULT_BYTES)
    if args.full and args.sizes:
        raise UserError("give --bytes or --full, not both")
    bad = [d for d in args.devices if d < 2]
    if bad:
        raise UserError(f"--devices {bad[0]}: a collective needs at least 2 devices")
    if args.processes > 1:
        odd = [d for d in args.devices if d % args.processes]
        if odd:
            raise UserError(f"--devices {odd[0]} is not a multiple of --processes {args.processes}")
    return [Config(d, s, dt, args.processes) for d in sorted(set(args.devices)) for s in sizes
            for dt in dict.fromkeys(args.dtypes)]


def _policy(args, multiprocess: bool):
    from measure.timing import TimingPolicy

    if multiprocess:  # the same calls in every process: fixed repeats, one call per repeat
        return TimingPolicy(min_repeats=MULTIPROCESS_REPEATS, max_repeats=MULTIPROCESS_REPEATS,
                            min_repeat_s=0.0, budget_s=0.0)
    return TimingPolicy(min_repeats=args.min_repeats, max_repeats=max(args.min_repeats, 200),
                        budget_s=args.budget_s, target_rel_ci=0.03)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return _worker(args)
    configs = _configs(args)
    if args.processes == 1:
        ensure_devices(max(c.devices for c in configs))
    from measure import comm_store
    from measure.dataset import new_session_id

    fp = comm_fingerprint()
    session = {"session_id": new_session_id(), "argv": argv, "processes": args.processes}
    table = comm_store.open_table(args.out, TABLE, fp=fp, session=session, force=args.force_merge)
    todo = [
        (c, [n for n in args.collectives if not table.is_done(
            comm_store.key_of({"collective": n, "devices": c.devices, "processes": c.processes,
                               "dtype": c.dtype, "message_bytes": _actual_bytes(c)}, TABLE),
            retry_errors=args.retry_errors)])
        for c in configs
    ]
    todo = [(c, names) for c, names in todo if names]
    print(f"collectives: {len(todo)} configs to measure ({len(configs) - len(todo)} done in {args.out})",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        if args.processes == 1:
            policy = _policy(args, False)
            for i, (config, names) in enumerate(todo, 1):
                recs = run_config(config, names, policy, run_id=session["session_id"])
                for rec in recs:
                    table.append(rec)
                print(_line(i, len(todo), config, recs), file=sys.stderr, flush=True)
        else:
            _run_processes(args, todo, table, session["session_id"])
    except KeyboardInterrupt:
        table.finish("interrupted")
        raise
    df = table.finish("complete")
    n_err = int((df["error"] != "").sum())
    print(f"done in {time.perf_counter() - t0:.1f} s: {len(df)} records in {args.out}/{TABLE}.csv"
          + (f" ({n_err} with errors)" if n_err else ""), file=sys.stderr)
    return 0 if n_err == 0 else 1


def _actual_bytes(c: Config) -> int:
    itemsize = 2 if c.dtype == "bfloat16" else 4
    return elements(c.message_bytes, c.devices, itemsize) * itemsize


def _line(i: int, n: int, config: Config, recs: list[dict[str, Any]]) -> str:
    parts = [
        f"{r['collective']} FAILED ({r['error'][:60]})" if r["error"]
        else f"{r['collective']} {r['time_median_s'] * 1e6:.1f} µs" for r in recs
    ]
    return f"[{i}/{n}] {config.label()}: " + ", ".join(parts)


# ----------------------------------------------------------------------------- processes

def _run_processes(args, todo, table, run_id: str) -> None:
    """Spawn --processes workers joined over localhost; append process 0's records."""
    plan = [{"devices": c.devices, "message_bytes": c.message_bytes, "dtype": c.dtype,
             "processes": c.processes, "collectives": names} for c, names in todo]
    if not plan:
        return
    job = {"plan": plan, "run_id": run_id, "processes": args.processes,
           "local_devices": max(c.devices for c, _ in todo) // args.processes}
    for rec in run_job("measure.collectives", job, ["--out", args.out], args.processes):
        table.append(rec)
        print(f"{rec['collective']} p={rec['devices']} {rec['message_bytes']} B: "
              + (f"FAILED {rec['error']}" if rec["error"] else f"{rec['time_median_s'] * 1e6:.1f} µs"),
              file=sys.stderr, flush=True)


def _worker(args) -> int:
    """One process of a --processes run: join, run the plan, process 0 prints records."""
    with worker_job(args.worker, args.coordinator, args.process_id) as job:
        import jax

        policy = _policy(args, True)
        for item in job["plan"]:
            config = Config(item["devices"], item["message_bytes"], item["dtype"], item["processes"])
            devices = spread_devices(jax.devices(), config.devices, job["processes"])
            emit(run_config(config, item["collectives"], policy, run_id=job["run_id"], devices=devices),
                 args.process_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
