"""Does measured time scale with the work at all? If not, no fit of the cost model means much.

The blog timed a ``jax.jit`` inside every call, so every timing is mostly compilation:
0.27-0.49 s from e = h = 256 to 1024 while the FLOPs grow 16-fold and more. Fitted to such
data, the cost model's terms come out meaningless (a negative asymptotic speedup, prediction
intervals below zero). Two figures, computed before anything is fitted, catch it:

* the elasticity ε of time in work, from OLS of log t on log FLOPs (all rows, methods
  pooled): t ∝ FLOPs^ε. A compute-bound kernel has ε ≈ 1, a memory- or overhead-bound small
  one less; ε below `MIN_ELASTICITY` over a FLOP range of at least `MIN_FLOP_SPAN` means the
  times barely see the work;
* the fixed share: a constant c per call fitted with a non-negative rate k per FLOP by
  relative least squares (t ≈ c + k·FLOPs, weights 1/t²), and the share n·c / Σt of all
  measured time that constant takes. Above `MAX_FIXED_SHARE` a fixed cost explains most of
  what was measured.

Either condition marks the data as not scaling with the work; the report then says so in its
header, names the likely cause (per-call compilation or dispatch, as the blog's timing as
written does) and withholds the crossover and the extrapolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize

MIN_ELASTICITY = 0.25
MIN_FLOP_SPAN = 8.0
MAX_FIXED_SHARE = 0.5


@dataclass(frozen=True)
class Scaling:
    """How measured time follows the work. `scales` False: crossover and extrapolation are
    withheld; `cause` names the likely reason (a stable key) when it is False."""

    elasticity: float
    elasticity_ci_low: float
    elasticity_ci_high: float
    flop_span: float  # max / min FLOPs over the rows
    time_span: float  # max / min time
    fixed_time_s: float  # the constant c per call
    fixed_share: float  # n·c / Σ t
    scales: bool
    cause: str  # "" | "per_call_compilation_or_dispatch"


def scaling(rows: pd.DataFrame) -> Scaling:
    """`Scaling` of the fitted rows (`analysis.prepare.terms_for`: flops, time_ms)."""
    f = rows["flops"].to_numpy(dtype=float)
    t = rows["time_ms"].to_numpy(dtype=float) / 1e3
    ok = np.isfinite(f) & np.isfinite(t) & (f > 0) & (t > 0)
    f, t = f[ok], t[ok]
    nan = math.nan
    if f.size < 3 or f.max() <= f.min():
        return Scaling(nan, nan, nan, nan, nan, nan, nan, True, "")
    x, y = np.log(f), np.log(t)
    X = np.column_stack([np.ones_like(x), x])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    dof = max(len(y) - 2, 1)
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.inv(X.T @ X)
    from scipy import stats

    tq = float(stats.t.ppf(0.975, dof))
    eps, se = float(beta[1]), float(math.sqrt(max(cov[1, 1], 0.0)))
    A = np.column_stack([np.ones_like(f), f / f.max()]) / t[:, None]
    fit = optimize.lsq_linear(A, np.ones_like(t), bounds=(0, np.inf))
    c = float(fit.x[0])
    share = float(c * len(t) / t.sum())
    span_f, span_t = float(f.max() / f.min()), float(t.max() / t.min())
    flat = eps < MIN_ELASTICITY and span_f >= MIN_FLOP_SPAN
    scales = not (flat or share > MAX_FIXED_SHARE)
    return Scaling(eps, eps - tq * se, eps + tq * se, span_f, span_t, c, share, scales,
                   "" if scales else "per_call_compilation_or_dispatch")


def headline(s: Scaling) -> str:
    """The report's header line when the times do not scale with the work."""
    return (f"TIMES DO NOT SCALE WITH THE WORK: time ∝ FLOPs^{s.elasticity:.2f} "
            f"[{s.elasticity_ci_low:.2f}, {s.elasticity_ci_high:.2f}] over a {s.flop_span:,.0f}x "
            f"range of FLOPs (times span {s.time_span:.2f}x); a fixed {s.fixed_time_s * 1e3:.3g} ms "
            f"per call is {s.fixed_share:.0%} of all measured time. Likely cause: per-call "
            "compilation or dispatch (as the blog's timing as written: a new jit in every "
            "call). Crossover and extrapolation withheld.")
