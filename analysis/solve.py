"""Crossover widths with bootstrap intervals, and extrapolation with prediction intervals.

Everything downstream of the chosen fit is computed here, once, as data: `Bootstrap` (the
refitted parameters), `CrossoverTable`, `Curves` (time vs width with bands) and
`Extrapolation`. Rendering never recomputes.

Crossover. Along e = h = d with batch and rank fixed (the configs in the quick and square
grids are square; for non-square grids the measured crossover is read along
d = sqrt(e·h)), d* is where the fitted model predicts t_lora(d) = t_full(d): the point
estimate comes from `costmodel.solve_crossover` (grid scan + Brent) over the fitted time, the
95% interval from a case bootstrap over configs (all methods of a resampled config travel
together), refitting each replicate; replicate d* are read off a fine log grid, vectorised
over replicates. A replicate with no crossover in range counts as d* = +inf, one where LoRA
is already faster at the range's start as d* = d_min, and the percentile interval is taken
over those extended values (an interval end at +inf says "the data cannot rule out no
crossover in range"). The asymptotic speedup lim t_full/t_lora is the cost model's
`asymptotic_speedup` of the fitted times.

Prediction intervals. The predicted mean of each bootstrap replicate times a multiplicative
residual drawn from the chosen fit's relative residuals (measured / fitted): parameter and
run-to-run uncertainty together, without assuming a residual law.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

import costmodel
from analysis import costs
from analysis import fit as fitmod
from analysis.data import CONTEXT_COLUMNS
from costmodel.hardware import HardwareProfile

#: Search range for d* (widths), and the extrapolation widths of GPT-scale models.
D_MIN, D_MAX = 16.0, 65536.0
N_GRID = 300
GPT_WIDTHS = (768, 1024, 1600, 2048, 4096, 5120, 8192, 12288)
N_BOOT = 200
RESID_DRAWS = 10
LORA_METHODS = ("lora", "lora_merged")
ALPHA = 0.05


@dataclass(frozen=True)
class Bootstrap:
    """Case-bootstrap replicates of the chosen form's parameters over all design columns."""

    params: np.ndarray  # (B, p)
    n_failed: int
    seed: int


def bootstrap(result: fitmod.FitResult, rows: pd.DataFrame, n_boot: int = N_BOOT,
              seed: int = 0) -> Bootstrap:
    """Resample configs with replacement, refit `result.form` on each replicate."""
    X_all, off, cols = fitmod.design_matrix(result.form, rows)
    keep = [cols.index(c) for c in result.columns]
    X = X_all[:, keep]
    for c, v in result.fixed:  # terms fixed at prior values enter as an offset
        off = off + X_all[:, cols.index(c)] * v
    y = rows["time_ms"].to_numpy()
    cid = rows["config_id"].to_numpy()
    ids = np.unique(cid)
    members = [np.flatnonzero(cid == i) for i in ids]
    rng = np.random.default_rng(seed)
    out, failed = [], 0
    for _ in range(n_boot):
        pick = rng.integers(0, len(ids), len(ids))
        idx = np.concatenate([members[i] for i in pick])
        try:
            p = fitmod.fit_params_arrays(result.form, X[idx], off[idx], y[idx], result.params)
        except (np.linalg.LinAlgError, ValueError):
            failed += 1
            continue
        if not np.all(np.isfinite(p)):
            failed += 1
            continue
        out.append(p)
    params = fitmod.expand_params(result, np.array(out).reshape(-1, len(keep)))
    return Bootstrap(params, failed, seed)


def full_params(result: fitmod.FitResult) -> np.ndarray:
    return fitmod.expand_params(result, result.params[None, :])[0]


# ---------------------------------------------------------------- groups and time functions


def crossover_groups(rows: pd.DataFrame) -> pd.DataFrame:
    """One template row per (context, batch, rank) holding full and a LoRA method, with the
    LoRA methods present and their targets."""
    keys = list(CONTEXT_COLUMNS) + ["batch", "rank"]
    out = []
    for _, g in rows.groupby(keys, sort=True):
        methods = set(g["method"])
        loras = [m for m in LORA_METHODS if m in methods]
        if "full" not in methods or not loras:
            continue
        tmpl = g.iloc[0].copy()
        targets = {m: str(g.loc[g["method"] == m, "targets"].iloc[0]) for m in methods}
        out.append({"template": tmpl, "loras": loras, "targets": targets})
    return pd.DataFrame(out)


def _terms_square(tmpl: pd.Series, widths: np.ndarray, methods: list[str],
                  targets: dict[str, str], profile: HardwareProfile | None) -> pd.DataFrame:
    """Terms at e = h = widths, methods stacked in order (len(methods) * len(widths) rows)."""
    parts = [costs.square_counts(tmpl, m, targets.get(m, ""), widths, profile) for m in methods]
    n = len(widths)
    return fitmod.terms_frame(
        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]), np.repeat(methods, n),
        np.concatenate([p[3] for p in parts]), None, np.concatenate([p[4] for p in parts]))


