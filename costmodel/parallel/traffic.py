"""The collectives of one training step under a layout, each with its message size.

`collectives` lists them for a model, method and layout; `costmodel.comm` costs them (α-β).
Under LoRA only the adapters train: the data-parallel gradient traffic shrinks to them,
while the tensor-parallel all-reduces, the pipeline sends and ZeRO-3's weight all-gathers
(frozen weights are still sharded and gathered) stay. The LoRA factor on the unsplit side
of a tensor-parallel matrix is replicated (A of a column-split, B of a row-split matrix)
and its gradient is summed over the tp group once per step.
"""

from __future__ import annotations

import numpy as np

from costmodel.comm import Collective
from costmodel.hardware import dtype_bytes
from costmodel.parallel.layouts import ZERO_STAGES, Layout
from costmodel.parallel.stages import COLUMN_SPLIT, LORA_TARGET_OF, StageCosts, stage_params_per_device, tp_block
from costmodel.presets_models import ModelShape, linear_shapes
from costmodel.step import StepSpec

#: The parallel cross-entropy all-reduces three fp32 numbers per token (the row max, the
#: sum of exponentials and the target logit; Shoeybi et al. 2019, sec. 3).
CROSS_ENTROPY_ALLREDUCES = 3


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
    return step_collectives(spec, layout, gpus_per_node, None)


def step_collectives(spec: StepSpec, layout: Layout, gpus_per_node: int,
                 stages: StageCosts | None) -> tuple[Collective, ...]:
    m = spec.model
    a = dtype_bytes(spec.prec.compute_dtype)
    fp32 = dtype_bytes("float32")  # the cross-entropy's statistics and the gradient norm
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
    add("tp_cross_entropy", "all-reduce", n * fp32, "tp", CROSS_ENTROPY_ALLREDUCES,
        "micro-batch", "forward", "last")
    add("tp_head_input_grad", "all-reduce", act, "tp", 1, "micro-batch", "backward", "last")
    if lora:
        rank = spec.rank
        factor = 0.0
        for name, (fan_in, fan_out) in linear_shapes(m).items():
            if LORA_TARGET_OF[name] in spec.targets:
                factor = factor + rank * (fan_in if name in COLUMN_SPLIT else fan_out)
        for stage, w in (("first", 1.0), ("last", multi)):
            add("tp_lora_factor_grads", "all-reduce", bps * factor * a, "tp", w, "step", "backward", stage)

    # data parallel: trainable and held parameters per device of each stage
    p_first, p_last = stage_params_per_device(m, tp, pp)
    if lora:
        block_t = stages.block_trainable if stages is not None else tp_block(spec, tp, True)[0].trainable_params
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
            add("grad_norm_allreduce", "all-reduce", fp32, "world", 1.0 if stage == "first" else multi,
                "step", "optimizer", stage)
    return tuple(out)
