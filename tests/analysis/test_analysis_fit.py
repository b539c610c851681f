"""Fits: recovery of a known model, the recorded fixture, the pinned formula engine."""

from __future__ import annotations

import numpy as np
import patsy
import pytest
import statsmodels.formula
from synthetic import TRUE, synthetic_dataset

from analysis import data, factors, prepare
from analysis import fit as fitmod
from analysis import validate as valmod
from costmodel.hardware import HardwareProfile


def _rows(frame, profile=None):
    sl = data.select(data.Dataset(frame, "x", "table"), fitmod.MIN_CONFIGS)
    return prepare.terms_for(sl.frame, profile, measured=True)


@pytest.fixture(scope="module")
def synthetic_rows():
    return _rows(synthetic_dataset(cv=0.03, seed=1))


@pytest.mark.parametrize("form", ["wls_additive", "gamma_identity"])
def test_factors_cover_the_generating_model(synthetic_rows, form):
    shapes = valmod.shape_ids(synthetic_rows)  # clusters are shapes, as in the pipeline
    res = fitmod.fit(form, synthetic_rows, shapes)
    f = {x.name: x for x in res.factors}
    truth = {
        "effective FLOP/s": TRUE["flops_per_s"], "effective bytes/s": TRUE["bytes_per_s"],
        "time per kernel": TRUE["kernel_s"] * 1e6, "dispatch per call": TRUE["dispatch_s"] * 1e6,
        "LoRA multiplier (lora)": TRUE["lambda_lora"],
        "LoRA multiplier (lora_merged)": TRUE["lambda_lora_merged"],
    }
    for name, value in truth.items():
        # Six 95% intervals from 24 clusters: allow 1.6x their half-width (about 3 SE), so
        # the test checks calibration, not luck.
        x = f[name]
        lo = x.estimate - 1.6 * (x.estimate - x.ci_low)
        hi = x.estimate + 1.6 * (x.ci_high - x.estimate)
        assert lo <= value <= hi, (name, x, value)
        if name != "dispatch per call":  # weakly identified beside the kernel term
            assert x.estimate == pytest.approx(value, rel=0.15), (name, x, value)
    g = len(np.unique(shapes))  # t with G - 1 degrees of freedom
    assert res.cov_type == f"cluster(shape), t with {g - 1} df" and g < 24


def test_validation_picks_a_relative_error_form_and_beats_flops_baseline(synthetic_rows):
    v = valmod.validate(synthetic_rows, fitmod.ADDITIVE_FORMS)
    assert v.chosen in ("wls_additive", "gamma_identity")
    t = v.table
    oos = t[(t["scheme"] == "out_of_scale") & (t["quantity"] == "full")].set_index("model")
    assert oos.loc[v.chosen, "median_ape_pct"] < 10
    assert oos.loc[v.chosen, "median_ape_pct"] < oos.loc["flops_proportional", "median_ape_pct"]
    assert set(t["scheme"]) >= {"cv5", "out_of_scale"}
    assert {"ratio lora/full", "ratio lora_merged/full"} <= set(t["quantity"])


def test_fixture_fits_every_form_with_profile(fixture_csv, fixture_profile):
    profile = HardwareProfile.from_json(fixture_profile)
    rows = _rows(data.load(fixture_csv).frame, profile)
    for form in fitmod.FORMS:
        res = fitmod.fit(form, rows, rows["config_id"].to_numpy())
        assert np.all(np.isfinite(res.params))
        assert res.n_obs == 72 and res.n_configs == 24
        assert res.factors
    v = valmod.validate(rows, tuple(fitmod.FORMS))
    assert v.chosen in fitmod.FORMS
    assert {"flops_proportional", "roofline_unfitted"} <= set(v.table["model"])
    assert "replicates (noise floor)" in set(v.table["model"])


#: Priors (design units, ms) standing in for a device profile: 2 us per kernel, 30 us per call.
PRIORS = {"kernels": 2e-3, "Intercept": 0.03}


@pytest.fixture(scope="module")
def zero_tau_rows():
    """A true per-kernel time of 0 plus 3% noise: on this seed the free fit puts it below 0."""
    return _rows(synthetic_dataset(cv=0.03, seed=3, truth={**TRUE, "kernel_s": 0.0}))


def _unconstrained_kernel_coef(rows) -> float:
    X, _, cols = fitmod.design_matrix("wls_additive", rows)
    w = 1 / rows["time_ms"].to_numpy()
    beta = np.linalg.lstsq(X * w[:, None], rows["time_ms"].to_numpy() * w, rcond=None)[0]
    return float(beta[cols.index("kernels")])


