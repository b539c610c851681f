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

One module per job; this package re-exports their public names:
- `costmodel.parallel.layouts`: `Layout`, `parse_layout`, `candidate_layouts`, `ZERO_STAGES`;
- `costmodel.parallel.stages`: one device's parameters, work per micro-batch and memory, for
  the first and the last pipeline stage;
- `costmodel.parallel.traffic`: the collectives of a step (`collectives`);
- `costmodel.parallel.step`: the step time (`parallel_step`, `ParallelStep`);
- `costmodel.parallel.search`: the fastest layout that fits (`search_layouts`) and the fewest
  devices that fit (`fewest_gpus`).
"""

from costmodel.parallel.layouts import ZERO_STAGES, Layout, candidate_layouts, parse_layout
from costmodel.parallel.search import LayoutChoice, device_counts, fewest_gpus, search_layouts
from costmodel.parallel.stages import (
    COLUMN_SPLIT,
    DeviceMemory,
    StageCosts,
    block_params_per_device,
    stage_costs,
    stage_params_per_device,
)
from costmodel.parallel.step import DEFAULT_OVERLAP, ParallelStep, parallel_step
from costmodel.parallel.traffic import collectives

__all__ = [
    "COLUMN_SPLIT", "DEFAULT_OVERLAP", "DeviceMemory", "Layout", "LayoutChoice", "ParallelStep",
    "StageCosts", "ZERO_STAGES", "block_params_per_device", "candidate_layouts", "collectives",
    "device_counts", "fewest_gpus", "parallel_step", "parse_layout", "search_layouts", "stage_costs",
    "stage_params_per_device",
]
