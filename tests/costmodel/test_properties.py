"""Invariants, checked by hypothesis over random shapes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel import METHODS, asymptotic_speedup, layer_cost, roofline
from costmodel.hardware import HardwareProfile

sizes = st.integers(min_value=2, max_value=4096)
ranks = st.integers(min_value=1, max_value=16)
layers = st.sampled_from(["linear", "attention"])
methods = st.sampled_from(METHODS)
GRID = dict(max_examples=60, deadline=None)


@settings(**GRID)
@given(layers, methods, sizes, sizes, sizes, ranks, st.sampled_from(["batch", "embed", "hidden"]),
       st.booleans())
def test_costs_grow_with_every_size(layer, method, n, e, h, r, which, input_grad):
    r = min(r, e, h)
    shape = dict(batch=n, embed=e, hidden=h, rank=r, input_requires_grad=input_grad)
    bigger = dict(shape, **{which: shape[which] * 2})
    a, b = layer_cost(layer, method, **shape), layer_cost(layer, method, **bigger)
    assert b.flops > a.flops
    assert b.bytes_moved > a.bytes_moved


@settings(**GRID)
@given(sizes, sizes, ranks, st.sets(st.sampled_from(["q", "k", "v"]), min_size=1))
def test_lora_params_are_r_times_e_plus_h_per_target(e, h, r, targets):
    r = min(r, e, h)
    for method in ("lora", "lora_merged"):
        cost = layer_cost("attention", method, batch=2, embed=e, hidden=h, rank=r,
                          targets=tuple(targets))
        assert int(cost.trainable_params) == len(targets) * r * (e + h)


@settings(**GRID)
@given(st.integers(min_value=1, max_value=512), ranks)
def test_flop_ratio_tends_to_stated_limit(n, r):
    """Attention, e = h = d, q,k adapted, no dX: full/lora FLOPs → 12nd² / 6nd² = 2.

    At n = 1 each dW = xᵀ·dY is an outer product (d² multiplies, not 2d²), so the limit is
    (6 + 3) / 6 = 1.5.
    """
    def flops(method, d):
        return layer_cost("attention", method, batch=n, embed=d, hidden=d, rank=r).flops

    stated = 1.5 if n == 1 else 2.0
    limit = asymptotic_speedup(flops, d_start=2.0**16)
    assert limit is not None and abs(limit - stated) < 1e-3
    if n == 1:
        return
    d = np.array([2.0**18])
    assert abs(flops("full", d) / flops("lora", d) - 2.0) < 2e-2 * (1 + n / 2**13)


def test_block_ratio_limit_matches_hand_count():
    """Block, e = d, MLP 4d, q,v adapted, input grad: weight matmuls per token are
    full 3·(2·12d²) [fwd, dX, dW] vs lora 2·(2·12d²) [fwd, dX] → 3/2."""
    def flops(method, d):
        return layer_cost("block", method, batch=2, seq=8, embed=d, hidden=4 * d, rank=4,
                          input_requires_grad=True).flops

    assert asymptotic_speedup(flops, d_start=2.0**16) == pytest.approx(1.5, rel=1e-3)


def test_vectorised_equals_scalar():
    n = np.array([2, 64, 1024])
    e = np.array([256, 512, 2048])
    vec = layer_cost("attention", "lora", batch=n, embed=e, hidden=e, rank=3)
    for i in range(3):
        one = layer_cost("attention", "lora", batch=int(n[i]), embed=int(e[i]), hidden=int(e[i]), rank=3)
        assert vec.flops[i] == one.flops and vec.bytes_moved[i] == one.bytes_moved


def test_roofline_bounds_order():
    prof = HardwareProfile("toy", {"float32": 1e12}, 1e11, 5e-6)
    d = np.geomspace(64, 8192, 20)
    rt = roofline(layer_cost("attention", "full", batch=64, embed=d, hidden=d), prof)
    assert np.all(rt.lower_bound_s <= rt.time_s) and np.all(rt.time_s <= rt.upper_bound_s)
    np.testing.assert_allclose(rt.time_s - rt.lower_bound_s, 25 * 5e-6)



