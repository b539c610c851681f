"""Collectives and sharded steps on 4 host devices (a fresh process: see multidevice_checks.py).

Known answers are written out by hand here; the HLO's collectives are checked against closed
forms of what a data- or tensor-parallel step must communicate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # two fresh JAX processes, ~10 s each on 2 idle cores

REPO = Path(__file__).resolve().parents[2]
F32 = 4  # bytes


def _run(what: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("multidevice_checks.py")), what],
        check=False, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def coll() -> dict:
    return _run("collectives")


@pytest.fixture(scope="module")
def steps() -> dict:
    return _run("sharded")


# 16 float32 per message (64 bytes); device i's block is (i + 1) * c, c = 1, 2, 3, 1, ...
C16 = np.array([1, 2, 3] * 5 + [1], float)


def test_all_reduce_sums_every_device_block(coll):
    # p = 2: blocks c and 2c, every device ends with 3c; p = 4: 1 + 2 + 3 + 4 = 10
    assert coll["all_reduce/2"]["output"] == (3 * C16).tolist() * 2
    assert coll["all_reduce/4"]["output"] == (10 * C16).tolist() * 4
    assert coll["all_reduce/2"]["check"] == "" and coll["all_reduce/4"]["check"] == ""


def test_all_gather_gives_every_device_the_whole_input(coll):
    c8 = np.array([1, 2, 3, 1, 2, 3, 1, 2], float)  # 16 elements gathered from 2 blocks of 8
    whole = np.concatenate([c8, 2 * c8])
    assert coll["all_gather/2"]["output"] == whole.tolist() * 2
    assert coll["all_gather/4"]["check"] == ""


def test_reduce_scatter_leaves_one_block_of_the_sum_per_device(coll):
    assert coll["reduce_scatter/2"]["output"] == (3 * C16).tolist()
    assert coll["reduce_scatter/4"]["output"] == (10 * C16).tolist()


def test_ppermute_shifts_blocks_to_the_next_device(coll):
    # device 0 receives device 3's block (4c), device 1 device 0's (c), ...
    assert coll["ppermute/4"]["output"] == np.concatenate([4 * C16, C16, 2 * C16, 3 * C16]).tolist()
    assert coll["ppermute/2"]["check"] == ""


def test_check_reports_a_wrong_answer(coll):
    assert "wrong result" in coll["wrong_answer_check"]


# ------------------------------------------------------------------------------ sharded steps
# the block of multidevice_checks.SHAPE: tokens n = 4 * 8, e = 32, MLP h = 64, rank 2 on q, v
N_TOK, E, H, R = 32, 32, 64, 2
FULL_PARAMS = 4 * E * E + 2 * E * H + 4 * E  # Wq Wk Wv Wo, W_fc W_proj, two LayerNorms' γ, β
LORA_PARAMS = 2 * (E * R + R * E)  # A, B of q and v


def _bytes_by(collectives) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = defaultdict(int)
    for kind, nbytes, group, _ids in collectives:
        out[kind, group] += nbytes
    return dict(out)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("layout", ["dp=1,tp=1", "dp=2,tp=1", "dp=4,tp=1", "dp=1,tp=2", "dp=2,tp=2"])
def test_sharded_step_equals_the_one_device_step(steps, method, layout):
    r = steps[f"{method}/{layout}"]
    assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5)
    assert r["grad_rel_err"] < 1e-5


def test_trainable_parameters_by_hand(steps):
    assert steps["full/dp=1,tp=1"]["trainable"] == FULL_PARAMS
    assert steps["lora/dp=1,tp=1"]["trainable"] == LORA_PARAMS


def test_one_device_step_communicates_nothing(steps):
    assert steps["full/dp=1,tp=1"]["collectives"] == []
    assert steps["lora/dp=1,tp=1"]["collectives"] == []


@pytest.mark.parametrize("dp", [2, 4])
def test_data_parallel_all_reduces_the_trainable_gradients(steps, dp):
    """DP: one all-reduce (XLA may combine) of every trainable gradient plus the scalar loss;
    under LoRA only the adapters' (Hu et al. 2021, sec. 4.2)."""
    full = _bytes_by(steps[f"full/dp={dp},tp=1"]["collectives"])
    lora = _bytes_by(steps[f"lora/dp={dp},tp=1"]["collectives"])
    assert full == {("all_reduce", dp): F32 * (FULL_PARAMS + 1)}
    assert lora == {("all_reduce", dp): F32 * (LORA_PARAMS + 1)}


def test_tensor_parallel_all_reduces_activations(steps):
    """Megatron TP=2 (Shoeybi et al. 2019, sec. 3): full training all-reduces the n×e
    activations twice forward (after Wo and W_proj) and twice backward (the gradients of
    LN1's and LN2's outputs). LoRA on q, v needs LN2's backward one (the gradient reaches q
    and v through the residual) but not LN1's (nothing below it trains), plus the gradients
    of the replicated A_q and A_v (e×r each)."""
    act = F32 * N_TOK * E
    assert _bytes_by(steps["full/dp=1,tp=2"]["collectives"]) == {("all_reduce", 2): 4 * act}
    assert _bytes_by(steps["lora/dp=1,tp=2"]["collectives"]) == {("all_reduce", 2): 3 * act + F32 * 2 * E * R}


