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
from analysis import costs, crossover_notes
from analysis import fit as fitmod
from analysis.bootstrap import ALPHA, Bootstrap, full_params
from analysis.crossover_notes import Verdict
from analysis.curves import D_MAX, D_MIN, crossover_groups, design, terms_square, time_fn
from analysis.data import CONTEXT_COLUMNS
from costmodel.hardware import HardwareProfile

__all__ = ["D_MAX", "D_MIN", "N_GRID", "CrossoverTable", "crossover_table",
           "measured_crossings", "measured_crossover"]

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
    logd = np.log(widths)
    for j in np.flatnonzero(hit.any(axis=0)):
        i = first[j]
        if i == 0:
            out[j] = widths[0]
            continue
        g0, g1 = gap[i - 1, j], gap[i, j]
        frac = g0 / (g0 - g1) if g0 != g1 else 0.0
        out[j] = np.exp(logd[i - 1] + frac * (logd[i] - logd[i - 1]))
    return out


def _measured_ratio(rows: pd.DataFrame, tmpl: pd.Series, method: str) -> pd.Series | None:
    """Mean measured log(t_method / t_full) per d = sqrt(e·h), sorted by d; None if absent."""
    keys = list(CONTEXT_COLUMNS) + ["batch", "rank"]
    sel = np.ones(len(rows), dtype=bool)
    for k in keys:
        sel &= (rows[k] == tmpl[k]).to_numpy()
    g = rows[sel]
    wide = g.pivot_table(index=["embed", "hidden"], columns="method", values="time_ms")
    if method not in wide or "full" not in wide:
        return None
    log_ratio = np.log(wide[method] / wide["full"]).dropna()
    if log_ratio.empty:
        return None
    d = np.sqrt(np.array([e * h for e, h in log_ratio.index], dtype=float))
    return pd.Series(log_ratio.to_numpy(), index=d).groupby(level=0).mean().sort_index()


def _sign_changes(by_d: pd.Series) -> np.ndarray:
    lr, dd = by_d.to_numpy(), by_d.index.to_numpy()
    faster = lr < 0
    out = []
    for i in np.flatnonzero(faster[1:] != faster[:-1]) + 1:
        frac = lr[i - 1] / (lr[i - 1] - lr[i])
        out.append(float(np.exp(np.log(dd[i - 1]) + frac * (np.log(dd[i]) - np.log(dd[i - 1])))))
    return np.asarray(out)


def measured_crossings(rows: pd.DataFrame, tmpl: pd.Series, method: str) -> np.ndarray:
    """Every width where the measured lora/full ratio changes sign along d = sqrt(e·h)
    (geometric interpolation between the bracketing widths), in increasing order."""
    by_d = _measured_ratio(rows, tmpl, method)
    return np.array([]) if by_d is None else _sign_changes(by_d)


def measured_crossover(rows: pd.DataFrame, tmpl: pd.Series, method: str) -> tuple[float, str]:
    """The first width where the measured lora/full ratio changes sign along d = sqrt(e·h)
    (geometric interpolation between the bracketing widths), with a plain note; when it
    changes sign more than once the note says so and lists every crossing."""
    by_d = _measured_ratio(rows, tmpl, method)
    if by_d is None:
        return np.nan, crossover_notes.measured_note(None, np.array([]), np.array([]))
    crossings = _sign_changes(by_d)
    note = crossover_notes.measured_note(by_d.to_numpy(), by_d.index.to_numpy(), crossings)
    return (float(crossings[0]) if len(crossings) else np.nan), note


def _verdict(w: np.ndarray, gap: np.ndarray) -> Verdict:
    """The verdict of one gap curve (n,) along widths w."""
    faster_above = bool(gap[0] >= 0)
    return Verdict(float(_first_crossing(w, gap[:, None], faster_above)[0]), faster_above)


