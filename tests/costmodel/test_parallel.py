"""The parallel cost model against hand-derived closed forms: communication volumes, α-β
times, memory per device under ZeRO / TP / PP, the pipeline bubble, and bad layouts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.comm import Cluster, Interconnect, collective_time
from costmodel.layers import LayerConfig, build
from costmodel.parallel.layouts import Layout, candidate_layouts, divisors, parse_layout
from costmodel.parallel.stages import block_params_per_device, stage_costs, stage_params_per_device
from costmodel.parallel.step import parallel_step
from costmodel.parallel.traffic import collectives
from costmodel.presets_hardware import HARDWARE
from costmodel.presets_interconnect import INTERCONNECTS
from costmodel.presets_models import MODELS, block_params, param_count
from costmodel.step import StepSpec

GPT2 = MODELS["gpt2-small"]
CLUSTER = Cluster(8, INTERCONNECTS["nvlink3"], INTERCONNECTS["ib-hdr"])
A100 = HARDWARE["a100-80gb"]


def _one(cs, purpose, stage="first"):
    found = [c for c in cs if c.purpose == purpose and c.stage == stage and float(c.count) > 0]
    assert len(found) == 1, [c.purpose for c in cs]
    return found[0]


@pytest.mark.parametrize("p", [2, 4, 8])
def test_dp_allreduce_moves_2_p_minus_1_over_p_of_the_gradients(p):
    cs = collectives(GPT2, "full", Layout(dp=p, tp=1, pp=1), seq=1024)
    c = _one(cs, "dp_grad_allreduce")
    grad_bytes = param_count(GPT2) * 2  # bf16 gradients of every parameter
    assert float(c.message_bytes) == grad_bytes
    assert float(c.wire_bytes()) == pytest.approx(2 * (p - 1) / p * grad_bytes, rel=1e-12)


def test_lora_dp_allreduce_is_the_adapters():
    cs = collectives(GPT2, "lora", Layout(dp=4, tp=1, pp=1), seq=1024, rank=4, targets="q,v")
    c = _one(cs, "dp_grad_allreduce")
    adapters = 12 * 2 * (768 * 4 + 4 * 768)  # L · (q, v) · (A: d×r + B: r×d)
    assert float(c.message_bytes) == adapters * 2
    assert float(c.wire_bytes()) == pytest.approx(2 * 3 / 4 * adapters * 2)


def test_zero3_gathers_frozen_weights_under_lora():
    cs = collectives(GPT2, "lora", Layout(dp=4, tp=1, pp=1, zero=3), seq=1024, rank=4, targets="q,v")
    gather = _one(cs, "dp_param_allgather_forward")
    adapters = 12 * 2 * 2 * 768 * 4
    assert float(gather.message_bytes) == (param_count(GPT2) + adapters) * 2
    assert gather.per == "micro-batch"
    assert float(_one(cs, "dp_grad_reduce_scatter").message_bytes) == adapters * 2


def test_tp_allreduces_per_block_are_megatrons_four():
    mb, seq = 2, 1024
    cs = collectives(GPT2, "full", Layout(dp=1, tp=4, pp=1, micro_batch=mb), seq=seq)
    act = mb * seq * 768 * 2
    fwd, bwd = _one(cs, "tp_block_forward"), _one(cs, "tp_block_backward")
    assert float(fwd.message_bytes) == act and float(fwd.count) == 2 * 12
    assert float(bwd.count) == 2 * 12
    # under LoRA the first block's attention input needs no gradient: one all-reduce fewer
    lora = collectives(GPT2, "lora", Layout(dp=1, tp=4, pp=1, micro_batch=mb), seq=seq, rank=4)
    assert float(_one(lora, "tp_block_backward").count) == 2 * 12 - 1


def test_pipeline_sends_one_activation_and_one_gradient_per_micro_batch():
    cs = collectives(GPT2, "full", Layout(dp=1, tp=1, pp=4, micro_batch=2, n_micro=8), seq=512)
    send = _one(cs, "pp_activation_send")
    assert send.kind == "p2p" and float(send.message_bytes) == 2 * 512 * 768 * 2 and float(send.count) == 1


@pytest.mark.parametrize("kind,p,steps,factor", [
    ("all-reduce", 4, 6, 1.5), ("all-gather", 4, 3, 0.75), ("reduce-scatter", 8, 7, 7 / 8), ("p2p", 2, 1, 1.0),
    ("all-reduce", 1, 0, 0.0),
])
def test_alpha_beta_closed_forms(kind, p, steps, factor):
    link = Interconnect("test", 1e9, 1e-5)
    assert float(collective_time(kind, 1e6, p, link)) == pytest.approx(steps * 1e-5 + factor * 1e6 / 1e9)


@pytest.mark.parametrize("zero,per_param", [
    (0, lambda p: 16.0), (1, lambda p: 4 + 12 / p), (2, lambda p: 2 + 14 / p), (3, lambda p: 16 / p),
])
@pytest.mark.parametrize("p", [2, 8])
def test_zero_model_state_bytes_per_parameter(zero, per_param, p):
    """Rajbhandari et al. 2020, Fig. 1: 2 + 2 + K=12 bytes per parameter, sharded by stage."""
    step = parallel_step(GPT2, "full", Layout(dp=p, tp=1, pp=1, zero=zero), CLUSTER, A100, seq=1024)
    assert float(step.memory.model_state_bytes) / param_count(GPT2) == pytest.approx(per_param(p), rel=1e-12)


def test_tp_shard_parameters_closed_form_and_graph_agree():
    llama = MODELS["llama2-70b"]  # GQA: 8 kv heads
    assert float(block_params_per_device(llama, 1)) == block_params(llama)
    for tp in (2, 8, 16):
        d, kv, ffn = llama.d_model, llama.kv_dim, llama.ffn
        kv_kept = kv * max(8 / tp, 1) / 8
        hand = (d * d / tp + 2 * d * kv_kept + d * d / tp + 3 * d * ffn / tp + 2 * d)
        assert float(block_params_per_device(llama, tp)) == pytest.approx(hand)
        cfg = LayerConfig("block", "full", batch=1, embed=d, hidden=ffn, seq=16, heads=llama.heads,
                          kv_heads=llama.kv_heads, mlp="swiglu", norm="rmsnorm", tp=tp)
        assert float(build(cfg).trainable_params) == pytest.approx(hand)


def test_tp_splits_every_matmul_flop():
    def matmul_flops(tp):
        cfg = LayerConfig("block", "full", batch=2, embed=768, hidden=3072, seq=128, heads=12, tp=tp,
                          input_requires_grad=True)
        return sum(float(op.flops) for op in build(cfg).ops if op.kind == "matmul")
    assert matmul_flops(4) * 4 == pytest.approx(matmul_flops(1), rel=1e-12)


def test_whole_model_parameters_split_over_tp_and_pp():
    first, last = stage_params_per_device(GPT2, 1, 1)
    assert float(first) == float(last) == param_count(GPT2)
    # pp = 2: each stage has 6 blocks; the tied head keeps its own table copy
    first, last = stage_params_per_device(GPT2, 1, 2)
    emb = (50257 + 1024) * 768
    assert float(first) == emb + 6 * block_params(GPT2)
    assert float(last) == 6 * block_params(GPT2) + 2 * 768 + 50257 * 768


def test_bubble_and_pipeline_memory():
    m, p = 8, 4
    step = parallel_step(GPT2, "full", Layout(dp=1, tp=1, pp=p, n_micro=m), CLUSTER, A100, seq=512)
    assert float(step.bubble_fraction) == pytest.approx((p - 1) / (m + p - 1))


def test_layouts_vectorise():
    lay = Layout(dp=np.array([8, 4, 2]), tp=np.array([1, 2, 4]), pp=1, zero=np.array([0, 1, 3]))
    many = parallel_step(GPT2, "lora", lay, CLUSTER, A100, seq=512, rank=4)
    for i in range(3):
        one = parallel_step(GPT2, "lora", lay.pick(i), CLUSTER, A100, seq=512, rank=4)
        assert float(many.step_time_s[i]) == pytest.approx(float(one.step_time_s), rel=1e-12)
        assert float(many.memory.total_bytes[i]) == pytest.approx(float(one.memory.total_bytes), rel=1e-12)


def test_options_not_modelled_across_devices_are_refused():
    for bad in ({"head": "classifier"}, {"grad_accum": 2}, {"optimizer_in_backward": True, "clip_grad": False},
                {"frozen_prefix": 1}):
        with pytest.raises(ValueError, match="across devices"):
            parallel_step(GPT2, "lora", Layout(2, 1, 1), CLUSTER, A100, seq=128, **bad)


@pytest.mark.parametrize("layout,gpus,match", [
    (Layout(dp=2, tp=2, pp=1), 8, "≠ 8"),
    (Layout(dp=1, tp=5, pp=1), None, "heads"),
    (Layout(dp=1, tp=1, pp=13), None, "exceeds the 12 layers"),
])
def test_bad_layouts(layout, gpus, match):
    with pytest.raises(ValueError, match=match):
        layout.check(GPT2, gpus)


def test_parse_layout():
    lay = parse_layout("dp=4,tp=2,pp=1,zero=1,micro_batch=2", global_batch=32)
    assert (int(lay.dp), int(lay.tp), int(lay.zero), int(lay.n_micro)) == (4, 2, 1, 4)
    for bad in ("dp=x", "foo=1", "", "dp=3"):
        with pytest.raises(ValueError):
            parse_layout(bad, global_batch=32)
    with pytest.raises(ValueError, match="dp given twice"):  # not the last one silently
        parse_layout("dp=2,tp=2,dp=4")


def test_divisors():
    assert divisors(1) == [1]
    assert divisors(96) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 96]  # 96 = 2^5·3: 6·2 divisors
    assert divisors(49) == [1, 7, 49]  # a square root counted once
    assert divisors(2**40) == [2**k for k in range(41)]  # √n steps: 2^20, not 2^40
    assert all(divisors(n) == [k for k in range(1, n + 1) if n % k == 0] for n in range(1, 200))


def test_tp_memory_per_device_is_a_hand_count():
    """GPT-2 small, tp = 2, full, mixed-precision AdamW: 16 bytes per parameter a device
    holds; a device holds half of every matrix, the whole norms, row-split biases and
    positions, half the vocabulary."""
    d, f, v, t = 768, 3072, 50257, 1024
    block = 2 * 2 * d + 3 * (d + 1) * d / 2 + d * d / 2 + d + (d + 1) * f / 2 + f * d / 2 + d
    device = v * d / 2 + t * d + 12 * block + 2 * d
    step = parallel_step(GPT2, "full", Layout(dp=1, tp=2, pp=1), CLUSTER, A100, seq=512)
    assert float(step.memory.params) == pytest.approx(device, rel=1e-12)
    assert float(step.memory.model_state_bytes) == pytest.approx(16 * device, rel=1e-12)


def test_first_stage_holds_pp_micro_batches_of_activations():
    """1F1B: the first stage holds min(pp, m) micro-batches' activations (Narayanan et al.
    2021, sec. 2.2): 4 at pp = 4 and m = 8 or 16, each the first stage's saved bytes."""
    def step(m):
        return parallel_step(GPT2, "full", Layout(dp=1, tp=1, pp=4, n_micro=m), CLUSTER, A100, seq=512)
    lay = Layout(dp=1, tp=1, pp=4, n_micro=8)
    one = float(stage_costs(StepSpec(GPT2, "full", batch=1, seq=512), lay).first.saved_bytes)
    assert float(step(8).memory.activations_bytes) == pytest.approx(4 * one, rel=1e-12)
    assert float(step(16).memory.activations_bytes) == pytest.approx(4 * one, rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(tp=st.sampled_from([1, 2, 4]), pp=st.sampled_from([1, 2, 3]), dp=st.sampled_from([1, 2, 8]),
       mb=st.sampled_from([1, 2]), m=st.integers(1, 6))
def test_invariants_over_layouts(tp, pp, dp, mb, m):
    """Each ZeRO stage holds no more model state than the one before; LoRA holds less than
    full and sends fewer data-parallel bytes; shares and times are in range."""
    lay = Layout(dp=dp, tp=tp, pp=pp, zero=np.arange(4), micro_batch=mb, n_micro=m)
    steps = {k: parallel_step(GPT2, k, lay, CLUSTER, A100, seq=256, rank=4) for k in ("full", "lora")}
    for s in steps.values():
        assert np.all(np.diff(s.memory.model_state_bytes) <= 1e-6 * s.memory.model_state_bytes[0])
        assert np.all(s.step_time_s > 0) and np.all((0 <= s.comm_share) & (s.comm_share < 1))
        assert np.all(s.bubble_fraction == (pp - 1) / (m + pp - 1))
    assert np.all(steps["lora"].memory.model_state_bytes < steps["full"].memory.model_state_bytes)

    def dp_bytes(method):
        cs = collectives(GPT2, method, lay, seq=256, rank=4)
        return sum(c.count * c.wire_bytes() for c in cs if c.group == "dp" and c.purpose.startswith("dp_grad"))
    assert np.all(dp_bytes("lora") <= dp_bytes("full"))


@pytest.mark.parametrize("name,method,recompute,attention", [
    ("gpt2-small", "full", False, "naive"), ("gpt2-small", "lora", True, "naive"),
    ("gpt2-small", "lora_merged", False, "naive"), ("llama2-7b", "lora_merged", False, "naive"),
    ("llama2-7b", "full", True, "naive"), ("llama2-7b", "lora", False, "fused"),
])
def test_one_device_layout_is_the_one_device_step(name, method, recompute, attention):
    """dp = tp = pp = 1: time, work and memory equal the single-device whole-model step's
    (`step_time`, `memory_breakdown`), an independent route through the same cost graph."""
    from costmodel.memory import memory_breakdown
    from costmodel.model import step_cost, step_time

    model = MODELS[name]
    opts = {"seq": 512, "rank": 4, "recompute": recompute, "attention": attention}
    par = parallel_step(model, method, Layout(1, 1, 1), CLUSTER, A100, **opts)
    one = step_cost(model, method, batch=1, **opts)
    mem = memory_breakdown(one)
    assert float(par.step_time_s) == pytest.approx(float(step_time(one, A100).time_s), rel=1e-12)
    for ours, theirs in ((par.flops, one.flops), (par.bytes_moved, one.bytes_moved), (par.kernels, one.kernels),
                         (par.memory.total_bytes, mem.total_bytes),
                         (par.memory.activations_bytes, mem.activations_bytes)):
        assert float(ours) == pytest.approx(float(theirs), rel=1e-12)


def test_fewest_gpus_is_where_a_layout_first_fits():
    """With 1 GB devices GPT-2 small's full fine-tuning (16 B × 124 M = 2 GB of model state)
    needs several; the count found fits and the count before it does not."""
    from dataclasses import replace as dc_replace

    from costmodel.parallel.search import device_counts, fewest_gpus, search_layouts

    small = dc_replace(A100, name="1 GB", extra={**A100.extra, "memory_bytes": 1e9})
    opts = {"seq": 256}
    n = fewest_gpus(GPT2, "full", CLUSTER, small, global_batch=8, **opts)
    assert n is not None and n > 2  # model state alone is 2 GB
    counts = device_counts(8, 8192)
    before = counts[counts.index(n) - 1]
    assert search_layouts(GPT2, "full", n, CLUSTER, small, 8, **opts).fits
    miss = search_layouts(GPT2, "full", before, CLUSTER, small, 8, **opts)
    assert not miss.fits and miss.lacks_bytes > 0
    # LoRA keeps 2 B per frozen parameter and fits on fewer
    assert fewest_gpus(GPT2, "lora", CLUSTER, small, global_batch=8, rank=4, **opts) < n


def test_inter_node_bandwidth_is_shared_by_the_nodes_ports():
    """DGX-1 style: 4 ports for 8 devices, so concurrent rings leaving a node get half a port each."""
    ib = INTERCONNECTS["ib-hdr"]
    half = Cluster(8, INTERCONNECTS["nvlink2"], ib, nics_per_node=4).link("inter")
    assert half.bandwidth_bytes_per_s == ib.bandwidth_bytes_per_s / 2 and half.latency_s == ib.latency_s
    assert Cluster(8, INTERCONNECTS["nvlink2"], ib).link("inter") is ib


def test_interconnect_presets_cite_sources():
    for link in INTERCONNECTS.values():
        assert ("https://" in link.source or "IEEE" in link.source) and "NCCL" in link.source
        assert link.bandwidth_bytes_per_s > 0 and link.latency_s > 0
    # per direction: NVLink 4 (900 GB/s both ways) is 3x NVLink 2 (300 GB/s), NDR twice HDR
    assert INTERCONNECTS["nvlink4"].bandwidth_bytes_per_s == 3 * INTERCONNECTS["nvlink2"].bandwidth_bytes_per_s
    assert INTERCONNECTS["ib-ndr"].bandwidth_bytes_per_s == 2 * INTERCONNECTS["ib-hdr"].bandwidth_bytes_per_s


@pytest.mark.parametrize("make", [
    lambda: Cluster(0, INTERCONNECTS["nvlink3"], INTERCONNECTS["ib-hdr"]),
    lambda: Cluster(True, INTERCONNECTS["nvlink3"], INTERCONNECTS["ib-hdr"]),
    lambda: Cluster(8, INTERCONNECTS["nvlink3"], INTERCONNECTS["ib-hdr"], nics_per_node=0),
    lambda: Layout(dp=2.5, tp=1, pp=1),
    lambda: Layout(dp="2", tp=1, pp=1),
    lambda: Layout(dp=2, tp=1, pp=1, zero=-1),
    lambda: candidate_layouts(GPT2, 8.0, 8),
    lambda: candidate_layouts(GPT2, 8, 0),
])
def test_counts_are_whole_numbers(make):
    with pytest.raises(ValueError, match="must be a whole number >= "):
        make()
