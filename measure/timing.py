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
import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class TimingPolicy:
    """How hard to try for a stable median.

    min_repeats: timed repeats always taken (google/benchmark warns below 9; 5 is our floor).
    max_repeats: hard cap per method, whatever the CI.
    target_rel_ci: stop once the CI half-width of the median is within this fraction of it.
    budget_s: timing-loop seconds per config (all methods together) after which repeats stop
        once every method has min_repeats. Compilation and warm-up are not counted.
    min_repeat_s: k back-to-back calls per repeat, k chosen so that the config's fastest
        method's repeat lasts at least this long (one k for every method of a config).
    max_calls_per_repeat: cap on k.
    confidence: level of the bootstrap interval.
    n_resamples: bootstrap resamples (small: the CI only decides when to stop and flags).
    unstable_rel_ci / unstable_spread: the stability rule (see module docstring).
    seed: seeds the bootstrap, so a summary is a function of its samples.
    """

    min_repeats: int = 5
    max_repeats: int = 500
    target_rel_ci: float = 0.02
    budget_s: float = 2.0
    min_repeat_s: float = 1e-3
    max_calls_per_repeat: int = 1000
    confidence: float = 0.95
    n_resamples: int = 300
    unstable_rel_ci: float = 0.05
    unstable_spread: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError("need 1 <= min_repeats <= max_repeats")
        if not (self.target_rel_ci > 0 and self.unstable_rel_ci > 0 and self.unstable_spread > 0):
            raise ValueError("relative CI targets and the spread limit must be > 0")
        if not (self.budget_s >= 0 and math.isfinite(self.budget_s)):
            raise ValueError("budget_s must be a finite number >= 0")
        if self.min_repeat_s < 0 or self.max_calls_per_repeat < 1:
            raise ValueError("min_repeat_s must be >= 0 and max_calls_per_repeat >= 1")
        if not 0 < self.confidence < 1 or self.n_resamples < 10:
            raise ValueError("confidence must be in (0, 1) and n_resamples >= 10")


