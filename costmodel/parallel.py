"""One training step spread over many devices: layouts, per-device work and memory, the
collectives, their α-β time, and a search for the fastest layout that fits.

    >>> from costmodel.parallel import Layout, collectives
    >>> from costmodel.presets_models import MODELS
    >>> cs = collectives(MODELS["gpt2-small"], "full", Layout(dp=4, tp=1, pp=1), seq=1024)
    >>> [c.purpose for c in cs if c.group == "dp" and c.count > 0]
    ['dp_grad_allreduce']

A layout is dp × tp × pp devices (`Layout`):
- tensor parallel (tp): Megatron's split of each block (Shoeybi et al. 2019, "Megatron-LM:
  Training Multi-Billion Parameter Language Models Using Model Parallelism",
  arXiv:1909.08053, sec. 3): attention by heads and the MLP by its inner width, q/k/v and
  the MLP's first matrices split by columns, o and the MLP's last by rows; two all-reduces
  of the (tokens × d) activations per block in the forward pass and two in the backward;
  the token embedding and the LM head split by vocabulary, with a parallel cross-entropy.
  Each device's block is costed as its own shard (`costmodel.layers`, ``tp``).
- pipeline parallel (pp): ⌈L/pp⌉ blocks per stage, the embeddings on the first stage and
  the head on the last, the 1F1B schedule (Narayanan et al. 2021, "Efficient Large-Scale
  Language Model Training on GPU Clusters Using Megatron-LM", arXiv:2104.04473, sec. 2.2):
  with m micro-batches a step takes (m + pp − 1) slots of the slowest stage, a bubble of
  (pp − 1)/(m + pp − 1), and the first stage holds the activations of min(pp, m)
  micro-batches. Activations and their gradients cross stages point to point.
- data parallel (dp) with ZeRO stage 0–3 (Rajbhandari et al. 2020, "ZeRO: Memory
  Optimizations Toward Training Trillion Parameter Models", arXiv:1910.02054, sec. 5 and
  7): stage 1 shards the optimizer states (master weights included), 2 also the gradients,
  3 (= FSDP) also the weights. Per device and trainable parameter, mixed-precision AdamW
  holds 2 + 2 + 12 = 16 bytes at stage 0, 2 + 2 + 12/dp at 1, 2 + (2 + 12)/dp at 2 and
  16/dp at 3; frozen weights are sharded at stage 3 too (FSDP shards every parameter).

Devices are numbered tp fastest, then dp, then pp (Megatron's order), so a tp group stays
inside a node when tp ≤ gpus_per_node, a dp group when tp·dp ≤ gpus_per_node, and pipeline
neighbours cross nodes once the whole layout does.

Under LoRA only the adapters train: the data-parallel gradient traffic and the optimizer
shrink to them, while the tensor-parallel all-reduces, the pipeline sends and ZeRO-3's
weight all-gathers (frozen weights are still sharded and gathered) stay. The LoRA factor
on the unsplit side of a tensor-parallel matrix is replicated (A of a column-split, B of a
row-split matrix) and its gradient is summed over the tp group once per step.

The step time of a device (`parallel_step`):

    slot        = max over the first and last stage of
                  (compute of one micro-batch + its tensor-parallel collectives)
                  + 2 · t_p2p                                   (pp > 1: send + receive)
    pipeline    = (m + pp − 1) · slot
    step_time   = pipeline + optimizer + exposed data-parallel communication
                  + per-step collectives (LoRA factor gradients, tied-embedding gradients,
                  the gradient-norm all-reduce)
    exposed dp  = t_dp − min(overlap · t_dp_overlappable, t_backward)

t_dp_overlappable is the gradient all-reduce / reduce-scatter (and ZeRO-3's prefetched
all-gathers), which run while the backward pass computes; `overlap` is the fraction that
hides (0: none, 1: all, bounded by the backward time). The all-gather of updated weights
after a ZeRO-1/2 update is exposed. Compute is `costmodel`'s roofline of each op on the
device (`step_time`), collectives are `costmodel.comm`'s α-β costs. Not modelled: sequence
parallelism, interleaved pipeline schedules, the scatter/gather optimisation of pipeline
sends, overlap of tensor-parallel collectives with compute, frozen prefixes.

Everything broadcasts over arrays of layouts, so `search_layouts` costs every candidate
layout of a device count in one pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np

from costmodel.comm import Cluster, Collective, total_time_s
from costmodel.graph import Cost, Graph
from costmodel.hardware import HardwareProfile, dtype_bytes
from costmodel.layers import record
from costmodel.optimizer import OPTIMIZER_STATES, optimizer_cost
from costmodel.presets_models import ModelShape, linear_shapes, norm_params
from costmodel.step import StepCost, StepSpec, _recomputed, build_step
from costmodel.steptime import StepTime, step_time

ZERO_STAGES = (0, 1, 2, 3)
#: Default fraction of the overlappable data-parallel traffic hidden behind the backward
#: pass. A modelling choice, not a measurement: PyTorch DDP and FSDP launch bucketed
#: all-reduces / reduce-scatters while the backward runs (Li et al. 2020, "PyTorch
#: Distributed: Experiences on Accelerating Data Parallel Training", VLDB, sec. 3.2.3), but
#: the last bucket always trails the backward; set --overlap 0 for none, 1 for all.
DEFAULT_OVERLAP = 0.5
#: The parallel cross-entropy all-reduces three fp32 numbers per token (the row max, the
#: sum of exponentials and the target logit; Shoeybi et al. 2019, sec. 3).
CROSS_ENTROPY_ALLREDUCES = 3
FP32_BYTES = 4
#: Matrices split by columns under tensor parallelism; the others (o, down) by rows.
COLUMN_SPLIT = ("q", "k", "v", "gate", "up")
#: LoRA target name of each block matrix (`costmodel.layers.TARGETS`).
_TARGET_OF = {"q": "q", "k": "k", "v": "v", "o": "o", "gate": "mlp", "up": "mlp", "down": "mlp"}


def _whole(name: str, value, low: int = 1) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == bool or not np.all(np.isfinite(arr.astype(float))) \
            or np.any(arr.astype(float) != np.round(arr.astype(float))) or np.any(arr < low):
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return arr.astype(np.int64)


@dataclass(frozen=True)
class Layout:
    """dp × tp × pp devices, ZeRO stage, and the micro-batching of one optimizer step.

    micro_batch: sequences per micro-batch per data-parallel replica; n_micro: micro-batches
    per step (gradient accumulation; the pipeline's m). Global batch = dp · micro_batch ·
    n_micro sequences. Fields may be numpy arrays of one shape (many layouts at once).
    """

    dp: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    zero: np.ndarray = 0
    micro_batch: np.ndarray = 1
    n_micro: np.ndarray = 1

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp", "micro_batch", "n_micro"):
            object.__setattr__(self, name, _whole(name, getattr(self, name)))
        zero = _whole("zero", self.zero, low=0)
        if np.any(zero > 3):
            raise ValueError(f"zero must be a ZeRO stage in 0..3, got {self.zero!r}")
        object.__setattr__(self, "zero", zero)

    @property
    def gpus(self) -> np.ndarray:
        return self.dp * self.tp * self.pp

    @property
    def global_batch(self) -> np.ndarray:
        return self.dp * self.micro_batch * self.n_micro

    @property
    def shape(self) -> tuple[int, ...]:
        return np.broadcast(self.dp, self.tp, self.pp, self.zero, self.micro_batch, self.n_micro).shape

    def check(self, model: ModelShape, gpus: int | None = None) -> None:
        """ValueError (one line) when the layout cannot run `model` on `gpus` devices."""
        if gpus is not None and np.any(self.gpus != gpus):
            raise ValueError(f"layout dp·tp·pp = {int(np.ravel(self.gpus)[0])} ≠ {gpus} devices")
        if np.any(model.heads % self.tp):
            raise ValueError(f"tp = {int(np.ravel(self.tp)[0])} does not divide the {model.heads} heads "
                             f"of {model.name}")
        if np.any(model.ffn % self.tp):
            raise ValueError(f"tp = {int(np.ravel(self.tp)[0])} does not divide the MLP width {model.ffn}")
        if np.any((model.kv_heads % self.tp != 0) & (self.tp % model.kv_heads != 0)):
            raise ValueError(f"tp must divide the {model.kv_heads} kv heads of {model.name} or be a multiple of them")
        if np.any(self.pp > model.layers):
            raise ValueError(f"pp = {int(np.max(self.pp))} exceeds the {model.layers} layers of {model.name}")

    def pick(self, index) -> Layout:
        """The layout at `index` of the broadcast arrays."""
        shape = self.shape
        return Layout(*(int(np.broadcast_to(getattr(self, f), shape)[index])
                        for f in ("dp", "tp", "pp", "zero", "micro_batch", "n_micro")))

    def as_dict(self) -> dict:
        return {f: int(np.asarray(getattr(self, f)).reshape(())) for f in
                ("dp", "tp", "pp", "zero", "micro_batch", "n_micro")} | {
            "global_batch": int(np.asarray(self.global_batch).reshape(()))}

    def label(self) -> str:
        d = self.as_dict()
        return (f"dp={d['dp']},tp={d['tp']},pp={d['pp']},zero={d['zero']},"
                f"micro_batch={d['micro_batch']},n_micro={d['n_micro']}")


def parse_layout(text: str, global_batch: int | None = None) -> Layout:
    """A layout from "dp=8,tp=4,pp=2,zero=1[,micro_batch=2]" (missing dims are 1, zero 0).

    n_micro follows from `global_batch` = dp · micro_batch · n_micro when given (ValueError
    if it does not divide), else 1. ValueError on an unknown key or a malformed value.
    """
    keys = ("dp", "tp", "pp", "zero", "micro_batch")
    values: dict[str, int] = {}
    for item in (s.strip() for s in text.split(",") if s.strip()):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in keys:
            raise ValueError(f"bad layout item {item!r}: use dp=…,tp=…,pp=…,zero=…[,micro_batch=…]")
        try:
            values[key] = int(value)
        except ValueError:
            raise ValueError(f"layout {key} must be a whole number, got {value.strip()!r}") from None
    if not values:
        raise ValueError("empty layout: use dp=…,tp=…,pp=…,zero=…")
    dp, mb = values.get("dp", 1), values.get("micro_batch", 1)
    n_micro = 1
    if global_batch is not None:
        if dp < 1 or mb < 1 or global_batch % (dp * mb):
            raise ValueError(f"global batch {global_batch} is not a multiple of dp·micro_batch = {dp * mb}")
        n_micro = global_batch // (dp * mb)
    return Layout(dp=dp, tp=values.get("tp", 1), pp=values.get("pp", 1), zero=values.get("zero", 0),
                  micro_batch=mb, n_micro=n_micro)


# --------------------------------------------------------------------------- parameters


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


def _tp_block(spec: StepSpec, tp, input_requires_grad: bool) -> tuple[Cost, int]:
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
    first_b, first_n = _tp_block(spec, tp, spec.tables_train)
    mid_b, mid_n = _tp_block(spec, tp, True)
    transient = np.zeros(())
    if spec.recompute:
        transient = np.maximum(first_b.saved_bytes, mid_b.saved_bytes)
        first_b, mid_b = _recomputed(first_b, spec), _recomputed(mid_b, spec)
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


def _time(spec: StepSpec, parts: Mapping[str, Cost], profile: HardwareProfile) -> StepTime:
    """`step_time` of a step made of `parts` (the others empty), so the profile's derating,
    or its fitted rates with the LoRA multiplier on the blocks only, apply as on one device."""
    empty = _empty(spec.prec.compute_dtype)
    full = {name: parts.get(name, empty) for name in ("embeddings", "frozen_blocks", "first_block",
                                                       "middle_blocks", "head", "optimizer")}
    sc = StepCost(spec=spec, parts=MappingProxyType(full), block_saved_bytes=MappingProxyType({}),
                  recompute_transient_bytes=np.zeros(()), trainable_tensors=0)
    return step_time(sc, profile)


def _only_parts(parts: Mapping[str, Cost], phase: str) -> dict[str, Cost]:
    return {k: _only(c, phase) for k, c in parts.items()}


# --------------------------------------------------------------------------- collectives


def _links(layout: Layout, cluster_gpus_per_node: int) -> dict[str, np.ndarray]:
    """Whether each group spans nodes (devices numbered tp fastest, then dp, then pp)."""
    g = cluster_gpus_per_node
    return {"tp": layout.tp > g, "dp": layout.tp * layout.dp > g, "pp": layout.gpus > g,
            "world": layout.gpus > g}


def collectives(model: ModelShape, method: str, layout: Layout, gpus_per_node: int = 8,
                **options) -> tuple[Collective, ...]:
    """Every collective of one training step, per device, with its message size.

    `options` are `StepSpec`'s (seq, rank, targets, precision, optimizer, recompute,
    clip_grad, dropout); `layout.micro_batch` sequences form a micro-batch. Messages carry
    activations and gradients in the compute dtype; a = its bytes, n = micro_batch · seq
    tokens, d = d_model, P_s = parameters and T_s = trainable parameters on one device of
    stage s (`stage_params_per_device`; T = the adapters under LoRA), bps = ⌈L/pp⌉:

    tensor parallel (group tp; per micro-batch unless said):
      tp_block_forward       all-reduce n·d·a, 2 per block (after attention's o, the MLP's
                             last matrix)
      tp_block_backward      all-reduce n·d·a, 2 per block (dX of the column-split inputs);
                             one fewer on the first stage when nothing below the first block
                             trains (LoRA: its attention input needs no gradient)
      tp_block_recompute     all-reduce n·d·a, 2 per block, with activation recomputation
      tp_embedding_forward   all-reduce n·d·a (vocabulary-parallel lookup), first stage
      tp_cross_entropy       all-reduce n·4 bytes, 3 (max, Σexp, target logit), last stage
      tp_head_input_grad     all-reduce n·d·a (dX of the vocabulary-split head), last stage
      tp_lora_factor_grads   all-reduce bps·Σ r·(fan_in of a column-split, fan_out of a
                             row-split adapted matrix)·a, once per step (LoRA methods)
    data parallel (group dp), ZeRO stage z:
      z = 0: dp_grad_allreduce        all-reduce T·a, once per step
      z = 1: dp_grad_reduce_scatter   reduce-scatter T·a, once per step
      z = 2: dp_grad_reduce_scatter   reduce-scatter T·a, per micro-batch (only a gradient
                                      shard is kept, so each micro-batch's is reduced)
      z = 1, 2: dp_param_allgather    all-gather T·a of the updated weights, once per step
      z = 3: dp_param_allgather_forward, dp_param_allgather_backward
                                      all-gather P·a (frozen weights too), per micro-batch;
             dp_grad_reduce_scatter   reduce-scatter T·a, per micro-batch
    pipeline (group pp, pp > 1): pp_activation_send and pp_gradient_send, p2p n·d·a, one
      each per micro-batch.
    embedding_grad_allreduce: all-reduce of the tied token table's gradient (vocab·d/tp·a)
      between the first and last stage (full fine-tuning, pp > 1), once per step.
    grad_norm_allreduce: all-reduce of 4 bytes over all devices for global-norm clipping.

    Entries whose group has one device cost nothing and are kept (count > 0) so that one
    list describes every layout of an array; `Collective.as_dict` renders one.
    """
    spec = StepSpec(model, method, batch=layout.micro_batch, **options)
    return _collectives(spec, layout, gpus_per_node, None)


def _collectives(spec: StepSpec, layout: Layout, gpus_per_node: int,
                 stages: StageCosts | None) -> tuple[Collective, ...]:
    m = spec.model
    a = dtype_bytes(spec.prec.compute_dtype)
    n = spec.tokens
    d = m.d_model
    tp, dp, pp, zero = layout.tp, layout.dp, layout.pp, layout.zero
    links = _links(layout, gpus_per_node)
    bps = np.ceil(m.layers / pp)
    multi = (pp > 1).astype(float)
    lora = spec.method != "full"
    act = n * d * a
    out: list[Collective] = []

    def add(purpose, kind, nbytes, group, count, per, phase, stage, size=None, overlappable=False):
        size = {"tp": tp, "dp": dp, "pp": pp, "world": layout.gpus, "embedding": 2}[group] if size is None else size
        inter = links.get(group, links["pp"])
        out.append(Collective(purpose, kind, nbytes, size, group, inter, count, per, phase, stage, overlappable))

    # tensor parallel: blocks on both stages (the "last" entries vanish when pp = 1)
    skip_first = 0.0 if spec.tables_train else 1.0
    for stage, w in (("first", 1.0), ("last", multi)):
        add("tp_block_forward", "all-reduce", act, "tp", 2 * bps * w, "micro-batch", "forward", stage)
        add("tp_block_backward", "all-reduce", act, "tp",
            (2 * bps - (skip_first if stage == "first" else 0)) * w, "micro-batch", "backward", stage)
        if spec.recompute:
            add("tp_block_recompute", "all-reduce", act, "tp", 2 * bps * w, "micro-batch", "backward", stage)
    add("tp_embedding_forward", "all-reduce", act, "tp", 1, "micro-batch", "forward", "first")
    add("tp_cross_entropy", "all-reduce", n * FP32_BYTES, "tp", CROSS_ENTROPY_ALLREDUCES,
        "micro-batch", "forward", "last")
    add("tp_head_input_grad", "all-reduce", act, "tp", 1, "micro-batch", "backward", "last")
    if lora:
        rank = spec.rank
        factor = 0.0
        for name, (fan_in, fan_out) in linear_shapes(m).items():
            if _TARGET_OF[name] in spec.targets:
                factor = factor + rank * (fan_in if name in COLUMN_SPLIT else fan_out)
        for stage, w in (("first", 1.0), ("last", multi)):
            add("tp_lora_factor_grads", "all-reduce", bps * factor * a, "tp", w, "step", "backward", stage)

    # data parallel: trainable and held parameters per device of each stage
    p_first, p_last = stage_params_per_device(m, tp, pp)
    if lora:
        block_t = stages.block_trainable if stages is not None else _tp_block(spec, tp, True)[0].trainable_params
        t_first = t_last = bps * np.asarray(block_t, dtype=float)
        p_first, p_last = p_first + t_first, p_last + t_last
    else:
        t_first, t_last = p_first, p_last
    z0, z1, z2, z3 = ((zero == k).astype(float) for k in ZERO_STAGES)
    for stage, w, t, p in (("first", 1.0, t_first, p_first), ("last", multi, t_last, p_last)):
        add("dp_grad_allreduce", "all-reduce", t * a, "dp", w * z0, "step", "backward", stage,
            overlappable=True)
        add("dp_grad_reduce_scatter", "reduce-scatter", t * a, "dp", w * z1, "step", "backward", stage,
            overlappable=True)
        add("dp_grad_reduce_scatter", "reduce-scatter", t * a, "dp", w * (z2 + z3), "micro-batch",
            "backward", stage, overlappable=True)
        add("dp_param_allgather", "all-gather", t * a, "dp", w * (z1 + z2), "step", "optimizer", stage)
        add("dp_param_allgather_forward", "all-gather", p * a, "dp", w * z3, "micro-batch", "forward", stage,
            overlappable=True)
        add("dp_param_allgather_backward", "all-gather", p * a, "dp", w * z3, "micro-batch", "backward",
            stage, overlappable=True)
        add("pp_activation_send", "p2p", act, "pp", multi, "micro-batch", "forward", stage)
        add("pp_gradient_send", "p2p", act, "pp", multi, "micro-batch", "backward", stage)
        if m.tied_embeddings and not lora:
            add("embedding_grad_allreduce", "all-reduce", m.vocab * d / tp * a, "embedding", multi,
                "step", "backward", stage)
        if spec.clip_grad:
            add("grad_norm_allreduce", "all-reduce", FP32_BYTES, "world", 1.0 if stage == "first" else multi,
                "step", "optimizer", stage)
    return tuple(out)


# --------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class DeviceMemory:
    """Bytes on one device (the fuller of the first and last stage), arrays over layouts.

    weights: held parameters in the compute dtype (/dp under ZeRO-3); gradients: trainable
    parameters in the compute dtype (/dp from ZeRO-2); optimizer: master weights + states
    per trainable parameter (/dp from ZeRO-1); activations: saved for the backward pass by
    the micro-batches in flight; transient: the largest short-lived buffer (the logits
    gradient, a recomputed block) plus, under ZeRO-3, two gathered blocks (the one computing
    and the one prefetched).
    """

    weights_bytes: np.ndarray
    gradients_bytes: np.ndarray
    optimizer_bytes: np.ndarray
    activations_bytes: np.ndarray
    transient_bytes: np.ndarray
    params: np.ndarray
    trainable_params: np.ndarray

    @property
    def model_state_bytes(self) -> np.ndarray:
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> np.ndarray:
        return self.model_state_bytes + self.activations_bytes + self.transient_bytes

    def as_dict(self, index=None) -> dict[str, float]:
        pick = (lambda a: float(np.asarray(a)[index])) if index is not None else (lambda a: float(np.asarray(a)))
        shape = np.broadcast(self.total_bytes, self.params).shape
        out = {}
        for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
                  "transient_bytes", "model_state_bytes", "total_bytes", "params", "trainable_params"):
            out[k] = pick(np.broadcast_to(getattr(self, k), shape))
        return out


@dataclass(frozen=True)
class ParallelStep:
    """One training step under `layout` (arrays over layouts), per device and overall.

    step_time_s = pipeline_s + optimizer_s + (dp_comm_s − dp_hidden_s) + other_comm_s.
    pipeline_s already holds the tensor-parallel and pipeline collectives (tp_comm_s and
    pp_comm_s say how much of it they are); dp_comm_s is all data-parallel communication,
    dp_hidden_s the part hidden behind the backward pass; other_comm_s the per-step LoRA
    factor, tied-embedding and gradient-norm all-reduces. comm_share = (tp_comm_s +
    pp_comm_s + dp_comm_s − dp_hidden_s + other_comm_s) / step_time_s. tokens_per_s is the
    whole step's, tokens_per_s_per_device that over the devices; flops, bytes_moved and
    kernels are one device's per step (the slower stage).
    """

    method: str
    layout: Layout
    step_time_s: np.ndarray
    pipeline_s: np.ndarray
    bubble_fraction: np.ndarray
    optimizer_s: np.ndarray
    tp_comm_s: np.ndarray
    pp_comm_s: np.ndarray
    dp_comm_s: np.ndarray
    dp_hidden_s: np.ndarray
    other_comm_s: np.ndarray
    comm_share: np.ndarray
    tokens_per_s: np.ndarray
    tokens_per_s_per_device: np.ndarray
    flops: np.ndarray
    bytes_moved: np.ndarray
    kernels: np.ndarray
    memory: DeviceMemory
    capacity_bytes: float | None
    collectives: tuple[Collective, ...]
    time_basis: str

    @property
    def fits(self) -> np.ndarray:
        if self.capacity_bytes is None:
            return np.ones(np.shape(self.memory.total_bytes), dtype=bool)
        return self.memory.total_bytes <= self.capacity_bytes


def parallel_step(model: ModelShape, method: str, layout: Layout, cluster: Cluster,
                  profile: HardwareProfile, overlap: float = DEFAULT_OVERLAP, **options) -> ParallelStep:
    """Time, memory and collectives of one step of `model` under `method` and `layout`
    (arrays of layouts broadcast); see the module docstring for the formulas.

    `options` are `StepSpec`'s except batch (micro_batch · n_micro · dp is the global batch)
    and frozen_prefix (not modelled). ValueError (one line) on a layout the model cannot
    take or an overlap outside [0, 1].
    """
    if not 0 <= overlap <= 1:
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")
    if options.get("frozen_prefix", 0):
        raise ValueError("a frozen prefix is not modelled across devices")
    if options.get("head") is not None:
        raise ValueError("across devices only the model's own LM head is modelled (no --head)")
    if options.get("grad_accum", 1) != 1:
        raise ValueError("across devices gradient accumulation is the layout's micro-batch count "
                         "(set --global-batch, or micro_batch in --layout), not --grad-accum")
    if options.get("optimizer_in_backward"):
        raise ValueError("an optimizer inside the backward pass is not modelled across devices")
    layout.check(model)
    spec = StepSpec(model, method, batch=layout.micro_batch, **options)
    prec = spec.prec
    st = stage_costs(spec, layout)
    coll = _collectives(spec, layout, cluster.gpus_per_node, st)
    tp, dp, pp, zero, m_ = layout.tp, layout.dp, layout.pp, layout.zero, layout.n_micro
    one = pp == 1

    def stage_comm(stage: str, **match) -> np.ndarray:
        own = total_time_s(coll, cluster, stage=stage, **match)
        other = total_time_s(coll, cluster, stage="last" if stage == "first" else "first", **match)
        return own + np.where(one, other, 0.0)

    # per micro-batch slot of each stage: compute + tensor-parallel collectives
    t_first = _time(spec, st.first_parts, profile).time_s
    t_last = _time(spec, st.last_parts, profile).time_s
    tp_first = stage_comm("first", group="tp", per="micro-batch")
    tp_last = stage_comm("last", group="tp", per="micro-batch")
    p2p = total_time_s(coll, cluster, stage="first", group="pp")  # one send + one receive per slot
    slot = np.maximum(t_first + tp_first, t_last + tp_last) + p2p
    slots = m_ + pp - 1
    pipeline = slots * slot
    first_slower = t_first + tp_first >= t_last + tp_last

    # trainable parameters and the optimizer on each device's share
    p_first, p_last = stage_params_per_device(model, tp, pp)
    bps = np.ceil(model.layers / pp)
    if method == "full":
        t_first_p, t_last_p = p_first, p_last
    else:
        t_first_p = t_last_p = bps * st.block_trainable
    shard = np.where(zero >= 1, dp, 1)
    t_dev = np.where(first_slower, t_first_p, t_last_p)
    tensors = np.where(first_slower, st.first_tensors, st.last_tensors)
    opt = optimizer_cost(t_dev / shard, tensors, spec.optimizer, prec, spec.clip_grad, spec.optimizer_impl)
    optimizer_s = _time(spec, {"optimizer": opt}, profile).time_s

    # data parallel: per micro-batch ones run m times; the overlappable part hides behind
    # the backward pass
    def dp_time(stage: str, overlappable: bool) -> np.ndarray:
        return (m_ * stage_comm(stage, group="dp", per="micro-batch", overlappable=overlappable)
                + stage_comm(stage, group="dp", per="step", overlappable=overlappable))

    dp_over = np.maximum(dp_time("first", True), dp_time("last", True))
    dp_fixed = np.maximum(dp_time("first", False), dp_time("last", False))
    backward = m_ * np.maximum(_time(spec, _only_parts(st.first_parts, "backward"), profile).time_s,
                               _time(spec, _only_parts(st.last_parts, "backward"), profile).time_s)
    hidden = np.minimum(overlap * dp_over, backward)
    other = np.maximum(*(stage_comm(s, group="tp", per="step") + stage_comm(s, group="embedding")
                         + stage_comm(s, group="world") for s in ("first", "last")))
    step = pipeline + optimizer_s + (dp_over - hidden) + dp_fixed + other

    tp_comm = slots * np.where(first_slower, tp_first, tp_last)
    pp_comm = slots * p2p
    comm_share = (tp_comm + pp_comm + dp_over - hidden + dp_fixed + other) / step
    tokens = layout.global_batch * spec.seq
    gpus = layout.gpus

    # work of one device per step (the slower stage)
    work = {k: np.where(first_slower, getattr(st.first, k), getattr(st.last, k)) * m_
            + getattr(opt, k) for k in ("flops", "bytes_moved", "kernels")}

    memory = _memory(spec, layout, st, p_first, p_last, t_first_p, t_last_p)
    basis = _time(spec, st.first_parts, profile)
    return ParallelStep(
        method=method, layout=layout, step_time_s=step, pipeline_s=pipeline,
        bubble_fraction=(pp - 1) / slots, optimizer_s=optimizer_s, tp_comm_s=tp_comm,
        pp_comm_s=pp_comm, dp_comm_s=dp_over + dp_fixed, dp_hidden_s=hidden, other_comm_s=other,
        comm_share=comm_share, tokens_per_s=tokens / step, tokens_per_s_per_device=tokens / step / gpus,
        flops=work["flops"], bytes_moved=work["bytes_moved"], kernels=work["kernels"],
        memory=memory, capacity_bytes=profile.extra.get("memory_bytes"), collectives=coll,
        time_basis=f"{basis.basis}: {basis.note}",
    )


def _memory(spec: StepSpec, layout: Layout, st: StageCosts, p_first, p_last, t_first, t_last) -> DeviceMemory:
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
    rows = {}
    for stage, params, trainable, cost, flight, logits in (
            ("first", p_first, t_first, st.first, in_flight, np.where(one, dlogits, 0.0)),
            ("last", p_last, t_last, st.last, 1, dlogits)):
        held = params + (trainable if lora else 0)
        rows[stage] = {
            "weights_bytes": held * a / w_shard,
            "gradients_bytes": trainable * a / g_shard,
            "optimizer_bytes": trainable * (master + states) / o_shard,
            "activations_bytes": flight * cost.saved_bytes,
            "transient_bytes": np.maximum(logits, st.recompute_transient_bytes) + gathered,
            "params": held, "trainable_params": trainable + np.zeros_like(held),
        }
    total = {s: sum(rows[s][k] for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes",
                                         "activations_bytes", "transient_bytes")) for s in rows}
    first = total["first"] >= total["last"]
    return DeviceMemory(**{k: np.where(first, rows["first"][k], rows["last"][k]) for k in rows["first"]})


# --------------------------------------------------------------------------- layout search


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def candidate_layouts(model: ModelShape, gpus: int, global_batch: int,
                      max_micro_batch: int = 64) -> Layout:
    """Every layout of `gpus` devices the model can take, as one array `Layout`.

    tp divides the heads and the MLP width (and the kv heads, or is a multiple of them),
    pp ≤ layers, dp = gpus/(tp·pp) divides the global batch; ZeRO stages 0–3 when dp > 1
    (0 only otherwise); micro-batches of powers of two up to `max_micro_batch` sequences
    that divide the replica's share. ValueError when none exists.
    """
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"the device count must be a whole number >= 1, got {gpus!r}")
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ValueError(f"the global batch must be a whole number >= 1, got {global_batch!r}")
    rows = []
    for tp in _divisors(gpus):
        if model.heads % tp or model.ffn % tp or (model.kv_heads % tp and tp % model.kv_heads):
            continue
        for pp in _divisors(gpus // tp):
            dp = gpus // (tp * pp)
            if pp > model.layers or global_batch % dp:
                continue
            share = global_batch // dp
            for zero in (ZERO_STAGES if dp > 1 else (0,)):
                mb = 1
                while mb <= min(share, max_micro_batch):
                    if share % mb == 0:
                        rows.append((dp, tp, pp, zero, mb, share // mb))
                    mb *= 2
    if not rows:
        raise ValueError(f"no layout of {gpus} devices fits {model.name} with a global batch of "
                         f"{global_batch} (tp must divide {model.heads} heads, dp the global batch)")
    cols = np.array(rows, dtype=np.int64).T
    return Layout(*cols)


@dataclass(frozen=True)
class LayoutChoice:
    """The fastest layout of a method that fits device memory, or, when none fits, the one
    that needs the least memory (`fits` False, `lacks_bytes` > 0 says by how much)."""

    method: str
    gpus: int
    step: ParallelStep  # one layout (scalars)
    recompute: bool
    fits: bool
    lacks_bytes: float
    candidates: int


def search_layouts(model: ModelShape, method: str, gpus: int, cluster: Cluster, profile: HardwareProfile,
                   global_batch: int, overlap: float = DEFAULT_OVERLAP, recompute: Sequence[bool] = (False, True),
                   **options) -> LayoutChoice:
    """The fastest layout of `gpus` devices whose memory fits `profile`'s capacity
    (`extra["memory_bytes"]`; without one, every layout fits), with and without activation
    recomputation as `recompute` allows. Every candidate of `candidate_layouts` is costed in
    one vectorised pass per recompute setting."""
    layouts = candidate_layouts(model, gpus, global_batch)
    best = None  # (key, recompute, index)
    n = 0
    for rc in recompute:
        step = parallel_step(model, method, layouts, cluster, profile, overlap, recompute=rc, **options)
        n += int(np.size(step.step_time_s))
        t = np.broadcast_to(step.step_time_s, layouts.shape)
        mem = np.broadcast_to(step.memory.total_bytes, layouts.shape)
        fits = np.broadcast_to(step.fits, layouts.shape)
        i = int(np.argmin(np.where(fits, t, np.inf))) if fits.any() else int(np.argmin(mem))
        key = (0, float(t[i])) if fits.any() else (1, float(mem[i]))
        if best is None or key < best[0]:
            best = (key, rc, i)
    assert best is not None
    (_, _), rc, i = best
    chosen = parallel_step(model, method, layouts.pick(i), cluster, profile, overlap, recompute=rc, **options)
    fits = bool(chosen.fits)
    cap = chosen.capacity_bytes
    lacks = 0.0 if fits or cap is None else float(chosen.memory.total_bytes) - cap
    return LayoutChoice(method, gpus, chosen, rc, fits, lacks, n)


def device_counts(gpus_per_node: int, limit: int) -> list[int]:
    """Device counts tried by `fewest_gpus`: powers of two up to a node, then whole nodes
    (1, 2, …, 64 nodes), then doubling node counts, up to `limit`."""
    counts = {1 << k for k in range(31) if (1 << k) <= gpus_per_node}
    counts |= {k * gpus_per_node for k in range(1, 65)}
    k = 128
    while k * gpus_per_node <= limit:
        counts.add(k * gpus_per_node)
        k *= 2
    return sorted(c for c in counts if c <= limit)


def fewest_gpus(model: ModelShape, method: str, cluster: Cluster, profile: HardwareProfile,
                global_batch: int, limit: int = 8192, **options) -> int | None:
    """The fewest devices (of `device_counts`) on which some layout of `method` fits
    memory, trying the global batch `global_batch`; None when none up to `limit` does."""
    opts = {k: v for k, v in options.items() if k != "recompute"}
    for gpus in device_counts(cluster.gpus_per_node, limit):
        try:
            layouts = candidate_layouts(model, gpus, global_batch)
        except ValueError:
            continue
        # recomputation keeps the fewest activations: if nothing fits with it, nothing does
        step = parallel_step(model, method, layouts, cluster, profile, recompute=True, **opts)
        if np.any(step.fits):
            return gpus
    return None
