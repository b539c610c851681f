"""Figures of `python -m measure.device` that are timings, so no test asserts them.

    PYTHONPATH=. python benchmarks/bench_device.py [--repeats 5]

Prints the per-kernel overhead (slope of a chain of dependent tiny matmuls) next to the
blocked per-call dispatch of a tiny add, and their ratio. Each added kernel of a chain should
cost far less than a whole blocked dispatch (Python, JAX, launch, sync): a ratio well under
0.5 says the slope measures a kernel, not a call. On a shared CPU the slope can come out 0.
"""

from __future__ import annotations

import argparse

from measure import device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="samples per figure (default 5)")
    args = p.parse_args()
    kernel_s = device.kernel_overhead(args.repeats)
    blocked_s, unblocked_s = device.dispatch_overheads(args.repeats)
    print(f"per-kernel overhead      {kernel_s * 1e6:9.2f} us")
    print(f"blocked dispatch per call {blocked_s * 1e6:8.2f} us  (back-to-back: {unblocked_s * 1e6:.2f} us)")
    print(f"kernel / dispatch         {kernel_s / blocked_s:8.3f}  (expected well under 0.5)")


if __name__ == "__main__":
    main()
