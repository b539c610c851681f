"""Timing JAX kernels correctly: compiled apart, placed first, warmed, blocked, interleaved.

The recipe follows the JAX docs' "Benchmarking JAX code" and equinox/diffrax's benchmarking FAQ:

1. compile ahead of time (``jax.jit(fn).lower(*args).compile()``) and record ``compile_s``
   apart from run time;
2. ``jax.device_put`` the inputs first and pass them as arguments (never closed over);
3. warm up, then call ``jax.block_until_ready`` on every timed result, so the clock does
   not stop before asynchronous work ends;
4. interleave the methods of one config round-robin so drift (thermal, frequency, a noisy
   neighbour) hits all alike, rotating the starting method each round (A B C, B C A,
   C A B, ...) so no method always runs right after the loop's bookkeeping;
5. keep the garbage collector off while timing;
6. repeat adaptively: at least ``min_repeats``, then until the 95% bootstrap interval of the
   median is within ``target_rel_ci`` (2%) of the median, or the config's time budget is
   spent. A repeat is k back-to-back calls and one sample is their mean; k is recorded.

One k for all the methods of a config. A repeat of k = 1 includes the block/sync latency
that a repeat of k > 1 pipelines away (attention, batch 2, e = 64 on this 2-core CPU:
74.5 µs per call at k = 1, 29.2 µs at k = 13), so methods timed with different k would skew
the very ratios (lora/full) this project measures. k is set so that a repeat of the
*fastest* method lasts at least ``min_repeat_s`` (capped by ``max_calls_per_repeat``); the
slower methods then also get at least that long.

Stability rule (``TimingPolicy.unstable_rel_ci`` / ``unstable_spread``): a summary is flagged
``unstable`` when the bootstrap CI half-width of the median (the larger side) exceeds 5% of
the median, or the interquartile range exceeds 25% of the median. The first says the median
itself is uncertain; the second catches bimodal or broad samples whose median happens to be
pinned down by many repeats. The spread test uses the IQR, not the coefficient of variation
(which is recorded too): on a CPU a few preempted repeats among hundreds of 30 µs calls
drive std/mean above 1 while leaving the median, which is what the analysis uses, exact.
Cf. pyperf's ``format_checks`` warnings.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from measure.timing_stats import (  # noqa: F401 -- re-exported: timing.TimingPolicy, timing.summarize, ...
    TimingPolicy,
    TimingSummary,
    block_median_ci,
    block_ratio,
    ci_half_width_rel,
    converged,
    median_ci,
    median_round_ratio,
    paired_ratio,
    summarize,
)


@dataclass(frozen=True)
class Prepared:
    """A callable ready to time: `call(*args)` with `args` already on the device."""

    name: str
    call: Callable[..., Any]
    args: tuple
    compile_s: float = float("nan")
    xla_flops: float = float("nan")
    xla_bytes: float = float("nan")


@dataclass(frozen=True)
class TimingReport:
    """Summaries of one config's methods plus what the loop itself cost.

    loop_wall_s: wall time of the interleaved timing loop (after warm-up).
    timed_s: sum of the timed intervals inside it; the rest is harness overhead
        (bookkeeping, bootstrap checks, the clock itself).
    calls: kernel calls made inside the loop.
    blocks: the samples of each independent block (`time_blocks`), in order; () for one loop.
    """

    summaries: Mapping[str, TimingSummary]
    samples_s: Mapping[str, tuple[float, ...]] = field(repr=False)
    loop_wall_s: float
    timed_s: float
    calls: int
    blocks: tuple[Mapping[str, tuple[float, ...]], ...] = field(default=(), repr=False)

    @property
    def overhead_per_call_s(self) -> float:
        return (self.loop_wall_s - self.timed_s) / self.calls if self.calls else float("nan")


# ----------------------------------------------------------------------------- JAX side

def xla_cost(compiled: Any) -> dict[str, float]:
    """XLA's cost_analysis of a compiled executable: flops, transcendentals, bytes_accessed.

    NaN where the backend does not report a figure (the columns are advisory).
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 -- some backends do not implement it; advisory only
        analysis = None
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else None
    analysis = analysis or {}
    nan = float("nan")
    return {
        "flops": float(analysis.get("flops", nan)),
        "transcendentals": float(analysis.get("transcendentals", 0.0 if analysis else nan)),
        "bytes_accessed": float(analysis.get("bytes accessed", nan)),
    }


