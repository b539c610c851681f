"""Crossover widths with bootstrap intervals: the `CrossoverTable`.

Along e = h = d with batch and rank fixed (the configs in the quick and square grids are
square; for non-square grids the measured crossover is read along d = sqrt(e·h)), d* is where
the fitted model predicts t_lora(d) = t_full(d): the point estimate comes from
`costmodel.solve_crossover` (grid scan + Brent) over the fitted time, the 95% interval from
the case bootstrap of `analysis.bootstrap`; replicate d* are read off a fine log grid,
vectorised over replicates. A replicate with no crossover in range counts as d* = +inf, one
where LoRA is already faster at the range's start as d* = d_min, and the percentile interval
is taken over those extended values (an interval end at +inf says "the data cannot rule out
no crossover in range"; a lower end at d_min is censored, flagged `ci_low_censored`). Where
the fit fixed or dropped a term, each row's note says what d* rests on and what the
unconstrained fit finds (`analysis.crossover_notes.prior_note`). The asymptotic speedup
lim t_full/t_lora is the cost model's `asymptotic_speedup` of the fitted times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

import costmodel
from analysis import conformal, costs, crossover_notes
from analysis import fit as fitmod
from analysis.bootstrap import ALPHA, Bootstrap, full_params
from analysis.crossover_notes import Verdict
from analysis.curves import D_MAX, D_MIN, crossover_groups, design, terms_square, time_fn
from analysis.data import CONTEXT_COLUMNS
from costmodel.hardware import HardwareProfile
from measure import refine
from measure.schema import CURVE_COLUMNS

__all__ = ["D_MAX", "D_MIN", "N_GRID", "CrossoverTable", "crossover_table"]

N_GRID = 300


@dataclass(frozen=True)
class CrossoverTable:
    """One row per (context, batch, rank, LoRA method)."""

    table: pd.DataFrame  # see `crossover_table` for the columns
    d_min: float
    d_max: float
    max_measured_width: float


def _first_crossing(widths: np.ndarray, gap: np.ndarray, faster_above: bool) -> np.ndarray:
    """Per column of gap = log t_lora − log t_full (n, B): the first d where LoRA becomes
    faster (gap turns negative; faster_above) or stops being faster (gap turns >= 0),
    log-linear interpolation between grid points; d_min when already so at the first point,
    +inf when never."""
    hit = gap < 0 if faster_above else gap >= 0
    out = np.full(gap.shape[1], np.inf)
    first = np.argmax(hit, axis=0)
    at_start = hit.any(axis=0) & (first == 0)
    out[at_start] = widths[0]
    cols = np.flatnonzero(hit.any(axis=0) & (first > 0))
    i = first[cols]
    out[cols] = refine.log_root(widths[i - 1], widths[i], gap[i - 1, cols], gap[i, cols])
    return out


def _verdict(w: np.ndarray, gap: np.ndarray) -> Verdict:
    """The verdict of one gap curve (n,) along widths w."""
    faster_above = bool(gap[0] >= 0)
    return Verdict(float(_first_crossing(w, gap[:, None], faster_above)[0]), faster_above)


def sign_changes(w: np.ndarray, gap: np.ndarray) -> tuple[np.ndarray, list[bool]]:
    """Every width where gap = log t_lora − log t_full changes sign along w (log-linear
    interpolation between grid points), and whether LoRA is faster on each of the
    len(crossings) + 1 intervals they cut the range into."""
    faster = gap < 0
    idx = np.flatnonzero(faster[1:] != faster[:-1]) + 1
    cross = refine.log_root(w[idx - 1], w[idx], gap[idx - 1], gap[idx])
    directions = [bool(faster[0])] + [bool(faster[i]) for i in idx]
    return np.asarray(cross, dtype=float), directions


def lora_faster_label(crossings: np.ndarray, directions: list[bool]) -> str:
    """The verdict's stable key: where LoRA is faster over the searched range."""
    if len(crossings) == 0:
        return "whole range" if directions[0] else "nowhere in range"
    if len(crossings) == 1:
        return "below d*" if directions[0] else "above d*"
    return "alternates"


