"""measure.timing: summary statistics on known data, and the loop's discipline (fake clock)."""

from __future__ import annotations

import gc
import itertools
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


def test_loop_interleaves_rotating_round_robin_with_one_k_per_config():
    clock, log, gc_states, blocked = FakeClock(), [], [], []
    kernels = _fake_kernels(clock, {"A": 2e-3, "B": 1e-4, "C": 5e-3}, log, gc_states)
    policy = TimingPolicy(min_repeats=6, budget_s=0.0, min_repeat_s=1e-3)
    report = timing.time_interleaved(kernels, policy, clock=clock, block=blocked.append)
    s = report.summaries
    assert [s[n].n_repeats for n in "ABC"] == [6, 6, 6]
    # one k for the config, from the fastest method: ceil(1 ms / 0.1 ms), applied to all
    assert [s[n].calls_per_repeat for n in "ABC"] == [10, 10, 10]
    assert s["A"].time_median_s == pytest.approx(2e-3)
    assert s["B"].time_median_s == pytest.approx(1e-4)
    assert s["C"].time_median_s == pytest.approx(5e-3)
    # after warm-up (1 call) and calibration (1 call; 3 for the sub-ms B) ...
    assert log[:8] == ["A", "A", "B", "B", "B", "B", "C", "C"]
    # ... rounds of k calls each, the starting method rotating: ABC, BCA, CAB, ABC, ...
    timed = log[8:]
    starts = ["ABC", "BCA", "CAB"] * 2
    assert timed == [m for order in starts for m in order for _ in range(10)]
    # every timed repeat is blocked on, all k outputs at once: 2 per kernel before the loop
    # (4 for B) + 1 per repeat
    assert len(blocked) == 8 + 18
    assert all(len(outs) == 10 for outs in blocked[8:])
    assert gc.isenabled()
    assert not any(gc_states[8:]) and all(gc_states[:8])
    assert report.calls == 6 * 3 * 10


def test_slow_configs_keep_k_1_and_k_is_capped():
    policy = TimingPolicy(min_repeat_s=1e-3, max_calls_per_repeat=50)
    assert timing.calls_per_repeat(2e-3, policy) == 1
    assert timing.calls_per_repeat(3e-4, policy) == 4
    assert timing.calls_per_repeat(1e-7, policy) == 50
    assert timing.calls_per_repeat(1e-7, TimingPolicy(min_repeat_s=0)) == 1


def test_loop_stops_once_the_median_is_within_2_percent():
    clock = FakeClock()
    quiet = iter(1e-3 * (1 + 0.001 * np.random.default_rng(0).standard_normal(10_000)))

    def call():
        clock.now += next(quiet)

    kernels = {"Q": Prepared("Q", call, ())}
    policy = TimingPolicy(min_repeats=7, max_repeats=400, budget_s=1e9, min_repeat_s=0)
    report = timing.time_interleaved(kernels, policy, clock=clock, block=lambda x: x)
    s = report.summaries["Q"]
    # 0.1% noise meets ±2% at once: stopped by the CI, not by the cap or the budget
    assert policy.min_repeats <= s.n_repeats < policy.max_repeats
    assert s.n_repeats == policy.min_repeats
    assert timing.ci_half_width_rel(s.time_median_s, s.time_ci_low_s, s.time_ci_high_s) <= 0.02
    assert not s.unstable


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


def test_budget_is_read_on_the_injected_clock():
    """Durations 1, 3, 1, 3 ms ... (fake time; spread too wide to converge): warm-up and
    calibration take the first two, then the loop stops at the first round whose fake time
    since the loop began reaches the 50 ms budget: 24 repeats make 48 ms, the 25th 49 ms, the
    26th 52 ms. On the real clock the loop would run on to max_repeats."""
    clock = FakeClock()
    durations = itertools.cycle([1e-3, 3e-3])

    def call():
        clock.now += next(durations)

    kernels = {"W": Prepared("W", call, ())}
    policy = TimingPolicy(min_repeats=5, max_repeats=10_000, budget_s=0.05, min_repeat_s=0)
    report = timing.time_interleaved(kernels, policy, clock=clock, block=lambda x: x)
    assert report.summaries["W"].n_repeats == 26
    assert report.loop_wall_s == pytest.approx(0.052)
    assert report.timed_s == pytest.approx(0.052)


def test_calls_per_repeat_is_calls_per_sample_of_the_policy():
    policy = TimingPolicy(min_repeat_s=1e-3, max_calls_per_repeat=50)
    for fastest in (2e-3, 3e-4, 1e-7):
        assert timing.calls_per_repeat(fastest, policy) == timing.calls_per_sample(fastest, 1e-3, 50)


def test_prepare_compiles_ahead_and_reports_xla_cost():
    import jax.numpy as jnp

    def f(x, w):
        return (x @ w).sum()

    prep = timing.prepare("mm", f, (jnp.ones((4, 8)), jnp.ones((8, 16))))
    assert prep.compile_s > 0
    assert prep.xla_flops >= 2 * 4 * 8 * 16
    assert float(prep.call(*prep.args)) == 4 * 8 * 16 * 1.0


