"""Time to evaluate every model preset × {full, lora} × 100 batch/sequence settings.

    python benchmarks/bench_presets.py [--hardware a100-80gb] [--repeats 3]

One vectorised call per (preset, method) covers the 100 settings (batch ∈ {1, 2, 4, ..., 512}
× 10 sequence lengths up to the model's context); each call builds the step's cost, its
roofline time and its memory breakdown. Prints the best-of-`repeats` wall time of the whole
sweep (target: under a second) and the per-call mean.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from costmodel.memory import memory_breakdown
from costmodel.presets_hardware import resolve_hardware
from costmodel.presets_models import MODELS
from costmodel.step import step_cost
from costmodel.steptime import step_time

METHODS = ("full", "lora")


def settings(context: int) -> tuple[np.ndarray, np.ndarray]:
    """100 (batch, seq) pairs: 10 batch sizes × 10 sequence lengths up to `context`."""
    batch = 2.0 ** np.arange(10)
    seq = np.unique(np.geomspace(16, min(context, 8192), 10).round())
    seq = np.pad(seq, (0, 10 - seq.size), mode="edge")
    b, s = np.meshgrid(batch, seq, indexing="ij")
    return b.ravel(), s.ravel()


def sweep(hardware: str) -> int:
    profile = resolve_hardware(hardware)
    n = 0
    for shape in MODELS.values():
        batch, seq = settings(shape.seq)
        for method in METHODS:
            cost = step_cost(shape, method, batch=batch, seq=seq, rank=8, targets="q,v")
            t = step_time(cost, profile).time_s
            mem = memory_breakdown(cost).total_bytes
            assert t.shape == mem.shape == batch.shape and np.all(t > 0)
            n += batch.size
    return n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hardware", default="a100-80gb")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        n = sweep(args.hardware)
        best = min(best, time.perf_counter() - t0)
    calls = len(MODELS) * len(METHODS)
    print(f"{len(MODELS)} presets × {len(METHODS)} methods × 100 batch/seq settings = {n:,} step "
          f"evaluations (cost + time + memory) in {best:.3f} s (best of {args.repeats}; "
          f"{best / calls * 1e3:.1f} ms per vectorised call)")


if __name__ == "__main__":
    main()
