"""Starting JAX for the communication benchmarks: host devices, and processes joined by
`jax.distributed` over localhost (gloo on the CPU, NCCL on GPUs).

Shared by `measure.collectives` and `measure.sharded`: `ensure_devices` before JAX starts its
backends; `run_workers` spawns the processes of a ``--processes N`` run, each of which calls
`init_distributed`, takes its devices with `spread_devices`, and (process 0) prints one
``RECORD {json}`` line per finished record. `run_job` (the parent) and `worker_job` / `emit`
(each worker) are that protocol, used by both programs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from costmodel.cliutil import UserError, one_line


def ensure_devices(n: int) -> None:
    """Make at least `n` devices visible: N host devices on the CPU, set before JAX starts.

    UserError if JAX's backends already started with fewer devices (then run in a fresh
    process) or if the accelerator has fewer.
    """
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialised
        pass
    have = len(jax.devices())
    if have < n:
        raise UserError(f"{n} devices needed, {have} visible (JAX started before it could add "
                        "host devices: run in a fresh process)")


def init_distributed(coordinator: str, processes: int, process_id: int, local_devices: int) -> None:
    """Join `processes` processes through JAX's coordinator; gloo collectives on the CPU."""
    import jax

    if os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] in ("", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.config.update("jax_num_cpu_devices", local_devices)
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=processes, process_id=process_id,
        initialization_timeout=60,
    )


def free_port() -> int:
    """A TCP port free on localhost now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def comm_fingerprint() -> dict[str, Any]:
    """`measure.fingerprint.fingerprint`, with the device count left to the rows (devices, processes)."""
    from measure.fingerprint import fingerprint

    return {**fingerprint(), "device_count": "per row"}

RECORD_PREFIX = "RECORD "


def run_workers(module_argv: list[str], processes: int, timeout_s: float = 600.0):
    """Run `processes` copies of ``python <module_argv> --process-id i``; yield process 0's records.

    Process 0 prints each finished record as one ``RECORD {json}`` line on stdout. If any
    worker fails, the others are stopped (a collective would wait for it for ever) and a
    UserError names the first failure.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
        + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    procs = []
    for i in range(processes):
        procs.append(subprocess.Popen(
            [sys.executable, *module_argv, "--process-id", str(i)], env=env,
            stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        ))
    deadline = time.monotonic() + timeout_s
    try:
        assert procs[0].stdout is not None
        for line in procs[0].stdout:
            if line.startswith(RECORD_PREFIX):
                yield json.loads(line[len(RECORD_PREFIX):])
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        failed = [(i, p) for i, p in enumerate(procs) if p.returncode != 0]
        if failed:
            i, p = failed[0]
            err = (p.stderr.read() if p.stderr else "").strip().splitlines()
            err = [e for e in err if not e.startswith(("W", "I", "[Gloo]"))] or err
            raise UserError(f"worker {i} of {processes} exited {p.returncode}: "
                            f"{one_line(err[-1] if err else '')}")
    except subprocess.TimeoutExpired:
        raise UserError(f"workers did not finish within {timeout_s:g} s") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def run_job(module: str, job: Mapping[str, Any], argv: list[str], processes: int) -> Iterator[dict[str, Any]]:
    """Hand `job` to `processes` workers of ``python -m module --worker PLAN --coordinator
    127.0.0.1:PORT argv…`` (PLAN: `job` as JSON in a temporary file) and yield process 0's records.
    `job` carries ``processes`` and ``local_devices`` for `worker_job`."""
    with tempfile.TemporaryDirectory(prefix=f"{module.rsplit('.', 1)[-1]}-") as tmp:
        plan_file = os.path.join(tmp, "plan.json")
        with open(plan_file, "w", encoding="utf-8") as fh:
            json.dump(dict(job), fh)
        yield from run_workers(["-m", module, "--worker", plan_file,
                                "--coordinator", f"127.0.0.1:{free_port()}", *argv], processes)


@contextmanager
def worker_job(plan_file: str, coordinator: str, process_id: int) -> Iterator[dict[str, Any]]:
    """In one worker of `run_job`: read the job, join the others (`init_distributed`), yield the
    job, and leave `jax.distributed` however the body ends."""
    with open(plan_file, encoding="utf-8") as fh:
        job = json.load(fh)
    init_distributed(coordinator, job["processes"], process_id, job["local_devices"])
    import jax

    try:
        yield job
    finally:
        jax.distributed.shutdown()


def emit(records: Iterable[Mapping[str, Any]], process_id: int) -> None:
    """Process 0 prints each record as one ``RECORD {json}`` line for `run_workers` to read."""
    if process_id == 0:
        for rec in records:
            print(RECORD_PREFIX + json.dumps(dict(rec), allow_nan=True), flush=True)


def spread_devices(devices: list, p: int, processes: int) -> list:
    """p devices taken evenly from every process (so the group really spans processes)."""
    by_proc: dict[int, list] = {}
    for d in devices:
        by_proc.setdefault(d.process_index, []).append(d)
    per = p // processes
    return [d for i in sorted(by_proc) for d in by_proc[i][:per]]

