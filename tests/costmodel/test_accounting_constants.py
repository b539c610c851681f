"""Every constant of the step accounting, pinned by a number derived by hand here (not read
back from the constant): changing ADAMW_FLOPS_PER_PARAM from 15 to 12, the int32 token ids to
8 bytes, AdamW's two states to one, ... fails a test below."""

from __future__ import annotations

import numpy as np
import pytest

from costmodel.hardware import dtype_bytes
from costmodel.memory import memory_breakdown
from costmodel.optimizer import PRECISIONS, optimizer_cost, state_bytes_per_param
from costmodel.presets_hardware import HARDWARE
from costmodel.presets_models import MODELS
from costmodel.step import step_cost
from costmodel.steptime import UNFITTED, step_time

P, T = 1000, 3  # trainable parameters and tensors of a toy optimizer step
GPT2 = MODELS["gpt2-small"]


def _update(optimizer: str, precision: str, **kw):
    cost = optimizer_cost(P, T, optimizer, PRECISIONS[precision], clip_grad=False, **kw)
    (op,) = [o for o in cost.ops if o.name.endswith("update")]
    return op


def test_dtype_sizes():
    assert [dtype_bytes(d) for d in ("float32", "bfloat16", "float16", "float64")] == [4, 2, 2, 8]


def test_adamw_update_is_15_flops_and_one_sqrt_per_parameter():
    """Loshchilov & Hutter 2019, Alg. 2: m ← β1·m + (1−β1)·g (2 mul + 1 add = 3); v ← β2·v +
    (1−β2)·g² (3 mul + 1 add = 4); m̂, v̂ bias corrections (2 div); √v̂ + ε (1 add, the sqrt a
    transcendental); m̂/(…) (1 div); w ← w − lr·(u + λ·w) (2 mul, 1 add, 1 sub = 4): 15."""
    op = _update("adamw", "fp32")
    assert float(op.flops) == 15 * P and float(op.transcendentals) == 1 * P


def test_sgd_update_is_2_flops_per_parameter_no_transcendental():
    op = _update("sgd", "fp32")  # w ← w − lr·g: one multiply, one subtract
    assert float(op.flops) == 2 * P and float(op.transcendentals) == 0


def test_update_bytes_fp32_and_bf16_mixed():
    """fp32 AdamW reads g, w, m, v and writes w, m, v: 7 × 4 = 28 bytes per parameter.
    bf16-mixed: g in bf16 (2), the fp32 master w read and written (8), m and v in fp32 read and
    written (16), and the bf16 copy of w the next forward reads written (2): 28. SGD fp32: read
    g and w, write w: 12."""
    assert float(_update("adamw", "fp32").bytes_moved) == 28 * P
    assert float(_update("adamw", "bf16-mixed").bytes_moved) == 28 * P
    assert float(_update("adamw", "bf16").bytes_moved) == 7 * 2 * P  # everything bf16
    assert float(_update("sgd", "fp32").bytes_moved) == 12 * P


def test_loss_scaling_and_clipping_flops():
    """fp16-mixed: unscale g/S and the inf check, 2 per parameter. Clipping: Σg² per tensor is
    P squares and P − T adds (P values summed into T norms), T − 1 adds combine the T norms,
    and g·c is P multiplies."""
    cost = optimizer_cost(P, T, "sgd", PRECISIONS["fp16-mixed"], clip_grad=True)
    by = {o.name: o for o in cost.ops}
    assert float(by["unscale + inf check (loss scaling)"].flops) == 2 * P
    assert float(by["grad norm Σg²"].flops) == P + (P - T)
    assert float(by["combine norms"].flops) == T - 1
    assert float(by["clip g·c"].flops) == P


def test_optimizer_state_bytes_per_parameter():
    """AdamW keeps m and v: 2 × 4 bytes in fp32, 2 × 2 in pure bf16; SGD without momentum none."""
    assert state_bytes_per_param("adamw", PRECISIONS["fp32"]) == 8
    assert state_bytes_per_param("adamw", PRECISIONS["bf16"]) == 4
    assert state_bytes_per_param("adamw", PRECISIONS["bf16-mixed"]) == 8
    assert state_bytes_per_param("sgd", PRECISIONS["fp32"]) == 0


@pytest.mark.parametrize("precision,optimizer,per_param", [
    ("bf16-mixed", "adamw", 4 + 8),  # fp32 master + m, v in fp32
    ("bf16", "adamw", 0 + 4),        # no master; m, v in bf16
    ("fp32", "sgd", 0),              # nothing beside the weights
])
def test_optimizer_memory_is_master_plus_states(precision, optimizer, per_param):
    cost = step_cost(GPT2, "lora", batch=1, seq=32, rank=4, precision=precision, optimizer=optimizer)
    mem = memory_breakdown(cost)
    assert float(mem.optimizer_bytes) == per_param * float(cost.trainable_params)


@pytest.mark.parametrize("precision,per_param", [("bf16", 2), ("bf16-mixed", 4), ("fp32", 4), ("fp16-mixed", 4)])
def test_checkpoint_bytes_per_trainable_parameter(precision, per_param):
    """A checkpoint stores the trained weights in their storage dtype: the bf16 weights of a
    pure bf16 run (2 bytes), the fp32 master copy under mixed precision (4)."""
    cost = step_cost(GPT2, "lora", batch=1, seq=32, rank=4, precision=precision)
    mem = memory_breakdown(cost)
    assert float(mem.checkpoint_bytes) == per_param * float(cost.trainable_params)


def test_token_ids_are_4_bytes():
    """The token lookup reads n int32 ids (4 bytes) and n rows of d, and writes n rows:
    n·4 + 2·n·d·2 bytes in bf16. GPT-2: n = 2·32 tokens, d = 768."""
    cost = step_cost(GPT2, "full", batch=2, seq=32, precision="bf16")
    (op,) = [o for o in cost.parts["embeddings"].ops if o.name == "x=E[tokens]" and o.phase == "forward"]
    n, d = 64, 768
    assert float(op.bytes_moved) == n * 4 + 2 * n * d * 2


def test_unfitted_efficiencies_and_default_overhead():
    """Documented defaults: 0.75 of peak FLOP/s, 0.8 of peak bandwidth, the profile's 5 µs per
    kernel (presets_hardware.DEFAULT_KERNEL_OVERHEAD_S)."""
    assert (UNFITTED.flops, UNFITTED.bandwidth, UNFITTED.overhead) == (0.75, 0.8, 1.0)
    a100 = HARDWARE["a100-80gb"]
    assert a100.kernel_overhead_s == 5e-6
    cost = step_cost(GPT2, "lora", batch=1, seq=32, rank=4)
    t = step_time(cost, a100)
    # every op: max(flops / (0.75·peak), bytes / (0.8·bandwidth)) + kernels · 5 µs
    expect = sum(
        float(np.sum(np.maximum(op.flops / (0.75 * a100.peak("bfloat16")),
                                op.bytes_moved / (0.8 * a100.mem_bandwidth_bytes_per_s))
                     + op.kernels * 5e-6))
        for part in cost.parts.values() for op in part.ops)
    assert float(t.time_s) == pytest.approx(expect, rel=1e-9)
