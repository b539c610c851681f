"""Numeric precision policies and the optimizer's part of a training step.

`Precision` says which dtype each kind of tensor is held in (compute, master copy, optimizer
states); `optimizer_cost` is the cost of what follows the backward pass: loss-scale
unscaling (fp16-mixed), global-norm gradient clipping and the SGD, AdamW or 8-bit AdamW
update, all per trainable parameter, launched as XLA, a fused multi-tensor kernel, PyTorch's
foreach kernels or its per-tensor loop would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from costmodel.graph import Cost, OpCost
from costmodel.hardware import dtype_bytes
from costmodel.primitives import Size, elementwise_bytes, elementwise_flops, reduction_bytes, reduction_flops
from costmodel.vocab import OPTIMIZER_IMPLS, OPTIMIZERS

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
OPTIMIZER_STATES = MappingProxyType({"sgd": 0, "adamw": 2, "adamw-8bit": 2})

#: 8-bit AdamW (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization", ICLR,
#: arXiv:2110.02861, sec. 2): m and v stored as 1-byte codes of a dynamic quantization map,
#: with one float32 absolute maximum per block of 2048 values of each state.
STATE_8BIT_BYTES = 1
QUANT_BLOCK = 2048
ABSMAX_BYTES = 4
#: Extra FLOPs per parameter of the 8-bit update, per state (m and v): dequantize (the code's
#: value × the block's absmax: 1), requantize (|x|: 1, the block's max: 1, x / absmax: 1, and
#: a binary search of the 256-entry code map: log2 256 = 8 comparisons): 12 per state.
ADAMW_8BIT_EXTRA_FLOPS_PER_PARAM = 2 * 12

#: How the update is launched (`optimizer_cost`'s `impl`):
#: - ``xla``: what `jax.jit` compiles an optax update to: one fused loop per parameter tensor
#:   and per step of the chain (clip's norm, clip's scale, the update), each reading its
#:   operands once. The cost model's original count, and the default.
#: - ``fused``: one multi-tensor kernel over all parameters for the whole update (PyTorch's
#:   ``fused=True``, `torch._fused_adamw_`; apex's FusedAdam): a single pass, launched once per
#:   group of at most `FUSED_TENSORS_PER_LAUNCH` tensors.
#: - ``foreach``: PyTorch's ``foreach=True`` (`_multi_tensor_adam`): the update's elementwise
#:   steps as separate `torch._foreach_*` kernels, each over all tensors, launched once per
#:   group of at most `FOREACH_TENSORS_PER_LAUNCH` tensors; each step reads and writes its
#:   operands (`PER_TENSOR_KERNELS` steps).
#: - ``per-tensor``: PyTorch's ``foreach=False`` (`_single_tensor_adam`): the same steps, one
#:   kernel each per parameter tensor.
#: (the names: `costmodel.vocab.OPTIMIZER_IMPLS`)
#: Kernels per parameter tensor of the eager per-tensor loop, from PyTorch 2.x
#: torch/optim/adam.py `_single_tensor_adam` (decoupled weight decay, not capturable, no
#: amsgrad): param.mul_(1 − lr·λ); exp_avg.lerp_(g, 1 − β1); exp_avg_sq.mul_(β2);
#: .addcmul_(g, g, 1 − β2); exp_avg_sq.sqrt(); / bias_correction2_sqrt; .add_(ε);
#: param.addcdiv_(exp_avg, denom, −step_size): 8 (the step counter lives on the host).
#: torch/optim/sgd.py `_single_tensor_sgd` without momentum: param.add_(g, alpha=−lr): 1.
#: bitsandbytes' 8-bit AdamW launches one blockwise-update kernel per tensor
#: (`optimizer_update_8bit_blockwise`): 1.
PER_TENSOR_KERNELS = MappingProxyType({"sgd": 1, "adamw": 8, "adamw-8bit": 1})
#: Tensors one multi-tensor launch takes: PyTorch's ATen/native/cuda/MultiTensorApply.cuh,
#: depth_to_max_tensors = {110, 64, 48, 36, 30} for 1–5 tensor lists (4 KB of kernel
#: arguments): 48 for the foreach update's deepest steps (addcmul_, addcdiv_: 3 lists),
#: 36 for `_fused_adamw_` (param, grad, m, v: 4 lists), 64 for `_fused_sgd_` (param, grad).
FOREACH_TENSORS_PER_LAUNCH = 48
FUSED_TENSORS_PER_LAUNCH = MappingProxyType({"sgd": 64, "adamw": 36, "adamw-8bit": 1})
#: ... and at most depth_to_max_blocks = 320 chunks of kChunkSize = 65536 elements.
ELEMENTS_PER_LAUNCH = 320 * 65536


def resolve_optimizer(name: str) -> str:
    """`name` if it is an optimizer the model knows; ValueError (one line) otherwise."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return name


