"""Crossover: bootstrap intervals cover a known d*; measured crossings; plain 'no crossover'."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic import synthetic_dataset, true_time_s

import costmodel
from analysis import bootstrap, crossover_table, data, prepare
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
    boot = bootstrap.bootstrap(res, rows, n_boot=200, seed=0)
    return crossover_table.crossover_table(res, boot, rows, None, measured=sl.frame).table


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


def _certain(width, ratio):
    from measure.refine import Point

    return Point(width, ratio, ratio * 0.99, ratio * 1.01)


def test_measured_crossover_interpolates_the_sign_change():
    from measure import refine

    (c,) = refine.assess([_certain(100, 2.0), _certain(400, 0.5)]).crossings
    assert c.d_star == pytest.approx(200.0)  # log-ratio +log2 -> -log2: midpoint in log d
    assert c.direction == refine.FASTER_ABOVE


def test_measured_crossover_counts_every_sign_change():
    """Ratio by width +, +, -, -, -, +, +: both crossings, and the note lists both."""
    from analysis import crossover_notes
    from measure import refine

    d = [128, 256, 384, 512, 768, 1024, 2048]
    ratio = [1.1, 1.05, 0.95, 0.9, 0.97, 1.04, 1.1]
    a = refine.assess([_certain(w, r) for w, r in zip(d, ratio)])
    crossings = [c.d_star for c in a.crossings]
    assert len(crossings) == 2 and 256 < crossings[0] < 384 and 768 < crossings[1] < 1024
    note = crossover_notes.measured_text(a)
    assert all(f"{x:,.0f}" in note for x in crossings)


def test_censored_lower_end_is_printed_as_a_bound(crossover):
    """A replicate already faster at the search floor is recorded at the floor: an interval
    end there is a bound ("≤16"), not an estimate (flagged rows: test_analysis_fit)."""
    from analysis.report import _ci

    assert (crossover["ci_low_censored"] == (crossover["ci_low"] <= crossover_table.D_MIN)).all()
    assert _ci(16.0, 40.0, True) == "[≤16, 40]"
    assert _ci(20.0, 40.0, False) == "[20, 40]"


def test_a_curve_with_two_crossings_gets_one_verdict_true_everywhere():
    """The batch-256 contradiction: a fitted gap log(t_lora/t_full) that is negative at the
    search floor, positive from 22 to 40, negative above (full/LoRA 2.28x at the far end).
    The first sign change alone would read "LoRA faster BELOW d* = 22, slower above"; the
    verdict must list both crossings, LoRA faster / slower / faster on the three intervals,
    no single d*, and agree with measurements that see LoRA faster at every width 64-1536."""
    from measure.refine import Point

    w = np.geomspace(16, 65536, 300)
    x = np.log(w)
    # a cubic-free shape: + between log 22 and log 40, − elsewhere, → log(1/2.28) at the end
    gap = 0.4 * (x - np.log(22)) * (np.log(40) - x) / (1 + 0.05 * (x - np.log(40)) ** 2)
    gap = np.where(x > np.log(40), np.maximum(gap, -np.log(2.28)), gap)
    crossings, directions = crossover_table.sign_changes(w, gap)
    assert len(crossings) == 2
    assert crossings[0] == pytest.approx(22, rel=0.02) and crossings[1] == pytest.approx(40, rel=0.02)
    assert directions == [True, False, True]  # faster | slower | faster
    assert crossover_table.lora_faster_label(crossings, directions) == "alternates"
    measured = [Point(d, 0.6, 0.55, 0.65) for d in (64, 128, 256, 512, 1024, 1536)]
    tight = (gap - 0.01, gap + 0.01)  # a band that excludes 0 wherever |gap| > 0.01
    assert crossover_table.agreement(w, gap, *tight, measured) == (True, [], [])
    # a measured width inside the slower stretch that says "faster" is a disagreement
    # (the fitted gap at 30 is 0.4·log(30/22)·log(40/30) ≈ 0.036, its band [0.026, 0.046])
    agrees, at, off = crossover_table.agreement(w, gap, *tight,
                                                measured + [Point(30, 0.8, 0.75, 0.85)])
    assert not agrees and at == [30.0] and off == []
    # and one whose interval contains 1 does not vote
    assert crossover_table.agreement(w, gap, *tight, [Point(30, 0.99, 0.9, 1.1)])[0]
    # a band that contains 0 at 30 (model error ±0.05 in log ratio) claims nothing there: the
    # point fit is off, listed apart, but the verdict does not contradict the measurement
    wide = (gap - 0.05, gap + 0.05)
    assert crossover_table.agreement(w, gap, *wide, [Point(30, 0.8, 0.75, 0.85)]) == (
        True, [], [30.0])


def test_exactly_one_crossing_gives_d_star_and_none_gives_the_side():
    w = np.geomspace(16, 65536, 300)
    one = np.log(100) - np.log(w)  # slower below 100, faster above
    c, d = crossover_table.sign_changes(w, one)
    assert len(c) == 1 and c[0] == pytest.approx(100, rel=0.01) and d == [False, True]
    assert crossover_table.lora_faster_label(c, d) == "above d*"
    c, d = crossover_table.sign_changes(w, -np.ones_like(w))
    assert crossover_table.lora_faster_label(c, d) == "whole range"
    c, d = crossover_table.sign_changes(w, np.ones_like(w))
    assert crossover_table.lora_faster_label(c, d) == "nowhere in range"


def test_the_fitted_table_carries_structured_verdict_fields(crossover):
    row = crossover[(crossover["batch"] == 2) & (crossover["rank"] == 1)
                    & (crossover["method"] == "lora")].iloc[0]
    assert len(row["crossings"]) == 1 and row["crossings"][0] == pytest.approx(row["d_star"])
    assert row["directions"] == ["slower", "faster"]
    assert row["agrees_with_measurements"] and row["disagrees_at"] == []
    assert row["speedup_at_d_min"] < 1 < row["speedup_at_d_max"]
    assert row["measured_ci_low"] <= row["measured_d_star"] <= row["measured_ci_high"]


def test_every_flag_footnote_fits_the_stdout_width():
    from analysis import report

    for letter, text in report.FLAGS.values():
        assert len(f"  {letter}: {text}") <= report.WIDTH, letter
    assert len({letter for letter, _ in report.FLAGS.values()}) == len(report.FLAGS)


def test_the_measured_cell_marks_censored_ends_and_noise():
    from analysis import report

    base = {"measured_sign_changes": 1, "measured_d_star": 43.0, "measured_ci_low": 32.0,
            "measured_ci_high": 128.0, "measured_within_noise": False,
            "measured_ci_low_censored": False, "measured_ci_high_censored": False,
            "measured_faster_everywhere": False, "measured_slower_everywhere": False}
    assert report._measured_cell(base) == "43 [32, 128]"
    assert report._measured_cell({**base, "measured_within_noise": True,
                                  "measured_ci_low_censored": True}) == "≈1 [≤32, 128]"
    assert report._measured_cell({**base, "measured_d_star": float("nan"),
                                  "measured_ci_high_censored": True}) == "≈1 [32, ≥128]"
    assert report._measured_cell({**base, "measured_sign_changes": 0,
                                  "measured_faster_everywhere": True}) == "faster all"
