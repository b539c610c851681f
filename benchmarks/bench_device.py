"""Figures of `python -m measure.device` that are timings, so no test asserts them.

    PYTHONPATH=. python benchmarks/bench_device.py [--repeats 5] [--runs 3]

Prints the per-kernel overhead (slope of a chain of dependent tiny matmuls) next to the
blocked per-call dispatch of a tiny add, and their ratio. Each added kernel of a chain should
cost far less than a whole blocked dispatch (Python, JAX, launch, sync): a ratio well under
0.5 says the slope measures a kernel, not a call. On a shared CPU the slope can come out 0.
Then the cost of each argument or result buffer of a call (`measure.device.buffer_overhead`)
beside the empty call, and what the buffers of the attention layer's training call add to it
under each method (input and parameters in, loss and gradients out: `measure.kernels`); the
fitted per-call time is bounded accordingly (`analysis.fitted_factors.OVERHEAD_TOLERANCE`).
With --runs N the per-kernel overhead is measured N times in this process and the spread
(max / min) printed: the fitted crossover of a curve set by the kernel term moves with it.
"""

from __future__ import annotations

import argparse

from costmodel import METHODS
from measure import device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="samples per figure (default 5)")
    p.add_argument("--runs", type=int, default=1, help="per-kernel overhead measured N times")
    args = p.parse_args()
    runs = [device.kernel_overhead(args.repeats) for _ in range(max(args.runs, 1))]
    kernel_s = runs[0]
    if len(runs) > 1:
        print("per-kernel overhead runs  " + ", ".join(f"{x * 1e6:.2f}" for x in runs)
              + f" us  (max / min {max(runs) / max(min(runs), 1e-12):.2f})")
    blocked_s, unblocked_s = device.dispatch_overheads(args.repeats)
    print(f"per-kernel overhead      {kernel_s * 1e6:9.2f} us")
    print(f"blocked dispatch per call {blocked_s * 1e6:8.2f} us  (back-to-back: {unblocked_s * 1e6:.2f} us)")
    print(f"kernel / dispatch         {kernel_s / blocked_s:8.3f}  (expected well under 0.5)")
    buffer_s = device.buffer_overhead(args.repeats)
    print(f"per argument/result buffer {buffer_s * 1e6:7.2f} us")
    for method in METHODS:
        n = call_buffers("attention", method)  # the empty call has 2: one in, one out
        print(f"  attention, {method:11s} {n:3d} buffers: {(n - 2) * buffer_s / blocked_s:.1f}x "
              "the empty call on top of it")


def call_buffers(layer: str, method: str) -> int:
    """Buffers of one training call of `layer`: the input and every parameter in, the loss
    and each trainable parameter's gradient out (`measure.kernels.build`)."""
    from measure.kernels import LayerConfig, param_shapes

    shapes = param_shapes(LayerConfig(layer, method, batch=2, embed=16, hidden=16, rank=1))
    return 1 + len(shapes) + 1 + sum(trainable for _, trainable in shapes.values())


if __name__ == "__main__":
    main()