def test_dp_times_tp_splits_both(steps):
    """dp=2 × tp=2: the tp all-reduces carry half the tokens; the dp all-reduce carries each
    device's shard of the split weights' gradients plus the replicated LayerNorms' and the loss."""
    got = _bytes_by(steps["full/dp=2,tp=2"]["collectives"])
    split = (4 * E * E + 2 * E * H) // 2
    assert got == {("all_reduce", 2): 4 * F32 * (N_TOK // 2) * E + F32 * (split + 4 * E + 1)}
    # the tp and dp groups are both of size 2: the split by group is in the replica groups
    assert len(steps["full/dp=2,tp=2"]["collectives"]) >= 2


def test_concurrent_program_is_every_share_without_communication(steps):
    c = steps["concurrent"]
    assert c["collectives"] == 0
    assert c["rows"] == 4  # one gradient row per device of the 2 × 2 mesh
    assert c["grad_rel_err"] < 1e-5  # device (0, 0)'s = the one-device step on its share
    assert c["local_heads"] == 2


def test_local_share_shapes(steps):
    """dp=2, tp=2: half the tokens; A_q replicated, B_q split by columns."""
    s = steps["local_shapes"]
    assert s["x"] == [N_TOK // 2, E]
    assert s["Aq"] == [E, R] and s["Bq"] == [R, E // 2]


# ------------------------------------------------------------------ against the cost model
# costmodel.parallel.collectives lists a whole model's collectives; a one-block model with
# no bias, pre-LayerNorm and a GELU MLP is the block measure.parallel_steps shards. The
# block-level entries (the tp all-reduces of activations and of the LoRA factors' gradients,
# the dp gradient all-reduce) must match the compiled HLO kind for kind and byte for byte;
# the embedding/head entries have no counterpart in a block step and are left out.
BLOCK_PURPOSES = ("tp_block_forward", "tp_block_backward", "tp_lora_factor_grads", "dp_grad_allreduce")
KIND = {"all-reduce": "all_reduce", "all-gather": "all_gather", "reduce-scatter": "reduce_scatter",
        "p2p": "ppermute"}


def _block_model():
    from costmodel.presets_models import ModelShape

    return ModelShape(name="one block", d_model=E, layers=1, heads=4, kv_heads=4, ffn=H, vocab=64,
                      seq=8, mlp="gelu", norm="layernorm", bias=False, tied_embeddings=False,
                      positional="rope", type_vocab=0, causal=False, source="test: multidevice_checks.SHAPE")


def _model_bytes(method: str, dp: int, tp: int) -> dict[tuple[str, str], float]:
    """(kind, group) -> bytes per step the cost model lists for the block."""
    from costmodel.parallel.layouts import Layout
    from costmodel.parallel.stages import block_params_per_device
    from costmodel.parallel.traffic import collectives

    model = _block_model()
    layout = Layout(dp=dp, tp=tp, pp=1, micro_batch=4 // dp)
    out: dict[tuple[str, str], float] = defaultdict(float)
    for c in collectives(model, method, layout, seq=8, rank=R, targets=("q", "v"), precision="fp32",
                         clip_grad=False):
        if c.purpose not in BLOCK_PURPOSES or float(c.count) == 0 or float(c.group_size) == 1:
            continue
        nbytes = float(c.message_bytes) * float(c.count)
        if c.purpose == "dp_grad_allreduce" and method == "full":
            # a whole model's trainable parameters: keep its one block's (the same function)
            nbytes = float(block_params_per_device(model, tp)) * F32
        out[KIND[c.kind], c.group] += nbytes
    return dict(out)


def _hlo_bytes(collectives, dp: int, tp: int) -> dict[tuple[str, str], float]:
    """(kind, group) -> bytes of the compiled step; groups told apart by their device ids
    (the mesh numbers tp fastest). The scalar loss's dp all-reduce (4 bytes, ours: the step
    returns the loss) is taken out."""
    out: dict[tuple[str, str], float] = defaultdict(float)
    for kind, nbytes, _size, ids in collectives:
        group = "tp" if tuple(ids) == tuple(range(tp)) else "dp"
        out[kind, group] += nbytes
    if dp > 1:
        out["all_reduce", "dp"] -= F32
    return dict(out)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("dp, tp", [(2, 1), (4, 1), (1, 2), (2, 2)])
def test_hlo_collectives_match_the_cost_models_list(steps, method, dp, tp):
    got = _hlo_bytes(steps[f"{method}/dp={dp},tp={tp}"]["collectives"], dp, tp)
    assert got == pytest.approx(_model_bytes(method, dp, tp))
