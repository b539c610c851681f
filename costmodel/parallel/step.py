"""One training step spread over many devices: its time, memory and collectives
(`parallel_step`); the formulas are in `costmodel.parallel`'s docstring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from costmodel.comm import Cluster, Collective, total_time_s
from costmodel.hardware import HardwareProfile
from costmodel.optimizer import optimizer_cost
from costmodel.parallel.layouts import Layout
from costmodel.parallel.stages import (
    DeviceMemory,
    device_memory,
    only_phase,
    parts_time,
    stage_costs,
    stage_params_per_device,
)
from costmodel.parallel.traffic import step_collectives
from costmodel.presets_models import ModelShape
from costmodel.step import StepSpec

#: Default fraction of the overlappable data-parallel traffic hidden behind the backward
#: pass. A modelling choice, not a measurement: PyTorch DDP and FSDP launch bucketed
#: all-reduces / reduce-scatters while the backward runs (Li et al. 2020, "PyTorch
#: Distributed: Experiences on Accelerating Data Parallel Training", VLDB, sec. 3.2.3), but
#: the last bucket always trails the backward; set --overlap 0 for none, 1 for all.
DEFAULT_OVERLAP = 0.5


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
    coll = step_collectives(spec, layout, cluster.gpus_per_node, st)
    tp, dp, pp, zero, m_ = layout.tp, layout.dp, layout.pp, layout.zero, layout.n_micro
    one = pp == 1

    def stage_comm(stage: str, **match) -> np.ndarray:
        own = total_time_s(coll, cluster, stage=stage, **match)
        other = total_time_s(coll, cluster, stage="last" if stage == "first" else "first", **match)
        return own + np.where(one, other, 0.0)

    # per micro-batch slot of each stage: compute + tensor-parallel collectives
    t_first = parts_time(spec, st.first_parts, profile).time_s
    t_last = parts_time(spec, st.last_parts, profile).time_s
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
    optimizer_s = parts_time(spec, {"optimizer": opt}, profile).time_s

    # data parallel: per micro-batch ones run m times; the overlappable part hides behind
    # the backward pass
    def dp_time(stage: str, overlappable: bool) -> np.ndarray:
        return (m_ * stage_comm(stage, group="dp", per="micro-batch", overlappable=overlappable)
                + stage_comm(stage, group="dp", per="step", overlappable=overlappable))

    dp_over = np.maximum(dp_time("first", True), dp_time("last", True))
    dp_fixed = np.maximum(dp_time("first", False), dp_time("last", False))
    backward = m_ * np.maximum(parts_time(spec, only_phase(st.first_parts, "backward"), profile).time_s,
                               parts_time(spec, only_phase(st.last_parts, "backward"), profile).time_s)
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

    memory = device_memory(spec, layout, st, p_first, p_last, t_first_p, t_last_p)
    basis = parts_time(spec, st.first_parts, profile)
    return ParallelStep(
        method=method, layout=layout, step_time_s=step, pipeline_s=pipeline,
        bubble_fraction=(pp - 1) / slots, optimizer_s=optimizer_s, tp_comm_s=tp_comm,
        pp_comm_s=pp_comm, dp_comm_s=dp_over + dp_fixed, dp_hidden_s=hidden, other_comm_s=other,
        comm_share=comm_share, tokens_per_s=tokens / step, tokens_per_s_per_device=tokens / step / gpus,
        flops=work["flops"], bytes_moved=work["bytes_moved"], kernels=work["kernels"],
        memory=memory, capacity_bytes=profile.extra.get("memory_bytes"), collectives=coll,
        time_basis=f"{basis.basis}: {basis.note}",
    )
