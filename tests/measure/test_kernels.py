"""The timed kernels: factored and merged LoRA agree, and gradients are right."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from measure.kernels import build, gelu, layernorm, rmsnorm, silu, softmax


@pytest.mark.parametrize("layer,shape", [
    ("linear", dict(batch=8, embed=16, hidden=12, rank=3)),
    ("attention", dict(batch=8, embed=16, hidden=12, rank=2)),
    pytest.param("block", dict(batch=2, seq=4, embed=16, heads=2, rank=2, targets="q,v,mlp"),
                 marks=pytest.mark.slow),
])
def test_lora_and_merged_same_loss_and_gradients(layer, shape):
    """y = xW + s·(xA)B equals x(W + AB') with B' = s·B. Then both give the same loss and
    dA (= s·xᵀ·dY·Bᵀ), while dB = s·(xA)ᵀ·dY is s times merged's dB' = (xA)ᵀ·dY."""
    lora = build(layer, "lora", **shape)
    merged = build(layer, "lora_merged", **shape)
    x, frozen, trainable = lora.args
    s = 16.0 / shape["rank"]
    scaled = {k: (v * s if k.startswith("B") else v) for k, v in trainable.items()}
    loss_l, g_l = jax.jit(lora.fn)(x, frozen, trainable)
    loss_m, g_m = jax.jit(merged.fn)(x, frozen, scaled)
    np.testing.assert_allclose(loss_l, loss_m, rtol=2e-4, atol=1e-3)
    assert set(g_l) == set(g_m) and any(k.startswith("A") for k in g_l)
    for k in g_l:
        expected = g_m[k] * s if k.startswith("B") else g_m[k]
        scale = float(jnp.abs(g_l[k]).max())
        np.testing.assert_allclose(g_l[k], expected, rtol=2e-3, atol=2e-4 * scale)


@pytest.mark.parametrize("layer,method,shape", [
    ("linear", "full", dict(batch=3, embed=4, hidden=5)),
    ("attention", "lora", dict(batch=3, embed=4, hidden=5, rank=2, input_requires_grad=True)),
    ("attention", "lora_merged", dict(batch=3, embed=4, hidden=5, rank=2)),
    pytest.param("block", "full", dict(batch=1, seq=3, embed=4, heads=2, causal=True, bias=True,
                                        input_requires_grad=True), marks=pytest.mark.slow),
    pytest.param("block", "lora", dict(batch=1, seq=3, embed=4, heads=2, kv_heads=1, rank=1,
                                        mlp="swiglu", norm="rmsnorm", targets="q,k,v,o,mlp"),
                 marks=pytest.mark.slow),
])
def test_gradients_pass_check_grads(layer, method, shape, x64):
    """Reverse-mode gradients against central finite differences (jax.test_util.check_grads)
    in float64; eps = 1e-6 keeps the O(eps²) truncation error below the tolerance."""
    k = build(layer, method, dtype="float64", **shape)
    x, frozen, trainable = k.args
    if shape.get("input_requires_grad"):
        check_grads(lambda x, t: k.loss_fn(x, frozen, t), (x, trainable), order=1, modes=["rev"],
                    eps=1e-6)
    else:
        check_grads(lambda t: k.loss_fn(x, frozen, t), (trainable,), order=1, modes=["rev"], eps=1e-6)


@pytest.mark.parametrize("fn,args", [
    (softmax, (np.linspace(-2, 2, 12).reshape(3, 4),)),
    (gelu, (np.linspace(-3, 3, 7),)),
    (silu, (np.linspace(-3, 3, 7),)),
    (layernorm, (np.linspace(-1, 2, 12).reshape(3, 4), np.array([1.0, 2.0, 0.5, -1.0]),
                 np.array([0.1, 0.0, -0.2, 0.3]))),
    (rmsnorm, (np.linspace(-1, 2, 12).reshape(3, 4), np.array([1.0, 2.0, 0.5, -1.0]))),
])
def test_custom_vjps_match_finite_differences(fn, args, x64):
    check_grads(fn, tuple(jnp.asarray(a, jnp.float64) for a in args), order=1, modes=["rev"])


def test_primitives_match_reference_formulas():
    x = jnp.linspace(-3, 3, 13)
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=True), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(silu(x), jax.nn.silu(x), rtol=1e-6)
    m = x.reshape(1, -1)
    np.testing.assert_allclose(softmax(m), jax.nn.softmax(m), rtol=1e-6)


def test_only_trainable_parameters_get_gradients():
    k = build("attention", "lora", batch=4, embed=8, hidden=8, rank=2)
    _, grads = jax.jit(k.fn)(*k.args)
    assert sorted(grads) == ["Ak", "Aq", "Bk", "Bq"]
    assert sorted(k.args[1]) == ["Wk", "Wq", "Wv"]