def state_bytes_per_param(optimizer: str, precision: Precision) -> float:
    """Bytes of optimizer state per trainable parameter (the master copy apart): AdamW
    2 × the state dtype (8 in float32), 8-bit AdamW 2 × (1 + 4/2048) (≈ 2: Dettmers et
    al. 2022), SGD 0."""
    resolve_optimizer(optimizer)
    if optimizer == "adamw-8bit":
        return OPTIMIZER_STATES[optimizer] * (STATE_8BIT_BYTES + ABSMAX_BYTES / QUANT_BLOCK)
    return OPTIMIZER_STATES[optimizer] * dtype_bytes(precision.state_dtype)


def launches(tensors: Size, params: Size, per_launch: int) -> Size:
    """Kernel launches of one multi-tensor op over `tensors` tensors of `params` elements in
    all: a new launch whenever `per_launch` tensors or `ELEMENTS_PER_LAUNCH` elements fill."""
    return np.maximum(np.ceil(np.asarray(tensors, float) / per_launch),
                      np.ceil(np.asarray(params, float) / ELEMENTS_PER_LAUNCH))


def optimizer_cost(params: Size, tensors: Size, optimizer: str, precision: Precision,
                   clip_grad: bool = True, impl: str = "xla", in_backward: bool = False) -> Cost:
    """Cost of what follows the backward pass, per trainable parameter (P) and tensor (T).

    FLOPs are the algorithm's, whatever the implementation:
    - fp16 loss scaling: unscale g ← g/S and check for inf/NaN: 2 FLOPs per parameter.
    - global-norm clipping (Pascanu et al. 2013; `clip_grad_norm_`): per-tensor Σg² (2 FLOPs
      per parameter), combining the T norms, then g ← g·c (1 FLOP per parameter).
    - update: SGD 2 FLOPs per parameter, AdamW 15 (+1 sqrt), 8-bit AdamW 15 + 24 (dequantize
      and requantize m and v).
    Bytes and kernels depend on `impl` (see `OPTIMIZER_IMPLS`): ``xla`` and ``fused`` read g,
    the weights and the states once and write the weights and states once (with a master
    copy, also the compute-dtype copy of the weights the next forward reads); ``foreach`` and
    ``per-tensor`` AdamW run 8 elementwise steps, moving P·(4w + 2g + 14s) bytes (w, g, s:
    bytes of a weight, a gradient and a state: the weight decay and the final addcdiv read and
    write w; lerp_ and addcmul_ read g; the seven state-sized steps read and write s).
    Kernels: ``xla`` one per tensor per op (and one to combine the norms); ``per-tensor``
    `PER_TENSOR_KERNELS` per tensor for the update and, for clipping (PyTorch's
    clip_grad_norm_ without foreach), a norm and a multiply per tensor plus 5 to combine
    (stack, norm, add ε, divide, clamp); ``foreach`` and ``fused`` the launches of
    multi-tensor kernels (`launches`), clipping as foreach (PyTorch has no fused clip).
    `in_backward`: each tensor is updated as soon as its gradient exists (PyTorch's
    ``register_post_accumulate_grad_hook``), so multi-tensor kernels launch once per tensor
    and global-norm clipping, which needs every gradient first, is impossible.
    """
    resolve_optimizer(optimizer)
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"unknown optimizer implementation {impl!r}; choose one of {', '.join(OPTIMIZER_IMPLS)}")
    if in_backward and clip_grad:
        raise ValueError("an update inside the backward cannot clip by the global norm (it needs every "
                         "gradient first); turn clipping off (--no-clip)")
    p, t = params, tensors
    g = dtype_bytes(precision.compute_dtype)  # gradients are in the compute dtype
    w = dtype_bytes(precision.storage_dtype)
    st = dtype_bytes(precision.state_dtype)

    def group(per_launch: int) -> Size:
        return t if in_backward else launches(t, p, per_launch)

    per_op = {"xla": t, "per-tensor": t, "foreach": group(FOREACH_TENSORS_PER_LAUNCH),
              "fused": group(FOREACH_TENSORS_PER_LAUNCH)}[impl]
    ops = []
    if precision.loss_scaling:
        ops.append(OpCost("unscale + inf check (loss scaling)", "optimizer", "elementwise",
                          elementwise_flops(p, 2), 0, elementwise_bytes(p, (p,), g), per_op))
    if clip_grad:
        combine = 1 if impl == "xla" else 5  # PyTorch: stack, norm, + ε, divide, clamp
        ops.append(OpCost("grad norm Σg²", "optimizer", "reduction",
                          elementwise_flops(p) + reduction_flops(p, t), 0, reduction_bytes(p, t, g), per_op))
        ops.append(OpCost("combine norms", "optimizer", "reduction",
                          reduction_flops(t, 1), 1, reduction_bytes(t, 1, g), combine))
        ops.append(OpCost("clip g·c", "optimizer", "elementwise",
                          elementwise_flops(p), 0, elementwise_bytes(p, (p,), g), per_op))
    n_states = OPTIMIZER_STATES[optimizer]
    per_param = {"sgd": SGD_FLOPS_PER_PARAM, "adamw": ADAMW_FLOPS_PER_PARAM,
                 "adamw-8bit": ADAMW_FLOPS_PER_PARAM + ADAMW_8BIT_EXTRA_FLOPS_PER_PARAM}[optimizer]
    flops = elementwise_flops(p, per_param)
    trans = 0 if optimizer == "sgd" else p * ADAMW_TRANSCENDENTALS_PER_PARAM
    if optimizer == "adamw-8bit":
        # codes and the blocks' absmax of m and v, each read and written once
        state_rw = 2 * n_states * (STATE_8BIT_BYTES + ABSMAX_BYTES / QUANT_BLOCK)
    else:
        state_rw = 2.0 * n_states * st
    nbytes: Size
    if optimizer == "adamw" and impl in ("foreach", "per-tensor"):
        nbytes = np.asarray(p, float) * (4 * w + 2 * g + 14 * st)
    else:
        nbytes = np.asarray(p, float) * (g + 2 * w + state_rw)  # read g, w, states; write w, states
    if precision.master_dtype is not None:
        nbytes = nbytes + p * dtype_bytes(precision.compute_dtype)
    kernels = {"xla": t, "per-tensor": PER_TENSOR_KERNELS[optimizer] * t,
               "foreach": PER_TENSOR_KERNELS[optimizer] * group(FOREACH_TENSORS_PER_LAUNCH),
               "fused": group(FUSED_TENSORS_PER_LAUNCH[optimizer])}[impl]
    ops.append(OpCost(f"{optimizer} update", "optimizer", "elementwise", flops, trans, nbytes, kernels))
    return Cost(tuple(ops), np.asarray(0), np.asarray(0), precision.compute_dtype)
