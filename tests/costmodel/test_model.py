"""Whole-model training step: parts add up, closed forms by hand, ZeRO's 16 bytes/param."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.hardware import HardwareProfile
from costmodel.layers import layer_cost
from costmodel.memory import memory_breakdown
from costmodel.presets_hardware import HARDWARE
from costmodel.presets_models import MODELS, param_count
from costmodel.step import PARTS, step_cost
from costmodel.steptime import UNFITTED, FittedRates, efficiency_for, step_time

SMALL = ["gpt2-small", "bert-base", "llama3.2-1b", "distilbert", "roberta-base"]


def _matmul_flops(cost) -> float:
    return float(sum(op.flops for op in cost.ops if op.kind == "matmul"))


# --------------------------------------------------------------------------- trainable params


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("rank", [1, 4, 16])
def test_lora_trainable_params_closed_form(name, rank):
    """2·L·d·r per square target type (q and o are d×d everywhere)."""
    m = MODELS[name]
    for targets in ("q", "o", "q,o"):
        n_types = len(targets.split(","))
        c = step_cost(m, "lora", batch=1, seq=8, rank=rank, targets=targets)
        assert int(c.trainable_params) == n_types * 2 * m.layers * m.d_model * rank


def test_lora_gqa_and_mlp_targets_closed_form():
    m = MODELS["llama2-70b"]  # k, v: d → kv_dim = 8·128
    c = step_cost(m, "lora", batch=1, seq=8, rank=8, targets="q,k,v,o,mlp")
    per_layer = 8 * (2 * (m.d_model + m.d_model) + 2 * (m.d_model + m.kv_dim) + 3 * (m.d_model + m.ffn))
    assert int(c.trainable_params) == m.layers * per_layer
    merged = step_cost(m, "lora_merged", batch=1, seq=8, rank=8, targets="q,k,v,o,mlp")
    assert int(merged.trainable_params) == int(c.trainable_params)


@pytest.mark.parametrize("name", list(MODELS))
def test_full_trains_every_parameter(name):
    m = MODELS[name]
    c = step_cost(m, "full", batch=1, seq=8)
    assert int(c.trainable_params) == param_count(m)


def test_frozen_prefix_removes_blocks_and_lookup_tables():
    m = MODELS["gpt2-small"]
    k = 4
    c = step_cost(m, "full", batch=2, seq=64, frozen_prefix=k)
    d = m.d_model
    block = (param_count(m) - (m.vocab + m.seq) * d - 2 * d) // m.layers
    # the tied token table still trains through the LM head; the position table does not
    assert int(c.trainable_params) == param_count(m) - m.seq * d - k * block
    frozen = c.parts["frozen_blocks"]
    assert all(op.phase == "forward" for op in frozen.ops)
    assert float(frozen.saved_bytes) == 0 and float(frozen.trainable_params) == 0
    lora = step_cost(m, "lora", batch=2, seq=64, rank=4, frozen_prefix=k)
    assert int(lora.trainable_params) == 2 * (m.layers - k) * 2 * d * 4


# --------------------------------------------------------------------------- sum of parts


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("method", ["full", "lora", "lora_merged"])
def test_step_is_the_sum_of_its_parts(name, method):
    m = MODELS[name]
    c = step_cost(m, method, batch=2, seq=32, rank=4, targets="q,v", precision="fp32")
    for attr in ("flops", "bytes_moved", "kernels", "saved_bytes", "trainable_params"):
        parts = sum(np.asarray(getattr(c.parts[p], attr), dtype=float) for p in PARTS if p in c.parts)
        assert float(getattr(c, attr)) == pytest.approx(float(parts), rel=1e-12)
    # and each block part is the single-layer model's block, without its stand-in loss
    block = dict(batch=2, embed=m.d_model, hidden=m.ffn, rank=4 if method != "full" else 0,
                 targets="q,v", dtype="float32", seq=32, heads=m.heads, kv_heads=m.kv_heads,
                 mlp=m.mlp, norm=m.norm, bias=m.bias, causal=m.causal)

    def no_loss(cost) -> float:
        return float(sum(op.flops for op in cost.ops if "loss=" not in op.name))

    first_grad = method == "full"
    first = layer_cost("block", method, input_requires_grad=first_grad, **block)
    middle = layer_cost("block", method, input_requires_grad=True, **block)
    assert float(c.parts["first_block"].flops) == pytest.approx(no_loss(first), rel=1e-12)
    assert float(c.parts["middle_blocks"].flops) == pytest.approx((m.layers - 1) * no_loss(middle), rel=1e-12)


def test_full_step_matmul_flops_closed_form():
    """Every matmul runs three times (forward, dX, dW) under full training of GPT-3 175B:
    3·[L·(2T(4d² + 2d·ffn) + 2·2·b·s²·d) + 2·T·d·V], T = b·s tokens."""
    m = MODELS["gpt3-175b"]
    b, s = 1, 2048
    t = b * s
    d, ffn, v, L = m.d_model, m.ffn, m.vocab, m.layers
    expected = 3 * (L * (2 * t * (4 * d * d + 2 * d * ffn) + 4 * b * s * s * d) + 2 * t * d * v)
    c = step_cost(m, "full", batch=b, seq=s, precision="fp16-mixed")
    assert _matmul_flops(c.total) == pytest.approx(expected, rel=1e-12)
    # Kaplan et al. 2020: C ≈ 6·N·T plus the attention term
    assert float(c.flops) == pytest.approx(6 * param_count(m) * t, rel=0.05)


def test_lora_skips_weight_gradients_and_the_first_dx():
    m = MODELS["gpt2-small"]
    full = step_cost(m, "full", batch=4, seq=128)
    lora = step_cost(m, "lora", batch=4, seq=128, rank=4)
    assert float(lora.flops) < float(full.flops)
    names = [op.name for op in lora.parts["first_block"].ops if op.phase == "backward"]
    assert not any(n.startswith("dX of") for n in names)
    assert not any(op.phase == "backward" for op in lora.parts["embeddings"].ops)


def test_recompute_trades_one_forward_for_memory():
    m = MODELS["gpt2-medium"]
    plain = step_cost(m, "full", batch=2, seq=512)
    redo = step_cost(m, "full", batch=2, seq=512, recompute=True)
    fwd = sum(float(plain.parts[p].phase_total("flops", "forward")) for p in ("first_block", "middle_blocks"))
    assert float(redo.flops) == pytest.approx(float(plain.flops) + fwd, rel=1e-12)
    assert float(redo.saved_bytes) < 0.2 * float(plain.saved_bytes)
    mem_plain, mem_redo = memory_breakdown(plain), memory_breakdown(redo)
    assert float(mem_redo.total_bytes) < float(mem_plain.total_bytes)
    # the peak's transient is the larger of dlogits (plain) and one recomputed block
    assert float(redo.recompute_transient_bytes) > 0
    assert float(mem_redo.transient_bytes) == max(float(mem_plain.transient_bytes),
                                                  float(redo.recompute_transient_bytes))


def test_lora_dropout_saves_a_dropped_input_and_a_mask_per_target():
    """Without dropout q and v share one saved input (tokens × d); with it each keeps its
    own dropped input and a 1-byte mask: Δ = 2·(nd·s + nd) − nd·s = nd·(s + 2) per block."""
    m = MODELS["gpt2-small"]
    b, s = 2, 64
    n, d = b * s, m.d_model
    plain = step_cost(m, "lora", batch=b, seq=s, rank=4, targets="q,v", precision="fp32")
    drop = step_cost(m, "lora", batch=b, seq=s, rank=4, targets="q,v", precision="fp32", dropout=True)
    delta = float(drop.block_saved_bytes["middle"] - plain.block_saved_bytes["middle"])
    assert delta == n * d * (4 + 2)
    assert int(drop.trainable_params) == int(plain.trainable_params)
    assert float(drop.flops) > float(plain.flops)


def test_costs_vectorise_over_batch_and_seq():
    m = MODELS["llama3.2-1b"]
    batch = np.array([1, 2, 8])
    seq = np.array([128, 512, 2048])
    many = step_cost(m, "lora", batch=batch, seq=seq, rank=8)
    t_many = step_time(many, HARDWARE["a100-80gb"])
    mem_many = memory_breakdown(many)
    for i in range(3):
        one = step_cost(m, "lora", batch=int(batch[i]), seq=int(seq[i]), rank=8)
        assert float(one.flops) == pytest.approx(many.flops[i], rel=1e-12)
        assert float(step_time(one, HARDWARE["a100-80gb"]).time_s) == pytest.approx(t_many.time_s[i], rel=1e-12)
        assert float(memory_breakdown(one).total_bytes) == pytest.approx(mem_many.total_bytes[i], rel=1e-12)


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("precision,optimizer,per_param", [
    ("fp16-mixed", "adamw", 16),  # ZeRO (Rajbhandari et al. 2020), sec. 3.1: 2 + 2 + 12
    ("bf16-mixed", "adamw", 16),
    ("fp32", "adamw", 16),
    ("bf16", "adamw", 8),
    ("fp16-mixed", "sgd", 8),
    ("fp32", "sgd", 8),
])
def test_model_state_bytes_per_parameter(precision, optimizer, per_param):
    m = MODELS["gpt2-small"]
    mem = memory_breakdown(step_cost(m, "full", batch=1, seq=16, precision=precision, optimizer=optimizer))
    assert float(mem.model_state_bytes) == per_param * param_count(m)


def test_mixed_adam_lora_states_only_for_adapters():
    m = MODELS["llama2-7b"]
    c = step_cost(m, "lora", batch=1, seq=16, rank=8, precision="fp16-mixed")
    mem = memory_breakdown(c)
    p = float(c.trainable_params)
    # frozen base: 2 bytes (fp16 weights) each; adapters: the full 16
    assert float(mem.model_state_bytes) == 2 * param_count(m) + 16 * p
    assert float(mem.checkpoint_bytes) == 4 * p  # fp32 master copy of the adapters
    assert float(mem.total_params) == param_count(m) + p


def test_lora_saves_extra_inputs_but_less_than_full():
    m = MODELS["gpt2-small"]
    full = step_cost(m, "full", batch=4, seq=256, precision="fp32")
    lora = step_cost(m, "lora", batch=4, seq=256, rank=4, precision="fp32")
    merged = step_cost(m, "lora_merged", batch=4, seq=256, rank=4, precision="fp32")
    n, d, r, s = 4 * 256, m.d_model, 4, 4
    # LoRA still saves the q/v input (n·d) for ∂A, and xA (n·r) per target for ∂B
    assert float(lora.block_saved_bytes["middle"]) < float(full.block_saved_bytes["middle"])
    assert float(lora.block_saved_bytes["middle"]) >= n * d * s
    # lora_merged keeps its merged W′q, W′v (d² each) for dX instead of xAq, xAv
    delta = float(merged.block_saved_bytes["middle"] - lora.block_saved_bytes["middle"])
    assert delta == 2 * d * d * s - 2 * n * r * s


# --------------------------------------------------------------------------- time


def test_step_time_labels_and_tokens_per_s(tmp_path):
    m = MODELS["gpt3-175b"]
    full = step_cost(m, "full", batch=1, seq=2048, precision="fp16-mixed")
    lora = step_cost(m, "lora", batch=1, seq=2048, rank=4, precision="fp16-mixed")
    v100 = HARDWARE["v100"]
    tf, tl = step_time(full, v100), step_time(lora, v100)
    assert tf.efficiency is UNFITTED and tf.basis == "unfitted"
    assert float(tf.tokens_per_s) == pytest.approx(2048 / float(tf.time_s))
    assert float(tf.time_s) / float(tl.time_s) > 1.2
    assert float(tf.lower_bound_s) <= float(tf.time_s) <= float(tf.upper_bound_s)
    assert float(tf.time_s) == pytest.approx(sum(float(v) for v in tf.part_time_s.values()))

    measured = HardwareProfile("mine", {"float16": 1e14}, 8e11, 4e-6, measured=True)
    assert efficiency_for(measured).label == "measured"
    assert step_time(lora, measured).basis == "measured"


def test_fitted_rates_use_the_additive_form_and_say_so(tmp_path):
    m = MODELS["gpt2-small"]
    lora = step_cost(m, "lora", batch=4, seq=256, rank=4, precision="fp32")
    rates = {"fit_flops_per_s": 5e12, "fit_bytes_per_s": 4e11, "fit_kernel_overhead_s": 6e-6,
             "fit_dispatch_s": 1e-4, "fit_lora_multiplier": 1.5}
    profile = HardwareProfile("mine", {"float32": 1e13}, 8e11, 4e-6, measured=True, extra=rates)
    path = tmp_path / "fitted.json"
    profile.to_json(path)
    t = step_time(lora, HardwareProfile.from_json(path))
    assert t.basis == "fitted" and t.fitted == FittedRates.from_profile(profile)
    # λ = 1.5 slows the compute of the adapted blocks only; the embeddings, head and
    # optimizer are the same arithmetic under every method
    total = lora.total
    adapted = sum(float(lora.parts[p].flops) for p in ("first_block", "middle_blocks"))
    expected = (1e-4 + (float(total.flops) + 0.5 * adapted) / 5e12 + float(total.bytes_moved) / 4e11
                + float(total.kernels) * 6e-6)
    assert float(t.time_s) == pytest.approx(expected, rel=1e-12)
    assert float(t.time_s) == pytest.approx(sum(float(v) for v in t.part_time_s.values()), rel=1e-12)
    # an explicit efficiency overrides the profile's fitted rates
    assert step_time(lora, profile, efficiency=UNFITTED).basis == "unfitted"
    with pytest.raises(ValueError):
        FittedRates(flops_per_s=0, bytes_per_s=1, kernel_overhead_s=0)


@pytest.mark.parametrize("kwargs,needle", [
    ({"method": "qlora"}, "unknown method"),
    ({"rank": 1000}, "rank 1000 exceeds"),
    ({"targets": ""}, "empty"),
    ({"targets": "q,x"}, "unknown target"),
    ({"frozen_prefix": 12}, "frozen_prefix"),
    ({"precision": "fp8"}, "unknown precision"),
    ({"optimizer": "lion"}, "unknown optimizer"),
    ({"seq": 4096}, "learned positions"),
    ({"batch": 0}, "batch"),
])
def test_bad_step_input_raises_one_line_value_error(kwargs, needle):
    args = {"method": "lora", "batch": 1, "seq": 64, "rank": 4, **kwargs}
    method = args.pop("method")
    with pytest.raises(ValueError, match=needle) as info:
        step_cost(MODELS["gpt2-small"], method, **args)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_the_presets_benchmark_sweeps_every_preset_both_methods_100_settings():
    """What benchmarks/bench_presets.py times: every preset × both methods × 100 settings.
    Its speed is the benchmark's figure to print, not a test's to assert."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[2] / "benchmarks" / "bench_presets.py"
    spec = importlib.util.spec_from_file_location("bench_presets", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    n = bench.sweep("a100-80gb")
    assert n == len(MODELS) * 2 * 100


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(SMALL), method=st.sampled_from(["full", "lora", "lora_merged"]),
       batch=st.integers(1, 64), seq=st.integers(8, 511), rank=st.integers(1, 64))
