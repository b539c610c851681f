"""The options of a whole training step (issue 8 §3), each against a closed form derived by
hand: fused attention, the task head, gradient accumulation, the optimizer's implementation,
8-bit optimizer states and the update inside the backward."""

from __future__ import annotations

import pytest

from costmodel.layers import layer_cost

# --------------------------------------------------------------------------- fused attention

BLOCK = dict(batch=2, embed=64, seq=128, heads=4, rank=4, input_requires_grad=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_fused_attention_saves_no_scores_and_recomputes_one_product(method, causal):
    """b = 2, h = 4 heads of hd = 16, t = 128: n = b·h·t² = 131072 score elements, m = b·h·t
    = 1024 rows. The naive block saves P (n values); the fused one saves the row log-sum-exp
    L (m values) instead, and O (tokens × d), which under full training dWo saves anyway but
    under LoRA on q, v (Wo frozen) only the fused backward reads (D = rowsum(dO ⊙ O)). FLOPs: the fused backward
    recomputes S = Q·Kᵀ (2·n·hd) and computes D = rowsum(dO ⊙ O) (2·m·hd − m) where the naive
    one runs the softmax and mask VJPs (7n − m in all), which the recompute's scale, mask and
    exp plus dS = P ⊙ (dP − D) (7n) replace; the forward adds L's m adds:
    Δflops = 2·n·hd + 2·m·hd + m."""
    naive = layer_cost("block", method, causal=causal, **BLOCK)
    fused = layer_cost("block", method, causal=causal, attention="fused", **BLOCK)
    n, m, hd, f32 = 2 * 4 * 128 * 128, 2 * 4 * 128, 16, 4
    tokens_d = 2 * 128 * 64
    o_saved = tokens_d if method == "lora" else 0
    assert float(naive.saved_bytes) - float(fused.saved_bytes) == (n - m - o_saved) * f32
    assert float(fused.flops) - float(naive.flops) == 2 * n * hd + 2 * m * hd + m
    # no (t × t) tensor is read or written: the fused op moves only Q, K, V, O, dO, dQ, dK, dV, L
    ops = [op for op in fused.ops if "flash_attention" in op.name]
    assert float(sum(op.bytes_moved for op in ops)) == (4 * tokens_d + m          # forward
                                                        + 5 * tokens_d + m       # shared backward
                                                        + 3 * tokens_d) * f32    # dQ, dK, dV
    # one kernel forward, one backward (FlashAttention's Algorithms 1 and 4)
    assert sum(op.kernels for op in ops) == 2
    # the naive path's score-sized traffic is gone: fewer bytes in all
    assert float(fused.bytes_moved) < float(naive.bytes_moved)


def test_fused_attention_under_lora_first_block_still_runs_its_backward_once():
    """Under LoRA on q only, the first block's K and V need no gradient: the shared backward
    (recompute + dS) runs once, and only dQ follows it."""
    c = layer_cost("block", "lora", batch=1, embed=64, seq=32, heads=2, rank=2, targets="q",
                   attention="fused")
    names = [op.name for op in c.ops if "flash_attention" in op.name and op.phase == "backward"]
    assert sorted(names) == ["dQ of O=flash_attention(Q,K,V)",
                             "shared backward of O=flash_attention(Q,K,V)"]


def test_fused_attention_grouped_query_reads_kv_once():
    """GQA with 2 kv heads for 4 query heads: K and V are read at their own size (no repeat),
    and dK, dV each sum the 2 query heads of a group: (b·h − b·h_kv)·t·hd adds."""
    shape = dict(batch=1, embed=64, seq=16, heads=4, kv_heads=2, rank=2, attention="fused")
    c = layer_cost("block", "full", **shape)
    dk = next(op for op in c.ops if op.name == "dK of O=flash_attention(Q,K,V)")
    assert float(dk.flops) == 2 * 4 * 16 * 16 * 16 + (4 - 2) * 16 * 16
    assert float(dk.bytes_moved) == 2 * 16 * 16 * 4
    assert not any("repeat" in op.name for op in c.ops)


def test_attention_option_is_checked():
    with pytest.raises(ValueError, match="unknown attention 'flash'"):
        layer_cost("block", "full", batch=1, embed=64, seq=8, heads=2, attention="flash")
    with pytest.raises(ValueError, match="block option"):
        layer_cost("attention", "full", batch=1, embed=64, hidden=64, attention="fused")


# --------------------------------------------------------------------------- the step's options

import math  # noqa: E402

import numpy as np  # noqa: E402

from costmodel.memory import memory_breakdown  # noqa: E402
from costmodel.optimizer import PRECISIONS, optimizer_cost, state_bytes_per_param  # noqa: E402
from costmodel.presets_models import MODELS, param_count  # noqa: E402
from costmodel.step import step_cost, step_param_count  # noqa: E402

GPT2 = MODELS["gpt2-small"]  # d 768, 12 layers, vocab 50257, tied LM head
D, V, L = 768, 50257, 12


def _matmul_flops(cost) -> float:
    return float(sum(op.flops for op in cost.ops if op.kind == "matmul"))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_classifier_head_closed_form(method):
    """b = 4 sequences, C = 3 classes: the head's products are h0·Wcls (2·b·d·C), dWcls and
    dh0 (2·b·d·C each): 6·b·d·C; it trains under every method (d·C + C parameters), and no
    vocabulary projection exists. The final norm runs over every token."""
    b, C = 4, 3
    c = step_cost(GPT2, method, batch=b, seq=64, rank=4, head="classifier", n_classes=C, precision="fp32")
    assert _matmul_flops(c.parts["head"]) == 6 * b * D * C
    adapters = 0 if method == "full" else 2 * L * 2 * D * 4
    base = param_count(GPT2) if method == "full" else 0
    assert int(c.trainable_params) == base + adapters + D * C + C
    ln_f = 2 * D if method == "full" else 0  # the final LayerNorm's γ, β train under full only
    assert int(c.parts["head"].trainable_params) == D * C + C + ln_f
    assert step_param_count(c.spec) == param_count(GPT2) + D * C + C  # tied: no LM head matrix
    mem = memory_breakdown(c)
    assert float(mem.transient_bytes) == max(b * C * 4, float(c.recompute_transient_bytes))


def test_lm_heads_tied_untied_and_none():
    """Untying GPT-2's head adds a d×V matrix (trainable under full); both heads run the same
    three d×V products over the T tokens: 6·T·d·V; `none` has no product at all."""
    T = 2 * 64
    tied = step_cost(GPT2, "full", batch=2, seq=64, head="lm-tied")
    untied = step_cost(GPT2, "full", batch=2, seq=64, head="lm")
    default = step_cost(GPT2, "full", batch=2, seq=64)
    assert float(default.flops) == float(tied.flops)  # the preset's own head is tied
    assert int(untied.trainable_params) - int(tied.trainable_params) == D * V
    assert _matmul_flops(tied.parts["head"]) == _matmul_flops(untied.parts["head"]) == 6 * T * D * V
    none = step_cost(GPT2, "lora", batch=2, seq=64, rank=4, head="none")
    assert _matmul_flops(none.parts["head"]) == 0
    assert int(none.trainable_params) == 2 * L * 2 * D * 4
    assert float(memory_breakdown(none).transient_bytes) == 0


def test_full_step_updates_the_dense_embedding_gradient_lora_freezes_it():
    """Under full training the lookup's backward zero-fills and writes the whole V×d table
    gradient, and the AdamW update runs over all P parameters (15 FLOPs each); under LoRA the
    tables get neither."""
    full = step_cost(GPT2, "full", batch=1, seq=64, precision="fp32", head="classifier")
    scatter = next(op for op in full.parts["embeddings"].ops if op.name.startswith("dE of"))
    assert float(scatter.bytes_moved) >= V * D * 4
    update = next(op for op in full.parts["optimizer"].ops if op.name == "adamw update")
    assert float(update.flops) == 15 * float(full.trainable_params)
    assert float(full.trainable_params) > V * D
    lora = step_cost(GPT2, "lora", batch=1, seq=64, rank=4, head="classifier")
    assert not any(op.phase == "backward" for op in lora.parts["embeddings"].ops)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_grad_accumulation_runs_fwd_bwd_k_times_and_the_update_once(method):
    """k = 4 micro-batches: every forward/backward part ×4, the optimizer part unchanged,
    (k − 1)·P accumulation adds reading two and writing one gradient, one kernel per tensor
    each time; activations are one micro-batch's; 4× the tokens."""
    k = 4
    kw = dict(batch=2, seq=64, rank=4, precision="fp32")
    one = step_cost(GPT2, method, **kw)
    acc = step_cost(GPT2, method, grad_accum=k, **kw)
    for part in ("embeddings", "first_block", "middle_blocks", "head"):
        for attr in ("flops", "bytes_moved", "kernels"):
            assert float(getattr(acc.parts[part], attr)) == k * float(getattr(one.parts[part], attr))
    for attr in ("flops", "bytes_moved", "kernels"):
        assert float(getattr(acc.parts["optimizer"], attr)) == float(getattr(one.parts["optimizer"], attr))
    P, T = float(one.trainable_params), one.trainable_tensors
    assert float(acc.parts["grad_accum"].flops) == (k - 1) * P
    assert float(acc.parts["grad_accum"].bytes_moved) == (k - 1) * 3 * P * 4
    assert float(acc.parts["grad_accum"].kernels) == (k - 1) * T
    assert float(acc.saved_bytes) == float(one.saved_bytes)
    assert float(acc.tokens) == k * float(one.tokens)
    assert "grad_accum" not in one.parts
    # memory: the running sum is a second set of gradients; activations stay one micro-batch's
    m1, mk = memory_breakdown(one), memory_breakdown(acc)
    assert float(mk.gradients_bytes) == 2 * float(m1.gradients_bytes)
    assert float(mk.activations_bytes) == float(m1.activations_bytes)


def test_optimizer_implementations_kernels_and_bytes():
    """P = 10⁶ parameters in T = 100 tensors, AdamW in fp32 (w = g = s = 4 bytes):
    - xla: one kernel per tensor per op; the update reads g, w, m, v and writes w, m, v: 28·P;
    - per-tensor: PyTorch's loop, 8 kernels per tensor (800), 4w + 2g + 14s = 80·P bytes;
      clipping 2 per tensor + 5 (stack, norm, + ε, divide, clamp);
    - foreach: the same 8 steps, each launched ⌈100/48⌉ = 3 times: 24 kernels;
    - fused: one pass (28·P), ⌈100/36⌉ = 3 launches.
    FLOPs do not depend on the implementation (15·P for the update)."""
    P, T = 1e6, 100
    fp32 = PRECISIONS["fp32"]
    costs = {impl: optimizer_cost(P, T, "adamw", fp32, clip_grad=True, impl=impl)
             for impl in ("xla", "per-tensor", "foreach", "fused")}
    update = {k: c.ops[-1] for k, c in costs.items()}
    assert {k: float(op.kernels) for k, op in update.items()} == {
        "xla": 100, "per-tensor": 800, "foreach": 24, "fused": 3}
    assert {k: float(op.bytes_moved) / P for k, op in update.items()} == {
        "xla": 28, "per-tensor": 80, "foreach": 80, "fused": 28}
    assert len({float(c.flops) for c in costs.values()}) == 1
    assert float(update["xla"].flops) == 15 * P
    clip_kernels = {k: float(sum(op.kernels for op in c.ops[:-1])) for k, c in costs.items()}
    assert clip_kernels == {"xla": 201, "per-tensor": 205, "foreach": 3 + 5 + 3, "fused": 3 + 5 + 3}
    # a multi-tensor launch also stops at 320 chunks of 65536 elements: 10⁹ parameters in
    # 10 tensors need ⌈10⁹ / 20971520⌉ = 48 launches
    big = optimizer_cost(1e9, 10, "adamw", fp32, clip_grad=False, impl="fused")
    assert float(big.ops[-1].kernels) == math.ceil(1e9 / 20971520) == 48
    with pytest.raises(ValueError, match="unknown optimizer implementation"):
        optimizer_cost(P, T, "adamw", fp32, impl="apex")


def test_8bit_adamw_states_are_2_bytes_per_parameter():
    """Dettmers et al. 2022: m and v as 1-byte codes plus one float32 absmax per 2048 values:
    2·(1 + 4/2048) bytes per parameter against AdamW's 8 (float32 states); 24 more FLOPs
    per parameter (dequantize and requantize both states)."""
    fp32 = PRECISIONS["fp32"]
    assert state_bytes_per_param("adamw-8bit", fp32) == 2 * (1 + 4 / 2048)
    assert state_bytes_per_param("adamw", fp32) == 8
    c8 = step_cost(GPT2, "full", batch=1, seq=64, precision="fp32", optimizer="adamw-8bit")
    c32 = step_cost(GPT2, "full", batch=1, seq=64, precision="fp32", optimizer="adamw")
    P = float(c8.trainable_params)
    m8, m32 = memory_breakdown(c8), memory_breakdown(c32)
    assert float(m32.optimizer_bytes) - float(m8.optimizer_bytes) == pytest.approx(P * (8 - 2 * (1 + 4 / 2048)))
    assert float(c8.parts["optimizer"].ops[-1].flops) == (15 + 24) * P
    # the update moves 1-byte states: g + 2w + 2·2·(1 + 4/2048) per parameter
    assert float(c8.parts["optimizer"].ops[-1].bytes_moved) == pytest.approx(P * (4 + 8 + 4 * (1 + 4 / 2048)))


def test_update_inside_the_backward_holds_one_tensor_gradient():
    """GPT-2 small, full, bf16-mixed: with the update inside the backward only the largest
    trainable tensor's gradient exists at once: the V×d token table, 2 bytes per element;
    the step's time terms do not change (clipping off in both)."""
    kw = dict(batch=1, seq=64, clip_grad=False)
    plain = step_cost(GPT2, "full", **kw)
    inside = step_cost(GPT2, "full", optimizer_in_backward=True, **kw)
    assert float(inside.largest_trainable_tensor) == V * D
    assert float(memory_breakdown(inside).gradients_bytes) == V * D * 2
    assert float(memory_breakdown(plain).gradients_bytes) == float(plain.trainable_params) * 2
    assert float(inside.flops) == float(plain.flops)
    lora = step_cost(GPT2, "lora", rank=4, optimizer_in_backward=True, **kw)
    assert float(memory_breakdown(lora).gradients_bytes) == D * 4 * 2  # one d×r adapter


@pytest.mark.parametrize("kwargs,needle", [
    (dict(head="mlm"), "unknown head 'mlm'"),
    (dict(attention="flash"), "unknown attention 'flash'"),
    (dict(grad_accum=0), "grad_accum must be a whole number >= 1"),
    (dict(n_classes=0), "n_classes must be a whole number >= 1"),
    (dict(optimizer="adafactor"), "unknown optimizer 'adafactor'"),
    (dict(optimizer_impl="apex"), "unknown optimizer implementation 'apex'"),
    (dict(optimizer_in_backward=True), "cannot clip by the global norm"),
    (dict(optimizer_in_backward=True, clip_grad=False, grad_accum=2), "cannot accumulate"),
])
def test_bad_options_raise_one_line(kwargs, needle):
    with pytest.raises(ValueError, match=needle) as exc:
        step_cost(GPT2, "full", batch=1, seq=8, **kwargs)
    assert "\n" not in str(exc.value)


def test_fused_attention_in_a_whole_step():
    """The whole step's saved activations lose each block's b·h·t² probabilities (keeping
    their b·h·t log-sum-exps): L·(n − m) values, O being saved by dWo under full anyway."""
    b, t, h = 1, 256, 12
    naive = step_cost(GPT2, "full", batch=b, seq=t, precision="fp32")
    fused = step_cost(GPT2, "full", batch=b, seq=t, precision="fp32", attention="fused")
    n, m = b * h * t * t, b * h * t
    assert float(naive.saved_bytes) - float(fused.saved_bytes) == L * (n - m) * 4
    assert np.isfinite(float(fused.flops)) and float(fused.flops) > float(naive.flops)


# --------------------------------------------------------------------------- the CLI

import json as _json  # noqa: E402

from costmodel.cli import main  # noqa: E402


def _cli_json(capsys, *argv) -> dict:
    assert main(["--model", "gpt2-small", "--batch", "2", "--seq", "128", *argv, "--json"]) == 0
    return _json.loads(capsys.readouterr().out)


def test_cli_options_reach_the_step(capsys):
    """Each flag changes what its closed form says: --grad-accum 4 quadruples the tokens and
    the forward/backward FLOPs; --head classifier --classes 5 trains d·5 + 5 more parameters
    under LoRA; --optimizer adamw-8bit saves 2·(4 − (1 + 4/2048))·P of optimizer memory
    against fp32 states (bf16-mixed: 4-byte states)."""
    base = _cli_json(capsys)
    assert base["config"]["head"] == "lm-tied" and base["config"]["optimizer_impl"] == "xla"
    acc = _cli_json(capsys, "--grad-accum", "4")
    assert acc["config"]["tokens"] == 4 * base["config"]["tokens"]
    for m in ("full", "lora"):
        fb = {p: v for p, v in base["methods"][m]["part_flops"].items() if p != "optimizer"}
        fa = acc["methods"][m]["part_flops"]
        for p, v in fb.items():
            assert fa[p] == pytest.approx(4 * v)
        assert fa["optimizer"] == pytest.approx(base["methods"][m]["part_flops"]["optimizer"])
    cls = _cli_json(capsys, "--head", "classifier", "--classes", "5")
    assert cls["methods"]["lora"]["trainable_params"] == base["methods"]["lora"]["trainable_params"] + D * 5 + 5
    q8 = _cli_json(capsys, "--optimizer", "adamw-8bit")
    P = base["methods"]["full"]["trainable_params"]
    saved = base["methods"]["full"]["memory"]["optimizer_bytes"] - q8["methods"]["full"]["memory"]["optimizer_bytes"]
    assert saved == pytest.approx(P * (2 * 4 - 2 * (1 + 4 / 2048)))
    inside = _cli_json(capsys, "--optimizer-in-backward", "--no-clip")
    assert inside["methods"]["full"]["memory"]["gradients_bytes"] == V * D * 2
    fused = _cli_json(capsys, "--attention", "fused", "--optimizer-impl", "per-tensor")
    f, b = fused["methods"]["full"], base["methods"]["full"]
    assert f["memory"]["activations_bytes"] < b["memory"]["activations_bytes"]
    assert f["kernels"] > b["kernels"]


@pytest.mark.parametrize("argv,needle", [
    (["--head", "mlm"], "invalid choice: 'mlm'"),
    (["--grad-accum", "0"], "--grad-accum"),
    (["--optimizer", "adafactor"], "invalid choice: 'adafactor'"),
    (["--optimizer-impl", "apex"], "invalid choice: 'apex'"),
    (["--attention", "flash"], "invalid choice: 'flash'"),
    (["--optimizer-in-backward"], "--no-clip"),
    (["--optimizer-in-backward", "--no-clip", "--grad-accum", "2"], "cannot accumulate"),
])
def test_cli_bad_options_exit_2_one_line(capsys, argv, needle):
    assert main(["--model", "gpt2-small", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_step_level_rates_take_precedence(tmp_path, capsys):
    """A profile with layer-fitted and step-fitted rates: `auto` (what `step_time` and the
    CLI use) picks the step-level ones; `layer` the others. The CLI's step time is then the
    additive form by hand: dispatch + flops/F + bytes/B + kernels·τ (full: λ = 1)."""
    from costmodel.hardware import HardwareProfile
    from costmodel.steptime import FittedRates

    layer = {"fit_flops_per_s": 1e11, "fit_bytes_per_s": 1e10, "fit_kernel_overhead_s": 1e-6}
    step = {"step_fit_flops_per_s": 5e10, "step_fit_bytes_per_s": 2e10, "step_fit_kernel_overhead_s": 3e-6,
            "step_fit_dispatch_s": 2e-4}
    prof = HardwareProfile("measured cpu x", {"float32": 1e12}, 1e11, 1e-6, measured=True, extra={**layer, **step})
    assert FittedRates.from_profile(prof).flops_per_s == 5e10
    assert FittedRates.from_profile(prof, "layer").flops_per_s == 1e11
    assert FittedRates.from_profile(prof, "step").dispatch_s == 2e-4
    path = tmp_path / "fitted_profile.json"
    prof.to_json(path)
    assert main(["--model", "gpt2-small", "--batch", "1", "--seq", "64", "--precision", "fp32",
                 "--method", "full", "--hardware", str(path), "--json"]) == 0
    rec = _json.loads(capsys.readouterr().out)["methods"]["full"]
    expected = 2e-4 + rec["flops"] / 5e10 + rec["bytes"] / 2e10 + rec["kernels"] * 3e-6
    assert rec["step_time_s"] == pytest.approx(expected, rel=1e-9)