def _design(form: str, terms: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    X, off, _ = fitmod.design_matrix(form, terms)
    return X, off


def time_fn(result: fitmod.FitResult, tmpl: pd.Series, targets: dict[str, str],
            profile: HardwareProfile | None):
    """(method, d) -> fitted seconds along e = h = d: what `costmodel.solve_crossover` takes."""
    params = full_params(result)

    def fn(method: str, d: np.ndarray) -> np.ndarray:
        d = np.atleast_1d(np.asarray(d, dtype=float))
        terms = _terms_square(tmpl, d, [method], targets, profile)
        X, off = _design(result.form, terms)
        return fitmod.predict_many(result.form, X, off, params) / 1e3

    return fn


# ---------------------------------------------------------------- crossover


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


def measured_crossover(rows: pd.DataFrame, tmpl: pd.Series, method: str) -> tuple[float, str]:
    """Where the measured lora/full ratio changes sign along d = sqrt(e·h) (geometric
    interpolation between the bracketing widths), with a plain note."""
    keys = list(CONTEXT_COLUMNS) + ["batch", "rank"]
    sel = np.ones(len(rows), dtype=bool)
    for k in keys:
        sel &= (rows[k] == tmpl[k]).to_numpy()
    g = rows[sel]
    wide = g.pivot_table(index=["embed", "hidden"], columns="method", values="time_ms")
    if method not in wide or "full" not in wide:
        return np.nan, "not measured"
    log_ratio = np.log(wide[method] / wide["full"]).dropna()
    if log_ratio.empty:
        return np.nan, "not measured"
    d = np.sqrt(np.array([e * h for e, h in log_ratio.index], dtype=float))
    by_d = pd.Series(log_ratio.to_numpy(), index=d).groupby(level=0).mean().sort_index()
    lr, dd = by_d.to_numpy(), by_d.index.to_numpy()
    if np.all(lr >= 0):
        return np.nan, f"measured: LoRA slower at every width {dd[0]:g}-{dd[-1]:g}"
    if np.all(lr < 0):
        return np.nan, f"measured: LoRA faster at every width {dd[0]:g}-{dd[-1]:g}"
    start_slower = lr[0] >= 0
    i = int(np.argmax((lr < 0) if start_slower else (lr >= 0)))
    frac = lr[i - 1] / (lr[i - 1] - lr[i])
    d = float(np.exp(np.log(dd[i - 1]) + frac * (np.log(dd[i]) - np.log(dd[i - 1]))))
    return d, "" if start_slower else "measured: LoRA faster below, slower above"


def crossover_table(result: fitmod.FitResult, boot: Bootstrap, rows: pd.DataFrame,
                    profile: HardwareProfile | None, d_min: float = D_MIN,
                    d_max: float = D_MAX, n_grid: int = N_GRID) -> CrossoverTable:
    """d* with its bootstrap interval, the measured crossover and the asymptotic speedup."""
    max_w = float(max(rows["embed"].max(), rows["hidden"].max()))
    min_w = float(min(rows["embed"].min(), rows["hidden"].min()))
    widths = np.geomspace(d_min, d_max, n_grid)
    records = []
    for _, grp in crossover_groups(rows).iterrows():
        tmpl, targets = grp["template"], grp["targets"]
        lo = max(d_min, float(tmpl["rank"]))
        w = widths[widths >= lo]
        terms = _terms_square(tmpl, w, ["full"] + grp["loras"], targets, profile)
        X, off = _design(result.form, terms)
        mu_b = fitmod.predict_many(result.form, X, off, boot.params)  # (n, B)
        fn = time_fn(result, tmpl, targets, profile)
        n = len(w)
        params = full_params(result)
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
                                               np.atleast_1d(d), profile)[3]
                lim = costmodel.asymptotic_speedup(roof_fn, d_max)
                roof_limit = np.nan if lim is None else float(lim)
            d_b = _first_crossing(w, gap_b, faster_above)
            q = np.quantile(d_b, [ALPHA / 2, 1 - ALPHA / 2], method="inverted_cdf")
            meas, meas_note = measured_crossover(rows, tmpl, m)
            at_max = point.speedup_at_d_max if faster_above else 1 / point.speedup_at_d_max
            if point.d_star is None:
                if faster_above:
                    note = (f"no crossover in range: LoRA slower up to d = {d_max:g} "
                            f"(full/LoRA = {at_max:.3g} there)")
                else:
                    note = f"no crossover in range: LoRA faster over the whole range d = {lo:g}-{d_max:g}"
                d_star = np.nan
            else:
                d_star = float(point.d_star)
                note = "" if faster_above else "LoRA faster BELOW d*, slower above"
                if d_star > max_w:
                    note = "; ".join(x for x in (note, f"beyond the largest measured width "
                                                       f"{max_w:g}: an extrapolation") if x)
                elif d_star < min_w:
                    note = "; ".join(x for x in (note, f"below the smallest measured width "
                                                       f"{min_w:g}: an extrapolation") if x)
            records.append({
                **{c: tmpl[c] for c in CONTEXT_COLUMNS},
                "batch": int(tmpl["batch"]), "rank": int(tmpl["rank"]), "method": m,
                "d_star": d_star,
                "lora_faster": (("above d*" if faster_above else "below d*")
                                if np.isfinite(d_star) else
                                ("nowhere in range" if faster_above else "whole range")),
                "ci_low": float(q[0]), "ci_high": float(q[1]),
                "share_boot_no_crossover": float(np.mean(np.isinf(d_b))),
                "measured_d_star": meas,
                "measured_note": meas_note,
                "asymptotic_speedup": np.nan if limit is None else float(limit),
                "asymptotic_speedup_roofline": roof_limit,
                "speedup_at_d_max": float(at_max),
                "note": note,
            })
    return CrossoverTable(pd.DataFrame.from_records(records), d_min, d_max, max_w)


