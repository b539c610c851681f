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

What the points say is read from their intervals: a width whose ratio interval lies wholly
on one side of 1 is *certain* (LoRA faster, or slower); one whose interval contains 1 is
"≈ 1 within noise". A measured crossing is a change of certain side -- between two
neighbouring certain widths, through any ≈ 1 widths between them -- or a run of ≈ 1 widths at
an end of the measured range next to a certain width (the ratio cannot be told from 1 there,
so the crossing may lie anywhere in it: the interval is *censored* at that end). Its interval
runs from the certain width on one side to the certain width on the other (or the range's
end); its d* is the geometric mean of the sign changes of the point ratios, in the
crossing's direction, inside the interval (log-linear interpolation of log(ratio) across
each), NaN when the point ratios never change sign there. A ≈ 1 run between two certain
widths of the same side is no crossing (the ratio touches 1 within noise and returns). So a
curve whose smallest widths are all ≈ 1 gives the same verdict whichever side of 1 their
point ratios happen to fall on in one run.
The sweep (`measure.sweep`)
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
    """One measured crossing (see the module docstring).

    low, high: the measured widths bracketing the point ratios' sign change nearest d_star
    (the interval's ends when there is none); d_star: the geometric mean of the sign changes
    in the crossing's direction (NaN when the point ratios do not change sign); ci_low,
    ci_high: the certain widths on either side, or the range's end (censored_low,
    censored_high); direction: LoRA faster above (`FASTER_ABOVE`) or below it; within_noise:
    the ratio's interval contains 1 at both ends of [low, high], or the interval is censored
    ("≈ 1 within noise"); noise_low, noise_high: the span of ≈ 1 widths inside the interval
    (NaN when none); resolved: high / low <= BRACKET_RATIO.
    """

    low: float
    high: float
    d_star: float
    ci_low: float
    ci_high: float
    direction: str
    within_noise: bool
    resolved: bool
    censored_low: bool = False
    censored_high: bool = False
    noise_low: float = math.nan
    noise_high: float = math.nan


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


def log_root(w0, w1, g0, g1):
    """Where g, linear in log width between (w0, g0) and (w1, g1), crosses 0 (the geometric
    midpoint when g0 == g1); vectorised. The one interpolation of every crossing, measured
    (`assess`) and fitted (`analysis.crossover_table`)."""
    w0, w1, g0, g1 = (np.asarray(v, dtype=float) for v in (w0, w1, g0, g1))
    same = g0 == g1
    frac = np.where(same, 0.5, g0 / np.where(same, 1.0, g0 - g1))
    return np.exp(np.log(w0) + frac * (np.log(w1) - np.log(w0)))


def _sign_change(a: Point, b: Point) -> float:
    """Where log(ratio) crosses 0 between a and b (log-linear in log width)."""
    return float(log_root(a.width, b.width, math.log(a.ratio), math.log(b.ratio)))


def _crossing(pts: Sequence[Point], i0: int, i1: int, faster_above: bool,
              censored_low: bool, censored_high: bool) -> Crossing:
    """The crossing whose interval runs over pts[i0..i1] (both ends included)."""
    changes = [(k, _sign_change(pts[k - 1], pts[k])) for k in range(i0 + 1, i1 + 1)
               if pts[k - 1].faster != pts[k].faster and pts[k].faster == faster_above]
    lo_w, hi_w = pts[i0].width, pts[i1].width
    if changes:
        d = math.exp(sum(math.log(c) for _, c in changes) / len(changes))
        k = min(changes, key=lambda kc: abs(math.log(kc[1] / d)))[0]
        a, b = pts[k - 1], pts[k]
    else:
        d, a, b = math.nan, pts[i0], pts[i1]
    noisy = [p.width for p in pts[i0:i1 + 1] if not p.certain]
    noise = (not a.certain and not b.certain) or censored_low or censored_high
    return Crossing(a.width, b.width, d, lo_w, hi_w,
                    FASTER_ABOVE if faster_above else FASTER_BELOW, noise,
                    b.width / a.width <= BRACKET_RATIO, censored_low, censored_high,
                    min(noisy) if noisy else math.nan, max(noisy) if noisy else math.nan)


def _crossings(pts: Sequence[Point]) -> list[Crossing]:
    """Every measured crossing of the sorted points (see the module docstring)."""
    certain = [i for i, p in enumerate(pts) if p.certain]
    last = len(pts) - 1
    if not certain:  # ≈ 1 everywhere: one crossing, censored both ways, if the ratios cross
        ks = [k for k in range(1, len(pts)) if pts[k - 1].faster != pts[k].faster]
        if not ks:
            return []
        return [_crossing(pts, 0, last, pts[ks[0]].faster, True, True)]
    out = []
    if certain[0] > 0:  # ≈ 1 below the first certain width
        out.append(_crossing(pts, 0, certain[0], pts[certain[0]].faster, True, False))
    for i, j in zip(certain[:-1], certain[1:]):
        if pts[i].faster != pts[j].faster:
            out.append(_crossing(pts, i, j, pts[j].faster, False, False))
    if certain[-1] < last:  # ≈ 1 above the last certain width
        out.append(_crossing(pts, certain[-1], last, not pts[certain[-1]].faster, False, True))
    return out


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
    crossings = _crossings(pts)
    proposals = []
    changes = 0
    for i in range(1, len(pts)):  # bisect every sign change of the point ratios
        a, b = pts[i - 1], pts[i]
        if a.faster == b.faster:
            continue
        changes += 1
        noise = not a.certain and not b.certain
        if not (b.width / a.width <= BRACKET_RATIO or noise):
            proposals.append(_propose(math.sqrt(a.width * b.width), measured, rank))
    if not changes:
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