def agreement(w: np.ndarray, gap: np.ndarray, band_lo: np.ndarray, band_hi: np.ndarray,
              points) -> tuple[bool, list[float], list[float]]:
    """(agrees, widths where it does not, widths where only the point fit is off).

    Only measured widths whose ratio interval lies wholly on one side of 1 vote, and only
    inside the searched range. The fitted verdict at a width is the band [band_lo, band_hi]
    of gap = log t_lora − log t_full: the bootstrap interval widened by the conformal model
    error, the same band the d* interval is read from. It disagrees where the band lies
    wholly on the other side of 0 from the measurement; where the point fit is on the other
    side but the band contains 0, the fit claims nothing there and the width is listed
    apart (the fit is off by less than its stated error)."""
    bad, off = [], []
    lw = np.log(w)
    for p in points:
        if not p.certain or p.width < w[0] or p.width > w[-1]:
            continue
        x = np.log(p.width)
        g, lo, hi = (float(np.interp(x, lw, v)) for v in (gap, band_lo, band_hi))
        if (lo > 0) if p.faster else (hi < 0):
            bad.append(float(p.width))
        elif (g < 0) != p.faster:
            off.append(float(p.width))
    return not bad, bad, off


def _interval_with_model_error(w: np.ndarray, band_lo: np.ndarray, band_hi: np.ndarray,
                               d_star: float) -> tuple[float, float]:
    """The connected run of widths around d_star where the gap band contains 0 (the ratio
    cannot be told from 1 there, parameter and model error together); an end at the search
    range's edge is open: w[0] (censored) or +inf."""
    contains = (band_lo <= 0) & (band_hi >= 0)
    i = int(np.clip(np.searchsorted(w, d_star), 0, len(w) - 1))
    if not contains[i]:
        j = [k for k in (i - 1, i + 1) if 0 <= k < len(w) and contains[k]]
        if not j:
            return d_star, d_star
        i = j[0]
    lo = i
    while lo > 0 and contains[lo - 1]:
        lo -= 1
    hi = i
    while hi < len(w) - 1 and contains[hi + 1]:
        hi += 1
    return float(w[lo]), (np.inf if hi == len(w) - 1 else float(w[hi]))


def _measured_points(measured: pd.DataFrame | None, tmpl: pd.Series, method: str):
    if measured is None:
        return ()
    sel = np.ones(len(measured), dtype=bool)
    for k in CURVE_COLUMNS:
        sel &= (measured[k] == tmpl[k]).to_numpy()
    return refine.curve_points(measured[sel], method)


