"""Fitted time along the width axis e = h = d, with bands: the crossover groups, the time
functions the crossover solver takes, and the curves and GPT-scale extrapolation for plots.

Prediction intervals. The bootstrap CI of the mean widened by the conformal model error of
`analysis.conformal` (out-of-sample residuals, growing with the distance beyond the largest
measured width): parameter, model and run-to-run error together, positive by construction. The full/LoRA ratios
carry the bootstrap CI of the mean ratio only (no residual draws): a confidence interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import conformal, costs
from analysis import fit as fitmod
from analysis.bootstrap import ALPHA, Bootstrap, full_params
from analysis.data import CONTEXT_COLUMNS
from costmodel.hardware import HardwareProfile
from costmodel.vocab import LORA_METHODS
from measure.schema import CURVE_COLUMNS

#: Width range of the crossover search and of the curves, and the GPT-scale widths.
D_MIN, D_MAX = 16.0, 65536.0
GPT_WIDTHS = (768, 1024, 1600, 2048, 4096, 5120, 8192, 12288)
RESID_DRAWS = 10


# ---------------------------------------------------------------- groups and time functions


def crossover_groups(rows: pd.DataFrame) -> pd.DataFrame:
    """One template row per (context, batch, rank) holding full and a LoRA method, with the
    LoRA methods present and their targets."""
    keys = list(CURVE_COLUMNS)
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


def terms_square(tmpl: pd.Series, widths: np.ndarray, methods: list[str],
                 targets: dict[str, str], profile: HardwareProfile | None) -> pd.DataFrame:
    """Terms at e = h = widths, methods stacked in order (len(methods) * len(widths) rows)."""
    parts = [costs.square_counts(tmpl, m, targets.get(m, ""), widths, profile) for m in methods]
    n = len(widths)
    return fitmod.terms_frame(
        np.concatenate([p.flops for p in parts]), np.concatenate([p.bytes_moved for p in parts]),
        np.concatenate([p.kernels for p in parts]), np.repeat(methods, n),
        np.concatenate([p.roofline_s for p in parts]), None,
        np.concatenate([p.result_bytes for p in parts]))


def design(form: str, terms: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(design matrix, offset) of `form` over `terms`."""
    X, off, _ = fitmod.design_matrix(form, terms)
    return X, off


def time_fn(result: fitmod.FitResult, tmpl: pd.Series, targets: dict[str, str],
            profile: HardwareProfile | None):
    """(method, d) -> fitted seconds along e = h = d: what `costmodel.solve_crossover` takes."""
    params = full_params(result)

    def fn(method: str, d: np.ndarray) -> np.ndarray:
        d = np.atleast_1d(np.asarray(d, dtype=float))
        terms = terms_square(tmpl, d, [method], targets, profile)
        X, off = design(result.form, terms)
        return fitmod.predict_many(result.form, X, off, params) / 1e3

    return fn


# ---------------------------------------------------------------- curves and extrapolation


def _bands(mu_b: np.ndarray, rel_resid: np.ndarray, seed: int, widths: np.ndarray | None = None,
           bands: conformal.Conformal | None = None) -> tuple[np.ndarray, ...]:
    """(CI low, CI high, PI low, PI high) of rows of mu_b (n, B).

    With `bands` (rows at `widths`): the PI is the CI of the mean widened by the conformal
    model error e^±q(d) (`analysis.conformal`), positive whenever the mean is. Without:
    bootstrap means times residuals drawn from the fit's in-sample relative residuals."""
    ci = np.quantile(mu_b, [ALPHA / 2, 1 - ALPHA / 2], axis=1)
    if bands is not None and widths is not None and np.isfinite(bands.q_time_in):
        q = bands.q_time(widths)
        return ci[0], ci[1], ci[0] * np.exp(-q), ci[1] * np.exp(q)
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
                   seed: int = 0, bands: conformal.Conformal | None = None) -> pd.DataFrame:
    """Predicted time with CI and PI at e = h = width for every crossover group and method,
    plus each LoRA method's speedup (full / LoRA time) with its bootstrap CI."""
    params = full_params(result)
    max_w = float(max(rows["embed"].max(), rows["hidden"].max()))
    out = []
    for _, grp in crossover_groups(rows).iterrows():
        tmpl, targets = grp["template"], grp["targets"]
        w = np.asarray([x for x in widths if x >= tmpl["rank"]], dtype=float)
        methods = ["full"] + grp["loras"]
        terms = terms_square(tmpl, w, methods, targets, profile)
        X, off = design(result.form, terms)
        mu = fitmod.predict_many(result.form, X, off, params)
        mu_b = fitmod.predict_many(result.form, X, off, boot.params)
        ci_lo, ci_hi, pi_lo, pi_hi = _bands(mu_b, result.rel_resid, seed,
                                            np.tile(w, len(methods)), bands)
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
                device: str, bands: conformal.Conformal | None = None) -> Extrapolation:
    table = predict_square(result, boot, rows, np.asarray(widths, dtype=float), profile, seed=1,
                           bands=bands)
    max_w = float(max(rows["embed"].max(), rows["hidden"].max()))
    return Extrapolation(table, max_w, device)


def curves(result: fitmod.FitResult, boot: Bootstrap, rows: pd.DataFrame,
           profile: HardwareProfile | None, bands: conformal.Conformal | None = None,
           n: int = 60) -> Curves:
    lo = float(min(rows["embed"].min(), rows["hidden"].min()))
    hi = float(max(rows["embed"].max(), rows["hidden"].max()))
    widths = np.geomspace(max(D_MIN, lo / 2), max(hi * 8, 16384), n)
    return Curves(predict_square(result, boot, rows, widths, profile, seed=2, bands=bands))