# ---------------------------------------------------------------- curves and extrapolation


def _bands(mu_b: np.ndarray, rel_resid: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """(CI low, CI high, PI low, PI high) of rows of mu_b (n, B)."""
    ci = np.quantile(mu_b, [ALPHA / 2, 1 - ALPHA / 2], axis=1)
    rng = np.random.default_rng(seed)
    eps = rng.choice(rel_resid, size=(1, mu_b.shape[1], RESID_DRAWS))
    draws = (mu_b[:, :, None] * eps).reshape(mu_b.shape[0], -1)
    pi = np.quantile(draws, [ALPHA / 2, 1 - ALPHA / 2], axis=1)
    return ci[0], ci[1], pi[0], pi[1]


@dataclass(frozen=True)
class Curves:
    """Fitted time vs width per (context, batch, rank, method) with bands, for plots."""

    table: pd.DataFrame  # ..., method, width, time_s, ci_low_s, ci_high_s, pi_low_s, pi_high_s


def predict_square(result: fitmod.FitResult, boot: Bootstrap, rows: pd.DataFrame,
                   widths: np.ndarray, profile: HardwareProfile | None,
                   seed: int = 0) -> pd.DataFrame:
    """Predicted time with CI and PI at e = h = width for every crossover group and method,
    plus each LoRA method's speedup (full / LoRA time) with its bootstrap CI."""
    params = full_params(result)
    max_w = float(max(rows["embed"].max(), rows["hidden"].max()))
    out = []
    for _, grp in crossover_groups(rows).iterrows():
        tmpl, targets = grp["template"], grp["targets"]
        w = np.asarray([x for x in widths if x >= tmpl["rank"]], dtype=float)
        methods = ["full"] + grp["loras"]
        terms = _terms_square(tmpl, w, methods, targets, profile)
        X, off = _design(result.form, terms)
        mu = fitmod.predict_many(result.form, X, off, params)
        mu_b = fitmod.predict_many(result.form, X, off, boot.params)
        ci_lo, ci_hi, pi_lo, pi_hi = _bands(mu_b, result.rel_resid, seed)
        n = len(w)
        for k, m in enumerate(methods):
            s = slice(k * n, (k + 1) * n)
            if m == "full":
                sp, sp_lo, sp_hi = (np.ones(n),) * 3
            else:
                ratio_b = mu_b[:n] / mu_b[s]
                sp = mu[:n] / mu[s]
                sp_lo, sp_hi = np.quantile(ratio_b, [ALPHA / 2, 1 - ALPHA / 2], axis=1)
            out.append(pd.DataFrame({
                **{c: tmpl[c] for c in CONTEXT_COLUMNS},
                "batch": int(tmpl["batch"]), "rank": int(tmpl["rank"]), "method": m,
                "width": w, "time_s": mu[s] / 1e3,
                "ci_low_s": ci_lo[s] / 1e3, "ci_high_s": ci_hi[s] / 1e3,
                "pi_low_s": pi_lo[s] / 1e3, "pi_high_s": pi_hi[s] / 1e3,
                "speedup_vs_full": sp, "speedup_ci_low": sp_lo, "speedup_ci_high": sp_hi,
                "extrapolated": w > max_w,
            }))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


@dataclass(frozen=True)
class Extrapolation:
    """Predictions at GPT-scale widths, labelled where they exceed the largest measured width."""

    table: pd.DataFrame
    max_measured_width: float
    device: str


def extrapolate(result: fitmod.FitResult, boot: Bootstrap, rows: pd.DataFrame,
                widths: tuple[int, ...], profile: HardwareProfile | None,
                device: str) -> Extrapolation:
    table = predict_square(result, boot, rows, np.asarray(widths, dtype=float), profile, seed=1)
    max_w = float(max(rows["embed"].max(), rows["hidden"].max()))
    return Extrapolation(table, max_w, device)


def curves(result: fitmod.FitResult, boot: Bootstrap, rows: pd.DataFrame,
           profile: HardwareProfile | None, n: int = 60) -> Curves:
    lo = float(min(rows["embed"].min(), rows["hidden"].min()))
    hi = float(max(rows["embed"].max(), rows["hidden"].max()))
    widths = np.geomspace(max(D_MIN, lo / 2), max(hi * 8, 16384), n)
    return Curves(predict_square(result, boot, rows, widths, profile, seed=2))