@pytest.mark.parametrize("priors", [PRIORS, None], ids=["with profile", "without profile"])
def test_negative_kernel_term_is_dropped_and_said(zero_tau_rows, priors):
    from analysis import bootstrap, crossover_notes, crossover_table
    from analysis.report import fmt_factor

    rows = zero_tau_rows
    assert _unconstrained_kernel_coef(rows) < 0  # the precondition: the branch does run
    res = fitmod.fit("wls_additive", rows, rows["config_id"].to_numpy(), priors)
    for c, p in zip(res.columns, res.params):
        if c in fitmod.PHYSICAL:
            assert p >= 0, c
    _, _, cols = fitmod.design_matrix("wls_additive", rows)
    assert res.unconstrained[cols.index("kernels")] == pytest.approx(
        _unconstrained_kernel_coef(rows))
    tau = {f.name: f for f in res.factors}["time per kernel"]
    full = bootstrap.full_params(res)
    # with or without a profile, a negative time per kernel is held at its physical bound 0
    # (the profile's value only caps it from above: `fitted_factors.bounds_of`)
    assert "kernels" in res.dropped and not res.fixed
    assert tau.estimate == 0.0 and tau.note.startswith("not identified: fitted at the bound 0")
    assert "(not identified)" in fmt_factor(tau)
    assert full[cols.index("kernels")] == 0.0
    if priors:
        assert (tau.lower_bound, tau.upper_bound) == (0.0, pytest.approx(6.0))
    # Every replicate redoes the sign check: some keep the prior/zero, some estimate it.
    boot = bootstrap.bootstrap(res, rows, n_boot=40, seed=0)
    share = boot.constrained["kernels"]
    assert 0.5 < share < 1
    k = boot.params[:, cols.index("kernels")]
    held = 0.0
    assert np.sum(np.isclose(k, held)) == round(share * len(k)) and np.all(k[~np.isclose(k, held)] > 0)
    # The crossover says it rests on the prior, and what the unconstrained fit finds.
    xo = crossover_table.crossover_table(res, boot, rows, None).table
    row = xo[(xo["batch"] == 2) & (xo["rank"] == 4) & (xo["method"] == "lora")].iloc[0]
    assert np.isfinite(row["d_star"])
    said = ("d* set by the per-kernel overhead dropped (0: the free fit put it below zero; "
            "dropped in")
    assert said in row["note"], row["note"]
    free_kernel = res.unconstrained[cols.index("kernels")]
    assert free_kernel < 0 and ("with no term constrained the fit finds "
                                + crossover_notes.term_value("kernels", free_kernel)) in row["note"]
    assert "no crossover in range (LoRA faster throughout)" in row["note"]
    # Replicates already faster at the search floor make the lower end a censored bound.
    floor = xo[xo["ci_low"] <= crossover_table.D_MIN]
    assert (xo["ci_low_censored"] == (xo["ci_low"] <= crossover_table.D_MIN)).all()
    assert floor["ci_low_censored"].all()
    # A row where the unconstrained fit agrees still names the constrained term.
    agree = xo[(xo["batch"] == 256) & (xo["rank"] == 1) & (xo["method"] == "lora")].iloc[0]
    assert "per-kernel overhead" in agree["note"] and "within the interval" in agree["note"]


def test_no_prior_note_when_nothing_is_constrained(synthetic_rows):
    """Every term fits positive: no prior note at all, and no unconstrained twin is kept."""
    from analysis import bootstrap, crossover_table

    res = fitmod.fit("wls_additive", synthetic_rows, synthetic_rows["config_id"].to_numpy(), PRIORS)
    assert not res.fixed and not res.dropped and res.unconstrained is None
    boot = bootstrap.bootstrap(res, synthetic_rows, n_boot=20, seed=0)
    xo = crossover_table.crossover_table(res, boot, synthetic_rows, None).table
    assert not xo["note"].str.contains("constrained|device profile").any()


def test_cv_folds_keep_every_rank_of_a_shape_together(synthetic_rows):
    """Full fine-tuning ignores the rank: its rows at other ranks of the same shape are
    replicates, so they must never sit in training while one of them is tested."""
    fold = valmod.folds(valmod.shape_ids(synthetic_rows))
    keys = list(valmod.SHAPE_COLUMNS)
    per_shape = synthetic_rows.assign(fold=fold).groupby(keys)["fold"].nunique()
    assert (per_shape == 1).all()
    assert synthetic_rows.groupby(keys)["rank"].nunique().min() == 2  # ranks do share shapes
    assert len(np.unique(fold)) == valmod.N_FOLDS


