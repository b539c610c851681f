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
