"""measure.timing: summary statistics on known data, and the loop's discipline (fake clock)."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest

from measure import timing
from measure.timing import Prepared, TimingPolicy, summarize


def test_summary_of_known_samples():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0], calls_per_repeat=3)
    assert s.n_repeats == 5 and s.calls_per_repeat == 3
    assert s.time_median_s == 3.0
    assert s.time_iqr_s == pytest.approx(2.0)  # linear percentiles: 4 - 2
    assert s.time_min_s == 1.0
    assert s.time_cv == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1) / 3.0)
    assert 1.0 <= s.time_ci_low_s <= 3.0 <= s.time_ci_high_s <= 5.0
    assert s.unstable  # IQR is 67% of the median


def test_constant_samples_are_stable_with_a_zero_width_interval():
    s = summarize([2e-3] * 7)
    assert (s.time_ci_low_s, s.time_ci_high_s) == (2e-3, 2e-3)
    assert s.time_cv == 0.0 and s.time_iqr_s == 0.0 and not s.unstable


def test_tight_samples_converge_and_wide_ones_do_not():
    rng = np.random.default_rng(1)
    tight = 1e-3 * (1 + 0.002 * rng.standard_normal(50))
    wide = 1e-3 * rng.lognormal(0, 0.5, 50)
    policy = TimingPolicy()
    assert timing.converged(tight, policy)
    assert not timing.converged(wide, policy)
    assert not summarize(tight).unstable
    assert summarize(wide).unstable


def test_outliers_raise_cv_but_not_the_flag():
    # 2% preempted repeats 10x slower: std/mean > 1, the median untouched.
    x = np.full(200, 1e-4)
    x[::50] = 1e-3
    s = summarize(x)
    assert s.time_cv > 1 and s.time_median_s == 1e-4 and not s.unstable


def test_bootstrap_is_reproducible():
    x = np.random.default_rng(0).lognormal(size=40)
    assert timing.median_ci(x, seed=3) == timing.median_ci(x, seed=3)


@pytest.mark.parametrize(
    "kwargs",
    [dict(min_repeats=0), dict(min_repeats=5, max_repeats=4), dict(target_rel_ci=0),
     dict(budget_s=-1), dict(budget_s=math.inf), dict(confidence=1.0), dict(n_resamples=1)],
)
def test_policy_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        TimingPolicy(**kwargs)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _fake_kernels(clock, durations, log, gc_states):
    def make(name, dt):
        def call(*args):
            clock.now += dt
            log.append(name)
            gc_states.append(gc.isenabled())
            return name

        return Prepared(name, call, ())

    return {name: make(name, dt) for name, dt in durations.items()}


def test_loop_interleaves_round_robin_blocks_and_batches_fast_kernels():
    clock, log, gc_states, blocked = FakeClock(), [], [], []
    kernels = _fake_kernels(clock, {"A": 2e-3, "B": 1e-4, "C": 5e-3}, log, gc_states)
    policy = TimingPolicy(min_repeats=6, budget_s=0.0, min_repeat_s=1e-3)
    report = timing.time_interleaved(kernels, policy, clock=clock, block=blocked.append)
    s = report.summaries
    assert [s[n].n_repeats for n in "ABC"] == [6, 6, 6]
    assert s["B"].calls_per_repeat == 10  # ceil(1 ms / 0.1 ms)
    assert s["A"].calls_per_repeat == s["C"].calls_per_repeat == 1
    assert s["A"].time_median_s == pytest.approx(2e-3)
    assert s["B"].time_median_s == pytest.approx(1e-4)
    # after warm-up (1 call) and calibration (1 call; 3 for the sub-ms B), rounds go A, B x10, C
    assert log[:8] == ["A", "A", "B", "B", "B", "B", "C", "C"]
    timed = log[8:]
    one_round = ["A"] + ["B"] * 10 + ["C"]
    assert timed == one_round * 6
    # every timed repeat is blocked on: 2 per kernel before the loop (4 for B) + 1 per repeat
    assert len(blocked) == 8 + 18
    assert gc.isenabled()
    assert not any(gc_states[8:]) and all(gc_states[:8])
    assert report.calls == 6 * 12


def test_loop_keeps_going_within_budget_until_converged():
    clock = FakeClock()
    noisy = iter(np.random.default_rng(0).lognormal(-7, 0.3, 10_000))

    def call():
        clock.now += next(noisy)
        return None

    kernels = {"N": Prepared("N", call, ())}
    report = timing.time_interleaved(
        kernels, TimingPolicy(min_repeats=5, max_repeats=40, budget_s=60.0, min_repeat_s=0),
        clock=clock, block=lambda x: x,
    )
    # 30% lognormal noise cannot reach ±2% in 40 repeats: the cap stops it
    assert report.summaries["N"].n_repeats == 40


def test_prepare_compiles_ahead_and_reports_xla_cost():
    import jax.numpy as jnp

    def f(x, w):
        return (x @ w).sum()

    prep = timing.prepare("mm", f, (jnp.ones((4, 8)), jnp.ones((8, 16))))
    assert prep.compile_s > 0
    assert prep.xla_flops >= 2 * 4 * 8 * 16
    assert float(prep.call(*prep.args)) == 4 * 8 * 16 * 1.0