def place(args: Sequence[Any]) -> tuple:
    """Put `args` on the device and wait for them: inputs passed as arguments, never closed
    over (XLA could fold a constant), and no transfer inside a timed call."""
    import jax

    return tuple(jax.block_until_ready(jax.device_put(a)) for a in args)


def compile_ahead(fn: Callable[..., Any], placed: Sequence[Any]) -> tuple[Any, float]:
    """(`jax.jit(fn).lower(*placed).compile()`, seconds it took): compile apart from running."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*placed).compile()
    return compiled, time.perf_counter() - t0


def prepare(name: str, fn: Callable[..., Any], args: Sequence[Any]) -> Prepared:
    """device_put `args`, then compile `fn` for them ahead of time, timing the compile."""
    placed = place(args)
    compiled, compile_s = compile_ahead(fn, placed)
    cost = xla_cost(compiled)
    flops, bytes_ = cost["flops"], cost["bytes_accessed"]
    return Prepared(name, compiled, placed, compile_s, flops, bytes_)


def timed_repeat(
    call: Callable[..., Any], args: tuple, k: int, clock: Callable[[], float] = time.perf_counter,
    block: Callable[[Any], Any] | None = None,
) -> float:
    """Seconds for `k` back-to-back calls, blocked on every output.

    Blocking on all k outputs (not only the last) does not rely on the device running the
    calls in issue order; with k = 1 it is the same path, so the two cannot differ in kind.
    block: default `jax.block_until_ready`.
    """
    if block is None:
        import jax

        block = jax.block_until_ready
    t0 = clock()
    outs = [call(*args) for _ in range(k)]
    block(outs)
    return clock() - t0


def calls_per_sample(one_call_s: float, target_s: float, cap: int) -> int:
    """k back-to-back calls so that a sample lasts at least `target_s`: ceil(target / one
    call), 1 <= k <= cap (1 when one call already lasts that long, or target_s <= 0)."""
    if target_s <= 0 or one_call_s >= target_s:
        return 1
    return int(max(1, min(cap, math.ceil(target_s / max(one_call_s, 1e-9)))))


def calls_per_repeat(fastest_s: float, policy: TimingPolicy) -> int:
    """k such that k calls of the fastest method take at least `policy.min_repeat_s`."""
    return calls_per_sample(fastest_s, policy.min_repeat_s, policy.max_calls_per_repeat)


def time_interleaved(
    kernels: Mapping[str, Prepared],
    policy: TimingPolicy | None = None,
    *,
    clock: Callable[[], float] = time.perf_counter,
    block: Callable[[Any], Any] | None = None,
    k: int | None = None,
) -> TimingReport:
    """Time every kernel of one config, interleaved round-robin, with adaptive repeats.

    Each kernel is warmed up (one call), then one more blocked call (the fastest of three if
    it is under `min_repeat_s`) calibrates it. One k, the number of back-to-back calls per
    repeat, is chosen for all kernels from the fastest one (`calls_per_repeat`). The loop
    then takes one repeat of each still-running kernel per round, the starting kernel
    rotating by one each round, until each has `min_repeats` and either its median's CI
    meets the target or the budget is spent. The garbage collector is off inside the loop.
    KeyboardInterrupt propagates. k: given (kernels already warm, a later block of
    `time_blocks`), no warm-up and no calibration.
    """
    if not kernels:
        raise ValueError("nothing to time")
    policy = policy or TimingPolicy()
    if block is None:
        import jax

        block = jax.block_until_ready
    names = list(kernels)
    if k is None:
        single_s: dict[str, float] = {}
        for name in names:
            prep = kernels[name]
            block(prep.call(*prep.args))  # warm-up: first-call allocations, lazy init
            t = timed_repeat(prep.call, prep.args, 1, clock, block)
            if t < policy.min_repeat_s:  # a fast kernel: one preempted call must not set k
                t = min(t, *(timed_repeat(prep.call, prep.args, 1, clock, block)
                             for _ in range(2)))
            single_s[name] = t
        k = calls_per_repeat(min(single_s.values()), policy)

    samples: dict[str, list[float]] = {n: [] for n in names}
    next_check = {n: policy.min_repeats for n in names}
    running = set(names)
    timed_s = 0.0
    calls = 0
    gc.collect(1)  # the young generations hold the garbage of compile and warm-up; a full
    # collection of JAX's heap costs ~80 ms per config for nothing
    was_enabled = gc.isenabled()
    gc.disable()
    loop_t0 = clock()
    round_no = 0
    try:
        while running:
            start = round_no % len(names)
            round_no += 1
            for name in names[start:] + names[:start]:
                if name not in running:
                    continue
                prep = kernels[name]
                dt = timed_repeat(prep.call, prep.args, k, clock, block)
                timed_s += dt
                calls += k
                samples[name].append(dt / k)
            over_budget = clock() - loop_t0 >= policy.budget_s
            for name in list(running):
                n = len(samples[name])
                if n < policy.min_repeats:
                    continue
                if over_budget or n >= policy.max_repeats:
                    running.discard(name)
                elif n >= next_check[name]:
                    # geometric schedule: the bootstrap costs ms, a fast kernel's repeat µs
                    next_check[name] = max(n + 1, math.ceil(n * 1.2))
                    if converged(samples[name], policy):
                        running.discard(name)
    finally:
        loop_wall_s = clock() - loop_t0
        if was_enabled:
            gc.enable()
    summaries = {n: summarize(samples[n], k, policy) for n in names}
    return TimingReport(
        summaries=summaries,
        samples_s={n: tuple(samples[n]) for n in names},
        loop_wall_s=loop_wall_s,
        timed_s=timed_s,
        calls=calls,
    )


#: Independent timing blocks per config (`time_blocks`): the paired ratio's interval is a t
#: interval over them, 2 degrees of freedom with 3.
BLOCKS = 3
#: Fewest repeats one block takes (with `BLOCKS` blocks a config keeps >= 9 in all).
MIN_BLOCK_REPEATS = 3


def time_blocks(
    kernels: Mapping[str, Prepared],
    policy: TimingPolicy | None = None,
    blocks: int = BLOCKS,
    *,
    clock: Callable[[], float] = time.perf_counter,
    block: Callable[[Any], Any] | None = None,
) -> TimingReport:
    """`time_interleaved` run `blocks` times back to back, the budget and the repeat limits
    split between them (each block at least `MIN_BLOCK_REPEATS`): the first block warms up
    and calibrates k, the later ones reuse it. The summaries pool every block's samples, with
    the median's interval from the blocks' medians (`timing_stats.block_median_ci`);
    `TimingReport.blocks` keeps each block's, for ratios with an interval over blocks
    (`timing_stats.block_ratio`)."""
    policy = policy or TimingPolicy()
    if blocks < 2:
        return time_interleaved(kernels, policy, clock=clock, block=block)
    per = replace(
        policy, budget_s=policy.budget_s / blocks,
        min_repeats=max(MIN_BLOCK_REPEATS, math.ceil(policy.min_repeats / blocks)),
        max_repeats=max(MIN_BLOCK_REPEATS, math.ceil(policy.max_repeats / blocks)))
    first = time_interleaved(kernels, per, clock=clock, block=block)
    k = next(iter(first.summaries.values())).calls_per_repeat
    reports = [first] + [time_interleaved(kernels, per, clock=clock, block=block, k=k)
                         for _ in range(blocks - 1)]
    names = list(kernels)
    pooled = {n: tuple(x for r in reports for x in r.samples_s[n]) for n in names}
    summaries = {}
    for n in names:
        summary = summarize(pooled[n], k, policy)
        low, high = block_median_ci(summary.time_median_s,
                                    [statistics.median(r.samples_s[n]) for r in reports],
                                    policy.confidence)
        summaries[n] = replace(summary, time_ci_low_s=low, time_ci_high_s=high)
    return TimingReport(
        summaries=summaries,
        samples_s=pooled,
        loop_wall_s=sum(r.loop_wall_s for r in reports),
        timed_s=sum(r.timed_s for r in reports),
        calls=sum(r.calls for r in reports),
        blocks=tuple(r.samples_s for r in reports),
    )
