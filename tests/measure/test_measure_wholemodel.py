"""The whole-model training step: LoRA forms agree, gradients are right, and its parameters
and FLOPs are the cost model's."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from costmodel.presets_models import MODELS, param_count
from measure import wholemodel as wm
from measure.modelconfig import ModelConfig, StepConfig, scaled_model, step_cost
from measure.timing import xla_cost

TINY = dict(d_model=16, layers=2, vocab=32, seq=8)


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def _as64(d: dict) -> dict:
    return {k: jnp.asarray(v, jnp.float64) for k, v in d.items()}


def _cfg(preset="gpt2-small", method="full", **kw) -> StepConfig:
    shape = scaled_model(preset, **{**TINY, **kw.pop("shape", {})})
    return StepConfig(shape, method, **{"batch": 2, "seq": 4, "rank": 2, **kw})


@pytest.mark.slow
@pytest.mark.parametrize("preset,head,targets,matrices", [
    ("gpt2-small", "lm", "q,v", 2),
    ("llama2-70b", "lm-tied", "q,k,v,o,mlp", 7),  # GQA; SwiGLU's gate, up, down; RMSNorm
    ("bert-base", "classifier", "q,v,mlp", 4),  # embeddings norm, token types; GELU's 2
])
def test_lora_and_merged_same_loss_and_adapter_gradients(x64, preset, head, targets, matrices):
    """y = xW + s·(xA)B equals x(W + AB') with B' = s·B: both give the same loss and dA, and
    dB = s·dB' (Hu et al. 2021, eq. 3). The classifier head's gradient is the same too.
    In float64, so that the comparison is exact to rounding."""
    lora, merged = (_cfg(preset, m, head=head, targets=targets) for m in ("lora", "lora_merged"))
    trainable, frozen, _, tokens, labels = wm.build(lora).args
    trainable, frozen = _as64(trainable), _as64(frozen)
    s = lora.alpha / lora.rank
    is_b = lambda k: k.split(".")[-1].startswith("B")  # noqa: E731
    scaled = {k: v * s if is_b(k) else v for k, v in trainable.items()}
    grad_l = jax.value_and_grad(wm.loss_fn_for(lora, dtype="float64"))
    grad_m = jax.value_and_grad(wm.loss_fn_for(merged, dtype="float64"))
    loss_l, g_l = jax.jit(grad_l)(trainable, frozen, tokens[0], labels[0])
    loss_m, g_m = jax.jit(grad_m)(scaled, frozen, tokens[0], labels[0])
    np.testing.assert_allclose(loss_l, loss_m, rtol=1e-12)
    # A and B per adapted matrix, in both blocks (+ the classifier's W and b)
    assert len(g_l) == 2 * 2 * matrices + 2 * (head == "classifier")
    assert set(g_l) == set(g_m)
    for k in g_l:
        expected = g_m[k] * s if is_b(k) else g_m[k]
        scale = float(jnp.abs(g_l[k]).max())
        # float64 rounding of the two associations reaches a few 1e-9 relative where a
        # gradient is a small difference of larger terms (~1e-10 against the loss's O(1));
        # a wrong scale or a missing term differs by O(1)
        np.testing.assert_allclose(g_l[k], expected, rtol=1e-7, atol=1e-12 * scale)


@pytest.mark.slow
@pytest.mark.parametrize("preset,method,opts", [
    ("gpt2-small", "full", dict(head="lm-tied")),
    ("bert-base", "full", dict(head="lm-tied")),  # MLM transform, vocabulary bias, token types
    ("llama2-70b", "lora", dict(head="lm", targets="q,k,v,o,mlp")),
    ("gpt2-small", "lora_merged", dict(head="classifier", recompute=True)),
])
def test_gradients_match_finite_differences(x64, preset, method, opts):
    """Reverse-mode gradients of the whole model's loss against central finite differences
    (jax.test_util.check_grads) in float64, every trainable parameter at once."""
    cfg = _cfg(preset, method, **opts)
    trainable, frozen, _, tokens, labels = wm.build(cfg).args
    trainable, frozen = _as64(trainable), _as64(frozen)
    loss = wm.loss_fn_for(cfg, dtype="float64")
    check_grads(lambda t: loss(t, frozen, tokens[0], labels[0]), (trainable,), order=1,
                modes=["rev"], eps=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [
    dict(heads=2, causal=True),
    dict(heads=4, kv_heads=2, mlp="swiglu", norm="rmsnorm"),  # grouped-query, encoder
])
def test_fused_attention_block_matches_naive(x64, shape):
    """The block with jax.nn.dot_product_attention against the project's naive attention:
    outputs and every gradient agree to float32 rounding (dot_product_attention computes in
    float32 even on float64 inputs, so no float64 finite differences of its own)."""
    from measure import kernels

    k = kernels.build("block", "lora", batch=2, seq=4, embed=16, rank=2, targets="q,k,v,o,mlp",
                      input_requires_grad=True, dtype="float64", **shape)
    x, frozen, trainable = k.args

    def loss(attention):
        return lambda x, t: jnp.sum(jnp.sin(kernels._block(x, {**frozen, **t}, k.cfg, attention=attention)))

    value_n, grads_n = jax.value_and_grad(loss("naive"), argnums=(0, 1))(x, trainable)
    value_f, grads_f = jax.value_and_grad(loss("fused"), argnums=(0, 1))(x, trainable)
    np.testing.assert_allclose(value_f, value_n, rtol=1e-5)
    for g_f, g_n in zip(jax.tree_util.tree_leaves(grads_f), jax.tree_util.tree_leaves(grads_n)):
        np.testing.assert_allclose(g_f, g_n, rtol=0, atol=1e-4 * float(jnp.abs(g_n).max()))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gpt2-small", "llama2-70b"])
def test_fused_attention_gives_the_whole_model_loss(preset):
    naive = _cfg(preset, "lora", targets="q,k,v,o,mlp")
    fused = _cfg(preset, "lora", targets="q,k,v,o,mlp", attention="fused")
    trainable, frozen, _, tokens, labels = wm.build(naive).args
    args = (trainable, frozen, tokens[0], labels[0])
    np.testing.assert_allclose(wm.loss_fn_for(fused)(*args), wm.loss_fn_for(naive)(*args), rtol=1e-6)


@pytest.mark.slow
def test_grad_accumulation_is_the_mean_of_micro_batch_gradients():
    """k micro-batches then one update = the update of the mean gradient: with plain SGD
    (w ← w − lr·g) the new weights are w − lr·(g1 + g2)/2, g_i each micro-batch's gradient."""
    cfg = _cfg(method="full", optimizer="sgd", clip=False, grad_accum=2)
    step = wm.build(cfg)
    trainable, frozen, opt_state, tokens, labels = step.args
    new, _, loss = jax.jit(step.fn)(*step.args)
    single = wm.loss_fn_for(_cfg(method="full", optimizer="sgd", clip=False))
    l1, g1 = jax.value_and_grad(single)(trainable, frozen, tokens[0], labels[0])
    l2, g2 = jax.value_and_grad(single)(trainable, frozen, tokens[1], labels[1])
    np.testing.assert_allclose(loss, (l1 + l2) / 2, rtol=1e-6)
    for k in trainable:
        np.testing.assert_allclose(new[k], trainable[k] - wm.LEARNING_RATE * (g1[k] + g2[k]) / 2,
                                   rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_counts_equal_the_cost_model(name):
    """Every preset's shape, scaled down: the JAX model holds exactly the parameters that
    `param_count` counts (full fine-tuning, the preset's own head), and trains exactly the
    cost model's trainable parameters under each method and head."""
    shape = scaled_model(name, d_model=64, layers=2, vocab=96, seq=32)
    own_head = "lm-tied" if shape.tied_embeddings else "lm"
    full = StepConfig(shape, "full", batch=2, seq=16, head=own_head)
    assert wm.param_counts(full)["total"] == param_count(shape)
    assert wm.param_counts(full)["trainable"] == param_count(shape)
    for head in ("lm", "lm-tied", "classifier"):
        for method in ("full", "lora", "lora_merged"):
            cfg = StepConfig(shape, method, batch=2, seq=16, rank=3, head=head, targets="q,v,mlp")
            assert wm.param_counts(cfg)["trainable"] == int(step_cost(cfg).trainable_params)


def test_lora_trains_only_adapters_and_a_classifier_head():
    shape = scaled_model("bert-base", **TINY)
    lora = StepConfig(shape, "lora", batch=2, seq=4, rank=2, head="classifier", targets="q")
    shapes = wm.param_shapes(lora)
    trained = sorted(k for k, (_, t) in shapes.items() if t)
    assert trained == ["0.Aq", "0.Bq", "1.Aq", "1.Bq", "Wcls", "bcls"]
    # 2 blocks x (A: 16x2 + B: 2x16) + W: 16x2 + b: 2
    assert wm.param_counts(lora)["trainable"] == 2 * (16 * 2 + 2 * 16) + 16 * 2 + 2


# --------------------------------------------------------------------------- FLOPs

def _converts(compiled) -> int:
    """Elements converted by the compiled program: XLA's CPU backend computes bfloat16 in
    float32 and counts each convert as one FLOP, which no device with bfloat16 arithmetic
    performs (and the cost model does not count)."""
    n = 0
    for line in compiled.as_text().splitlines():
        m = re.search(r"= \w+\[([\d,]*)\][^=]* convert\(", line)
        if m:
            n += int(np.prod([int(x) for x in m.group(1).split(",") if x] or [1]))
    return n


FLOP_CASES = [(dict(head="lm-tied"), m) for m in ("full", "lora", "lora_merged")] + [
    (opts, m) for opts in (
        dict(head="lm", optimizer="sgd", clip=False),
        dict(head="classifier"),
        dict(head="lm", attention="fused"),
        dict(head="lm-tied", recompute=True),
        dict(head="lm-tied", grad_accum=2),
        dict(head="lm", precision="bf16"),
        dict(head="lm-tied", precision="bf16-mixed", preset="llama2-70b"),
    ) for m in ("full", "lora")
]


@pytest.mark.slow
@pytest.mark.parametrize("opts,method", FLOP_CASES,
                         ids=["-".join(f"{v}" for v in (*o.values(), m)) for o, m in FLOP_CASES])
def test_step_flops_match_xla_within_2pct(opts, method):
    """XLA's `cost_analysis()` of the compiled whole step (forward, backward, clipping and the
    optimizer update) against `costmodel.model.step_cost`.

    On the CPU backend XLA expands `jax.checkpoint`'s optimisation barriers before common
    subexpression elimination, so the recomputed forward (per-block recomputation, and the
    fused attention's recomputed scores) merges back into the original one: the compiled
    CPU program does not recompute, and is compared with the cost model's step without
    recomputation. A GPU keeps the barriers and is compared with the recomputing count.
    """
    opts = dict(opts)
    preset = opts.pop("preset", "gpt2-small")
    cfg = StepConfig(scaled_model(preset, d_model=128, layers=2, vocab=512, seq=64), method,
                     batch=2, seq=32, rank=4, targets="q,v,mlp", **opts)
    compiled = jax.jit(wm.build(cfg).fn).lower(*wm.build(cfg).args).compile()
    xla = xla_cost(compiled)["flops"] - _converts(compiled)
    expected = cfg
    if jax.default_backend() == "cpu" and (cfg.recompute or cfg.attention == "fused"):
        import dataclasses

        expected = dataclasses.replace(cfg, recompute=False, attention="naive")
    assert xla == pytest.approx(float(step_cost(expected).flops), rel=0.02)


def test_model_config_labels_and_steps():
    cfg = ModelConfig(scaled_model("gpt2-small", **TINY), batch=2, seq=4, rank=2, grad_accum=2)
    assert cfg.step("full").rank == 0 and cfg.step("lora").rank == 2
    assert cfg.label() == "gpt2-small L=2 d=16 V=32 b=2 s=4 r=2 lm adamw+clip fp32 accum2"
