"""Time to evaluate the `attention` cost of 10⁶ configurations in one vectorised call.

    python benchmarks/bench_costmodel.py [--n 1000000]

Prints the wall time of the call (best of 3) and the configurations per second.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from costmodel import layer_cost


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000)
    n = p.parse_args().n
    rng = np.random.default_rng(0)
    batch = rng.integers(1, 4097, n)
    embed = rng.integers(64, 8193, n)
    hidden = rng.integers(64, 8193, n)
    rank = rng.integers(1, 65, n)
    for method in ("full", "lora", "lora_merged"):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            cost = layer_cost("attention", method, batch=batch, embed=embed, hidden=hidden, rank=rank)
            flops, nbytes = cost.flops, cost.bytes_moved
            best = min(best, time.perf_counter() - t0)
        assert flops.shape == nbytes.shape == (n,)
        print(f"attention/{method:11s}: {n:,} configs in {best:.3f} s ({n / best:,.0f} configs/s)")


if __name__ == "__main__":
    main()