def test_validation_skips_an_empty_out_of_scale_half(synthetic_rows):
    one = synthetic_rows[synthetic_rows["embed"] == 256]
    v = valmod.validate(one, ("wls_additive",))
    assert "out_of_scale" not in set(v.table["scheme"]) and "cv5" in set(v.table["scheme"])


def test_design_matrix_is_built_by_patsy(synthetic_rows):
    X, off, cols = fitmod.design_matrix("wls_additive", synthetic_rows)
    assert cols == ["Intercept", "gflops", "gbytes", "kernels", "gresult", "gflops:lora",
                    "gflops:lora_merged"]
    dm = patsy.dmatrix(fitmod.ADDITIVE_FORMULA, synthetic_rows)
    np.testing.assert_array_equal(np.asarray(dm), X)


def test_anova_formula_engine_is_pinned(synthetic_rows, monkeypatch):
    options = statsmodels.formula.options
    if "formulaic" not in options._allowed_options:
        pytest.skip("formulaic not installed")
    monkeypatch.setattr(options, "formula_engine", "formulaic")
    seen = []
    real = factors.smf.ols

    def spy(formula, data, **kw):
        seen.append(options.formula_engine)
        model = real(formula, data, **kw)
        seen.append(type(model.data.model_spec).__module__)
        return model

    monkeypatch.setattr(factors.smf, "ols", spy)
    table = factors.anova(factors.ratio_table(synthetic_rows))
    assert seen and seen[0] == "patsy" and seen[1].startswith("patsy")
    assert options.formula_engine == "formulaic"  # restored after the call
    shares = table.groupby("method")["share_of_variance"].sum()
    np.testing.assert_allclose(shares.to_numpy(), 1.0)
    assert set(table["term"]) >= {"batch", "width", "rank", "Residual"}


def test_priors_come_from_the_profile(fixture_csv, fixture_profile):
    profile = HardwareProfile.from_json(fixture_profile)
    priors = fitmod.priors_from_profile(profile)
    assert priors["kernels"] == pytest.approx(profile.kernel_overhead_s * 1e3)
    assert priors["Intercept"] == pytest.approx(profile.extra["dispatch_overhead_s"] * 1e3)
    assert fitmod.priors_from_profile(None) == {}


def test_an_overhead_above_its_cap_is_held_there_and_enters_the_prediction():
    """True per-kernel time 4 us; a device profile that measured 0.5 us caps it at
    0.5 x OVERHEAD_TOLERANCE["kernels"] = 1.5 us: the fit holds it there (at_bound, upper end), and its
    in-sample prediction, rebuilt from the full parameter vector, reproduces its residuals."""
    rows = _rows(synthetic_dataset(cv=0.03, seed=3))
    priors = {"kernels": 0.5e-3, "Intercept": 0.1}  # 30 us per call true, 300 us cap
    res = fitmod.fit("wls_additive", rows, rows["config_id"].to_numpy(), priors)
    cap = 0.5e-3 * fitmod.OVERHEAD_TOLERANCE["kernels"]
    assert dict(res.fixed) == {"kernels": pytest.approx(cap)}
    tau = {f.key: f for f in res.factors}["kernel_time"]
    assert tau.status == "at_bound" and tau.estimate == pytest.approx(1.5)
    assert tau.note.startswith("not identified: held at the upper end of its box")
    full = fitmod.expand_params(res, res.params[None, :])[0]
    X, _, cols = fitmod.design_matrix("wls_additive", rows)
    assert full[cols.index("kernels")] == pytest.approx(cap)
    np.testing.assert_allclose(X @ full, rows["time_ms"].to_numpy() / res.rel_resid)


