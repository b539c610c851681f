"""Roofline time of a step from its per-op costs and a hardware profile.

For op i: T_math,i = flops_i / peak, T_mem,i = bytes_i / bandwidth (Williams, Waterman &
Patterson, "Roofline", CACM 2009; the JAX scaling book, "Rooflines", calls them T_math and
T_comms). With perfect overlap an op takes max(T_math,i, T_mem,i) — the lower bound; with
none, T_math,i + T_mem,i — the upper bound. Each kernel also pays a fixed launch overhead.

    time_s        = Σ_i max(T_math,i, T_mem,i) + kernels · overhead      (the estimate)
    lower_bound_s = Σ_i max(T_math,i, T_mem,i)
    upper_bound_s = Σ_i (T_math,i + T_mem,i) + kernels · overhead
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from costmodel.graph import Cost
from costmodel.hardware import HardwareProfile


@dataclass(frozen=True)
class RooflineTime:
    """Seconds, as numpy arrays broadcast over the shapes of the cost."""

    t_math_s: np.ndarray
    t_mem_s: np.ndarray
    t_overhead_s: np.ndarray
    lower_bound_s: np.ndarray
    upper_bound_s: np.ndarray
    time_s: np.ndarray
    op_time_s: tuple[np.ndarray, ...]  # per op of cost.ops: max(T_math,i, T_mem,i) + overhead


def roofline(cost: Cost, profile: HardwareProfile, dtype: str | None = None) -> RooflineTime:
    """Roofline time of `cost` on `profile` at `dtype` (default: the cost's own dtype)."""
    peak = profile.peak(dtype or cost.dtype)
    bw = profile.mem_bandwidth_bytes_per_s
    zero = np.zeros(())
    t_math, t_mem, t_lower, t_over = zero, zero, zero, zero
    op_times = []
    for op in cost.ops:
        tm = np.asarray(op.flops, dtype=float) / peak
        tb = np.asarray(op.bytes_moved, dtype=float) / bw
        to = np.asarray(op.kernels, dtype=float) * profile.kernel_overhead_s
        t_math, t_mem, t_over = t_math + tm, t_mem + tb, t_over + to
        t_lower = t_lower + np.maximum(tm, tb)
        op_times.append(np.maximum(tm, tb) + to)
    return RooflineTime(
        t_math_s=t_math,
        t_mem_s=t_mem,
        t_overhead_s=t_over,
        lower_bound_s=t_lower,
        upper_bound_s=t_math + t_mem + t_over,
        time_s=t_lower + t_over,
        op_time_s=tuple(op_times),
    )


def arithmetic_intensity(cost: Cost) -> np.ndarray:
    """FLOPs per byte moved over the whole step."""
    return cost.flops / np.maximum(cost.bytes_moved, 1)
