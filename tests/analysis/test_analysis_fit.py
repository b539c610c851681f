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
    res = fitmod.fit(form, synthetic_rows, synthetic_rows["config_id"].to_numpy())
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
    assert res.cov_type == "cluster(config)"


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


def test_negative_physical_terms_are_dropped(fixture_csv):
    rows = _rows(data.load(fixture_csv).frame)
    res = fitmod.fit("wls_additive", rows, rows["config_id"].to_numpy())
    for c, p in zip(res.columns, res.params):
        if c in fitmod.PHYSICAL:
            assert p >= 0, c


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


def test_unidentified_overheads_are_fixed_at_the_profile(fixture_csv, fixture_profile):
    profile = HardwareProfile.from_json(fixture_profile)
    rows = _rows(data.load(fixture_csv).frame, profile)
    priors = fitmod.priors_from_profile(profile)
    assert priors["kernels"] == pytest.approx(profile.kernel_overhead_s * 1e3)
    assert priors["Intercept"] == pytest.approx(profile.extra["dispatch_overhead_s"] * 1e3)
    res = fitmod.fit("wls_additive", rows, rows["config_id"].to_numpy(), priors)
    factors = {f.name: f for f in res.factors}
    for name, col in (("time per kernel", "kernels"), ("dispatch per call", "Intercept")):
        if col in dict(res.fixed):
            assert factors[name].estimate == pytest.approx(priors[col] * 1e3)
            assert "fixed at the device profile" in factors[name].note
        else:
            assert col in res.columns
    # The fixed terms are part of the prediction, in the fit and in every replicate.
    full = fitmod.expand_params(res, res.params[None, :])[0]
    X, _, cols = fitmod.design_matrix("wls_additive", rows)
    for c, v in res.fixed:
        assert full[cols.index(c)] == v
    np.testing.assert_allclose(X @ full, rows["time_ms"].to_numpy() / res.rel_resid)
