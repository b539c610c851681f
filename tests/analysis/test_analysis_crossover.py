"""Crossover: bootstrap intervals cover a known d*; measured crossings; plain 'no crossover'."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic import synthetic_dataset, true_time_s

import costmodel
from analysis import data, prepare, solve
from analysis import fit as fitmod


def _true_d_star(batch: int, rank: int, method: str = "lora") -> float:
    tmpl = {"layer": "attention", "batch": batch, "rank": rank, "seq": 1, "heads": 1,
            "input_requires_grad": False, "dtype": "float32", "variant": "clean",
            "timing_mode": "aot"}

    def fn(meth, d):
        d = np.atleast_1d(np.asarray(d, dtype=float))
        m = method if meth == "lora" else "full"
        rows = pd.DataFrame({**{k: [v] * len(d) for k, v in tmpl.items()}, "embed": d,
                             "hidden": d, "method": m, "targets": "" if m == "full" else "k,q"})
        return true_time_s(rows)

    return costmodel.solve_crossover(fn, 16, 65536, limit=False).d_star


@pytest.fixture(scope="module")
def crossover():
    frame = synthetic_dataset(cv=0.03, seed=2)
    sl = data.select(data.Dataset(frame, "x", "table"), fitmod.MIN_CONFIGS)
    rows = prepare.terms_for(sl.frame, None, measured=True)
    res = fitmod.fit("wls_additive", rows, rows["config_id"].to_numpy())
    boot = solve.bootstrap(res, rows, n_boot=200, seed=0)
    return solve.crossover_table(res, boot, rows, None).table


@pytest.mark.parametrize("batch, rank", [(2, 1), (2, 4), (256, 1)])
def test_bootstrap_interval_covers_known_d_star(crossover, batch, rank):
    truth = _true_d_star(batch, rank)
    assert truth is not None and 64 < truth < 1536
    row = crossover[(crossover["batch"] == batch) & (crossover["rank"] == rank)
                    & (crossover["method"] == "lora")].iloc[0]
    assert row["ci_low"] <= truth <= row["ci_high"], (row.to_dict(), truth)
    assert row["ci_low"] <= row["d_star"] <= row["ci_high"]
    assert row["lora_faster"] == "above d*"
    # Measured crossing where the data change sign, near the truth.
    assert row["measured_d_star"] == pytest.approx(truth, rel=0.5)


def test_no_crossover_in_range_is_said_plainly(crossover):
    row = crossover[(crossover["batch"] == 2) & (crossover["method"] == "lora_merged")].iloc[0]
    assert np.isnan(row["d_star"])
    assert row["note"].startswith("no crossover in range")
    assert row["asymptotic_speedup"] < 1  # merged LoRA stays slower as d grows


def test_measured_crossover_interpolates_the_sign_change():
    rows = pd.DataFrame({
        "layer": "attention", "variant": "clean", "timing_mode": "aot", "seq": 1, "heads": 1,
        "input_requires_grad": False, "dtype": "float32", "batch": 2, "rank": 1,
        "embed": [100, 100, 400, 400], "hidden": [100, 100, 400, 400],
        "method": ["full", "lora", "full", "lora"], "time_ms": [1.0, 2.0, 4.0, 2.0],
    })
    d, note = solve.measured_crossover(rows, rows.iloc[0], "lora")
    assert d == pytest.approx(200.0) and note == ""  # log-ratio +log2 -> -log2: midpoint in log d