def test_a_lora_multiplier_below_zero_is_held_at_its_bound():
    """LoRA rows whose time falls as their FLOPs grow: free, λ_lora = 1 + b_lora / b_flops
    comes out negative (a negative time per FLOP at large widths). Held at its bound 0, the
    compute term reaches full's rows only, b_lora = −b_flops, no predicted time is negative."""
    g = np.array([1.0, 2.0, 4.0, 8.0] * 2)
    method = ["full"] * 4 + ["lora"] * 4
    t = np.where(np.array(method) == "full", 10.0 + 2.0 * g, 10.0 - 1.0 * g)  # ms
    terms = fitmod.terms_frame(g * 1e9, np.zeros(8), np.zeros(8), method, None, t / 1e3)
    X, off, cols = fitmod.design_matrix("ols_additive", terms)
    free = np.linalg.lstsq(X[:, np.any(X != 0, axis=0)], t, rcond=None)[0]
    assert 1 + free[-1] / free[1] < 0  # the precondition: λ_lora fits below 0
    params, _, constrained = fitmod.fit_full("ols_additive", X, off, t, cols)
    jf, jm = cols.index("gflops"), cols.index("gflops:lora")
    assert params[jm] == pytest.approx(-params[jf]) and "gflops:lora" in constrained
    assert params[jf] > 0
    assert np.all(fitmod.predict_many("ols_additive", X, off, params) > 0)
    res = fitmod.fit("ols_additive", terms, np.arange(8))
    lam = {f.key: f for f in res.factors}["lora_multiplier_lora"]
    assert (lam.estimate, lam.status) == (0.0, "at_bound") and res.tied == ("lora",)


def test_the_bootstrap_shows_progress_on_a_terminal_past_its_delay(synthetic_rows, monkeypatch):
    """Defect 9: --bootstrap ran for minutes with nothing shown. On a terminal a bar appears
    once the refits have taken PROGRESS_AFTER_S (0 here), out of the refits asked for."""
    import io
    import sys

    from analysis import bootstrap

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    res = fitmod.fit("wls_additive", synthetic_rows, synthetic_rows["config_id"].to_numpy(), PRIORS)
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(bootstrap, "PROGRESS_AFTER_S", 0.0)
    bootstrap.bootstrap(res, synthetic_rows, n_boot=20, seed=0)
    assert "bootstrap refits" in term.getvalue() and "/20 " in term.getvalue()
    quiet = io.StringIO()  # not a terminal (a log file, a pipe): nothing
    monkeypatch.setattr(sys, "stderr", quiet)
    bootstrap.bootstrap(res, synthetic_rows, n_boot=20, seed=0)
    assert quiet.getvalue() == ""


def test_the_form_is_chosen_by_the_one_standard_error_rule():
    """ols scores 10.0%, wls 10.5% (per method, cv_train): wls, first in the order of
    preference, is chosen when the difference's standard error is 1 point, ols when 0.2."""
    import pandas as pd

    rows = [{"model": m, "scheme": "cv_train", "quantity": q, "median_ape_pct": v,
             "p90_ape_pct": 2 * v}
            for m, v in (("ols_additive", 10.0), ("wls_additive", 10.5), ("gamma_identity", 12.0))
            for q in ("full", "lora")]
    table = pd.DataFrame(rows)
    models = ["ols_additive", "wls_additive", "gamma_identity"]

    def se(s):
        return {(a, b): s for a in models for b in models}

    chosen, why = valmod.choose(table, models, se(1.0))
    assert chosen == "wls_additive" and "within one standard error (1.0 points)" in why
    assert valmod.choose(table, models, se(0.2))[0] == "ols_additive"
    assert valmod.choose(table, models, None)[0] == "ols_additive"  # no SE: the lowest


def test_score_difference_se_is_zero_for_a_form_against_itself_and_positive_otherwise():
    rng = np.random.default_rng(0)
    method = np.array(["full", "lora"] * 20)
    shape = np.repeat(np.arange(20), 2)
    ape = {"a": rng.uniform(0, 20, 40), "b": rng.uniform(0, 20, 40)}
    se = valmod.score_differences_se(ape, method, shape, n_boot=100)
    assert se[("a", "a")] == 0.0 and se[("a", "b")] == se[("b", "a")] > 0


def _free_and_prior_wls(rows, value, sd):
    """Mixed estimation by hand (Theil & Goldberger 1961): the WLS normal equations of the
    rows over their residual scale, plus the prior's precision on the kernel term."""
    X, off, cols = fitmod.design_matrix("wls_additive", rows)
    keep = np.flatnonzero(np.any(X != 0, axis=0))
    X, cols = X[:, keep], [cols[j] for j in keep]
    y = rows["time_ms"].to_numpy()
    W = np.diag(1 / y**2)
    free = np.linalg.solve(X.T @ W @ X, X.T @ W @ (y - off))
    r = (y - off - X @ free) / y
    scale2 = r @ r / (len(y) - len(cols))
    j = cols.index("kernels")
    P = np.zeros((len(cols), len(cols)))
    P[j, j] = 1 / sd**2
    b = X.T @ W @ (y - off) / scale2
    b[j] += value / sd**2
    post = np.linalg.solve(X.T @ W @ X / scale2 + P, b)
    return X, off, y, cols, free, post


