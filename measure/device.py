"""Measure this device's achieved rates into a `costmodel.hardware.HardwareProfile` file.

    python -m measure.device --out profile.json

What it measures (each the best of a few samples of an AOT-compiled kernel, since a rate's
best case is the one the hardware can reach; cf. the roofline's peak terms). A sample of the
matmul and of the copy is k back-to-back calls, k chosen from one blocked call so that the
sample lasts at least ``--target-call-s``: a single blocked call of a fast kernel would
time the host-device sync, not the kernel (an n = 2048 matmul is ~20 µs on an H200).

- ``peak_flops_per_s[dtype]``: an n x n by n x n matmul (2·n³ FLOPs), n doubled from 256
  until one call takes ``--target-call-s`` or n reaches ``--max-n`` (16384: about 8.8 TFLOP a
  call, enough to fill a GPU); the best rate of any n. ``extra["matmul_saturated_<dtype>"]``
  is 1.0 when one call reached ``--target-call-s`` (the size search ended by time, not by
  ``--max-n``), ``extra["matmul_calls_per_sample_<dtype>"]`` is k at the best n;
- ``mem_bandwidth_bytes_per_s``: y = x/2 + 1 in place (donated input) over ``--copy-mib``
  MiB of float32 (read once, write once: 2 x the array's bytes moved);
  ``extra["copy_calls_per_sample"]`` is its k;
- ``kernel_overhead_s``: a chain of L tiny (8 x 8) matmuls, each its own kernel (XLA does not
  fuse dots into each other), timed at L = 1 and L = 65 interleaved round by round: the
  median slope per added kernel (`kernel_overhead`);
- ``extra["dispatch_overhead_s"]``: a blocked call of a one-element add, end to end: what
  Python + JAX dispatch + one launch + the sync cost per call;
- ``extra["async_dispatch_s"]``: the same call issued back to back without blocking, per call.

On a 2-core CPU the defaults take a few seconds (the matmul stops growing at n = 2048, where
one call exceeds ``--target-call-s``). The same defaults run unchanged on a GPU.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from costmodel.cliutil import (
    OneLineArgumentParser,
    UserError,
    add_debug_flag,
    csv_list,
    one_line,
    path_arg,
    positive_float,
    positive_int,
    run,
)
from costmodel.vocab import KERNEL_DTYPES as DTYPES
from measure.fingerprint import PROFILE_CHECKED, fingerprint
from measure.timing import calls_per_sample, compile_ahead, place, timed_repeat

PROG = "python -m measure.device"



def _best_time(call: Callable, args: tuple, repeats: int, k: int = 1, warm_up: bool = True) -> float:
    """Fastest of `repeats` blocked runs of `k` back-to-back calls, per call (seconds)."""
    if warm_up:
        timed_repeat(call, args, 1)
    return min((timed_repeat(call, args, k) for _ in range(repeats)), default=float("inf")) / k


def _compiled(fn: Callable, *args):
    placed = place(args)
    return compile_ahead(fn, placed)[0], placed


#: Outputs of one matmul sample are all held until it is blocked on; keep them within this.
_MAX_HELD_BYTES = 2 * 2**30
_MAX_CALLS_PER_SAMPLE = 10_000


def _blocked_call_s(call: Callable, args: tuple) -> float:
    """Seconds of one blocked call (after a warm-up call)."""
    timed_repeat(call, args, 1)  # warm-up
    return timed_repeat(call, args, 1)


@dataclass(frozen=True)
class MatmulRate:
    """Best achieved rate of a square matmul and how it was reached."""

    flops_per_s: float
    n: int  # the side that reached it
    calls_per_sample: int  # k at that n
    saturated: bool  # one call at the last n tried took >= target_call_s


def matmul_flops_per_s(dtype: str, *, max_n: int, target_call_s: float, repeats: int) -> MatmulRate:
    """Best achieved FLOP/s of a square matmul at `dtype` over n = 256, 512, ... <= max_n."""
    import jax
    import jax.numpy as jnp

    best = MatmulRate(0.0, 0, 1, False)
    n = min(256, max_n)
    while n <= max_n:
        # drawn on the device: a host-side 16384² array would take seconds to make and copy
        a = jax.random.normal(jax.random.key(0), (n, n), dtype=jnp.dtype(dtype))
        call, args = _compiled(lambda x, y: x @ y, a, a)
        one = _blocked_call_s(call, args)
        out_bytes = n * n * jnp.dtype(dtype).itemsize
        k = calls_per_sample(one, target_call_s, min(_MAX_CALLS_PER_SAMPLE, max(1, _MAX_HELD_BYTES // out_bytes)))
        t = _best_time(call, args, repeats, k, warm_up=False)  # _blocked_call_s warmed it
        rate = 2.0 * n**3 / t  # 2: one multiply and one add per term
        saturated = one >= target_call_s
        if rate > best.flops_per_s:
            best = MatmulRate(rate, n, k, saturated)
        del a, args
        if saturated:
            break
        n *= 2
    return MatmulRate(best.flops_per_s, best.n, best.calls_per_sample, saturated)


def copy_bandwidth(copy_mib: float, repeats: int, target_call_s: float = 0.05) -> tuple[float, float, int]:
    """Bytes/s of y = x/2 + 1 on a float32 array of `copy_mib` MiB, bytes moved per call, and k.

    The input is donated and each output fed back as the next input, so the kernel writes in
    place: a fresh output buffer per call would time the OS's page faults, not the memory.
    (x/2 + 1 converges to 2: no overflow, no denormals.) A sample is k chained calls
    (`calls_per_sample`); each call consumes the previous output, so blocking on the last
    waits for all of them.
    """
    import jax
    import jax.numpy as jnp

    n = max(1, int(copy_mib * 2**20) // 4)
    x = jax.block_until_ready(jax.device_put(jnp.ones((n,), jnp.float32)))
    call = jax.jit(lambda v: v * 0.5 + 1.0, donate_argnums=0).lower(x).compile()
    bytes_moved = 2.0 * n * 4  # read x once, write y once
    x = jax.block_until_ready(call(x))  # warm-up
    t0 = time.perf_counter()
    x = jax.block_until_ready(call(x))
    k = calls_per_sample(time.perf_counter() - t0, target_call_s, _MAX_CALLS_PER_SAMPLE)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(k):
            x = call(x)
        x = jax.block_until_ready(x)
        best = min(best, (time.perf_counter() - t0) / k)
    return bytes_moved / best, bytes_moved, k


#: Back-to-back calls per timed repeat of the kernel-overhead chains, the same for both: the
#: regime of the sweep's sub-ms kernels (`measure.timing` sets k so a repeat lasts >= 1 ms).
CHAIN_CALLS_PER_REPEAT = 50
#: Seconds of interleaved rounds for the kernel-overhead chains.
CHAIN_BUDGET_S = 0.6


def kernel_overhead(repeats: int, long_chain: int = 65,
                    budget_s: float = CHAIN_BUDGET_S) -> float:
    """Seconds per extra kernel in a chain of dependent tiny matmuls: chains of L = 1 and
    L = long_chain timed interleaved round by round (`measure.timing.time_interleaved`, at
    least `repeats` rounds, k = `CHAIN_CALLS_PER_REPEAT` for both), the median over rounds of
    (t_L − t_1) / (L − 1). Pairing the rounds cancels part of the machine's drift: on the
    2-core CI VM three `python -m measure.device` runs with the best of five samples of each
    chain timed apart gave 0.34-0.96 µs; five of this probe in one process 0.50-0.86 µs
    (`python benchmarks/bench_device.py --runs 5` prints them)."""
    import jax.numpy as jnp
    import numpy as np

    from measure.timing import Prepared, TimingPolicy, time_interleaved

    def chain(length: int):
        def f(x, w):
            for _ in range(length):
                x = x @ w  # a dot is never fused into another dot: one kernel each
            return x

        return f

    x = jnp.ones((8, 8), jnp.float32)
    w = jnp.eye(8, dtype=jnp.float32)
    chains = {}
    for length in (1, long_chain):
        call, args = _compiled(chain(length), x, w)
        timed_repeat(call, args, 1)  # warm-up
        chains[str(length)] = Prepared(str(length), call, args)
    policy = TimingPolicy(min_repeats=max(repeats, 5), max_repeats=1_000_000,
                          budget_s=budget_s, target_rel_ci=1e-9)
    report = time_interleaved(chains, policy, k=CHAIN_CALLS_PER_REPEAT)
    short = np.asarray(report.samples_s["1"])
    long_ = np.asarray(report.samples_s[str(long_chain)])
    n = min(short.size, long_.size)
    return max(0.0, float(np.median(long_[:n] - short[:n])) / (long_chain - 1))


def dispatch_overheads(repeats: int) -> tuple[float, float]:
    """(blocked seconds per call, unblocked back-to-back seconds per call) of a tiny add."""
    import jax
    import jax.numpy as jnp

    call, args = _compiled(lambda x: x + 1.0, jnp.ones((1,), jnp.float32))
    blocked = float("inf")
    jax.block_until_ready(call(*args))
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(50):
            jax.block_until_ready(call(*args))
        blocked = min(blocked, (time.perf_counter() - t0) / 50)
    return blocked, _best_time(call, args, repeats, k=200)


#: Tiny arrays passed (and as many returned) by the wide call of the per-buffer probe.
BUFFER_PROBE_ARRAYS = 8


def buffer_overhead(repeats: int, n: int = BUFFER_PROBE_ARRAYS) -> float:
    """Seconds per argument or result buffer of a call: a call taking and returning `n` tiny
    arrays against one taking and returning one, blocked, fastest of `repeats`, slope over
    the 2n − 2 extra buffers. A training call passes its input and parameters and returns its
    loss and gradients (the attention layer: 8 buffers under full fine-tuning, 13 under LoRA),
    each costing this on top of the empty call that `dispatch_overheads` times."""
    import jax.numpy as jnp

    def wide(*xs):
        return tuple(x + 1.0 for x in xs)

    times = []
    for count in (1, n):
        call, args = _compiled(wide, *[jnp.ones((8,), jnp.float32) for _ in range(count)])
        times.append(_best_time(call, args, max(repeats, 5) * 6, k=50))
    return max(0.0, (times[1] - times[0]) / (2 * n - 2))


def measure(
    *, dtypes: Sequence[str] = DTYPES, max_n: int = 16384, target_call_s: float = 0.05,
    copy_mib: float = 256.0, repeats: int = 5,
):
    """Run every measurement and return a `HardwareProfile` (imports JAX)."""
    import jax

    from costmodel.hardware import HardwareProfile

    t0 = time.perf_counter()
    peaks, extra = {}, {}
    for dtype in dtypes:
        mm = matmul_flops_per_s(dtype, max_n=max_n, target_call_s=target_call_s, repeats=repeats)
        peaks[dtype] = mm.flops_per_s
        extra[f"matmul_n_{dtype}"] = float(mm.n)
        extra[f"matmul_calls_per_sample_{dtype}"] = float(mm.calls_per_sample)
        extra[f"matmul_saturated_{dtype}"] = 1.0 if mm.saturated else 0.0
    extra["matmul_wall_s"] = time.perf_counter() - t0
    bandwidth, copy_bytes, copy_k = copy_bandwidth(copy_mib, repeats, target_call_s)
    extra["copy_calls_per_sample"] = float(copy_k)
    per_kernel = kernel_overhead(repeats)
    blocked, unblocked = dispatch_overheads(repeats)
    extra.update(
        copy_bytes=copy_bytes, dispatch_overhead_s=blocked, async_dispatch_s=unblocked,
        buffer_overhead_s=buffer_overhead(repeats),
        device_count=float(len(jax.devices())), measure_wall_s=time.perf_counter() - t0,
    )
    device = jax.devices()[0]
    kind = device.device_kind
    fp = fingerprint()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return HardwareProfile(
        name=f"measured {jax.default_backend()} {kind}",
        peak_flops_per_s=peaks,
        mem_bandwidth_bytes_per_s=bandwidth,
        kernel_overhead_s=per_kernel,
        source=(
            f"measured by measure.device on {when} ({kind}, jax {jax.__version__}); "
            f"achieved rates, not datasheet peaks"
        ),
        measured=True,
        extra=extra,
        fingerprint={k: fp[k] for k in PROFILE_CHECKED if k in fp},
    )


def _check_out(path: Path) -> None:
    """Refuse an --out that exists but is not a hardware profile, or cannot be written."""
    from costmodel.hardware import HardwareProfile

    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name such as profile.json")
    if path.exists():
        try:
            HardwareProfile.from_json(path)
        except ValueError as exc:
            raise UserError(f"--out {path} holds something else ({one_line(exc)}); not overwriting it")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UserError(f"--out {path}: {parent} is a file, not a folder")
    if not parent.is_dir():
        raise UserError(f"--out {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"--out {path} is not writable")


#: The smallest --max-n: below it a matmul has too few FLOPs (2·64³ = 0.5 MFLOP) to outlast
#: its dispatch, and the "rate" is the dispatch overhead (--max-n 1 gave 0.0 GFLOP/s).
MIN_MATMUL_N = 64


def max_n_arg(text: str) -> int:
    """An argparse `type=` for --max-n: a whole number >= MIN_MATMUL_N."""
    import argparse

    n = positive_int(text)
    if n < MIN_MATMUL_N:
        raise argparse.ArgumentTypeError(
            f"--max-n {n} is below {MIN_MATMUL_N}, the smallest matmul that measures a FLOP rate")
    return n


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=path_arg, help="profile JSON to write (loads as HardwareProfile)")
    p.add_argument("--dtypes", "--dtype", dest="dtypes", type=csv_list(DTYPES, "dtype"), default=DTYPES,
                   help=f"dtypes whose matmul rate to measure, comma-separated (default {','.join(DTYPES)})")
    p.add_argument("--max-n", type=max_n_arg, default=16384,
                   help=f"largest matmul side tried (at least {MIN_MATMUL_N}: "
                        "a smaller matmul measures the dispatch, not a FLOP rate)")
    p.add_argument("--target-call-s", type=positive_float, default=0.05,
                   help="stop growing the matmul once one call takes this long; a timed "
                        "sample of the matmul and the copy lasts at least this long")
    p.add_argument("--copy-mib", type=positive_float, default=256.0,
                   help="size of the bandwidth copy in MiB")
    p.add_argument("--repeats", type=positive_int, default=5)
    add_debug_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and write the profile under the shared runner (one-line errors, exit 2)."""
    return run(PROG, _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    _check_out(out)
    profile = measure(
        dtypes=args.dtypes, max_n=args.max_n, target_call_s=args.target_call_s,
        copy_mib=args.copy_mib, repeats=args.repeats,
    )
    try:
        profile.to_json(out)
    except OSError as exc:
        raise UserError(f"cannot write --out {out}: {one_line(exc)}") from None
    peaks = ", ".join(f"{d} {r / 1e9:.1f} GFLOP/s" for d, r in profile.peak_flops_per_s.items())
    print(
        f"{profile.name}: {peaks}; bandwidth {profile.mem_bandwidth_bytes_per_s / 1e9:.1f} GB/s; "
        f"kernel overhead {profile.kernel_overhead_s * 1e6:.2f} µs; dispatch "
        f"{profile.extra['dispatch_overhead_s'] * 1e6:.1f} µs/call blocked, "
        f"{profile.extra['async_dispatch_s'] * 1e6:.1f} µs/call async -> {out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
