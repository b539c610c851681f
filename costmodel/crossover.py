"""Where LoRA becomes faster than full training along a family of shapes.

Along e = h = d (or any one-parameter family) with batch and rank fixed, the crossover d* is
the smallest d at which t_lora(d) < t_full(d). It is found by scanning log d on a grid for the
first sign change of log(t_lora / t_full) and refining it with Brent's method
(`scipy.optimize.brentq`). The asymptotic speedup is lim_{d→∞} t_full / t_lora, evaluated by
doubling d until the ratio settles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from costmodel.hardware import HardwareProfile
from costmodel.layers import layer_cost
from costmodel.roofline import roofline

TimeFn = Callable[[str, np.ndarray], np.ndarray]  # (method, d array) -> seconds


@dataclass(frozen=True)
class Crossover:
    """d_star: smallest width where LoRA is faster (None when it never is in [d_min, d_max]).

    lora_faster_everywhere: LoRA is already faster at d_min (d_star = d_min is then a bound,
    not a crossing). limit_speedup: t_full / t_lora as d → ∞ (None when it does not settle).
    """

    d_star: float | None
    d_min: float
    d_max: float
    lora_faster_everywhere: bool
    limit_speedup: float | None
    speedup_at_d_max: float

    @property
    def exists(self) -> bool:
        return self.d_star is not None

    def describe(self) -> str:
        lim = "does not settle" if self.limit_speedup is None else f"{self.limit_speedup:.3g}×"
        if self.lora_faster_everywhere:
            head = f"LoRA is faster over the whole range (already at d = {self.d_min:g})"
        elif self.d_star is None:
            head = (f"no crossover: LoRA is not faster anywhere in d ∈ [{self.d_min:g}, {self.d_max:g}]"
                    f" (full/LoRA = {self.speedup_at_d_max:.3g} at d = {self.d_max:g})")
        else:
            head = f"LoRA becomes faster at d* = {self.d_star:.4g}"
        return f"{head}; full/LoRA time → {lim} as d → ∞"


def solve_crossover(time_fn: TimeFn, d_min: float = 16, d_max: float = 2**20,
                    n_grid: int = 400, limit: bool = True) -> Crossover:
    """Crossover of `time_fn("lora", d)` below `time_fn("full", d)` on [d_min, d_max]."""
    if not (0 < d_min < d_max):
        raise ValueError(f"need 0 < d_min < d_max, got {d_min}, {d_max}")
    d = np.geomspace(d_min, d_max, n_grid)
    gap = np.log(time_fn("lora", d)) - np.log(time_fn("full", d))

    def f(log_d: float) -> float:
        x = np.array([np.exp(log_d)])
        return float(np.log(time_fn("lora", x)[0]) - np.log(time_fn("full", x)[0]))

    speedup_at_max = float(np.exp(-gap[-1]))
    lim = asymptotic_speedup(time_fn, d_max) if limit else None
    if gap[0] < 0:
        return Crossover(float(d_min), d_min, d_max, True, lim, speedup_at_max)
    below = np.flatnonzero(gap < 0)
    if below.size == 0:
        return Crossover(None, d_min, d_max, False, lim, speedup_at_max)
    i = below[0]
    root = brentq(f, np.log(d[i - 1]), np.log(d[i]), xtol=1e-10)
    return Crossover(float(np.exp(root)), d_min, d_max, False, lim, speedup_at_max)


def asymptotic_speedup(time_fn: TimeFn, d_start: float = 2**20, rtol: float = 1e-4,
                       max_doublings: int = 40) -> float | None:
    """lim t_full/t_lora as d → ∞, by doubling d until successive ratios agree within rtol."""
    d = float(d_start)
    prev = None
    for _ in range(max_doublings):
        x = np.array([d])
        ratio = float(time_fn("full", x)[0] / time_fn("lora", x)[0])
        if prev is not None and abs(ratio - prev) <= rtol * abs(prev):
            return ratio
        prev, d = ratio, d * 2
    return None


def roofline_time_fn(layer: str, profile: HardwareProfile, *, batch: float, rank: float,
                     dtype: str = "float32", **shape) -> TimeFn:
    """Roofline time along e = h = d (for ``block``: embed = d, hidden = 4d)."""

    def time_fn(method: str, d: np.ndarray) -> np.ndarray:
        d = np.asarray(d, dtype=float)
        hidden = 4 * d if layer == "block" else d
        cost = layer_cost(layer, method, batch=batch, embed=d, hidden=hidden,
                          rank=rank if method != "full" else 0, dtype=dtype, **shape)
        return np.broadcast_to(roofline(cost, profile).time_s, d.shape)

    return time_fn


def crossover(layer: str, profile: HardwareProfile, *, batch: float, rank: float,
              d_min: float | None = None, d_max: float = 2**20, dtype: str = "float32",
              **shape) -> Crossover:
    """Roofline crossover of `layer` along e = h = d (d ≥ rank), with batch and rank fixed."""
    fn = roofline_time_fn(layer, profile, batch=batch, rank=rank, dtype=dtype, **shape)
    lo = float(d_min) if d_min is not None else max(16.0, float(rank))
    if layer == "block":
        heads = float(shape.get("heads", 1))
        lo = max(lo, heads)
    return solve_crossover(fn, lo, d_max)
