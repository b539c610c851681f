"""Fit the overhead factors that turn the cost model's counts into measured time.

The model. For one forward+backward call of a (config, method),

    t = t_dispatch + λ_m · flops / F_eff + bytes_moved / B_eff + kernels · τ
        + result_bytes / R_eff                                                     (λ_full = 1)

i.e. the roofline's *upper bound* (compute time + memory time + per-kernel overhead, the
scaling-book's "sum" form) with its three rates fitted instead of taken from a datasheet, a
fixed dispatch cost per call, and a LoRA-specific multiplier λ_m on the compute time of the
LoRA methods (m = lora, lora_merged): λ_m > 1 says LoRA's FLOPs run slower than full
fine-tuning's (skinny rank-r products, the extra merge, different fusion). It is linear in
the parameters (1/F_eff, 1/B_eff, τ, t_dispatch, 1/R_eff and (λ_m − 1)/F_eff), so every
candidate form below is a (generalised) linear model over one pinned design matrix.

result_bytes are the bytes of the gradients the timed call returns (trainable parameters, and
dX when the input needs a gradient): each call writes them into freshly allocated buffers,
whose first touch costs time per byte on top of the traffic the cost model counts (page
faults on a CPU; an allocation on any device). It is what makes full fine-tuning of a wide
layer at a tiny batch slower than its bytes alone say (its e×h gradients are results; a
merged LoRA's e×h ΔW is a reused temporary). A training step that updates its weights in
place does not pay it, so `costmodel.steptime`'s fitted step time leaves it out.

A time term that comes out negative is not identified by the data: it is held at 0. An
overhead with a device-profile value v (kernel and dispatch) is held in [0, v·T]
(`fitted_factors.OVERHEAD_TOLERANCE`): one fitted above v·T is held there. The
unconstrained fit is kept beside it (`FitResult.unconstrained`) so the crossover can say what
the data alone find, and every bootstrap replicate redoes the check (`fit_full`).

The per-kernel time, which the rows see only through the few kernels LoRA adds to a call,
also takes the device profile's value as a prior (`fitted_factors.PRIOR_TERMS`, standard
deviation `PRIOR_REL_SD` of it): mixed estimation (Theil & Goldberger 1961), one
pseudo-observation weighed against the rows by the fit's residual scale (`_fit_arrays`). Its
weight treats the rows as independent, though rows of one shape are not, so the prior counts
for somewhat less than its standard deviation says. The log forms have no such term.

Candidate forms (`FORMS`), compared by `analysis.validate` and chosen there by cross-validation
inside the training half (the one-standard-error rule), so the out-of-scale error stays free
of the choice:

* ``ols_additive``     OLS of t on the additive terms. Large configs dominate the loss.
* ``wls_additive``     WLS with weights 1/t²: least squares on *relative* error, which is what
                       the validation scores; the weights use the noisy observed t.
* ``gamma_identity``   Gamma GLM, identity link, same terms: variance ∝ mean², i.e. constant
                       coefficient of variation -- what repeated timings show -- with weights
                       from the fitted mean instead of the observation (McCullagh & Nelder,
                       "Generalized Linear Models", 2nd ed., §8).
* ``gamma_log_offset`` Gamma GLM, log link, log(roofline time from the measured device profile)
                       as offset, plus an intercept and one multiplier per LoRA method:
                       the datasheet/measured roofline, rescaled. Needs a device profile.
* ``gamma_log_roofline`` the same with log(roofline time) as a covariate instead of an offset:
                       a free elasticity lets time grow faster than the roofline as working
                       sets fall out of cache (CPU). Needs a device profile.

Standard errors are clustered by config (the rows of one config share its conditions); with
fewer than `MIN_CLUSTERS` configs, HC3. Units inside the design: milliseconds, GFLOP, GB, so
the matrices are well conditioned; `factors` converts back to FLOP/s, bytes/s and µs.

The design (regressors, formulas, design matrix, prediction) is `analysis.design`'s, with its
formula engine pinned.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import statsmodels.api as sm

from analysis.design import (  # noqa: F401 -- the design's names, re-exported as fit's
    ADDITIVE_FORMS,
    ADDITIVE_FORMULA,
    FORMS,
    LOG_FORMS,
    LOG_FORMULA,
    LOG_ROOF_FORMULA,
    PHYSICAL,
    design_matrix,
    dummy_terms,
    predict_many,
    predict_ms,
    terms_frame,
)
from analysis.fitted_factors import (  # noqa: F401 -- re-exported as fit's
    CI_LEVEL,
    OVERHEAD_TOLERANCE,
    PRIOR_REL_SD,
    PRIOR_TERMS,
    Factor,
    bounds_of,
    critical_value,
    factors_of,
    prior_sds,
    priors_from_profile,
)
from costmodel.errors import UserError

#: Config clusters below which the cluster-robust covariance is not trusted (HC3 instead).
MIN_CLUSTERS = 10
#: Fewest configs (each timed under at least two methods) a fit needs: 6 parameters, and
#: enough held-out configs for 5-fold cross-validation.
MIN_CONFIGS = 8



@dataclass(frozen=True)
class FitResult:
    """A fitted form: parameters in design units, their robust covariance, and diagnostics."""

    form: str
    columns: tuple[str, ...]
    params: np.ndarray
    cov: np.ndarray
    cov_type: str
    n_obs: int
    n_configs: int
    rel_resid: np.ndarray  # measured / fitted, for every training row
    summary_text: str
    factors: tuple[Factor, ...] = field(default=())
    dropped: tuple[str, ...] = ()  # physical terms fitted negative and removed
    fixed: tuple[tuple[str, float], ...] = ()  # ... and fixed at the device profile's value
    #: The prior values the sign check may fix terms at (the bootstrap redoes the check).
    priors: tuple[tuple[str, float], ...] = ()
    #: Each constrained term with the terms constrained before it (empty: the unconstrained
    #: fit itself put it below zero; else it went negative once those were constrained).
    constrained_after: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: LoRA methods whose multiplier λ_m is held at its bound 0 (b_m = −b_f).
    tied: tuple[str, ...] = ()
    #: With a term fixed or dropped: the unconstrained point estimate over all design
    #: columns (every term free, negative or not), so the report can say what the data alone
    #: find. None when nothing was constrained or the unconstrained fit failed.
    unconstrained: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"unknown model form {self.form!r}")
        if self.params.shape != (len(self.columns),):
            raise ValueError("params and columns disagree")

    def predict_ms(self, terms: pd.DataFrame, params: np.ndarray) -> np.ndarray:
        """Predicted time in ms for the rows of `terms` under full-design `params`."""
        return predict_ms(self.form, terms, params)


class _Prior(NamedTuple):
    """A pseudo-observation "column j = value" with standard deviation sd (design units)."""

    j: int
    value: float
    sd: float


def _fit_arrays(form: str, X: np.ndarray, off: np.ndarray, y: np.ndarray,
                groups: np.ndarray | None, start: np.ndarray | None = None,
                prior: _Prior | None = None):
    """Fit one form on arrays. With groups, the statsmodels result carries the robust covariance;
    without, only the point estimate is needed (bootstrap, cross-validation) and the fit is lean.

    With a prior (additive forms), mixed estimation (Theil & Goldberger 1961): the rows and one
    pseudo-observation of column j, whose weight makes its error (value − β_j)/sd count as much
    as a row's error over the fit's residual scale σ̂² (Pearson, from the fit without the
    prior, in the form's own weighting): weight σ̂²/sd² in least squares on the form's weighted
    residuals. In the robust covariance the pseudo-observation is a cluster of its own."""
    if prior is None or form in LOG_FORMS:
        return _fit_plain(form, X, off, y, groups, start)
    beta0, _ = _fit_plain(form, X, off, y, None, start)
    mu = X @ beta0 + off
    natural = _natural_weights(form, y, mu)
    scale2 = float(np.sum(natural * (y - mu) ** 2) / max(len(y) - X.shape[1], 1))
    m = scale2 / prior.sd**2  # the pseudo-row's weight on the form's weighted-residual scale
    row = np.zeros((1, X.shape[1]))
    row[0, prior.j] = 1.0
    Xa, offa, ya = np.vstack([X, row]), np.append(off, 0.0), np.append(y, prior.value)
    ga = None if groups is None else np.append(groups, np.max(groups) + 1)
    if form in ("ols_additive", "wls_additive"):
        w = np.append(natural if form == "wls_additive" else np.ones_like(y), m)
        if ga is None:
            sw = np.sqrt(w)
            return np.linalg.lstsq(Xa * sw[:, None], (ya - offa) * sw, rcond=None)[0], None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return None, sm.WLS(ya - offa, Xa, weights=w).fit(**_robust(ga))
    # Gamma, identity link: the IRLS weight of an observation is var_weight / μ²; the pseudo-
    # row's var_weight m·v² gives it weight m at μ = v (the prior's centre)
    centre = prior.value if prior.value > 0 else prior.sd
    vw = np.append(np.ones_like(y), m * centre**2)
    start = beta0 if start is None else start
    if ga is None:
        return _irls(form, Xa, offa, ya, start, var_weights=vw), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        family = sm.families.Gamma(link=sm.families.links.Identity())
        model = sm.GLM(ya, Xa, family=family, offset=offa, var_weights=vw)
        return None, model.fit(start_params=start, maxiter=100, **_robust(ga))


def _natural_weights(form: str, y: np.ndarray, mu: np.ndarray | None) -> np.ndarray:
    """Each row's weight in the form's least squares: 1 (OLS), 1/y² (WLS), 1/μ² (Gamma)."""
    if form == "ols_additive":
        return np.ones_like(y)
    if form == "wls_additive":
        return 1.0 / y**2
    return 1.0 / _positive_mean(mu, y) ** 2


def _positive_mean(mu: np.ndarray, y: np.ndarray) -> np.ndarray:
    """An identity-link Gamma mean held above 0 (a tiny fraction of the largest time), where
    its weight 1/μ² would blow up."""
    return np.maximum(mu, 1e-12 * np.max(np.abs(y)))


def _robust(groups: np.ndarray) -> dict[str, Any]:
    """Clustered by config (HC3 below `MIN_CLUSTERS` clusters)."""
    if len(np.unique(groups)) >= MIN_CLUSTERS:
        return {"cov_type": "cluster", "cov_kwds": {"groups": groups}}
    return {"cov_type": "HC3"}


def _fit_plain(form: str, X: np.ndarray, off: np.ndarray, y: np.ndarray,
               groups: np.ndarray | None, start: np.ndarray | None = None):
    """`_fit_arrays` without a prior."""
    robust = {} if groups is None else _robust(groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # For the additive forms `off` holds the time of terms fixed at prior values (ms).
        if form == "ols_additive":
            if not robust:
                return np.linalg.lstsq(X, y - off, rcond=None)[0], None
            return None, sm.OLS(y - off, X).fit(**robust)
        if form == "wls_additive":
            w = _natural_weights(form, y, None)
            if not robust:
                sw = np.sqrt(w)
                return np.linalg.lstsq(X * sw[:, None], (y - off) * sw, rcond=None)[0], None
            return None, sm.WLS(y - off, X, weights=w).fit(**robust)
        if start is None:
            if form == "gamma_identity":
                sw = 1.0 / y
                start = np.linalg.lstsq(X * sw[:, None], (y - off) * sw, rcond=None)[0]
            else:
                start = np.linalg.lstsq(X, np.log(y) - off, rcond=None)[0]
        if not robust:
            return _irls(form, X, off, y, start), None
        if form == "gamma_identity":
            family = sm.families.Gamma(link=sm.families.links.Identity())
            model = sm.GLM(y, X, family=family, offset=off)
        else:
            model = sm.GLM(y, X, family=sm.families.Gamma(link=sm.families.links.Log()),
                           offset=off)
        res = model.fit(start_params=start, maxiter=100, **robust)
        if not robust:
            return np.asarray(res.params), None
        return None, res


class _Dropped(NamedTuple):
    """A fit after the sign check. params: over `cols`, the estimated columns; res: the
    statsmodels result (None on the fast path); dropped: terms set to 0; fixed: term -> prior
    value; offset: the offset with the fixed terms in it; after: each constrained term -> the
    terms constrained before it (empty: the unconstrained fit itself put it below zero)."""

    params: np.ndarray
    cols: list[str]
    res: Any
    dropped: list[str]
    fixed: dict[str, float]
    offset: np.ndarray
    after: dict[str, tuple[str, ...]]
    #: LoRA methods whose multiplier λ_m was held at its bound 0 (b_m = −b_f, `_tie`)
    tied: tuple[str, ...] = ()


def _tie(X: np.ndarray, cols: list[str], method: str) -> tuple[np.ndarray, list[str]]:
    """Hold λ_m = 1 + b_m / b_f at its bound 0: b_m = −b_f, so the compute term reaches the
    rows of every method but m. The column gflops becomes gflops − gflops:m = gflops·[method
    ≠ m] and gflops:m goes (`expand_params` and `fit_full` set b_m = −b_f back)."""
    jf, jm = cols.index("gflops"), cols.index(f"gflops:{method}")
    X = X.copy()
    X[:, jf] = X[:, jf] - X[:, jm]
    return np.delete(X, jm, axis=1), [c for c in cols if c != f"gflops:{method}"]


def _irls(form: str, X: np.ndarray, off: np.ndarray, y: np.ndarray, start: np.ndarray,
          max_iter: int = 50, tol: float = 1e-8, var_weights: np.ndarray | None = None
          ) -> np.ndarray:
    """Point estimate of a Gamma GLM by iteratively reweighted least squares (McCullagh &
    Nelder §2.5), the lean path for cross-validation and the bootstrap. Gamma variance μ²:
    identity link -> weights 1/μ², working response y − offset; log link -> weights 1,
    working response η + (y − μ)/μ; var_weights (identity link) multiply the weights 1/μ² as
    statsmodels' do. Same estimate as statsmodels' GLM (a test checks)."""
    beta = np.asarray(start, dtype=float)
    vw = np.ones_like(y) if var_weights is None else np.asarray(var_weights, dtype=float)
    for _ in range(max_iter):
        eta = X @ beta + off
        if form == "gamma_identity":
            mu = _positive_mean(eta, y)
            sw = np.sqrt(vw) / mu
            z = y - off
        else:
            mu = np.exp(eta)
            sw = np.ones_like(y)
            z = eta - off + (y - mu) / mu
        new = np.linalg.lstsq(X * sw[:, None], z * sw, rcond=None)[0]
        if np.max(np.abs(new - beta)) <= tol * (np.max(np.abs(beta)) + tol):
            return new
        beta = new
    return beta


def _fit_dropping(form: str, X: np.ndarray, off: np.ndarray, y: np.ndarray, cols: list[str],
                  groups: np.ndarray | None, priors: dict[str, float] | None = None,
                  start: np.ndarray | None = None,
                  prior_values: dict[str, float] | None = None) -> _Dropped:
    """Fit, and while a physical term (time per FLOP, byte, kernel or call) comes out
    negative, take it out and refit: a negative time is not physical, it says the data
    cannot see that term (e.g. kernel counts that barely vary within a method): it is
    dropped (0). A term with a prior value (the device profile's measured kernel and
    dispatch overheads) that comes out above the top of its box (`bounds_of`) is fixed
    there, as an offset. LoRA multipliers may fall below 1. A `PRIOR_TERMS` term with a profile
    value enters as a prior too (`_fit_arrays`), centred on the profile's value or on
    `prior_values`' (a bootstrap replicate's redrawn pseudo-observation); the box stays the
    profile's. Returns a `_Dropped`."""
    cols = list(cols)
    priors = priors or {}
    sds = prior_sds(priors)
    centres = {**priors, **(prior_values or {})}
    dropped: list[str] = []
    fixed: dict[str, float] = {}
    after: dict[str, tuple[str, ...]] = {}
    tied: list[str] = []
    off = np.asarray(off, dtype=float).copy()
    while True:
        with_prior = [c for c in sds if c in cols]
        prior = (_Prior(cols.index(with_prior[0]), centres[with_prior[0]], sds[with_prior[0]])
                 if with_prior else None)
        params, res = _fit_arrays(form, X, off, y, groups,
                                  start if start is not None and len(start) == len(cols) else None,
                                  prior)
        if res is not None:
            params = np.asarray(res.params)
        bad = []  # (relative violation, term, the bound it is held at or None to drop)
        for j, c in enumerate(cols):
            if c not in PHYSICAL:
                continue
            if c in priors and priors[c] > 0:
                lo, hi = bounds_of(c, priors)  # violations relative to the profile's value
                if params[j] < lo:
                    bad.append((-(lo - params[j]) / priors[c], c, lo))
                elif params[j] > hi:
                    bad.append((-(params[j] - hi) / priors[c], c, hi))
            elif params[j] < 0:
                bad.append((-np.inf if c in priors else params[j], c, None))
        if form in LOG_FORMS or len(cols) <= 2:
            return _Dropped(params, cols, res, dropped, fixed, off, after, tuple(tied))
        if not bad:
            # λ_m ≥ 0: a LoRA method's time per FLOP cannot be negative either
            neg = [m for m in ("lora", "lora_merged") if "gflops" in cols
                   and f"gflops:{m}" in cols
                   and params[cols.index("gflops")] + params[cols.index(f"gflops:{m}")] < 0]
            if not neg:
                return _Dropped(params, cols, res, dropped, fixed, off, after, tuple(tied))
            X, cols = _tie(X, cols, neg[0])
            tied.append(neg[0])
            continue
        _, name, held = min(bad, key=lambda b: b[0])
        j = cols.index(name)
        cols.pop(j)
        after[name] = tuple(dropped) + tuple(fixed)
        if held is not None and held > 0:
            fixed[name] = float(held)
            off = off + X[:, j] * fixed[name]
        else:
            dropped.append(name)
        X = np.delete(X, j, axis=1)