def test_the_kernel_prior_is_mixed_estimation_and_reaches_both_limits(synthetic_rows):
    """The per-kernel time with the profile's value as prior: the posterior mode of the
    Gaussian linear model by its closed form; a vague prior gives the free fit, a sharp one
    the prior's value; the factor says which prior it used."""
    value = 5e-3  # ms: 5 us per kernel, where the synthetic truth has 2 us
    sd = value * fitmod.PRIOR_REL_SD
    priors = {"kernels": value}
    X, off, y, cols, free, post = _free_and_prior_wls(synthetic_rows, value, sd)
    j = cols.index("kernels")
    assert free[j] < post[j] < value  # the precondition: the prior moves it, not to its value
    got, fixed, dropped = fitmod.fit_full("wls_additive", X, off, y, cols, priors)
    assert not fixed and not dropped
    np.testing.assert_allclose(got, post, rtol=1e-8)
    vague = fitmod._fit_arrays("wls_additive", X, off, y, None, None,
                               fitmod._Prior(j, value, 1e3))[0]
    sharp = fitmod._fit_arrays("wls_additive", X, off, y, None, None,
                               fitmod._Prior(j, value, 1e-9))[0]
    np.testing.assert_allclose(vague, free, rtol=1e-6)
    assert sharp[j] == pytest.approx(value, rel=1e-6)
    res = fitmod.fit("wls_additive", synthetic_rows, valmod.shape_ids(synthetic_rows), priors)
    np.testing.assert_allclose(res.params, post, rtol=1e-6)  # statsmodels' path, same estimate
    tau = {f.key: f for f in res.factors}["kernel_time"]
    assert (tau.prior_mean, tau.prior_sd) == (pytest.approx(5.0), pytest.approx(2.5))
    assert "prior 5 ± 2.5 us" in tau.note
    disp = {f.key: f for f in res.factors}["dispatch_time"]
    assert np.isnan(disp.prior_mean)  # the dispatch time has a box, no prior


def test_the_gamma_fit_with_a_prior_is_the_same_lean_and_in_statsmodels(synthetic_rows):
    """The lean IRLS (bootstrap, cross-validation) and statsmodels' GLM with var_weights (the
    reported fit) reach one estimate with the kernel prior; the prior moves the estimate."""
    priors = {"kernels": 5e-3}
    res = fitmod.fit("gamma_identity", synthetic_rows, valmod.shape_ids(synthetic_rows), priors)
    X, off, cols = fitmod.design_matrix("gamma_identity", synthetic_rows)
    y = synthetic_rows["time_ms"].to_numpy()
    lean = fitmod.fit_full("gamma_identity", X, off, y, cols, priors)[0]
    np.testing.assert_allclose(lean, fitmod.expand_params(res, res.params[None, :])[0],
                               rtol=1e-5, atol=1e-12)
    free = fitmod.fit_full("gamma_identity", X, off, y, cols)[0]
    j = cols.index("kernels")
    assert free[j] < lean[j] < 5e-3


def test_the_bootstrap_redraws_the_prior_in_every_refit(synthetic_rows, monkeypatch):
    """Each refit gets its own draw of the kernel prior's pseudo-observation, from N(v, sd²)
    cut at 0, as the rows are redrawn: the interval carries the prior's uncertainty too."""
    from analysis import bootstrap

    value = 2e-3
    res = fitmod.fit("wls_additive", synthetic_rows, valmod.shape_ids(synthetic_rows),
                     {"kernels": value})
    seen = []
    real = fitmod.fit_full

    def spy(*args, **kwargs):
        seen.append(args[7]["kernels"])
        return real(*args, **kwargs)

    monkeypatch.setattr(fitmod, "fit_full", spy)
    boot = bootstrap.bootstrap(res, synthetic_rows, n_boot=400, seed=0)
    draws = np.array(seen)
    assert len(draws) == 400 and boot.params.shape[0] == 400 - boot.n_failed
    sd = value * fitmod.PRIOR_REL_SD
    assert np.all(draws >= 0) and len(np.unique(draws)) > 390
    assert abs(draws.mean() - value) < 4 * sd / np.sqrt(400)  # 2% cut at 0 moves it < 0.1 sd
    assert np.std(draws) == pytest.approx(sd, rel=0.15)
