"""`python -m analysis.crossover --data DIR` on a `models` dataset: the whole-model section.

The fixture is a schema-v3 models dataset written as the sweep writes its rows
(`measure.sweep.describe_model` + `make_record`), timed by construction: every step takes
exactly what `costmodel`'s additive form says at known rates. So, by hand: the step fit
recovers those rates and predicts every step exactly (0% error, both schemes); the layer
route, given the same rates as its fitted profile, does too; the unfitted roofline does not.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from costmodel.hardware import HardwareProfile
from costmodel.steptime import FittedRates, step_time

pytest.importorskip("measure.modelconfig")
from measure.modelconfig import ModelConfig, scaled_model, step_cost  # noqa: E402

PROFILE = HardwareProfile("measured cpu test-device", {"float32": 2e11, "bfloat16": 2e11}, 2e10, 2e-6,
                          source="test", measured=True)
RATES = FittedRates(flops_per_s=4e10, bytes_per_s=5e9, kernel_overhead_s=4e-6, dispatch_s=2e-4,
                    lora_multiplier=1.2, lora_merged_multiplier=1.1, note="generating rates")
LAYER_FIT = {"fit_flops_per_s": 4e10, "fit_bytes_per_s": 5e9, "fit_kernel_overhead_s": 4e-6,
             "fit_dispatch_s": 2e-4, "fit_lora_multiplier": 1.2, "fit_lora_merged_multiplier": 1.1}


def _write_dataset(path) -> int:
    from measure.sweep import describe_model, make_record

    rows = []
    shapes = [("gpt2-small", 64, 2, 512), ("gpt2-small", 128, 2, 1024), ("llama2-7b", 128, 2, 1024),
              ("gpt2-small", 256, 2, 1024), ("bert-base", 256, 2, 1024), ("gpt2-small", 512, 2, 1024)]
    for preset, d, layers, vocab in shapes:
        head = {"bert-base": "classifier", "llama2-7b": "lm"}.get(preset, "lm-tied")
        shape = scaled_model(preset, d_model=d, layers=layers, vocab=vocab, seq=64)
        for batch in (1, 4):
            cfg = ModelConfig(shape, batch=batch, seq=32, rank=4, head=head)
            for method in ("full", "lora", "lora_merged"):
                t = float(step_time(step_cost(cfg.step(method)), PROFILE, fitted=RATES).time_s)
                rec = make_record(describe_model(cfg, method), run_id="test", backend="cpu",
                                  device_kind="test-device")
                rec.update(time_median_s=t, time_ci_low_s=0.97 * t, time_ci_high_s=1.03 * t, n_repeats=5,
                           calls_per_repeat=1, time_iqr_s=0.0, time_min_s=t, time_cv=0.01)
                rows.append(rec)
    path.mkdir()
    pd.DataFrame(rows).to_csv(path / "measurements.csv", index=False)
    PROFILE.to_json(path / "profile.json")
    return len(rows)


@pytest.mark.slow
def test_models_dataset_whole_step_validation(tmp_path, capsys):
    from analysis.crossover import main

    data = tmp_path / "models"
    n = _write_dataset(data)
    layer = HardwareProfile(PROFILE.name, dict(PROFILE.peak_flops_per_s), PROFILE.mem_bandwidth_bytes_per_s,
                            PROFILE.kernel_overhead_s, measured=True, extra=LAYER_FIT)
    layer.to_json(tmp_path / "layer_fit.json")
    out = tmp_path / "out"
    assert main(["--data", str(data), "--out", str(out), "--layer-fit", str(tmp_path / "layer_fit.json"),
                 "--json", "--no-plots"]) == 0
    res = json.loads(capsys.readouterr().out)
    recs = {(r["route"], r["scheme"], r["target"], r["method"]): r
            for r in res["whole_model_validation"] if r["option"] == "all"}
    for route in ("step_fit", "layer_fit"):
        for scheme in ("out_of_scale", "all"):
            for target in ("step_time", "ratio"):
                assert recs[(route, scheme, target, "all")]["median_abs_pct"] == pytest.approx(0, abs=1e-6)
    assert recs[("unfitted", "all", "step_time", "all")]["median_abs_pct"] > 1
    assert recs[("step_fit", "all", "step_time", "all")]["n"] == n
    # the larger half by parameters: 3 of the 6 models, 2 batches, 3 methods
    assert recs[("step_fit", "out_of_scale", "step_time", "all")]["n"] == 18
    assert recs[("step_fit", "out_of_scale", "ratio", "lora")]["n"] == 6
    assert res["noise_floor_pct"]["step_time"] == pytest.approx(3.0)
    assert all(t["met"] for t in res["targets"])
    # the step-level rates recovered and written where `python -m costmodel --hardware` reads them
    fitted = HardwareProfile.from_json(out / "fitted_profile.json")
    got = FittedRates.from_profile(fitted)
    assert got.flops_per_s == pytest.approx(4e10, rel=1e-6)
    assert got.lora_multiplier == pytest.approx(1.2, rel=1e-6)
    assert FittedRates.from_profile(fitted, "layer").bytes_per_s == pytest.approx(5e9)
    report = (out / "report.md").read_text()
    assert "Whole training steps" in report and "## Targets" in report
    for name in ("whole_model_validation.csv", "whole_model_predictions.csv"):
        assert (out / name).is_file()


@pytest.mark.slow
def test_layer_fit_of_another_device_is_refused_by_name(tmp_path, capsys):
    from analysis.crossover import main

    data = tmp_path / "models"
    _write_dataset(data)
    other = HardwareProfile("measured cpu other", {"float32": 1e11}, 1e10, 1e-6, measured=True, extra=LAYER_FIT)
    other.to_json(tmp_path / "other.json")
    assert main(["--data", str(data), "--out", str(tmp_path / "o"), "--layer-fit", str(tmp_path / "other.json"),
                 "--json", "--no-plots"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert "other" in res["layer_fit"]
    assert not any(r["route"] == "layer_fit" for r in res["whole_model_validation"])
    assert main(["--data", str(data), "--out", str(tmp_path / "o"), "--layer-fit", str(tmp_path / "nope.json"),
                 "--no-plots"]) == 2
    assert "does not exist" in capsys.readouterr().err
