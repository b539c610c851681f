"""The crossover refinement's proposals and verdicts (`measure.refine`), on points built by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from measure import refine
from measure.refine import Point, assess


def _pt(w, r, half=0.02):
    return Point(w, r, r * (1 - half), r * (1 + half))


def test_a_sign_change_is_bisected_in_log_width():
    a = assess([_pt(64, 1.3), _pt(256, 0.7)])
    (c,) = a.crossings
    assert (c.low, c.high) == (64, 256) and c.direction == refine.FASTER_ABOVE
    assert a.next_width == 128  # sqrt(64 * 256)
    # log-linear interpolation: log 1.3 / (log 1.3 - log 0.7) of the way in log d
    frac = math.log(1.3) / (math.log(1.3) - math.log(0.7))
    assert c.d_star == pytest.approx(math.exp(math.log(64) + frac * math.log(4)))
    assert (c.ci_low, c.ci_high) == (64, 256) and not c.resolved and not c.within_noise


def test_a_bracket_within_10_percent_stops():
    a = assess([_pt(100, 1.05), _pt(118, 0.95)])
    assert a.crossings[0].resolved and a.next_width is None


def test_ratio_within_noise_over_the_bracket_stops_and_says_so():
    wide = [Point(64, 1.01, 0.9, 1.1), Point(256, 0.99, 0.9, 1.1)]
    a = assess(wide)
    assert a.crossings[0].within_noise and a.next_width is None


def test_an_uncertain_bracket_end_widens_the_interval_to_the_next_certain_width():
    pts = [_pt(32, 1.5), Point(64, 1.01, 0.95, 1.08), _pt(128, 0.8), _pt(256, 0.6)]
    c = assess(pts).crossings[0]
    assert (c.low, c.high) == (64, 128) and (c.ci_low, c.ci_high) == (32, 128)


def test_no_sign_change_widens_the_range_down_when_lora_wins_and_up_when_it_loses():
    assert assess([_pt(64, 0.5), _pt(256, 0.4)]).next_width == 32
    assert assess([_pt(16, 0.5), _pt(256, 0.4)]).next_width is None  # MIN_WIDTH reached
    assert assess([_pt(64, 1.5), _pt(256, 1.2)]).next_width == 512
    assert assess([_pt(64, 1.5), _pt(512, 1.2)], max_width=512).next_width is None
    assert assess([_pt(64, 0.5)], rank=64).next_width is None  # never below the rank


def test_two_crossings_are_both_reported_with_their_directions():
    a = assess([_pt(64, 1.2), _pt(128, 0.8), _pt(256, 1.1), _pt(512, 0.9)])
    assert [c.direction for c in a.crossings] == [refine.FASTER_ABOVE, refine.FASTER_BELOW,
                                                  refine.FASTER_ABOVE]


def test_curve_points_prefer_paired_ratios_and_fall_back_to_medians():
    base = dict(error="", embed=64, hidden=64, time_ci_low_s=0.9, time_ci_high_s=1.1)
    rows = pd.DataFrame([
        {**base, "method": "full", "time_median_s": 1.0, "paired_ratio": 1.0,
         "paired_ratio_ci_low": 1.0, "paired_ratio_ci_high": 1.0},
        {**base, "method": "lora", "time_median_s": 0.5, "paired_ratio": 0.6,
         "paired_ratio_ci_low": 0.55, "paired_ratio_ci_high": 0.65},
        {**base, "embed": 128, "hidden": 128, "method": "full", "time_median_s": 2.0,
         "paired_ratio": float("nan"), "paired_ratio_ci_low": float("nan"),
         "paired_ratio_ci_high": float("nan"), "time_ci_low_s": 1.8, "time_ci_high_s": 2.2},
        {**base, "embed": 128, "hidden": 128, "method": "lora", "time_median_s": 1.0,
         "paired_ratio": float("nan"), "paired_ratio_ci_low": float("nan"),
         "paired_ratio_ci_high": float("nan")},
    ])
    p64, p128 = refine.curve_points(rows, "lora")
    assert (p64.ratio, p64.ci_low, p64.ci_high) == (0.6, 0.55, 0.65)
    assert p128.ratio == 0.5
    assert p128.ci_low == pytest.approx(0.9 / 2.2) and p128.ci_high == pytest.approx(1.1 / 1.8)


def _u(w, r):  # ≈ 1 within noise: the interval contains 1
    return Point(w, r, 0.95, 1.05)


@pytest.mark.parametrize("r23", [1.007, 0.99])
def test_a_run_of_noise_below_the_first_certain_width_is_one_censored_crossing(r23):
    # the small widths cannot be told from 1 (whichever side their point ratios fall on);
    # LoRA is certainly faster from 64: the crossing lies in [<=16, 64]
    pts = [_u(16, 0.977), _u(19, 0.975), _u(23, r23), _u(32, 0.973), _pt(64, 0.908),
           _pt(128, 0.55)]
    (c,) = assess(pts).crossings
    assert (c.ci_low, c.ci_high) == (16, 64) and c.censored_low and not c.censored_high
    assert c.direction == refine.FASTER_ABOVE and c.within_noise
    assert (c.noise_low, c.noise_high) == (16, 32)
    if r23 > 1:  # the point ratios cross 1 once upward (19->23) and once down (23->32)
        assert c.d_star == pytest.approx(math.exp(
            math.log(23) + math.log(1.007) / (math.log(1.007) - math.log(0.973))
            * math.log(32 / 23)))
        assert (c.low, c.high) == (23, 32)
    else:
        assert math.isnan(c.d_star)


def test_noise_between_two_certain_widths_of_one_side_is_no_crossing():
    pts = [_pt(64, 0.8), _u(128, 1.02), _pt(256, 0.7)]
    assert assess(pts).crossings == ()


def test_a_crossing_through_noise_takes_the_sign_changes_in_its_direction():
    # slower at 32, faster at 512; between, the point ratios go 0.98, 1.01, 0.97: two
    # downward sign changes (32->64 and 128->256), one upward; d* is their geometric mean
    pts = [_pt(32, 1.2), _u(64, 0.98), _u(128, 1.01), _u(256, 0.97), _pt(512, 0.8)]
    (c,) = assess(pts).crossings
    assert (c.ci_low, c.ci_high) == (32, 512) and not (c.censored_low or c.censored_high)
    down = [refine._sign_change(pts[0], pts[1]), refine._sign_change(pts[2], pts[3])]
    assert c.d_star == pytest.approx(math.sqrt(down[0] * down[1]))
