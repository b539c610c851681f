"""The seed variant reproduces the blog's code, bugs included; the named grids have their shapes."""

from __future__ import annotations

from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from measure import grids, seed
from measure.sweep import describe


@pytest.mark.slow
def test_lora_merged_seed_uses_wk_b_for_q():
    X, Wk, Wq, Wv = seed.random_setup(3, 6, 5)
    kA, kB, qA, qB = seed.random_lora_setup(6, 5, r=2)
    got = seed.lora_self_attention(X, Wk, Wq, Wv, kA, kB, qA, qB)
    bug = seed.self_attention(X, Wk + kA @ kB, Wq + qA @ kB, Wv)
    fixed = seed.self_attention(X, Wk + kA @ kB, Wq + qA @ qB, Wv)
    np.testing.assert_allclose(got, bug, rtol=1e-6)
    assert not np.allclose(got, fixed)
    # l_WqB never enters the computation: its gradient is exactly zero
    _, grads = seed.test_lora(X, Wk, Wq, Wv, kA, kB, qA, qB)
    assert len(grads) == 4
    assert np.all(np.asarray(grads[3]) == 0) and np.any(np.asarray(grads[1]) != 0)


@pytest.mark.slow
def test_seed_init_is_uniform_and_a_b_share_one_key():
    X, Wk, Wq, Wv = seed.random_setup(4, 8, 8)
    for a in (X, Wk, Wq, Wv):
        assert a.dtype == jnp.float32 and float(a.min()) >= 0 and float(a.max()) < 1
    kA, kB, qA, qB = seed.random_lora_setup(8, 8, r=1)
    # same key, same number of draws: A (e x 1) and B (1 x h) hold the same numbers
    np.testing.assert_array_equal(np.ravel(kA), np.ravel(kB))
    np.testing.assert_array_equal(np.ravel(qA), np.ravel(qB))
    assert not np.array_equal(np.ravel(kA), np.ravel(qA))


def test_vanilla_differentiates_wk_wq_wv_in_a_separate_call():
    args = seed.random_setup(2, 4, 3)
    forward, grads = seed.test_vanilla(*args)
    assert forward.shape == (2, 3)
    assert [g.shape for g in grads] == [(4, 3)] * 3


BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextmanager
def _backend_compiles():
    """Count XLA backend compilations inside the block (jax.monitoring's compile event)."""
    count = [0]

    def listener(event: str, duration_s: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora_merged"])
def test_as_written_recompiles_per_call_and_aot_does_not(method):
    sizes = dict(batch=2, embed=8, hidden=8, rank=1)
    as_written = seed.build(method, timing_mode="as_written", **sizes)
    aot = seed.build(method, timing_mode="aot", **sizes)
    assert aot.compile_s > 0 and aot.xla_flops > 0
    for prep in (as_written, aot):
        jax.block_until_ready(prep.call(*prep.args))  # warm-up: module-level jits compile once
    with _backend_compiles() as compiles:
        for _ in range(3):
            jax.block_until_ready(as_written.call(*as_written.args))
    # as written: a new jitted loss closure per call, so jit's cache never hits
    assert compiles[0] >= 3
    with _backend_compiles() as compiles:
        for _ in range(3):
            jax.block_until_ready(aot.call(*aot.args))
    assert compiles[0] == 0


def test_as_written_and_aot_compute_the_same():
    as_written = seed.build("full", batch=2, embed=8, hidden=8, rank=1, timing_mode="as_written")
    aot = seed.build("full", batch=2, embed=8, hidden=8, rank=1, timing_mode="aot")
    assert as_written.call is seed.test_vanilla
    fa, ga = as_written.call(*as_written.args)
    fb, gb = aot.call(*aot.args)
    np.testing.assert_allclose(fa, fb, rtol=1e-6)
    for x, y in zip(ga, gb):
        np.testing.assert_allclose(x, y, rtol=1e-5)


def test_seed_methods_and_modes_are_checked():
    with pytest.raises(ValueError, match="seed variant"):
        seed.build("lora", batch=2, embed=8, hidden=8, rank=1)
    with pytest.raises(ValueError, match="timing mode"):
        seed.build("full", batch=2, embed=8, hidden=8, rank=1, timing_mode="jit")


def test_seed_grid_is_the_blogs_192_configs():
    g = grids.named_grid("seed")
    assert len(g.configs) == 192 == 4 * 4 * 4 * 3
    assert {c.batch for c in g.configs} == {2, 64, 256, 1024}
    assert {c.embed for c in g.configs} == {c.hidden for c in g.configs} == {256, 512, 1024, 2048}
    assert {c.rank for c in g.configs} == {1, 3, 5}
    assert len(set(g.configs)) == 192
    assert g.methods == ("full", "lora", "lora_merged")
    sg = grids.named_grid("seed", variant="seed", timing_mode="as_written")
    assert sg.methods == ("full", "lora_merged") and len(sg.configs) == 192


def test_quick_grid_spans_widths_for_the_regressions():
    g = grids.named_grid("quick")
    assert len(g.configs) >= 12
    assert len({c.embed for c in g.configs}) >= 5
    assert all(c.embed == c.hidden for c in g.configs)


def test_square_grid_keeps_rank_within_width():
    g = grids.named_grid("square")
    assert {c.embed for c in g.configs} == {2**p for p in range(6, 13)}
    assert all(c.rank <= c.embed == c.hidden for c in g.configs)


def test_seed_cost_columns_describe_q_and_k():
    config = grids.Config("attention", 2, 16, 8, 1, variant="seed")
    full, lora = describe(config, "full"), describe(config, "lora_merged")
    assert full["targets"] == "" and lora["targets"] == "k,q"
    assert full["trainable_params"] == 3 * 16 * 8
    assert lora["trainable_params"] == 2 * (16 + 8)
    assert lora["model_flops"] > full["model_flops"] > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer="conv"), "unknown layer"),
        (dict(dtype="float16"), "unknown dtype"),
        (dict(batch=0), "batch must be a positive"),
        (dict(variant="seed", layer="linear"), "attention layer only"),
        (dict(variant="seed", dtype="bfloat16"), "float32 only"),
        (dict(timing_mode="as_written"), "seed variant only"),
    ],
)
def test_config_rejects_bad_settings(kwargs, match):
    base = dict(layer="attention", batch=2, embed=8, hidden=8, rank=1)
    with pytest.raises(ValueError, match=match):
        grids.Config(**{**base, **kwargs})


def test_methods_are_checked_against_the_variant():
    assert grids.check_methods(["lora", "full", "lora"], "clean") == ("lora", "full")
    with pytest.raises(ValueError, match="unknown method"):
        grids.check_methods(["qlora"], "clean")
    with pytest.raises(ValueError, match="does not exist in the seed variant"):
        grids.check_methods(["lora"], "seed")


def test_jax_runs_on_cpu_in_tests():
    assert jax.default_backend() == "cpu"


def test_custom_grid_defaults():
    g = grids.custom_grid(batch=(2,), embed=(8, 16), hidden=None, rank=(1,))
    assert [(c.embed, c.hidden) for c in g.configs] == [(8, 8), (16, 16)]
    b = grids.custom_grid(batch=(2,), embed=(8,), hidden=None, rank=(1,), layer="block", seq=4)
    assert [(c.embed, c.hidden, c.seq) for c in b.configs] == [(8, 32, 4)]
    r = grids.custom_grid(batch=(2,), embed=(8,), hidden=(4, 6), rank=(1, 2))
    assert len(r.configs) == 4
