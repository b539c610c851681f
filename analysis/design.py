"""The design of every fitted form: regressors in design units, patsy formulas, the design
matrix and the prediction from it. `analysis.fit` describes the model and fits it; this
module only builds what the fits and the predictions read.

The formula engine is pinned: design matrices are built by patsy directly (`design_matrix`),
never through statsmodels' configurable formula layer, so an installed formulaic or
``SM_FORMULA_ENGINE`` cannot change them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pandas as pd
import patsy

from costmodel.vocab import LORA_METHODS

#: The terms of the additive forms, as a patsy formula over `terms_frame`'s columns.
ADDITIVE_FORMULA = "1 + gflops + gbytes + kernels + gresult" + "".join(f" + gflops:{m}" for m in LORA_METHODS)
#: The terms of the log-link form (the roofline time enters as an offset).
LOG_FORMULA = "1" + "".join(f" + {m}" for m in LORA_METHODS)
FORMS: dict[str, str] = {
    "ols_additive": "OLS on additive roofline terms",
    "wls_additive": "WLS (weights 1/t^2) on additive roofline terms",
    "gamma_identity": "Gamma GLM, identity link, additive roofline terms",
    "gamma_log_offset": "Gamma GLM, log link, offset log(roofline time)",
    "gamma_log_roofline": "Gamma GLM, log link, log(roofline time) as covariate",
}
#: Forms with a log link whose terms are relative to the device profile's roofline.
LOG_FORMS = ("gamma_log_offset", "gamma_log_roofline")
#: The terms of the free-elasticity form.
LOG_ROOF_FORMULA = "1 + log_roof" + "".join(f" + {m}" for m in LORA_METHODS)
ADDITIVE_FORMS = ("ols_additive", "wls_additive", "gamma_identity")
#: Terms whose coefficient is a time per unit and so cannot be negative.
PHYSICAL = ("Intercept", "gflops", "gbytes", "kernels", "gresult")


def terms_frame(
    flops: np.ndarray,
    bytes_moved: np.ndarray,
    kernels: np.ndarray,
    method: Sequence[str],
    roofline_s: np.ndarray | None = None,
    time_s: np.ndarray | None = None,
    result_bytes: np.ndarray | None = None,
) -> pd.DataFrame:
    """The regressors of every form, in the design's units (ms, GFLOP, GB).

    flops, bytes_moved, kernels: the cost model's totals for each row; method: full | lora |
    lora_merged; roofline_s: the unfitted roofline time with the device profile (NaN or None
    when there is no profile); time_s: measured time, None when predicting; result_bytes:
    bytes of the gradients each call returns (zero when None, e.g. for a single op).
    """
    method = np.asarray(method, dtype=object)
    n = len(method)
    with np.errstate(divide="ignore"):  # an op with no cost has log roofline time -inf
        log_roof = (np.full(n, np.nan) if roofline_s is None
                    else np.log(np.asarray(roofline_s, dtype=float) * 1e3))
    out = pd.DataFrame({
        "gflops": np.asarray(flops, dtype=float) / 1e9,
        "gbytes": np.asarray(bytes_moved, dtype=float) / 1e9,
        "kernels": np.asarray(kernels, dtype=float),
        "gresult": np.zeros(n) if result_bytes is None else np.asarray(result_bytes, float) / 1e9,
        **{m: (method == m).astype(float) for m in LORA_METHODS},
        "roof_ms": (np.full(n, np.nan) if roofline_s is None
                    else np.asarray(roofline_s, dtype=float) * 1e3),
        "log_roof": log_roof,
        "time_ms": np.full(n, np.nan) if time_s is None else np.asarray(time_s, float) * 1e3,
    })
    return out


@functools.lru_cache(maxsize=None)
def _design_info(formula: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(column name, the numeric factors multiplied into it) of every column patsy builds for
    `formula`, parsed by patsy once. The formulas hold numeric columns and their products
    only, so each column is that product (the intercept an empty one): evaluating it with
    numpy gives patsy's matrix (a test checks) at a fraction of its per-call cost, which the
    bootstrap pays thousands of times."""
    info = patsy.dmatrix(formula, dummy_terms(), return_type="dataframe").design_info
    out = []
    for term, name in zip(info.terms, info.column_names):
        out.append((name, tuple(f.name() for f in term.factors)))
    return tuple(out)


def design_matrix(form: str, terms: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(X, offset, column names) of `form` for the rows of `terms`, the columns as patsy
    names and builds them (`_design_info`).

    Missing values raise instead of silently dropping rows.
    """
    formula = {"gamma_log_offset": LOG_FORMULA, "gamma_log_roofline": LOG_ROOF_FORMULA}.get(
        form, ADDITIVE_FORMULA)
    info = _design_info(formula)
    n = len(terms)
    cols = {}
    for name, factors in info:
        col = np.ones(n)
        for f in factors:
            col = col * terms[f].to_numpy(dtype=float)
        if not np.all(np.isfinite(col)):
            raise patsy.PatsyError(f"missing or infinite values in design column {name!r}")
        cols[name] = col
    dm = pd.DataFrame(cols)
    if form == "gamma_log_offset":
        offset = np.log(terms["roof_ms"].to_numpy())
    else:
        offset = np.zeros(len(terms))
    return dm.to_numpy(), offset, list(dm.columns)


def predict_many(form: str, X: np.ndarray, offset: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Predicted mean time (ms) for each parameter vector: params (p,) or (B, p) → (n,) or (n, B)."""
    eta = X @ np.asarray(params).T
    if form in LOG_FORMS:
        return np.exp(eta + (offset[:, None] if eta.ndim == 2 else offset))
    return eta


def predict_ms(form: str, terms: pd.DataFrame, params: np.ndarray) -> np.ndarray:
    """Predicted time (ms) of the rows of `terms` under full-design `params`."""
    X, off, _ = design_matrix(form, terms)
    return predict_many(form, X, off, params)


def dummy_terms() -> pd.DataFrame:
    """One row of every regressor: the design's columns without data."""
    return terms_frame([1.0], [1.0], [1.0], ["full"], [1.0])
