"""The fastest layout of N devices that fits device memory (`search_layouts`), and the
fewest devices on which a method fits at all (`fewest_gpus`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from costmodel.comm import Cluster
from costmodel.hardware import HardwareProfile
from costmodel.memory import memory_fit
from costmodel.parallel.layouts import candidate_layouts
from costmodel.parallel.step import DEFAULT_OVERLAP, ParallelStep, parallel_step
from costmodel.presets_models import ModelShape

#: How a `LayoutChoice` was made: the layout the user gave, the fastest of the candidates
#: that fit device memory, or (none fits) the candidate that needs the least memory.
CHOSEN_AS = ("given", "fastest_fitting", "least_memory")


@dataclass(frozen=True)
class LayoutChoice:
    """One layout of a method (`step`, scalars) and how it was chosen (`chosen_as`, one of
    `CHOSEN_AS`) among `candidates` costed layouts. `fits` is False when the step's memory per
    device exceeds the capacity, and `lacks_bytes` (`costmodel.memory.Fit`) says by how much."""

    method: str
    gpus: int
    step: ParallelStep
    recompute: bool
    chosen_as: str
    candidates: int

    def __post_init__(self) -> None:
        if self.chosen_as not in CHOSEN_AS:
            raise ValueError(f"unknown choice {self.chosen_as!r}; choose one of {', '.join(CHOSEN_AS)}")

    @property
    def fits(self) -> bool:
        return bool(self.step.fits)

    @property
    def lacks_bytes(self) -> float:
        return memory_fit(float(self.step.memory.total_bytes), self.step.capacity_bytes).lacks_bytes


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
    return LayoutChoice(method, gpus, chosen, rc, "fastest_fitting" if chosen.fits else "least_memory", n)


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
