"""`python -m analysis.crossover`: exit codes, one-line errors, --out untouched on bad input,
the --json keys, and a figure smoke test (all on the recorded fixture, no sweep)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import crossover
from analysis.data import load


def _snapshot(path):
    return sorted((p, os.path.getmtime(os.path.join(path, p))) for p in os.listdir(path))


@pytest.fixture()
def out_dir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    return out


def _bad(capsys, out, argv):
    before = _snapshot(out)
    rc = crossover.main([*argv, "--out", str(out), "--no-plots"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("python -m analysis.crossover: error: ")
    assert _snapshot(out) == before
    return err


def test_missing_file(capsys, out_dir, tmp_path):
    err = _bad(capsys, out_dir, ["--data", str(tmp_path / "nope.csv")])
    assert "does not exist" in err


def test_empty_file(capsys, out_dir, tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("")
    assert "is empty" in _bad(capsys, out_dir, ["--data", str(p)])


def test_foreign_file(capsys, out_dir, tmp_path):
    p = tmp_path / "foreign.csv"
    p.write_text("name,score\nada,3\n")
    assert "neither a lora-crossover dataset nor the blog's" in _bad(capsys, out_dir, ["--data", str(p)])


def test_too_few_configs(capsys, out_dir, tmp_path, fixture_csv):
    p = tmp_path / "small.csv"
    f = pd.read_csv(fixture_csv)
    f[f["embed"] <= 64].to_csv(p, index=False)
    err = _bad(capsys, out_dir, ["--data", str(p)])
    assert "too few configs" in err and "at least 8" in err


def test_a_single_width_is_refused(capsys, out_dir, tmp_path):
    """A blog file whose 20 configs all have e = h = 256 cannot be fitted in width or tested
    out of scale: one line, exit 2, --out untouched (no traceback from an empty test half)."""
    recs = {"vanilla": {}, "lora": {}}
    for b in (1, 2, 4, 8, 16):
        for r in (1, 2, 4, 8):
            recs["vanilla"][(b, 256, 256, r)] = 1e-4 * b
            recs["lora"][(b, 256, 256, r)] = 1.1e-4 * b
    p = tmp_path / "results.csv"
    pd.DataFrame(recs).to_csv(p)
    err = _bad(capsys, out_dir, ["--data", str(p)])
    assert "same width (embed x hidden = 256 x 256)" in err
    assert "at least 2 distinct embed*hidden sizes" in err


def test_mixed_devices(capsys, out_dir, tmp_path, fixture_csv):
    p = tmp_path / "mixed.csv"
    f = pd.read_csv(fixture_csv)
    f.loc[f.index[:6], "device_kind"] = "NVIDIA H100"
    f.to_csv(p, index=False)
    assert "mixes devices" in _bad(capsys, out_dir, ["--data", str(p)])


@pytest.mark.parametrize("widths", ["0", "abc", "768,-1"])
def test_unknown_width(capsys, out_dir, fixture_csv, widths):
    assert "width" in _bad(capsys, out_dir, ["--data", fixture_csv, "--widths", widths])


def test_unknown_grid(capsys, out_dir):
    assert "unknown grid 'huge'" in _bad(capsys, out_dir, ["--grid", "huge"])


def test_json_run_on_fixture(capsys, tmp_path, fixture_csv, fixture_profile):
    out = tmp_path / "report"
    rc = crossover.main(["--data", fixture_csv, "--profile", fixture_profile, "--out", str(out),
                         "--no-plots", "--json", "--bootstrap", "50", "--widths", "768,4096"])
    assert rc == 0
    obj = json.loads(capsys.readouterr().out)
    assert {"crossover", "factors", "validation", "extrapolation"} <= set(obj)
    assert {"batch", "rank", "d_star", "ci_low", "ci_high", "ci_low_censored",
            "measured_d_star", "measured_sign_changes", "note"} <= set(obj["crossover"][0])
    assert {"name", "estimate", "ci_low", "ci_high", "unit"} <= set(obj["factors"][0])
    factors = {f["key"]: f for f in obj["factors"]}
    # an additive form on this fixture: the per-kernel time's prior is a field, the profile's
    # value with a standard deviation of half of it, in us
    assert obj["model_form"] in ("ols_additive", "wls_additive", "gamma_identity")
    kernel = json.loads(Path(fixture_profile).read_text())["kernel_overhead_s"] * 1e6
    assert factors["kernel_time"]["prior_mean"] == pytest.approx(kernel)
    assert factors["kernel_time"]["prior_sd"] == pytest.approx(kernel / 2)
    assert factors["flop_rate"]["prior_mean"] is None  # none for the rates
    assert {"width", "method", "time_s", "pi_low", "pi_high"} <= set(obj["extrapolation"][0])
    assert {r["width"] for r in obj["extrapolation"]} == {768, 4096}
    models = {r["model"] for r in obj["validation"]}
    assert {"flops_proportional", "roofline_unfitted"} <= models
    for name in ("report.md", "fit_summary.txt", "validation.csv", "crossover.csv",
                 "extrapolation.csv", "factors.csv", "anova.csv"):
        assert (out / name).stat().st_size > 0, name
    v = pd.read_csv(out / "validation.csv")
    assert {"model", "scheme", "quantity", "median_ape_pct", "p90_ape_pct"} <= set(v.columns)


def test_blog_file_runs_end_to_end(capsys, tmp_path):
    """A hand-made blog results file (unnamed header) through the whole job."""
    import numpy as np


    recs = {"vanilla": {}, "lora": {}}
    rng = np.random.default_rng(0)
    for b in (2, 64, 256):
        for e in (256, 512, 1024):
            for r in (1, 3):
                base = 1e-9 * b * e * e * 4 + 2e-4
                recs["vanilla"][(b, e, e, r)] = base * rng.lognormal(0, 0.02)
                recs["lora"][(b, e, e, r)] = 1.15 * base * rng.lognormal(0, 0.02)
    path = tmp_path / "results.csv"
    pd.DataFrame(recs).to_csv(path)
    out = tmp_path / "blog"
    rc = crossover.main(["--data", str(path), "--out", str(out), "--no-plots", "--bootstrap", "30"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "variant seed, timing as_written" in captured.out
    assert "roofline baseline and log-link form skipped" in captured.out
    assert load(path).kind == "blog"


@pytest.mark.slow
def test_figures_are_written(capsys, tmp_path, fixture_csv, fixture_profile):
    out = tmp_path / "figs"
    rc = crossover.main(["--data", fixture_csv, "--profile", fixture_profile, "--out", str(out),
                         "--bootstrap", "30"])
    assert rc == 0
    text = capsys.readouterr().out
    for name in ("factor_pairs.png", "predicted_vs_measured.png", "residuals_by_factor.png",
                 "time_vs_width.png", "extrapolation.png", "op_breakdown.png"):
        assert (out / name).stat().st_size > 1000, name
        assert name in (out / "report.md").read_text()
    assert "Crossover" in text and "Validation" in text
    assert "full/LoRA: 95% CI of the mean;" in text
    assert max(len(line) for line in text.splitlines()) <= 100  # stdout fits 100 columns


def test_unknown_model_or_hardware(capsys, out_dir, fixture_csv):
    assert "unknown model 'gpt5'" in _bad(capsys, out_dir, ["--data", fixture_csv, "--model", "gpt5"])
    assert "unknown hardware 'tpu9'" in _bad(capsys, out_dir, ["--data", fixture_csv, "--hardware", "tpu9"])


def test_model_presets_table(capsys, tmp_path, fixture_csv, fixture_profile):
    out = tmp_path / "presets"
    rc = crossover.main(["--data", fixture_csv, "--profile", fixture_profile, "--out", str(out),
                         "--no-plots", "--bootstrap", "20", "--model", "gpt3-175b",
                         "--hardware", "h100-sxm"])
    assert rc == 0
    text = capsys.readouterr().out
    # what does not fit one 80 GB H100 comes first, with what it lacks; then the usual header
    flat = " ".join(text.split())
    assert "Does not fit on one h100-sxm, so no full/LoRA time: " in flat
    assert "Whole training step, predicted on h100-sxm (unfitted rates" in flat
    assert flat.index("Does not fit on one h100-sxm") < flat.index("Whole training step, predicted on h100-sxm")
    t = pd.read_csv(out / "model_speedups.csv").set_index("model")
    assert {"distilbert", "gpt3-175b"} <= set(t.index)
    assert (t["memory_ratio_full_over_lora"] > 1).all()
    # GPT-3 175B needs terabytes under full fine-tuning and hundreds of GB under LoRA: no speedup
    big = t.loc["gpt3-175b"]
    assert not big["full_fits"] and not big["lora_fits"] and np.isnan(big["speedup_full_over_lora"])
    assert big["full_lacks_gb"] == pytest.approx(big["full_memory_gb"] - 80.0)
    assert f"gpt3-175b full (lacks {big['full_lacks_gb']:,.0f} GB)" in flat
    small = t.loc["gpt2-small"]  # fits: a speedup, nothing lacking
    assert small["full_fits"] and small["lora_fits"] and small["full_lacks_gb"] == 0
    assert small["speedup_full_over_lora"] == pytest.approx(small["full_step_s"] / small["lora_step_s"])
    fits_both = t["full_fits"].astype(bool) & t["lora_fits"].astype(bool)
    assert t.loc[fits_both, "speedup_full_over_lora"].notna().all()
    assert t.loc[~fits_both, "speedup_full_over_lora"].isna().all()
    m = pd.read_csv(out / "memory_breakdown.csv")
    assert list(m["method"]) == ["full", "lora"] and (m["model"] == "gpt3-175b").all()


def test_profile_of_another_device_is_not_used(capsys, tmp_path, fixture_csv, fixture_profile):
    """A sweep directory without a profile, and an --out holding one of another device."""
    import shutil

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    shutil.copy(fixture_csv, sweep / "measurements.csv")
    out = tmp_path / "out"
    out.mkdir()
    prof = json.loads(open(fixture_profile).read())
    prof["name"] = "measured gpu NVIDIA H100"
    (out / "profile.json").write_text(json.dumps(prof))
    rc = crossover.main(["--data", str(sweep), "--out", str(out), "--no-plots", "--bootstrap", "20"])
    assert rc == 0
    text = " ".join(capsys.readouterr().out.split())  # the report wraps its lines
    assert ("does not match the data (backend: 'gpu' -> 'cpu'; device_kind: 'NVIDIA H100' -> "
            "'cpu'; give --profile)") in text
