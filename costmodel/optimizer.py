"""Numeric precision policies and the optimizer's part of a training step.

`Precision` says which dtype each kind of tensor is held in (compute, master copy, optimizer
states); `optimizer_cost` is the cost of what follows the backward pass: loss-scale
unscaling (fp16-mixed), global-norm gradient clipping and the SGD or AdamW update, all per
trainable parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from costmodel.graph import Cost, OpCost
from costmodel.hardware import dtype_bytes
from costmodel.primitives import Size, elementwise_bytes, elementwise_flops, reduction_bytes, reduction_flops

OPTIMIZERS = ("sgd", "adamw")

# --------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class Precision:
    """Which dtype each kind of tensor is held in.

    compute_dtype: activations, the weights the forward reads, and gradients.
    master_dtype: a separate full-precision copy of the trainable weights that the optimizer
    updates (mixed precision; Micikevicius et al. 2018, "Mixed Precision Training"); None
    when the weights are updated in place.
    state_dtype: optimizer states (AdamW's first and second moments).
    loss_scaling: gradients are unscaled and checked for inf/NaN before the update (fp16).
    """

    name: str
    compute_dtype: str
    master_dtype: str | None
    state_dtype: str
    loss_scaling: bool = False

    @property
    def storage_dtype(self) -> str:
        """The dtype trainable weights are kept and checkpointed in."""
        return self.master_dtype or self.compute_dtype


PRECISIONS: Mapping[str, Precision] = MappingProxyType({
    "fp32": Precision("fp32", "float32", None, "float32"),
    "bf16": Precision("bf16", "bfloat16", None, "bfloat16"),
    "fp16-mixed": Precision("fp16-mixed", "float16", "float32", "float32", loss_scaling=True),
    "bf16-mixed": Precision("bf16-mixed", "bfloat16", "float32", "float32"),
})


def resolve_precision(name: str) -> Precision:
    """The policy called `name`; ValueError (one line, listing the valid names) otherwise."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}") from None


# --------------------------------------------------------------------------- optimizer

#: FLOPs per parameter of one AdamW update (Loshchilov & Hutter 2019, Algorithm 2):
#: m ← β1·m + (1−β1)·g: 3; v ← β2·v + (1−β2)·g²: 4; the two bias corrections: 2;
#: √v̂ + ε: 1 (+1 sqrt, a transcendental); m̂ / (√v̂ + ε): 1; w ← w − lr·(update + λ·w): 4.
ADAMW_FLOPS_PER_PARAM = 15
ADAMW_TRANSCENDENTALS_PER_PARAM = 1
#: Plain SGD: w ← w − lr·g, a multiply and a subtract.
SGD_FLOPS_PER_PARAM = 2
#: Optimizer state tensors per parameter (AdamW: m and v; SGD without momentum: none).
OPTIMIZER_STATES = MappingProxyType({"sgd": 0, "adamw": 2})


def optimizer_cost(params: Size, tensors: Size, optimizer: str, precision: Precision,
                   clip_grad: bool = True) -> Cost:
    """Cost of what follows the backward pass, per trainable parameter (P) and tensor (T).

    Each step launches one kernel per trainable tensor (a per-tensor loop, as
    `torch.optim` without foreach/fused kernels does; fused implementations launch fewer):
    - fp16 loss scaling: unscale g ← g/S and check for inf/NaN: 2 FLOPs per parameter; read g,
      write g.
    - global-norm clipping (Pascanu et al. 2013; `clip_grad_norm_`): per-tensor Σg² (2 FLOPs
      per parameter, read g), one kernel to combine the T norms, then g ← g·c (1 FLOP per
      parameter, read and write g).
    - update: SGD 2 FLOPs per parameter, AdamW 15 (+1 sqrt); reads g, the weights and the
      states, writes the weights and states; with a master copy it also writes the
      compute-dtype copy of the weights the next forward reads.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    p, t = params, tensors
    g = dtype_bytes(precision.compute_dtype)  # gradients are in the compute dtype
    w = dtype_bytes(precision.storage_dtype)
    st = dtype_bytes(precision.state_dtype)
    ops = []
    if precision.loss_scaling:
        ops.append(OpCost("unscale + inf check (loss scaling)", "optimizer", "elementwise",
                          elementwise_flops(p, 2), 0, elementwise_bytes(p, (p,), g), t))
    if clip_grad:
        ops.append(OpCost("grad norm Σg²", "optimizer", "reduction",
                          elementwise_flops(p) + reduction_flops(p, t), 0, reduction_bytes(p, t, g), t))
        ops.append(OpCost("combine norms", "optimizer", "reduction",
                          reduction_flops(t, 1), 1, reduction_bytes(t, 1, g), 1))
        ops.append(OpCost("clip g·c", "optimizer", "elementwise",
                          elementwise_flops(p), 0, elementwise_bytes(p, (p,), g), t))
    n_states = OPTIMIZER_STATES[optimizer]
    flops = elementwise_flops(p, SGD_FLOPS_PER_PARAM if optimizer == "sgd" else ADAMW_FLOPS_PER_PARAM)
    trans = 0 if optimizer == "sgd" else p * ADAMW_TRANSCENDENTALS_PER_PARAM
    # read g, w, states; write w, states (+ the compute-dtype copy under mixed precision)
    nbytes = p * (g + 2 * w + 2 * n_states * st)
    if precision.master_dtype is not None:
        nbytes = nbytes + p * dtype_bytes(precision.compute_dtype)
    ops.append(OpCost(f"{optimizer} update", "optimizer", "elementwise", flops, trans, nbytes, t))
    return Cost(tuple(ops), np.asarray(0), np.asarray(0), precision.compute_dtype)