def fit_full(form: str, X: np.ndarray, off: np.ndarray, y: np.ndarray, cols: Sequence[str],
             priors: dict[str, float] | None = None, start: np.ndarray | None = None,
             prior_values: dict[str, float] | None = None,
             ) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Point estimate with the sign check, over all of `cols` (the full design): zeros for
    all-zero columns (the LoRA columns of methods absent from the rows) and dropped terms,
    prior values for fixed ones. Returns (params, fixed terms, dropped terms). The fast path
    for cross-validation and for every bootstrap replicate, which so redo the sign check."""
    cols = list(cols)
    keep = np.flatnonzero(np.any(X != 0, axis=0))
    start = None if start is None else np.asarray(start)[keep]
    fitted = _fit_dropping(form, X[:, keep], off, y, [cols[j] for j in keep], None, priors,
                           start, prior_values)
    params = np.zeros(len(cols))
    params[[cols.index(c) for c in fitted.cols]] = fitted.params
    for c, v in fitted.fixed.items():
        params[cols.index(c)] = v
    for m in fitted.tied:
        params[cols.index(f"gflops:{m}")] = -params[cols.index("gflops")]
    return params, tuple(fitted.fixed), tuple(fitted.dropped) + tuple(f"gflops:{m}"
                                                                       for m in fitted.tied)


def fit_params(form: str, terms: pd.DataFrame, priors: dict[str, float] | None = None) -> np.ndarray:
    """Point estimate only (no covariance), over all design columns (zeros for the LoRA
    columns of methods absent from `terms`, prior values for fixed terms): the fast path for
    cross-validation."""
    X, off, cols = design_matrix(form, terms)
    return fit_full(form, X, off, terms["time_ms"].to_numpy(), cols, priors)[0]


def fit(form: str, terms: pd.DataFrame, groups: np.ndarray,
        priors: dict[str, float] | None = None) -> FitResult:
    """Fit `form` to the measured rows of `terms`, with config-clustered standard errors.

    groups: the config id of each row (rows of one config are one cluster).
    Raises UserError when the data cannot identify the parameters.
    """
    if form not in FORMS:
        raise ValueError(f"unknown model form {form!r}; choose one of {', '.join(FORMS)}")
    X, off, cols = design_matrix(form, terms)
    X_all, all_cols = X, list(cols)
    y = terms["time_ms"].to_numpy()
    if not np.all(np.isfinite(y) & (y > 0)):
        raise ValueError("fit needs positive finite times")
    # Drop LoRA columns for methods the data does not hold (e.g. the blog has no factored lora).
    keep = [j for j, c in enumerate(cols) if np.any(X[:, j] != 0)]
    X, cols = X[:, keep], [cols[j] for j in keep]
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise UserError(
            f"the data cannot separate the {X.shape[1]} terms of the {form} model "
            "(too few distinct sizes or methods)")
    X_kept, off0, cols_kept = X, off, list(cols)
    fitted_ = _fit_dropping(form, X, off, y, cols, groups, priors)
    params, cols, res, dropped = fitted_.params, fitted_.cols, fitted_.res, fitted_.dropped
    fixed, off, after, tied = fitted_.fixed, fitted_.offset, fitted_.after, fitted_.tied
    unconstrained = None
    if dropped or fixed or tied:
        try:
            free, _ = _fit_arrays(form, X_kept, off0, y, None)
        except (np.linalg.LinAlgError, ValueError):
            free = None
        if free is not None and np.all(np.isfinite(free)):
            unconstrained = np.zeros(len(all_cols))
            unconstrained[[all_cols.index(c) for c in cols_kept]] = free
    cov = np.asarray(res.cov_params())
    keep = [all_cols.index(c) for c in cols]
    if form in LOG_FORMS:
        fitted = np.asarray(res.predict(X_all[:, keep], offset=off))
    else:
        full = np.zeros(len(all_cols))
        full[keep] = params
        for c, v in fixed.items():
            full[all_cols.index(c)] = v
        for m in tied:
            full[all_cols.index(f"gflops:{m}")] = -full[all_cols.index("gflops")]
        fitted = X_all @ full + off0
    summary = res.summary(yname="time_ms", xname=cols).as_text()
    if form not in LOG_FORMS and any(c in cols for c in prior_sds(priors or {})):
        summary += ("\nOne of the observations is the per-kernel time's prior (the device "
                    "profile's value, a pseudo-observation in a cluster of its own).\n")
    n_configs = len(np.unique(groups))
    cov_type = (f"cluster(shape), t with {n_configs - 1} df" if n_configs >= MIN_CLUSTERS
                else "HC3")
    factors = factors_of(form, cols, params, cov, fixed,
                       df=n_configs - 1 if n_configs >= MIN_CLUSTERS else len(y) - len(cols),
                       priors=priors, tied=tied)
    return FitResult(
        form=form, columns=tuple(cols), params=params, cov=cov, cov_type=cov_type,
        n_obs=len(y), n_configs=n_configs, rel_resid=y / fitted, summary_text=summary,
        factors=factors, dropped=tuple(dropped), fixed=tuple(fixed.items()),
        priors=tuple((priors or {}).items()), constrained_after=tuple(after.items()),
        tied=tuple(tied),
        unconstrained=unconstrained,
    )


def expand_params(result: FitResult, params: np.ndarray) -> np.ndarray:
    """Parameters (B, k) over the result's kept columns → full design columns (B, p), zeros
    for dropped LoRA columns, so `predict_many` can use the full design matrix."""
    _, _, all_cols = design_matrix(result.form, dummy_terms())
    out = np.zeros((params.shape[0], len(all_cols)))
    for j, c in enumerate(result.columns):
        out[:, all_cols.index(c)] = params[:, j]
    for c, v in result.fixed:
        out[:, all_cols.index(c)] = v
    for m in result.tied:
        out[:, all_cols.index(f"gflops:{m}")] = -out[:, all_cols.index("gflops")]
    return out
