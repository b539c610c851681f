"""Measure the crossover instead of only solving for it: bisection in log width after the grid.

For every curve -- one (layer settings, batch, rank) and one LoRA method, its paired ratio
t_lora / t_full read along d = sqrt(e·h) -- the grid gives a few points. This module says
which width to measure next, and what the measured points say about the crossover:

* where the measured ratio changes sign between two neighbouring widths a < b, measure
  sqrt(a·b) (bisection in log d);
* where it does not change sign over the measured range, widen the range: halve the
  smallest width while LoRA is faster everywhere (its fixed overheads lose at small d),
  down to `MIN_WIDTH`; double the largest once while LoRA is slower everywhere;
* stop a bracket once b / a <= `BRACKET_RATIO` (the crossover then known within ±10%), or
  once the ratio's 95% interval contains 1 at every measured width of the bracket: the
  curve is "≈ 1 within noise over [a, b]".

The measured d* of a crossing is the log-linear interpolation of log(ratio) across its
bracket; its interval runs from the nearest width at or below the bracket whose ratio
interval lies wholly on that side of 1, to the nearest such width at or above (a bracket end
whose interval contains 1 does not pin the crossing down). The sweep (`measure.sweep`)
measures the proposed widths, all methods interleaved as in the grid, marks those rows
``refinement`` and asks again until nothing is proposed; since the proposal is a function of
the recorded rows, a resumed sweep resumes its refinement. `analysis` reads the same
`assess` for the measured d* it prints beside the fitted one.

Ratios come from the ``paired_ratio`` columns (round-by-round pairs, `timing.paired_ratio`);
rows without them (schema version 1, foreign tables) fall back to the ratio of medians with
the conservative interval [lo_m / hi_full, hi_m / lo_full] from the two medians' intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: A bracket b / a at or below this is resolved: sqrt(a·b) is then within ±10% of both ends
#: (1.1 / 0.9 ≈ 1.22).
BRACKET_RATIO = 1.2
#: The smallest width a refinement measures (the analysis searches d* from 16 too).
MIN_WIDTH = 16
#: How far above the grid's largest width a curve slower everywhere is followed (one doubling).
MAX_EXPAND_UP = 2.0
#: Safety cap on the widths one curve adds (a noisy curve cannot bisect forever).
MAX_STEPS_PER_CURVE = 10

FASTER_ABOVE = "faster_above"  # LoRA slower below the crossing, faster above
FASTER_BELOW = "faster_below"


@dataclass(frozen=True)
class Point:
    """The measured ratio t_lora / t_full at one width d = sqrt(e·h), with its 95% interval."""

    width: float
    ratio: float
    ci_low: float
    ci_high: float

    @property
    def faster(self) -> bool:
        return self.ratio < 1.0

    @property
    def certain(self) -> bool:
        """The interval lies wholly on one side of 1."""
        return self.ci_high < 1.0 or self.ci_low > 1.0


@dataclass(frozen=True)
class Crossing:
    """One measured sign change of ratio − 1.

    low, high: the bracketing measured widths; d_star: log-linear interpolation of log(ratio)
    between them; ci_low, ci_high: the interval (see module docstring); direction: LoRA
    faster above (`FASTER_ABOVE`) or below it; within_noise: the ratio's interval contains 1
    at every measured width of the bracket ("≈ 1 within noise over [low, high]");
    resolved: high / low <= BRACKET_RATIO.
    """

    low: float
    high: float
    d_star: float
    ci_low: float
    ci_high: float
    direction: str
    within_noise: bool
    resolved: bool


@dataclass(frozen=True)
class Assessment:
    """What the measured points of one curve say, and the width to measure next (or None)."""

    points: tuple[Point, ...]
    crossings: tuple[Crossing, ...]
    next_width: int | None

    @property
    def lo(self) -> float:
        return self.points[0].width if self.points else math.nan

    @property
    def hi(self) -> float:
        return self.points[-1].width if self.points else math.nan


def _interval(points: Sequence[Point], i: int) -> tuple[float, float]:
    """The crossing between points i-1 and i: nearest certain widths outward on each side."""
    lo_side, hi_side = points[i - 1].faster, points[i].faster
    lo = next((p.width for p in reversed(points[:i]) if p.certain and p.faster == lo_side),
              points[0].width)
    hi = next((p.width for p in points[i:] if p.certain and p.faster == hi_side),
              points[-1].width)
    return lo, hi


def _propose(width: float, measured: set[int], rank: int) -> int | None:
    w = int(round(width))
    if w < max(MIN_WIDTH, rank) or w in measured:
        return None
    return w


def assess(points: Sequence[Point], *, rank: int = 1, max_width: float | None = None,
           steps_taken: int = 0) -> Assessment:
    """Crossings of `points` (any order) and the next width to measure (see module docstring).

    rank: no width below it; max_width: the largest width an upward expansion may reach
    (default `MAX_EXPAND_UP` × the largest measured); steps_taken: refinement widths this
    curve already has (`MAX_STEPS_PER_CURVE` caps them).
    """
    pts = tuple(sorted((p for p in points if np.isfinite(p.ratio) and p.ratio > 0),
                       key=lambda p: p.width))
    if not pts:
        return Assessment((), (), None)
    measured = {int(round(p.width)) for p in pts}
    crossings = []
    proposals = []
    for i in range(1, len(pts)):
        a, b = pts[i - 1], pts[i]
        if a.faster == b.faster:
            continue
        la, lb = math.log(a.ratio), math.log(b.ratio)
        frac = la / (la - lb) if la != lb else 0.5
        d = math.exp(math.log(a.width) + frac * (math.log(b.width) - math.log(a.width)))
        lo, hi = _interval(pts, i)
        noise = not a.certain and not b.certain
        resolved = b.width / a.width <= BRACKET_RATIO
        crossings.append(Crossing(a.width, b.width, d, lo, hi,
                                  FASTER_BELOW if a.faster else FASTER_ABOVE, noise, resolved))
        if not (resolved or noise):
            proposals.append(_propose(math.sqrt(a.width * b.width), measured, rank))
    if not crossings:
        if all(p.faster for p in pts):
            proposals.append(_propose(pts[0].width / 2, measured, rank))
        else:
            top = pts[-1].width * 2
            limit = max_width if max_width is not None else MAX_EXPAND_UP * pts[-1].width
            if top <= limit * (1 + 1e-9):
                proposals.append(_propose(top, measured, rank))
    proposals = [w for w in proposals if w is not None]
    nxt = proposals[0] if proposals and steps_taken < MAX_STEPS_PER_CURVE else None
    return Assessment(pts, tuple(crossings), nxt)


# ----------------------------------------------------------------------------- from a table



def curve_points(rows: pd.DataFrame, method: str) -> tuple[Point, ...]:
    """The points of one curve from the schema rows of one (settings, batch, rank) group.

    Rows of several (e, h) with one d = sqrt(e·h) are pooled by the geometric mean of their
    ratios and the widest interval.
    """
    ok = (rows["error"].astype(str) == "") & (rows["time_median_s"] > 0)
    g = rows[ok]
    lora = g[g["method"] == method].set_index(["embed", "hidden"])
    full = g[g["method"] == "full"].set_index(["embed", "hidden"])
    common = lora.index.intersection(full.index)
    if common.empty:
        return ()
    lora, full = lora.loc[common], full.loc[common]
    ratio = lora["paired_ratio"].to_numpy(dtype=float) if "paired_ratio" in lora else np.full(
        len(common), np.nan)
    lo = lora["paired_ratio_ci_low"].to_numpy(dtype=float) if "paired_ratio" in lora else ratio
    hi = lora["paired_ratio_ci_high"].to_numpy(dtype=float) if "paired_ratio" in lora else ratio
    with np.errstate(divide="ignore", invalid="ignore"):  # a missing interval: NaN, then med
        med = lora["time_median_s"].to_numpy(float) / full["time_median_s"].to_numpy(float)
        fb_lo = lora["time_ci_low_s"].to_numpy(float) / full["time_ci_high_s"].to_numpy(float)
        fb_hi = lora["time_ci_high_s"].to_numpy(float) / full["time_ci_low_s"].to_numpy(float)
    unpaired = ~np.isfinite(ratio)
    ratio = np.where(unpaired, med, ratio)
    lo = np.where(unpaired, np.where(np.isfinite(fb_lo), fb_lo, med), lo)
    hi = np.where(unpaired, np.where(np.isfinite(fb_hi), fb_hi, med), hi)
    d = np.sqrt(np.array([e * h for e, h in common], dtype=float))
    frame = pd.DataFrame({"d": d, "log_r": np.log(ratio), "lo": lo, "hi": hi})
    frame = frame[np.isfinite(frame["log_r"])]
    pooled = frame.groupby("d").agg(log_r=("log_r", "mean"), lo=("lo", "min"), hi=("hi", "max"))
    return tuple(Point(float(w), float(np.exp(r.log_r)), float(r.lo), float(r.hi))
                 for w, r in pooled.iterrows())


def assess_rows(rows: pd.DataFrame, method: str, *, max_width: float | None = None) -> Assessment:
    """`assess` of one (settings, batch, rank) group's rows for `method`."""
    steps = int(rows.loc[rows["method"] == method, "refinement"].astype(bool).sum()) \
        if "refinement" in rows else 0
    rank = int(rows["rank"].iloc[0]) if len(rows) else 1
    return assess(curve_points(rows, method), rank=rank, max_width=max_width, steps_taken=steps)
