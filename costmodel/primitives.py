"""FLOPs, bytes moved and kernel counts of the primitive operations.

Every formula lives here once; layers compose them. Sizes may be numpy arrays: all
functions broadcast, so one call evaluates many configurations.

Conventions (those of XLA's ``HloCostAnalysis``, which the tests check against):
- a matmul of an m×k by a k×n matrix costs 2·m·k·n FLOPs (one multiply and one add per
  term); a contraction of length 1 is a plain product, m·n FLOPs, as XLA rewrites it into an
  elementwise multiply;
- an elementwise arithmetic op costs one FLOP per output element; a transcendental one
  (exp, tanh, rsqrt) costs none, and is counted in ``transcendentals`` instead;
- a reduction of N elements to M costs N − M FLOPs;
- bytes moved = every input read once + the output written once, at the dtype's size. This is
  the unfused count: a fusing compiler moves less, and the fitted overheads absorb that.
"""

from __future__ import annotations

from functools import reduce
from operator import mul

import numpy as np

Size = int | np.ndarray


def positive(name: str, value: Size) -> np.ndarray:
    """`value` as float64, > 0 and finite; ValueError naming `name` (and the first bad value)
    otherwise. The one validator of sizes (layers, steps).

    Sizes are whole numbers in use; real values are accepted as the continuous relaxation
    that root finding along a width needs (every cost is a polynomial in the sizes). float64
    is exact for whole numbers below 2**53 and cannot overflow at GPT widths as int64 could.
    """
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    bad = ~np.isfinite(arr) | (arr <= 0)
    if np.any(bad):
        raise ValueError(f"{name} must be > 0, got {first_where(arr, bad):g}")
    return arr


def whole(name: str, value, low: int = 1) -> np.ndarray:
    """`value` (a count: devices, micro-batches, a ZeRO stage) as int64, each element a whole
    number >= `low`; ValueError naming `name` otherwise (bools, floats and strings too). The
    one validator of counts; `positive` is that of sizes."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" or np.any(arr < low):
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return arr.astype(np.int64)


def first_where(arr: np.ndarray, mask: np.ndarray) -> float:
    """The first element of `arr` (broadcast to `mask`'s shape) where `mask` holds."""
    return float(np.broadcast_to(arr, np.shape(mask))[mask].flat[0])


def numel(shape: tuple[Size, ...]) -> Size:
    """Number of elements of a tensor of `shape` (1 for a scalar)."""
    return reduce(mul, shape, 1)


def matmul_flops(m: Size, k: Size, n: Size, batch: Size = 1) -> Size:
    """FLOPs of `batch` products (m×k)·(k×n): 2·m·k·n each (multiply + add per term).

    A contraction of length k = 1 is an outer product: m·n multiplies and no adds, which is
    how XLA compiles and counts it (its algebraic simplifier rewrites such a dot to a multiply).
    """
    k = np.asarray(k)
    per_term = np.where(k == 1, 1, 2 * k)
    return batch * m * n * per_term


def matmul_bytes(m: Size, k: Size, n: Size, itemsize: int, batch: Size = 1) -> Size:
    """Bytes of (m×k)·(k×n): read both operands, write the product."""
    return batch * (m * k + k * n + m * n) * itemsize


def elementwise_flops(n_out: Size, flops_per_element: Size = 1) -> Size:
    """FLOPs of an elementwise arithmetic op: one per output element (per arithmetic step)."""
    return n_out * flops_per_element


def elementwise_bytes(n_out: Size, n_in: tuple[Size, ...], itemsize: int) -> Size:
    """Bytes of an elementwise op: each input read once, the output written once."""
    return (sum(n_in) + n_out) * itemsize


def reduction_flops(n_in: Size, n_out: Size) -> Size:
    """FLOPs of reducing n_in elements to n_out: n_in − n_out combining steps."""
    return n_in - n_out


def reduction_bytes(n_in: Size, n_out: Size, itemsize: int) -> Size:
    """Bytes of a reduction: read the input, write the result."""
    return (n_in + n_out) * itemsize
