"""One device's share of the model under a layout: its parameters, its work per micro-batch
and its memory, for a device of the first and of the last pipeline stage.

Tensor parallel (Shoeybi et al. 2019, "Megatron-LM", arXiv:1909.08053, sec. 3): q/k/v and
the MLP's first matrices split by columns, o and the MLP's last by rows, the token
embedding and the LM head by vocabulary; each device's block is costed as its own shard
on the cost graph (`costmodel.layers`, ``tp``). Pipeline parallel: ⌈L/pp⌉ blocks per
stage, the embeddings on the first stage and the head on the last. Memory follows ZeRO's
sharding by stage (Rajbhandari et al. 2020, arXiv:1910.02054, sec. 5): per trainable
parameter, mixed-precision AdamW holds 2 + 2 + 12 = 16 bytes at stage 0, 2 + 2 + 12/dp at
1, 2 + (2 + 12)/dp at 2 and 16/dp at 3; frozen weights are sharded at stage 3 too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType

import numpy as np

from costmodel.graph import Cost, Graph
from costmodel.hardware import HardwareProfile, dtype_bytes
from costmodel.layers import record
from costmodel.memory import MemoryParts
from costmodel.optimizer import OPTIMIZER_STATES
from costmodel.parallel.layouts import Layout
from costmodel.presets_models import ModelShape, linear_shapes, norm_params
from costmodel.step import StepCost, StepSpec, build_step, recomputed_blocks
from costmodel.steptime import StepTime, step_time

#: Matrices split by columns under tensor parallelism; the others (o, down) by rows.
COLUMN_SPLIT = ("q", "k", "v", "gate", "up")
#: LoRA target name of each block matrix (`costmodel.layers.TARGETS`).
LORA_TARGET_OF = {"q": "q", "k": "k", "v": "v", "o": "o", "gate": "mlp", "up": "mlp", "down": "mlp"}


def block_params_per_device(model: ModelShape, tp) -> np.ndarray:
    """Parameters of one block on one device of a tp group.

    Column-split matrices (q, k, v, gate, up) keep fan_out/tp columns and their bias slice;
    row-split ones (o, down) fan_in/tp rows and the whole bias (added after the all-reduce);
    the two norms are replicated. k and v keep max(kv_heads/tp, 1) heads (a kv head is
    replicated when tp > kv_heads). tp = 1 gives `presets_models.block_params`.
    """
    tp = np.asarray(tp, dtype=float)
    total = 2 * norm_params(model) + np.zeros_like(tp)
    kv_share = np.maximum(model.kv_heads / tp, 1) / model.kv_heads  # fraction of k, v columns kept
    for name, (fan_in, fan_out) in linear_shapes(model).items():
        bias = model.bias
        if name in ("k", "v"):
            total = total + (fan_in + bias) * fan_out * kv_share
        elif name in COLUMN_SPLIT:
            total = total + (fan_in + bias) * fan_out / tp
        else:
            total = total + fan_in * fan_out / tp + (fan_out if bias else 0)
    return total


def stage_params_per_device(model: ModelShape, tp, pp) -> tuple[np.ndarray, np.ndarray]:
    """Parameters on one device of the first and of the last pipeline stage.

    First: the embeddings (token table split by vocabulary over tp; positions and token types
    replicated) + ⌈L/pp⌉ blocks; last: ⌈L/pp⌉ blocks + the final norm + the LM head (split by
    vocabulary; a tied head keeps its own copy of the token table when pp > 1, as Megatron
    does). With pp = 1 both are the one device's share, and tp = pp = 1 gives `param_count`.
    """
    tp = np.asarray(tp, dtype=float)
    pp = np.asarray(pp, dtype=float)
    d = model.d_model
    blocks = np.ceil(model.layers / pp) * block_params_per_device(model, tp)
    emb = model.vocab * d / tp + (model.n_position_rows + model.type_vocab) * d
    if model.norm_placement == "post":
        emb = emb + norm_params(model)
    head = norm_params(model) if model.norm_placement == "pre" else 0
    if not model.tied_embeddings:
        head = head + model.vocab * d / tp
    if model.mlm_head:
        head = head + d * d + d + norm_params(model) + model.vocab / tp
    tied_copy = model.vocab * d / tp if model.tied_embeddings else 0
    one = pp == 1
    first = emb + blocks + np.where(one, head, 0)
    last = blocks + head + np.where(one, emb, tied_copy)
    return first, last


# --------------------------------------------------------------------------- per-device costs


def _empty(dtype: str) -> Cost:
    return Cost((), np.asarray(0.0), np.asarray(0.0), dtype)


def tp_block(spec: StepSpec, tp, input_requires_grad: bool) -> tuple[Cost, int]:
    """One device's shard of a block for one micro-batch, and its trainable tensor count."""
    cfg = replace(spec.block_config(input_requires_grad), tp=tp)
    g = Graph(cfg.dtype)
    x = g.input("X", (cfg.batch * cfg.seq, cfg.embed), requires_grad=input_requires_grad)
    cost = g.cost(record(g, x, cfg))
    return cost, sum(1 for p in g.params if p.requires_grad)


