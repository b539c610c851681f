"""Memory of one training step: model states, saved activations and a peak estimate.

Model states follow the ZeRO paper's accounting (Rajbhandari et al. 2020, "ZeRO: Memory
Optimizations Toward Training Trillion Parameter Models", sec. 3.1): mixed-precision Adam
holds per trainable parameter 2 bytes of fp16 weights + 2 of fp16 gradients + K = 12 bytes
of optimizer state (fp32 master weights, momentum and variance, 4 each) = 16 bytes. We count
the fp32 master copy with the optimizer states, as ZeRO does. Frozen parameters hold only
their weights, in the compute dtype.

    per trainable parameter        weights  grads  optimizer (master + states)
    fp32,        AdamW             4        4      0 + 2·4        = 16
    bf16,        AdamW             2        2      0 + 2·2        = 8
    fp16/bf16-mixed, AdamW         2        2      4 + 2·4        = 16
    fp16/bf16-mixed, SGD           2        2      4 + 0          = 8
    fp32,        SGD               4        4      0              = 8
    fp32,        8-bit AdamW       4        4      0 + 2·(1 + 4/2048) ≈ 6   (Dettmers et al. 2022)
    bf16-mixed,  8-bit AdamW       2        2      4 + 2·(1 + 4/2048) ≈ 8

Gradients: with the update inside the backward (`optimizer_in_backward`) only the largest
trainable tensor's gradient is held at once (each is consumed by its update as soon as it
exists; Lv et al. 2023, "Full Parameter Fine-tuning for Large Language Models with Limited
Resources" (LOMO), sec. 3.2); with gradient accumulation a second full set, the running sum
beside the micro-batch's gradients (as JAX holds them; an eager framework summing into
``.grad`` in place holds one).

Activations are the graph's `saved_bytes` (forward tensors the backward reads), per part and
per block; LoRA's extra saved inputs for ∂A, its dropout masks and `lora_merged`'s merged
weights are in them; under gradient accumulation, one micro-batch's. The peak adds the largest
transient buffer of the backward pass: the (tokens × vocab) logits gradient of an LM head
(batch × n_classes for a classifier, none without a head) or, under recomputation, one block's re-materialised
activations, whichever is larger (the first is freed before the second exists). Allocator fragmentation,
CUDA context and workspace are not modelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from costmodel.hardware import dtype_bytes
from costmodel.optimizer import state_bytes_per_param
from costmodel.step import StepCost, step_param_count


@dataclass(frozen=True)
class MemoryParts:
    """The parts of one device's training memory and their sums, the one home of the peak
    formula (one device here, one device of a layout in `costmodel.parallel.stages`)."""

    weights_bytes: np.ndarray
    gradients_bytes: np.ndarray
    optimizer_bytes: np.ndarray  # master weights (mixed precision) + optimizer states
    activations_bytes: np.ndarray  # saved for the backward pass, all layers
    transient_bytes: np.ndarray  # largest short-lived buffer on top (dlogits, a recomputed block)

    @property
    def model_state_bytes(self) -> np.ndarray:
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> np.ndarray:
        """Peak estimate: model states + saved activations + the largest transient."""
        return self.model_state_bytes + self.activations_bytes + self.transient_bytes


@dataclass(frozen=True)
class MemoryBreakdown(MemoryParts):
    """Bytes of one training step on one device (arrays broadcast over the step's shapes)."""

    per_layer_activation_bytes: Mapping[str, np.ndarray]
    trainable_params: np.ndarray
    total_params: np.ndarray
    checkpoint_bytes: np.ndarray  # what saving the trained parameters takes

    def as_dict(self) -> dict[str, np.ndarray]:
        return {
            "weights_bytes": self.weights_bytes,
            "gradients_bytes": self.gradients_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "activations_bytes": self.activations_bytes,
            "transient_bytes": self.transient_bytes,
            "total_bytes": self.total_bytes,
        }


def memory_breakdown(cost: StepCost) -> MemoryBreakdown:
    """Memory of the step `cost` describes (see the module docstring for the accounting).

    trainable_params is exact (counted on the cost graph); total_params = the model's
    parameters with its head (`step_param_count`) + the adapter parameters LoRA adds.
    """
    spec = cost.spec
    prec = spec.prec
    compute = dtype_bytes(prec.compute_dtype)
    trainable = np.asarray(cost.trainable_params, dtype=float)
    base = float(step_param_count(spec))
    adapters = (np.asarray(cost.parts["first_block"].trainable_params + cost.parts["middle_blocks"].trainable_params,
                           dtype=float) if spec.method != "full" else np.zeros(()))
    total_params = base + adapters
    master = dtype_bytes(prec.master_dtype) if prec.master_dtype else 0
    states = state_bytes_per_param(spec.optimizer, prec)
    if spec.optimizer_in_backward:
        # each tensor's gradient is consumed by its update as soon as it exists
        gradients = np.asarray(cost.largest_trainable_tensor, dtype=float) * compute
    else:
        gradients = trainable * compute
    if spec.grad_accum > 1:
        gradients = gradients + trainable * compute  # the running sum beside a micro-batch's

    first = cost.parts["first_block"].saved_bytes
    middle_one = cost.block_saved_bytes["middle"]
    n_middle = spec.model.layers - spec.frozen_prefix - 1
    per_layer = {
        "embeddings": cost.parts["embeddings"].saved_bytes,
        "first_block": first,
        "each_middle_block": middle_one,
        "middle_blocks": middle_one * n_middle,
        "head": cost.parts["head"].saved_bytes,
    }
    activations = per_layer["embeddings"] + first + per_layer["middle_blocks"] + per_layer["head"]
    dlogits = np.zeros(())
    if spec.lm_head:
        dlogits = np.asarray(spec.micro_tokens * spec.model.vocab * compute, dtype=float)
    elif spec.head == "classifier":
        dlogits = np.asarray(spec.batch * spec.n_classes * compute, dtype=float)
    return MemoryBreakdown(
        weights_bytes=np.asarray(total_params * compute),
        gradients_bytes=np.asarray(gradients),
        optimizer_bytes=np.asarray(trainable * (master + states)),
        activations_bytes=np.asarray(activations, dtype=float),
        # dlogits is freed before any block's backward (and its recomputation) runs
        transient_bytes=np.asarray(np.maximum(dlogits, cost.recompute_transient_bytes), dtype=float),
        per_layer_activation_bytes=MappingProxyType(per_layer),
        trainable_params=trainable,
        total_params=np.asarray(total_params),
        checkpoint_bytes=np.asarray(trainable * dtype_bytes(prec.storage_dtype)),
    )


@dataclass(frozen=True)
class Fit:
    """Whether a step's peak memory fits one device.

    fits: None when the profile states no capacity (`extra["memory_bytes"]`);
    lacks_bytes = max(need − capacity, 0): how much memory is missing (0 when it fits).
    """

    need_bytes: float
    capacity_bytes: float | None

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_bytes is None else bool(self.need_bytes <= self.capacity_bytes)

    @property
    def lacks_bytes(self) -> float:
        return 0.0 if self.capacity_bytes is None else max(self.need_bytes - self.capacity_bytes, 0.0)


def memory_fit(need_bytes: float, capacity_bytes: float | None) -> Fit:
    """`Fit` of a peak estimate (`MemoryBreakdown.total_bytes`) on a device of `capacity_bytes`
    (`HardwareProfile.extra["memory_bytes"]`, or None when unknown)."""
    cap = None if capacity_bytes is None else float(capacity_bytes)
    return Fit(float(need_bytes), cap)

