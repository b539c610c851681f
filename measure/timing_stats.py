"""The statistics of timing samples: the policy that decides when to stop, the summary of a
method's samples (median, bootstrap CI, IQR, the stability flag), and paired ratios.

Pure numpy/scipy, no JAX: `measure.timing` runs the loop and calls these. The stability rule
and the stopping rule are described in `measure.timing`'s docstring.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
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


def _round_ratios(samples_s: Sequence[float], reference_s: Sequence[float]) -> np.ndarray:
    a = np.asarray(samples_s, dtype=float)
    b = np.asarray(reference_s, dtype=float)
    n = min(a.size, b.size)
    return a[:n] / b[:n]


def median_round_ratio(samples_s: Sequence[float], reference_s: Sequence[float]) -> float:
    """The median of the per-round ratios samples_s[i] / reference_s[i] (NaN if none pair)."""
    r = _round_ratios(samples_s, reference_s)
    return float(np.median(r)) if r.size else float("nan")


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
    r = _round_ratios(samples_s, reference_s)
    if r.size == 0:
        nan = float("nan")
        return nan, nan, nan
    low, high = median_ci(r, confidence=policy.confidence, n_resamples=policy.n_resamples,
                          seed=policy.seed)
    return float(np.median(r)), low, high


def block_ratio(block_ratios: Sequence[float], confidence: float = 0.95
                ) -> tuple[float, float, float]:
    """(ratio, CI low, CI high) of a ratio measured in B independent blocks, from each block's
    ratio r_b (its median round ratio, `paired_ratio`): the t interval over the blocks' logs,
    exp(m ± t_{(1+confidence)/2, B−1} · s / √B), m and s the mean and standard deviation of
    log r_b (Student's t for the mean of B normal replicates; a ratio's log is the natural
    scale, and the interval stays positive).

    Why blocks: on a shared CPU the per-round ratios of one block are correlated through the
    machine's slow drift, so a bootstrap over rounds treats them as independent and is too
    narrow. Measured on the 2-core CI VM (attention, batch 2, rank 1, e = h = 16-45, blocks
    of 0.3 s): the standard deviation of log r_b between consecutive blocks was 0.03-0.07,
    and the rounds' 95% bootstrap interval of one block covered the median of eight blocks in
    50-88% of blocks, not 95% (`benchmarks/block_coverage.py` prints both). NaN bounds with
    fewer than two blocks.
    """
    m, half = _log_t_interval(block_ratios, confidence)
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def _log_t_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    """(mean, half-width) of the t interval of the mean of log(values) over the positive
    finite values: t_{(1+confidence)/2, B−1} · s / √B; NaN mean without values, NaN
    half-width with fewer than two."""
    logs = np.log(np.asarray([v for v in values if np.isfinite(v) and v > 0], dtype=float))
    if logs.size == 0:
        return float("nan"), float("nan")
    if logs.size < 2:
        return float(logs.mean()), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, logs.size - 1)
                 * logs.std(ddof=1) / math.sqrt(logs.size))
    return float(logs.mean()), half


def block_median_ci(median_s: float, block_medians_s: Sequence[float],
                    confidence: float = 0.95) -> tuple[float, float]:
    """The time median's interval from B independent blocks, as `block_ratio`'s for a ratio:
    median · exp(± t_{(1+confidence)/2, B−1} · s / √B), s the standard deviation of the
    blocks' log medians, centred on the pooled median the record reports. A bootstrap over
    the pooled rounds treats rounds that share a block's drift as independent (too narrow,
    `block_ratio`). NaN bounds with fewer than two blocks."""
    half = _log_t_interval(block_medians_s, confidence)[1]
    if not median_s > 0:
        half = float("nan")
    return median_s * math.exp(-half), median_s * math.exp(half)


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
