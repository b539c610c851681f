"""Worked closed forms, derived by hand (issue 2), for the blog's attention layer.

Input not differentiated, matmul FLOPs only, n = batch:
  full        = 12neh + 12n²h
  lora (q,k)  = 6neh + 10n²h + 8ner + 12nrh
  merged (q,k)= 10neh + 10n²h + 12erh
"""

import numpy as np
import pytest

from costmodel import layer_cost


def matmul_flops(cost):
    return sum(op.flops for op in cost.ops if op.kind == "matmul")


def closed_form(method, n, e, h, r):
    return {
        "full": 12 * n * e * h + 12 * n * n * h,
        "lora": 6 * n * e * h + 10 * n * n * h + 8 * n * e * r + 12 * n * r * h,
        "lora_merged": 10 * n * e * h + 10 * n * n * h + 12 * e * r * h,
    }[method]


@pytest.mark.parametrize("method,expected", [
    ("full", 226_492_416), ("lora", 123_600_896), ("lora_merged", 198_180_864),
])
def test_attention_n64_e512_r3(method, expected):
    cost = layer_cost("attention", method, batch=64, embed=512, hidden=512, rank=3)
    assert matmul_flops(cost) == expected
    assert closed_form(method, 64, 512, 512, 3) == expected


def test_closed_forms_vectorised_non_square():
    n, e, h, r = np.meshgrid([2, 64, 1024], [256, 2048], [256, 1024], [2, 5], indexing="ij")
    for method in ("full", "lora", "lora_merged"):
        cost = layer_cost("attention", method, batch=n, embed=e, hidden=h, rank=r)
        np.testing.assert_array_equal(matmul_flops(cost), closed_form(method, n, e, h, r))


def test_needed_gradients_only():
    """LoRA on q,k with a frozen Wv needs no dV; a first layer needs no dX."""
    lora = layer_cost("attention", "lora", batch=8, embed=32, hidden=32, rank=2)
    names = [op.name for op in lora.ops if op.phase == "backward"]
    assert not any(n.startswith("dV ") for n in names)
    assert not any(n.startswith("dX ") for n in names)
    assert not any(n.startswith("dW") for n in names)
    full = layer_cost("attention", "full", batch=8, embed=32, hidden=32, rank=2)
    names = [op.name for op in full.ops if op.phase == "backward"]
    assert {"dWq of Q=X·Wq", "dWk of K=X·Wk", "dWv of V=X·Wv", "dV of O=P·V"} <= set(names)
    assert not any(n.startswith("dX ") for n in names)
    deep = layer_cost("attention", "full", batch=8, embed=32, hidden=32, input_requires_grad=True)
    # dX from three projections, summed with two adds of n×e
    assert sum(op.name.startswith("dX ") for op in deep.ops) == 3
    acc = [op for op in deep.ops if op.name == "accumulate dX"]
    assert len(acc) == 1 and acc[0].flops == 2 * 8 * 32


def test_linear_by_hand():
    """y = xW, n=4, e=3, h=5: forward 2·4·3·5, dW = xᵀ·dy another 2·4·3·5, plus Σy (20−1)."""
    cost = layer_cost("linear", "full", batch=4, embed=3, hidden=5)
    assert float(cost.flops) == 2 * 60 + 2 * 60 + 19
    assert int(cost.trainable_params) == 15
    # bytes at float32: fwd (12+15+20)·4, dW (20+12+15)·4, Σ (20+1)·4, seed broadcast 20·4
    assert float(cost.bytes_moved) == (47 + 47 + 21 + 20) * 4
    assert float(cost.kernels) == 4


def test_trainable_params_per_method():
    e, h, r = 512, 256, 4
    full = layer_cost("attention", "full", batch=2, embed=e, hidden=h)
    lora = layer_cost("attention", "lora", batch=2, embed=e, hidden=h, rank=r)
    merged = layer_cost("attention", "lora_merged", batch=2, embed=e, hidden=h, rank=r)
    assert int(full.trainable_params) == 3 * e * h
    assert int(lora.trainable_params) == int(merged.trainable_params) == 2 * r * (e + h)


def test_lora_saves_its_extra_input():
    """dA = Xᵀ·d(XA) needs X kept; dB = (XA)ᵀ·d(XAB) needs XA. Full training of a first
    layer keeps X for dW as well, but not the rank-r products."""
    n, e, h, r = 16, 64, 64, 4
    lora = layer_cost("linear", "lora", batch=n, embed=e, hidden=h, rank=r)
    full = layer_cost("linear", "full", batch=n, embed=e, hidden=h)
    assert float(full.saved_bytes) == n * e * 4
    assert float(lora.saved_bytes) == (n * e + n * r) * 4


@pytest.mark.parametrize("kwargs,needle", [
    (dict(layer="attention", method="lora", batch=0, embed=8, hidden=8, rank=1), "batch must be > 0"),
    (dict(layer="attention", method="lora", batch=2, embed=8, hidden=-8, rank=1), "hidden must be > 0"),
    (dict(layer="attention", method="lora", batch=2, embed=8, hidden=6, rank=7), "rank 7 exceeds min(e, h) = 6"),
    (dict(layer="attention", method="lora", batch=2, embed=8, hidden=8, rank=0), "rank must be > 0"),
    (dict(layer="conv", method="full", batch=2, embed=8, hidden=8), "unknown layer 'conv'"),
    (dict(layer="attention", method="qlora", batch=2, embed=8, hidden=8), "unknown method 'qlora'"),
    (dict(layer="attention", method="lora", batch=2, embed=8, hidden=8, rank=1, targets="q,o"),
     "unknown target 'o'"),
    (dict(layer="block", method="lora", batch=2, embed=8, rank=1, targets=()), "target list is empty"),
    (dict(layer="attention", method="full", batch=2, embed=8, hidden=8, dtype="int4"), "unknown dtype"),
    (dict(layer="block", method="full", batch=2, embed=10, heads=4), "heads must divide embed"),
    (dict(layer="attention", method="full", batch=np.array([2, 0]), embed=8, hidden=8),
     "batch must be > 0, got 0"),
])
def test_bad_input_raises_value_error(kwargs, needle):
    layer, method = kwargs.pop("layer"), kwargs.pop("method")
    with pytest.raises(ValueError) as info:
        layer_cost(layer, method, **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("method,expected", [
    # X for dW; Q, K for dK, dQ; V for dP; P for dV and the softmax VJP (kept once)
    ("full", lambda n, e, h, r: n * e + 3 * n * h + n * n),
    # X for dA; XA for dB (q and k); Q, K; V for dP; P for the softmax VJP; no dV, so V is
    # read only by dP
    ("lora", lambda n, e, h, r: n * e + 2 * n * r + 3 * n * h + n * n),
    # merged: X for dW'; A, B are parameters; the rest as full
    ("lora_merged", lambda n, e, h, r: n * e + 3 * n * h + n * n),
])
def test_saved_activations_closed_form(method, expected):
    n, e, h, r = 16, 32, 24, 3
    cost = layer_cost("attention", method, batch=n, embed=e, hidden=h, rank=r)
    assert float(cost.saved_bytes) == expected(n, e, h, r) * 4