def test_paired_ratio_pairs_rounds_and_cancels_shared_drift():
    # a drift that doubles both methods' times over the rounds: round by round the ratio is
    # exactly 0.5, while the ratio of the two medians would not see the pairing
    drift = np.linspace(1.0, 2.0, 21)
    full, lora = 2e-3 * drift, 1e-3 * drift
    med, lo, hi = timing.paired_ratio(list(lora) + [9.0], full)  # the unpaired extra is ignored
    assert (med, lo, hi) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5))
    r = np.array([0.4, 0.5, 0.6, 0.5, 0.45, 0.55, 0.5])
    med, lo, hi = timing.paired_ratio(r, np.ones_like(r))
    assert med == 0.5 and 0.4 <= lo <= 0.5 <= hi <= 0.6
    assert all(math.isnan(x) for x in timing.paired_ratio([], [1.0]))


def test_block_ratio_is_the_t_interval_over_the_blocks_logs():
    # logs 0, log 1.1, log 0.9: mean m, sd s, t(0.975, 2) = 4.302653 (tables)
    r = [1.0, 1.1, 0.9]
    logs = np.log(r)
    m, s = logs.mean(), logs.std(ddof=1)
    ratio, lo, hi = timing.block_ratio(r)
    assert ratio == pytest.approx(math.exp(m))
    assert lo == pytest.approx(math.exp(m - 4.302653 * s / math.sqrt(3)), rel=1e-6)
    assert hi == pytest.approx(math.exp(m + 4.302653 * s / math.sqrt(3)), rel=1e-6)
    assert timing.block_ratio([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)  # full against itself
    one = timing.block_ratio([0.8])
    assert one[0] == pytest.approx(0.8) and math.isnan(one[1]) and math.isnan(one[2])


def test_blocks_warm_once_reuse_k_and_pool_their_samples():
    clock, log, gc_states = FakeClock(), [], []
    kernels = _fake_kernels(clock, {"A": 2e-3, "B": 1e-4}, log, gc_states)
    policy = TimingPolicy(min_repeats=6, max_repeats=9, budget_s=1.0, target_rel_ci=1e-9)
    report = timing.time_blocks(kernels, policy, 3, clock=clock, block=lambda x: x)
    assert len(report.blocks) == 3
    # each block: max(3, ceil(6 / 3)) = 3 repeats at least, ceil(9 / 3) = 3 at most
    assert [len(b["A"]) for b in report.blocks] == [3, 3, 3]
    assert report.summaries["A"].n_repeats == 9 == len(report.samples_s["A"])
    assert report.samples_s["A"] == sum((b["A"] for b in report.blocks), ())
    # warm-up and calibration (1 + 1 calls of A; B is under min_repeat_s: 1 + 3) once only,
    # then 9 repeats of A at k = 10 (B: 1e-4 s -> 1e-3 / 1e-4 calls) and 9 of B
    k = report.summaries["B"].calls_per_repeat
    assert k == 10 and report.summaries["A"].calls_per_repeat == 10
    assert log.count("A") == 2 + 9 * k and log.count("B") == 4 + 9 * k


def test_a_blocked_median_has_the_t_interval_over_the_blocks_medians():
    """Blocks whose medians are 1.0, 1.1 and 0.9 ms: the interval of the pooled median is
    median · exp(± t(0.975, 2) · s / √3), s the sd of the blocks' log medians (4.302653:
    tables), not the pooled rounds' bootstrap; one block gives no interval."""
    median = 1.0e-3
    logs = np.log([1.0, 1.1, 0.9])
    half = 4.302653 * logs.std(ddof=1) / math.sqrt(3)
    lo, hi = timing.block_median_ci(median, [1.0e-3, 1.1e-3, 0.9e-3])
    assert lo == pytest.approx(median * math.exp(-half), rel=1e-6)
    assert hi == pytest.approx(median * math.exp(half), rel=1e-6)
    assert all(math.isnan(x) for x in timing.block_median_ci(median, [1e-3]))


def test_blocked_summaries_carry_the_blocks_interval():
    """A kernel that slows as the machine drifts (1% per call): each block's median moves,
    and the recorded interval is the t interval over the blocks' medians, wider than the
    pooled rounds' bootstrap (`summarize`), which treats the drifting rounds as independent."""
    clock = FakeClock()
    calls = [0]

    def drifting(*args):
        calls[0] += 1
        clock.now += 1e-3 * (1 + 0.01 * calls[0])

    kernels = {"A": Prepared("A", drifting, ())}
    policy = TimingPolicy(min_repeats=6, max_repeats=9, budget_s=1.0, target_rel_ci=1e-9)
    report = timing.time_blocks(kernels, policy, 3, clock=clock, block=lambda x: x)
    s = report.summaries["A"]
    medians = [float(np.median(b["A"])) for b in report.blocks]
    assert len(set(medians)) == 3  # the precondition: the blocks differ
    assert (s.time_ci_low_s, s.time_ci_high_s) == pytest.approx(
        timing.block_median_ci(s.time_median_s, medians))
    pooled = timing.summarize(report.samples_s["A"], s.calls_per_repeat, policy)
    assert s.time_ci_low_s < pooled.time_ci_low_s <= pooled.time_ci_high_s < s.time_ci_high_s