def crossover_table(result: fitmod.FitResult, boot: Bootstrap, rows: pd.DataFrame,
                    profile: HardwareProfile | None, d_min: float = D_MIN,
                    d_max: float = D_MAX, n_grid: int = N_GRID,
                    measured: pd.DataFrame | None = None,
                    bands: conformal.Conformal | None = None) -> CrossoverTable:
    """The verdict of every curve over the searched range [d_min, d_max]: every fitted sign
    change (`crossings`), LoRA faster or not on each interval (`directions`), the full/LoRA
    ratio at both ends; d* with its interval only when there is exactly one crossing; the
    measured crossover from `measure.refine` (measured: the schema rows, with paired
    ratios); whether the fitted verdict agrees with every measured width; and the asymptotic
    speedup. bands: the conformal model error (`analysis.conformal`) the d* interval adds to
    the bootstrap's parameter error."""
    max_w = float(max(rows["embed"].max(), rows["hidden"].max()))
    min_w = float(min(rows["embed"].min(), rows["hidden"].min()))
    widths = np.geomspace(d_min, d_max, n_grid)
    all_cols = fitmod.design_matrix(result.form, fitmod.dummy_terms())[2]
    constrained = [c for c, _ in result.fixed] + list(result.dropped)
    unconstrained = (None if result.unconstrained is None
                     else dict(zip(all_cols, result.unconstrained)))
    records = []
    for _, grp in crossover_groups(rows).iterrows():
        tmpl, targets = grp["template"], grp["targets"]
        lo = max(d_min, float(tmpl["rank"]))
        w = widths[widths >= lo]
        terms = terms_square(tmpl, w, ["full"] + grp["loras"], targets, profile)
        X, off = design(result.form, terms)
        mu_b = fitmod.predict_many(result.form, X, off, boot.params)  # (n, B)
        fn = time_fn(result, tmpl, targets, profile)
        n = len(w)
        params = full_params(result)
        mu = fitmod.predict_many(result.form, X, off, params)
        mu_free = (None if result.unconstrained is None
                   else fitmod.predict_many(result.form, X, off, result.unconstrained))
        for k, m in enumerate(grp["loras"], start=1):
            gap_b = np.log(np.clip(mu_b[k * n:(k + 1) * n], 1e-30, None)) - np.log(
                np.clip(mu_b[:n], 1e-30, None))
            gap = np.log(np.clip(mu[k * n:(k + 1) * n], 1e-30, None)) - np.log(
                np.clip(mu[:n], 1e-30, None))
            crossings, directions = sign_changes(w, gap)
            if len(crossings):  # polish each crossing with Brent on the fitted times
                crossings = np.array([_polish(fn, m, c, w) for c in crossings])
            faster_above = not directions[0]
            limit = costmodel.asymptotic_speedup(
                lambda meth, d: fn(m if meth == "lora" else meth, d), d_max)
            roof_limit = np.nan
            if profile is not None:
                # The cost model alone (unfitted roofline on the device profile), for contrast.
                def roof_fn(meth, d, m=m):
                    return costs.square_counts(tmpl, m if meth == "lora" else "full",
                                               targets.get(m if meth == "lora" else "full", ""),
                                               np.atleast_1d(d), profile).roofline_s
                lim = costmodel.asymptotic_speedup(roof_fn, d_max)
                roof_limit = np.nan if lim is None else float(lim)
            single = len(crossings) == 1
            d_star = float(crossings[0]) if single else np.nan
            d_b = _first_crossing(w, gap_b, faster_above)
            q = np.quantile(d_b, [ALPHA / 2, 1 - ALPHA / 2], method="inverted_cdf")
            ci_low, ci_high = (float(q[0]), float(q[1])) if single else (np.nan, np.nan)
            boot_ci = (ci_low, ci_high)
            g_lo, g_hi = np.quantile(gap_b, [ALPHA / 2, 1 - ALPHA / 2], axis=1)
            qr = np.zeros(n) if bands is None else bands.q_ratio(w)
            if not np.all(np.isfinite(qr)):
                qr = np.zeros(n)
            band_lo, band_hi = g_lo - qr, g_hi + qr
            if single and bands is not None:
                me_lo, me_hi = _interval_with_model_error(w, band_lo, band_hi, d_star)
                ci_low, ci_high = min(ci_low, me_lo), max(ci_high, me_hi)
            points = _measured_points(measured, tmpl, m)
            verdict = refine.assess(points, rank=int(tmpl["rank"]))
            mcross = verdict.crossings
            m_single = mcross[0] if len(mcross) == 1 else None
            agrees, disagree_at, off_at = agreement(w, gap, band_lo, band_hi, points)
            meas_d = m_single.d_star if m_single else np.nan
            at_max = float(mu[n - 1] / mu[(k + 1) * n - 1])
            at_min = float(mu[0] / mu[k * n])
            flags = []
            if single and not (min_w <= d_star <= max_w):
                flags.append("extrapolated")
            if single and ci_low <= w[0]:
                flags.append("censored_low")
            if not agrees:
                flags.append("disagrees_with_measurements")
            if off_at:
                flags.append("point_fit_off")
            if any(c.within_noise for c in mcross):
                flags.append("measured_within_noise")
            if single and m_single is not None and not (
                    ci_low <= meas_d <= ci_high if np.isfinite(meas_d)
                    else m_single.ci_low <= ci_high and ci_low <= m_single.ci_high):
                flags.append("measured_outside_interval")
            Xf, Xm = X[:n], X[k * n:(k + 1) * n]
            method_terms = {c for j, c in enumerate(all_cols) if np.any(Xf[:, j] != Xm[:, j])}
            if set(constrained) & method_terms:  # a held term sets this curve's verdict
                flags.append("constrained_terms")
            note = (crossover_notes.point_note(d_star, faster_above, at_max, lo, d_max, min_w,
                                               max_w) if len(crossings) <= 1
                    else crossover_notes.curve_note(crossings, directions))
            free = None
            if mu_free is not None:
                tf, tm = mu_free[:n], mu_free[k * n:(k + 1) * n]
                bad = np.flatnonzero((tf <= 0) | (tm <= 0))
                start = 0 if bad.size == 0 else int(bad[-1]) + 1
                if start < n:  # read it only where its predicted times are positive
                    free = _verdict(w[start:], np.log(tm[start:]) - np.log(tf[start:]))
                    if start:
                        free = free._replace(positive_from=float(w[start]))
            extra = crossover_notes.prior_note(
                constrained, dict(result.fixed), dict(result.constrained_after),
                boot.constrained, unconstrained, method_terms,
                d_star if single else (np.inf if not len(crossings) else float(crossings[0])),
                faster_above, boot_ci, free)
            note = "; ".join(x for x in (note, extra) if x)
            records.append({
                **{c: tmpl[c] for c in CONTEXT_COLUMNS},
                "batch": int(tmpl["batch"]), "rank": int(tmpl["rank"]), "method": m,
                "d_star": d_star,
                "lora_faster": lora_faster_label(crossings, directions),
                "ci_low": ci_low, "ci_high": ci_high,
                "ci_low_censored": bool(single and ci_low <= w[0]),
                "boot_ci_low": boot_ci[0], "boot_ci_high": boot_ci[1],
                "share_boot_no_crossover": float(np.mean(np.isinf(d_b))),
                "crossings": [float(c) for c in crossings],
                "directions": ["faster" if f else "slower" for f in directions],
                "speedup_at_d_min": at_min,
                "measured_d_star": meas_d,
                "measured_ci_low": m_single.ci_low if m_single else np.nan,
                "measured_ci_high": m_single.ci_high if m_single else np.nan,
                "measured_within_noise": bool(m_single.within_noise) if m_single else False,
                "measured_ci_low_censored": bool(m_single.censored_low) if m_single else False,
                "measured_ci_high_censored": bool(m_single.censored_high) if m_single else False,
                "measured_crossings": [float(c.d_star) for c in mcross],
                "measured_sign_changes": len(mcross),
                "measured_lo": verdict.lo, "measured_hi": verdict.hi,
                "measured_faster_everywhere": bool(points) and all(p.faster for p in points),
                "measured_slower_everywhere": bool(points) and not any(p.faster for p in points),
                "measured_note": crossover_notes.measured_text(verdict),
                "agrees_with_measurements": bool(agrees),
                "disagrees_at": disagree_at,
                "point_fit_off_at": off_at,
                "flags": flags,
                "asymptotic_speedup": np.nan if limit is None else float(limit),
                "asymptotic_speedup_roofline": roof_limit,
                "speedup_at_d_max": at_max,
                "note": note,
            })
    return CrossoverTable(pd.DataFrame.from_records(records), d_min, d_max, max_w)


def _polish(fn, method: str, guess: float, w: np.ndarray) -> float:
    """Brent's root of log t_method − log t_full between the grid points around `guess`."""
    from scipy.optimize import brentq

    i = int(np.clip(np.searchsorted(w, guess), 1, len(w) - 1))
    a, b = float(w[i - 1]), float(w[i])

    def g(d):
        tm, tf = fn(method, d)[0], fn("full", d)[0]
        return np.log(max(tm, 1e-30)) - np.log(max(tf, 1e-30))

    try:
        ga, gb = g(a), g(b)
        if ga == 0 or gb == 0 or np.sign(ga) == np.sign(gb):
            return guess
        return float(brentq(g, a, b, xtol=1e-6 * a))
    except (ValueError, RuntimeError):
        return guess