def _tp_head(head: Cost, spec: StepSpec, tp) -> Cost:
    """The head with its vocabulary-parallel ops (the logits matmul and bias, the
    cross-entropy, and their VJPs: every op that touches the logits) divided by tp; the
    saved log-probabilities (tokens × vocab) shrink by the same factor."""
    tp = np.asarray(tp, dtype=float)
    ops = tuple(replace(op, flops=op.flops / tp, transcendentals=op.transcendentals / tp,
                        bytes_moved=op.bytes_moved / tp)
                if "logits" in op.name else op for op in head.ops)
    logp = spec.tokens * spec.model.vocab * dtype_bytes(spec.prec.compute_dtype)
    return Cost(ops, head.trainable_params, head.saved_bytes - logp * (1 - 1 / tp), head.dtype)


def _only(cost: Cost, phase: str) -> Cost:
    return Cost(tuple(op for op in cost.ops if op.phase == phase), cost.trainable_params,
                cost.saved_bytes, cost.dtype)


@dataclass(frozen=True)
class StageCosts:
    """Per-micro-batch costs of one device of the first and of the last stage, by part
    (`costmodel.step.PARTS` names: embeddings, first_block, middle_blocks, head)."""

    first_parts: Mapping[str, Cost]
    last_parts: Mapping[str, Cost]
    first_tensors: np.ndarray  # trainable tensors on a first-stage device
    last_tensors: np.ndarray
    block_trainable: np.ndarray  # trainable parameters of one block shard
    recompute_transient_bytes: np.ndarray

    @property
    def first(self) -> Cost:
        return _sum(self.first_parts.values())

    @property
    def last(self) -> Cost:
        return _sum(self.last_parts.values())


def _sum(costs) -> Cost:
    costs = list(costs)
    total = costs[0]
    for c in costs[1:]:
        total = total + c
    return total


def stage_costs(spec: StepSpec, layout: Layout) -> StageCosts:
    """FLOPs, bytes, kernels and saved activations of one micro-batch (`spec.batch` =
    layout.micro_batch sequences) on a device of the first and of the last stage.

    The embedding lookup is costed whole on every tp device: a vocabulary-parallel lookup
    still reads every token id and writes every row (zeros for ids it does not hold); its
    backward's zero-fill of the table gradient (vocab/tp rows each) is left at the whole
    table, a small overcount under full fine-tuning."""
    tp, pp = layout.tp, layout.pp
    base = build_step(replace(spec, recompute=False))
    first_b, first_n = tp_block(spec, tp, spec.tables_train)
    mid_b, mid_n = tp_block(spec, tp, True)
    first_b, mid_b, transient = recomputed_blocks(first_b, mid_b, spec)
    head = _tp_head(base.parts["head"], spec, tp)
    emb = base.parts["embeddings"]
    bps = np.ceil(spec.model.layers / pp)
    one = (pp == 1).astype(float)
    first = {"embeddings": emb, "first_block": first_b, "middle_blocks": mid_b.scaled(bps - 1, "middle: "),
             "head": head.scaled(one)}
    # with one stage, the last stage is the first
    last = {"embeddings": emb.scaled(one), "first_block": first_b.scaled(one),
            "middle_blocks": mid_b.scaled(bps - one, "middle: "), "head": head}
    # the embedding and head tensors (their optimizer kernels) are charged to both end stages
    ends = base.trainable_tensors - first_n - (spec.model.layers - 1) * mid_n
    first_tensors = ends + first_n + (bps - 1) * mid_n
    last_tensors = bps * mid_n + ends
    return StageCosts(MappingProxyType(first), MappingProxyType(last),
                      np.asarray(first_tensors), np.asarray(last_tensors),
                      np.asarray(mid_b.trainable_params, dtype=float), transient)