def test_costs_grow_with_batch_and_seq(name, method, batch, seq, rank):
    """One more sequence or one more token costs strictly more work (seq + 1 ≤ 512, the learned
    positions of the BERT-style presets, so the second step is never a no-op)."""
    m = MODELS[name]
    base = step_cost(m, method, batch=batch, seq=seq, rank=rank)
    for bigger in (dict(batch=batch + 1, seq=seq), dict(batch=batch, seq=seq + 1)):
        c = step_cost(m, method, rank=rank, **bigger)
        assert float(c.flops) > float(base.flops)
        assert float(memory_breakdown(c).total_bytes) >= float(memory_breakdown(base).total_bytes)
        assert float(step_time(c, HARDWARE["t4"]).time_s) >= float(step_time(base, HARDWARE["t4"]).time_s)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(list(MODELS)), rank=st.integers(1, 256),
       targets=st.sets(st.sampled_from(["q", "k", "v", "o", "mlp"]), min_size=1))
def test_lora_trainable_params_linear_in_rank(name, rank, targets):
    m = MODELS[name]
    tgt = ",".join(sorted(targets))
    one = int(step_cost(m, "lora", batch=1, seq=8, rank=1, targets=tgt).trainable_params)
    assert int(step_cost(m, "lora", batch=1, seq=8, rank=rank, targets=tgt).trainable_params) == rank * one