@dataclass(frozen=True)
class TimingSummary:
    """Seconds per call of one (config, method); names match `measure.schema` columns."""

    n_repeats: int
    calls_per_repeat: int
    time_median_s: float
    time_iqr_s: float
    time_min_s: float
    time_ci_low_s: float
    time_ci_high_s: float
    time_cv: float
    unstable: bool

    def as_record(self) -> dict[str, Any]:
        return {
            "n_repeats": self.n_repeats,
            "calls_per_repeat": self.calls_per_repeat,
            "time_median_s": self.time_median_s,
            "time_iqr_s": self.time_iqr_s,
            "time_min_s": self.time_min_s,
            "time_ci_low_s": self.time_ci_low_s,
            "time_ci_high_s": self.time_ci_high_s,
            "time_cv": self.time_cv,
            "unstable": self.unstable,
        }


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
    """

    summaries: Mapping[str, TimingSummary]
    samples_s: Mapping[str, tuple[float, ...]] = field(repr=False)
    loop_wall_s: float
    timed_s: float
    calls: int

    @property
    def overhead_per_call_s(self) -> float:
        return (self.loop_wall_s - self.timed_s) / self.calls if self.calls else float("nan")


# ----------------------------------------------------------------------------- statistics

_BOOTSTRAP_RNG_KW = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def _median_last_axis(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(x, axis=axis)


def median_ci(
    samples: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 300, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median (scipy.stats.bootstrap).

    The percentile method, not BCa: BCa's jackknife is costly and degenerates on the tied
    samples that a coarse clock produces. One sample gives a zero-width interval.
    """
    x = np.asarray(samples, dtype=float)
    if x.size < 2 or np.all(x == x[0]):
        m = float(np.median(x)) if x.size else float("nan")
        return m, m
    res = stats.bootstrap(
        (x,),
        _median_last_axis,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        **{_BOOTSTRAP_RNG_KW: np.random.default_rng(seed)},
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def ci_half_width_rel(median: float, low: float, high: float) -> float:
    """The larger side of the interval, as a fraction of the median."""
    if not median > 0:
        return float("inf")
    return max(median - low, high - median) / median


def summarize(
    samples_s: Sequence[float], calls_per_repeat: int = 1, policy: TimingPolicy | None = None
) -> TimingSummary:
    """n, median, IQR, min, bootstrap CI of the median, CV and the stability flag.

    `samples_s` are seconds per call (already divided by `calls_per_repeat`).
    """
    policy = policy or TimingPolicy()
    x = np.asarray(samples_s, dtype=float)
    if x.size == 0:
        raise ValueError("no samples to summarize")
    median = float(np.median(x))
    q1, q3 = np.percentile(x, [25, 75])
    low, high = median_ci(
        x, confidence=policy.confidence, n_resamples=policy.n_resamples, seed=policy.seed
    )
    mean = float(np.mean(x))
    cv = float(np.std(x, ddof=1) / mean) if x.size > 1 and mean > 0 else 0.0
    iqr = float(q3 - q1)
    unstable = (
        ci_half_width_rel(median, low, high) > policy.unstable_rel_ci
        or iqr > policy.unstable_spread * median
    )
    return TimingSummary(
        n_repeats=int(x.size),
        calls_per_repeat=int(calls_per_repeat),
        time_median_s=median,
        time_iqr_s=iqr,
        time_min_s=float(np.min(x)),
        time_ci_low_s=low,
        time_ci_high_s=high,
        time_cv=cv,
        unstable=bool(unstable),
    )


def paired_ratio(
    samples_s: Sequence[float], reference_s: Sequence[float], policy: TimingPolicy | None = None
) -> tuple[float, float, float]:
    """(median, CI low, CI high) of the per-round ratio samples_s[i] / reference_s[i].

    Two methods timed by `time_interleaved` take one repeat each per round, so round i of one
    and round i of the other ran within the same few milliseconds: their ratio cancels the
    drift a ratio of two medians keeps. Rounds beyond the shorter series are unpaired and
    left out. The interval is `median_ci`'s percentile bootstrap. NaN when nothing pairs.
    """
    policy = policy or TimingPolicy()
    a = np.asarray(samples_s, dtype=float)
    b = np.asarray(reference_s, dtype=float)
    n = min(a.size, b.size)
    if n == 0:
        nan = float("nan")
        return nan, nan, nan
    r = a[:n] / b[:n]
    low, high = median_ci(r, confidence=policy.confidence, n_resamples=policy.n_resamples,
                          seed=policy.seed)
    return float(np.median(r)), low, high


def converged(samples_s: Sequence[float], policy: TimingPolicy) -> bool:
    """True once the median's CI is within ±target_rel_ci of it."""
    x = np.asarray(samples_s, dtype=float)
    if x.size < policy.min_repeats:
        return False
    median = float(np.median(x))
    low, high = median_ci(
        x, confidence=policy.confidence, n_resamples=policy.n_resamples, seed=policy.seed
    )
    return ci_half_width_rel(median, low, high) <= policy.target_rel_ci


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
) -> TimingReport:
    """Time every kernel of one config, interleaved round-robin, with adaptive repeats.

    Each kernel is warmed up (one call), then one more blocked call (the fastest of three if
    it is under `min_repeat_s`) calibrates it. One k, the number of back-to-back calls per
    repeat, is chosen for all kernels from the fastest one (`calls_per_repeat`). The loop
    then takes one repeat of each still-running kernel per round, the starting kernel
    rotating by one each round, until each has `min_repeats` and either its median's CI
    meets the target or the budget is spent. The garbage collector is off inside the loop.
    KeyboardInterrupt propagates.
    """
    if not kernels:
        raise ValueError("nothing to time")
    policy = policy or TimingPolicy()
    if block is None:
        import jax

        block = jax.block_until_ready
    names = list(kernels)
    single_s: dict[str, float] = {}
    for name in names:
        prep = kernels[name]
        block(prep.call(*prep.args))  # warm-up: first-call allocations, lazy init
        t = timed_repeat(prep.call, prep.args, 1, clock, block)
        if t < policy.min_repeat_s:  # a fast kernel: one preempted call must not set k
            t = min(t, *(timed_repeat(prep.call, prep.args, 1, clock, block) for _ in range(2)))
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