def crossover_table(result: fitmod.FitResult, boot: Bootstrap, rows: pd.DataFrame,
                    profile: HardwareProfile | None, d_min: float = D_MIN,
                    d_max: float = D_MAX, n_grid: int = N_GRID) -> CrossoverTable:
    """d* with its bootstrap interval, the measured crossover and the asymptotic speedup."""
    max_w = float(max(rows["embed"].max(), rows["hidden"].max()))
    min_w = float(min(rows["embed"].min(), rows["hidden"].min()))
    widths = np.geomspace(d_min, d_max, n_grid)
    all_cols = fitmod.design_matrix(result.form, fitmod._dummy_terms())[2]
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
        mu_free = (None if result.unconstrained is None
                   else fitmod.predict_many(result.form, X, off, result.unconstrained))
        for k, m in enumerate(grp["loras"], start=1):
            gap_b = np.log(np.clip(mu_b[k * n:(k + 1) * n], 1e-30, None)) - np.log(
                np.clip(mu_b[:n], 1e-30, None))
            mu = fitmod.predict_many(result.form, X, off, params)
            gap = np.log(max(mu[k * n], 1e-30)) - np.log(max(mu[0], 1e-30))
            # LoRA slower at the start: find where it becomes faster. LoRA already faster at
            # the start: find where (if anywhere) it stops being faster -- same solver, the
            # roles of the two methods swapped.
            faster_above = bool(gap >= 0)
            swap = {"lora": m, "full": "full"} if faster_above else {"lora": "full", "full": m}
            point = costmodel.solve_crossover(lambda meth, d: fn(swap[meth], d), lo, d_max,
                                              n_grid=n_grid, limit=False)
            limit = costmodel.asymptotic_speedup(lambda meth, d: fn(m if meth == "lora" else meth, d),
                                                 d_max)
            roof_limit = np.nan
            if profile is not None:
                # The cost model alone (unfitted roofline on the device profile), for contrast.
                def roof_fn(meth, d, m=m):
                    return costs.square_counts(tmpl, m if meth == "lora" else "full",
                                               targets.get(m if meth == "lora" else "full", ""),
                                               np.atleast_1d(d), profile).roofline_s
                lim = costmodel.asymptotic_speedup(roof_fn, d_max)
                roof_limit = np.nan if lim is None else float(lim)
            d_b = _first_crossing(w, gap_b, faster_above)
            q = np.quantile(d_b, [ALPHA / 2, 1 - ALPHA / 2], method="inverted_cdf")
            meas, meas_note = measured_crossover(rows, tmpl, m)
            at_max = point.speedup_at_d_max if faster_above else 1 / point.speedup_at_d_max
            d_star = np.nan if point.d_star is None else float(point.d_star)
            note = crossover_notes.point_note(d_star, faster_above, at_max, lo, d_max, min_w, max_w)
            # Terms whose count differs between full and this LoRA method along the axis.
            Xf, Xm = X[:n], X[k * n:(k + 1) * n]
            method_terms = {c for j, c in enumerate(all_cols) if np.any(Xf[:, j] != Xm[:, j])}
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
                boot.constrained, unconstrained, method_terms, d_star, faster_above,
                (float(q[0]), float(q[1])), free)
            note = "; ".join(x for x in (note, extra) if x)
            records.append({
                **{c: tmpl[c] for c in CONTEXT_COLUMNS},
                "batch": int(tmpl["batch"]), "rank": int(tmpl["rank"]), "method": m,
                "d_star": d_star,
                "lora_faster": (("above d*" if faster_above else "below d*")
                                if np.isfinite(d_star) else
                                ("nowhere in range" if faster_above else "whole range")),
                "ci_low": float(q[0]), "ci_high": float(q[1]),
                # A replicate already past its crossing at the range's start is recorded as
                # d = the start: an interval end there is a censored bound ("≤ start").
                "ci_low_censored": bool(q[0] <= w[0]),
                "share_boot_no_crossover": float(np.mean(np.isinf(d_b))),
                "measured_d_star": meas,
                "measured_sign_changes": len(measured_crossings(rows, tmpl, m)),
                "measured_note": meas_note,
                "asymptotic_speedup": np.nan if limit is None else float(limit),
                "asymptotic_speedup_roofline": roof_limit,
                "speedup_at_d_max": float(at_max),
                "note": note,
            })
    return CrossoverTable(pd.DataFrame.from_records(records), d_min, d_max, max_w)