def parts_time(spec: StepSpec, parts: Mapping[str, Cost], profile: HardwareProfile) -> StepTime:
    """`step_time` of a step made of `parts` (the others empty), so the profile's derating,
    or its fitted rates with the LoRA multiplier on the blocks only, apply as on one device."""
    empty = _empty(spec.prec.compute_dtype)
    full = {name: parts.get(name, empty) for name in ("embeddings", "frozen_blocks", "first_block",
                                                       "middle_blocks", "head", "optimizer")}
    sc = StepCost(spec=spec, parts=MappingProxyType(full), block_saved_bytes=MappingProxyType({}),
                  recompute_transient_bytes=np.zeros(()), trainable_tensors=0)
    return step_time(sc, profile)


def only_phase(parts: Mapping[str, Cost], phase: str) -> dict[str, Cost]:
    """`parts` keeping only the ops of `phase` ("forward", "backward", …)."""
    return {k: _only(c, phase) for k, c in parts.items()}


@dataclass(frozen=True)
class DeviceMemory(MemoryParts):
    """Bytes on one device (the fuller of the first and last stage), arrays over layouts.

    weights: held parameters in the compute dtype (/dp under ZeRO-3); gradients: trainable
    parameters in the compute dtype (/dp from ZeRO-2); optimizer: master weights + states
    per trainable parameter (/dp from ZeRO-1); activations: saved for the backward pass by
    the micro-batches in flight; transient: the largest short-lived buffer (the logits
    gradient, a recomputed block) plus, under ZeRO-3, two gathered blocks (the one computing
    and the one prefetched).
    """

    params: np.ndarray
    trainable_params: np.ndarray

    def as_dict(self, index=None) -> dict[str, float]:
        pick = (lambda a: float(np.asarray(a)[index])) if index is not None else (lambda a: float(np.asarray(a)))
        shape = np.broadcast(self.total_bytes, self.params).shape
        out = {}
        for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
                  "transient_bytes", "model_state_bytes", "total_bytes", "params", "trainable_params"):
            out[k] = pick(np.broadcast_to(getattr(self, k), shape))
        return out


def device_memory(spec: StepSpec, layout: Layout, st: StageCosts, p_first, p_last, t_first, t_last) -> DeviceMemory:
    """Per-device bytes of the first and last stage; the fuller one is reported."""
    prec = spec.prec
    a = dtype_bytes(prec.compute_dtype)
    master = dtype_bytes(prec.master_dtype) if prec.master_dtype else 0
    states = OPTIMIZER_STATES[spec.optimizer] * dtype_bytes(prec.state_dtype)
    dp, zero, pp, tp = layout.dp, layout.zero, layout.pp, layout.tp
    lora = spec.method != "full"
    w_shard = np.where(zero >= 3, dp, 1)
    g_shard = np.where(zero >= 2, dp, 1)
    o_shard = np.where(zero >= 1, dp, 1)
    in_flight = np.minimum(pp, layout.n_micro)
    dlogits = spec.tokens * spec.model.vocab * a / tp
    one = pp == 1
    gathered = np.where((zero >= 3) & (dp > 1), 2 * block_params_per_device(spec.model, tp) * a, 0.0)
    rows: dict[str, DeviceMemory] = {}
    for stage, params, trainable, cost, flight, logits in (
            ("first", p_first, t_first, st.first, in_flight, np.where(one, dlogits, 0.0)),
            ("last", p_last, t_last, st.last, 1, dlogits)):
        held = params + (trainable if lora else 0)
        rows[stage] = DeviceMemory(
            weights_bytes=held * a / w_shard,
            gradients_bytes=trainable * a / g_shard,
            optimizer_bytes=trainable * (master + states) / o_shard,
            activations_bytes=flight * cost.saved_bytes,
            transient_bytes=np.maximum(logits, st.recompute_transient_bytes) + gathered,
            params=held, trainable_params=trainable + np.zeros_like(held),
        )
    first = rows["first"].total_bytes >= rows["last"].total_bytes
    return DeviceMemory(**{f.name: np.where(first, getattr(rows["first"], f.name), getattr(rows["last"], f.name))
                           for f in fields(DeviceMemory)})
