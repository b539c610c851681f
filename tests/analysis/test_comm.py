"""analysis.comm on synthetic tables whose α, β and step times are known by construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import comm, comm_fit, comm_predict
from measure.comm_schema import (
    COLLECTIVE_COLUMNS,
    COLLECTIVES,
    SHARDED_COLUMNS,
    TABLE_VERSION,
)

SIZES = [1024 * 4**i for i in range(6)]
ALPHA = {2: 20e-6, 4: 40e-6, 8: 80e-6}
BUS = 2e9  # bytes/s


def _coll_row(c, p, v, t) -> dict:
    row = {k: "" for k in COLLECTIVE_COLUMNS}
    row.update(table_version=TABLE_VERSION, backend="cpu", device_kind="cpu", collective=c,
               devices=p, processes=1, dtype="float32", message_bytes=v, n_repeats=9,
               calls_per_repeat=1, time_median_s=t, time_iqr_s=0.0, time_min_s=t,
               time_ci_low_s=t, time_ci_high_s=t, time_cv=0.0, unstable=False, compile_s=0.1)
    return row


def synthetic_collectives(noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Ring α-β by construction: t = s(p)·10 µs + f(p)·V/B, multiplicative noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in COLLECTIVES:
        for p in (2, 4, 8):
            for v in SIZES:
                t = 10e-6 * float(comm_fit.latency_steps(c, p)) + float(comm_fit.bandwidth_factor(c, p)) * v / BUS
                rows.append(_coll_row(c, p, v, t * (1 + noise * rng.standard_normal())))
    return pd.DataFrame(rows)


def test_factors_by_hand():
    assert comm_fit.bandwidth_factor("all_reduce", 4) == pytest.approx(1.5)  # 2(p-1)/p
    assert comm_fit.bandwidth_factor("all_gather", 8) == pytest.approx(7 / 8)
    assert comm_fit.latency_steps("all_reduce", 8) == 14
    assert comm_fit.latency_steps("reduce_scatter", 4) == 3


def test_fit_recovers_alpha_and_bus_bandwidth_exactly_without_noise():
    fit = comm_fit.fit_collectives(synthetic_collectives())
    ab = fit.per_group["all_reduce", 4]
    assert ab.alpha_s == pytest.approx(10e-6 * 6, rel=1e-6)  # 2(p-1) steps
    assert ab.bus_bandwidth_bytes_per_s == pytest.approx(BUS, rel=1e-6)
    cg = fit.cross["all_gather"]
    assert cg.t0_s == pytest.approx(0.0, abs=1e-9) and cg.step_s == pytest.approx(10e-6, rel=1e-6)
    assert 1 / cg.b_s_per_byte == pytest.approx(BUS, rel=1e-6)


def test_dtypes_are_not_pooled_float32_is_fitted_and_the_rest_named():
    """A bfloat16 table at half the bus bandwidth beside the float32 one: the fit is float32's
    exactly (pooled, the bandwidth would fall between 1 and 2 GB/s) and names what it left out."""
    f32 = synthetic_collectives()
    bf16 = f32.copy()
    bf16["dtype"] = "bfloat16"
    bf16["time_median_s"] = [
        10e-6 * float(comm_fit.latency_steps(c, p)) + float(comm_fit.bandwidth_factor(c, p)) * v / (BUS / 2)
        for c, p, v in zip(bf16["collective"], bf16["devices"], bf16["message_bytes"])]
    fit = comm_fit.fit_collectives(pd.concat([bf16, f32], ignore_index=True))
    assert fit.dtype == "float32" and fit.dtypes_left_out == ("bfloat16",)
    assert fit.per_group["all_reduce", 4].bus_bandwidth_bytes_per_s == pytest.approx(BUS, rel=1e-6)
    assert set(fit.table()["dtype"]) == {"float32"}
    only_bf16 = comm_fit.fit_collectives(bf16)
    assert only_bf16.dtype == "bfloat16"
    assert only_bf16.per_group["all_reduce", 4].bus_bandwidth_bytes_per_s == pytest.approx(BUS / 2, rel=1e-6)
    held_out = comm_predict.validate_collectives(pd.concat([bf16, f32], ignore_index=True))
    assert held_out["predicted_s"].to_numpy() == pytest.approx(held_out["time_s"].to_numpy(), rel=1e-6)


def test_one_link_fit_is_costmodels_form():
    link = comm_fit.fit_link(synthetic_collectives())
    assert link.alpha_s == pytest.approx(10e-6, rel=1e-6)
    assert link.bandwidth_bytes_per_s == pytest.approx(BUS, rel=1e-6)
    assert link.median_rel_error < 1e-9


def test_confidence_intervals_cover_the_truth_under_noise():
    fit = comm_fit.fit_collectives(synthetic_collectives(noise=0.03, seed=1))
    covered = 0
    for (c, p), ab in fit.per_group.items():
        beta_true = float(comm_fit.bandwidth_factor(c, p)) / BUS
        lo, hi = ab.beta_ci
        covered += lo <= beta_true <= hi
        assert lo < ab.beta_s_per_byte < hi
    assert covered >= 0.75 * len(fit.per_group)


def test_held_out_validation_is_exact_on_exact_data_and_predicts_unseen_group_sizes():
    val = comm_predict.validate_collectives(synthetic_collectives())
    assert set(val["scheme"]) == {"size", "devices"}
    assert val["rel_error"].max() < 1e-6
    # the cross-group model predicts p = 8 from p = 2, 4 alone
    cg = comm_fit.fit_cross_group(synthetic_collectives().query("devices < 8"), "all_reduce")
    t8 = 10e-6 * 14 + 1.75 * SIZES[-1] / BUS
    assert cg.predict_s(8, SIZES[-1]) == pytest.approx(t8, rel=1e-6)


def _step_row(method, program, dp, tp, t, detail="", processes=1) -> dict:
    row = {k: "" for k in SHARDED_COLUMNS}
    row.update(table_version=TABLE_VERSION, backend="cpu", device_kind="cpu", layer="block",
               method=method, program=program, dp=dp, tp=tp,
               devices=dp * tp if program == "step" else 1, processes=processes, batch=8, seq=8,
               embed=32, heads=4, hidden=64, rank=2 if method == "lora" else 0,
               targets="q,v" if method == "lora" else "", dtype="float32", trainable_params=1,
               n_repeats=9, calls_per_repeat=1, time_median_s=t, time_iqr_s=0.0, time_min_s=t,
               time_ci_low_s=t, time_ci_high_s=t, time_cv=0.0, unstable=False, compile_s=0.1,
               hlo_collectives=len([d for d in detail.split(";") if d]),
               hlo_all_reduce_bytes=0.0, hlo_other_bytes=0.0, hlo_detail=detail)
    return row


def test_sharded_prediction_adds_shared_compute_and_fitted_collectives():
    fit = comm_fit.fit_collectives(synthetic_collectives())
    v = 4 * 1024 * 1024
    t_ar = 10e-6 * 2 + 1.0 * v / BUS  # all-reduce on 2 devices: 2(p-1) = 2 steps, f = 1
    rows = [
        _step_row("full", "local", 2, 1, 0.010), _step_row("lora", "local", 2, 1, 0.006),
        _step_row("full", "step", 2, 1, 2 * 0.010 + t_ar, f"all_reduce:{v}:2"),
        _step_row("lora", "step", 2, 1, 2 * 0.006 + 2 * t_ar, f"all_reduce:{v}:2;all_reduce:{v}:2"),
    ]
    pred = comm_predict.predict_sharded(pd.DataFrame(rows), fit)
    assert len(pred) == 2
    assert pred["rel_error"].max() == pytest.approx(0.0, abs=1e-9)
    full = pred.set_index("method").loc["full"]
    assert full["compute_sharing"] == 2 and full["compute_only_s"] == pytest.approx(0.020)
    assert full["comm_predicted_s"] == pytest.approx(t_ar, rel=1e-9)
    ratios = comm_predict.ratio_table(pred)
    assert ratios["rel_error"].iloc[0] == pytest.approx(0.0, abs=1e-9)
    assert ratios["compute_only_rel_error"].iloc[0] > 0
    a = comm_predict.analyse(synthetic_collectives(), pd.DataFrame(rows))
    assert a.summary["sharded_step_median_rel_error"] == pytest.approx(0.0, abs=1e-9)
    assert a.summary["meets_target"] is True
    assert "dp=2,tp=1" in comm.text_report(a)


def test_reduce_scatter_message_is_the_input_size():
    assert comm_predict.message_bytes_of("reduce_scatter", 256, 4) == 1024
    assert comm_predict.message_bytes_of("all_gather", 1024, 4) == 1024
    assert comm_predict.parse_hlo_detail("all_reduce:8:2;all_gather:16:4") == [
        ("all_reduce", 8, 2), ("all_gather", 16, 4)]


def test_compute_sharing_cpu_vs_gpu():
    assert comm_predict.compute_sharing("cpu", 4, 1) == 4
    assert comm_predict.compute_sharing("gpu", 4, 1) == 1


def test_cli_bad_input(tmp_path, capsys):
    assert comm.main(["--data", str(tmp_path / "none")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert comm.main(["--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no collectives.csv" in err and err.count("\n") == 1


def _write_table(folder, name: str, df: pd.DataFrame) -> None:
    df.to_csv(folder / f"{name}.csv", index=False)


@pytest.mark.slow
def test_crossover_adds_a_communication_section(tmp_path, capsys, fixture_csv, fixture_profile):
    """A sweep folder that also holds collectives.csv and sharded.csv: analysis.crossover adds
    the communication section to its JSON and writes α, β into fitted_profile.json."""
    import json
    import shutil

    from analysis import crossover

    data = tmp_path / "d"
    data.mkdir()
    shutil.copy(fixture_csv, data / "measurements.csv")
    shutil.copy(fixture_profile, data / "profile.json")
    _write_table(data, "collectives", synthetic_collectives())
    v = 1 << 20
    t_ar = 10e-6 * 2 + v / BUS
    _write_table(data, "sharded", pd.DataFrame([
        _step_row("full", "local", 2, 1, 0.010), _step_row("lora", "local", 2, 1, 0.006),
        _step_row("full", "step", 2, 1, 0.020 + t_ar, f"all_reduce:{v}:2"),
        _step_row("lora", "step", 2, 1, 0.012 + t_ar, f"all_reduce:{v}:2"),
    ]))
    out = tmp_path / "o"
    rc = crossover.main(["--data", str(data), "--profile", fixture_profile, "--out", str(out),
                         "--no-plots", "--json", "--bootstrap", "20"])
    assert rc == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["communication"]["summary"]["sharded_step_median_rel_error"] == pytest.approx(0, abs=1e-9)
    assert (out / "comm_alpha_beta.csv").exists()
    prof = json.loads((out / "fitted_profile.json").read_text())
    ab = {(e["collective"], e["devices"]): e for e in prof["comm_fits"]["alpha_beta"]}
    assert ab["all_reduce", 4]["bus_bandwidth_bytes_per_s"] == pytest.approx(BUS, rel=1e-6)
    # costmodel.comm reads the link's α and B from these keys (Cluster.with_fitted)
    from costmodel.comm import FIT_COMM_KEYS, Cluster, Interconnect

    a_key, b_key = FIT_COMM_KEYS["intra"]
    assert prof["extra"][b_key] == pytest.approx(BUS, rel=1e-6)
    assert prof["extra"][a_key] == pytest.approx(10e-6, rel=1e-6)
    from costmodel.hardware import HardwareProfile

    base = Interconnect("x", 1e9, 1e-6)
    fitted = Cluster(8, base, base).with_fitted(HardwareProfile.from_json(out / "fitted_profile.json").extra)
    assert fitted.intra.bandwidth_bytes_per_s == pytest.approx(BUS, rel=1e-6)


def test_concurrent_diagnostic_adds_comm_to_the_measured_concurrent_compute():
    fit = comm_fit.fit_collectives(synthetic_collectives())
    v = 1 << 20
    t_ar = 10e-6 * 2 + v / BUS
    rows = [_step_row("full", "local", 2, 1, 0.010), _step_row("full", "concurrent", 2, 1, 0.030),
            _step_row("full", "step", 2, 1, 0.030 + t_ar, f"all_reduce:{v}:2")]
    pred = comm_predict.predict_sharded(pd.DataFrame(rows), fit).iloc[0]
    assert pred["concurrent_rel_error"] == pytest.approx(0.0, abs=1e-9)
    assert pred["compute_only_s"] == pytest.approx(0.020)  # k = 2 devices × the one-device share
    assert pred["rel_error"] == pytest.approx(abs(0.020 + t_ar - 0.030 - t_ar) / (0.030 + t_ar))


def test_cli_writes_a_profile_costmodel_reads(tmp_path, fixture_profile):
    """--profile P --out D: D/fitted_profile.json is P plus the fitted link, and costmodel's
    HardwareProfile loads it with the keys Cluster.with_fitted reads."""
    import json

    from costmodel.comm import FIT_COMM_KEYS
    from costmodel.hardware import HardwareProfile

    data = tmp_path / "d"
    data.mkdir()
    _write_table(data, "collectives", synthetic_collectives())
    assert comm.main(["--data", str(data), "--out", str(tmp_path / "o"), "--profile", fixture_profile]) == 0
    prof = HardwareProfile.from_json(tmp_path / "o" / "fitted_profile.json")
    a_key, b_key = FIT_COMM_KEYS["intra"]
    assert prof.extra[b_key] == pytest.approx(BUS, rel=1e-6)
    assert json.loads((tmp_path / "o" / "fitted_profile.json").read_text())["comm_fits"]["alpha_beta"]
