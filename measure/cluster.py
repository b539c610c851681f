"""Spread a sweep over many workers with submitit (Slurm job arrays, or local processes).

    python -m measure.cluster --shards 8 --executor slurm --out results/ \\
        --slurm-partition gpu --gpus-per-task 1 --timeout-min 120 -- --grid seed
    python -m measure.cluster --shards 2 --executor local --out results/ -- --grid quick

Everything after ``--`` is passed to ``python -m measure.sweep``. Shard k of N (1-based) runs
``measure.sweep <args> --shard k/N --out <out>/shard-k-of-N`` as one task of a job array
(submitit's ``map_array``: one Slurm array job; ``--executor local`` runs the tasks as local
processes with submitit's `LocalExecutor`, which is how the tests exercise it). The command
waits for the tasks and merges their folders into ``<out>/merged`` (`measure.merge`, which
refuses shards of different devices); ``--no-wait`` only submits, and a later run with the
same arguments resumes each shard where it stopped (the sweep is resumable) and merges.

submitit is an optional dependency: ``pip install '.[cluster]'``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from costmodel.cliutil import OneLineArgumentParser, UserError, add_debug_flag, one_line, positive_int, run

EXECUTORS: tuple[str, ...] = ("local", "slurm")


def run_shard(sweep_argv: list[str]) -> int:
    """One task: the sweep on its share (runs in the task's own process)."""
    from measure import sweep

    rc = sweep.main(sweep_argv)
    if rc not in (0,):
        raise RuntimeError(f"measure.sweep {' '.join(sweep_argv)} exited {rc}")
    return rc


def shard_argv(sweep_args: Sequence[str], out: Path, k: int, n: int) -> list[str]:
    return [*sweep_args, "--shard", f"{k}/{n}", "--out", str(shard_dir(out, k, n))]


def shard_dir(out: Path, k: int, n: int) -> Path:
    return out / f"shard-{k}-of-{n}"


def make_executor(kind: str, folder: Path, args):
    try:
        import submitit
    except ImportError:
        raise UserError("submitit is not installed: pip install 'lora-crossover[cluster]'") from None
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=args.timeout_min)
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = {"timeout_min": args.timeout_min, "slurm_array_parallelism": args.parallel}
        if args.slurm_partition:
            params["slurm_partition"] = args.slurm_partition
        if args.gpus_per_task:
            params["gpus_per_node"] = args.gpus_per_task
        if args.cpus_per_task:
            params["cpus_per_task"] = args.cpus_per_task
        executor.update_parameters(**params)
    return executor


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(
        prog=PROG,
        description="Run a sweep as N shards on a cluster (Slurm job array via submitit) or as "
                    "local processes, then merge them. Sweep arguments follow '--'.",
    )
    p.add_argument("--out", required=True, help="folder for the shards, submitit logs and the merge")
    p.add_argument("--shards", type=positive_int, required=True, help="number of shards N")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="slurm (a job array) or local (local processes; default)")
    p.add_argument("--timeout-min", type=positive_int, default=60, help="minutes per task")
    p.add_argument("--parallel", type=positive_int, default=64,
                   help="slurm: tasks of the array running at once (default 64)")
    p.add_argument("--slurm-partition", help="slurm partition")
    p.add_argument("--gpus-per-task", type=positive_int, help="slurm: GPUs per task")
    p.add_argument("--cpus-per-task", type=positive_int, help="slurm: CPUs per task")
    p.add_argument("--no-wait", action="store_true", help="submit and return; rerun to merge")
    add_debug_flag(p)
    return p


PROG = "python -m measure.cluster"


def main(argv: Sequence[str] | None = None) -> int:
    return run(PROG, _main, argv)


def _main(argv: list[str]) -> int:
    own, sweep_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)
    if any(a == "--out" or a.startswith(("--out=", "--shard")) for a in sweep_args):
        raise UserError("give --out before '--' only; the shards' --out and --shard are set per task")
    # bad sweep arguments fail here, once, not in N tasks
    from measure import sweep

    try:
        sweep.grid_from_args(sweep.build_parser().parse_args([*sweep_args, "--out", "_"]))
    except UserError as exc:
        raise UserError(f"sweep arguments: {one_line(exc)}") from None
    out = Path(args.out)
    n = args.shards
    executor = make_executor(args.executor, out / "submitit", args)
    jobs = executor.map_array(run_shard, [shard_argv(sweep_args, out, k, n) for k in range(1, n + 1)])
    print(f"submitted {n} shards ({args.executor}): job {jobs[0].job_id.split('_')[0]}", file=sys.stderr)
    if args.no_wait:
        return 0
    failures = []
    for k, job in enumerate(jobs, 1):
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 -- a failed task is reported, the rest merged
            failures.append(f"shard {k}/{n}: {one_line(exc)}")
    if failures:
        raise UserError(f"{len(failures)} of {n} shards failed ({failures[0]}); logs in "
                        f"{out / 'submitit'}; rerun to resume them")
    from measure.merge import merge

    merged = out / "merged"
    if merged.exists():
        raise UserError(f"{merged} exists; move it away to merge again")
    counts = merge([shard_dir(out, k, n) for k in range(1, n + 1)], merged)
    print(f"merged {n} shards into {merged}: {counts.get('measurements', 0)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
