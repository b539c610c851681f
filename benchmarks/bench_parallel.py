"""Time of the many-device layout search: every candidate layout costed in one vectorised
pass, against costing the same layouts one at a time.

    python benchmarks/bench_parallel.py [--model gpt3-175b] [--gpus 1024]

Prints the number of candidate layouts, the wall time of one vectorised `parallel_step`
over all of them (best of 3), the time per layout of a loop over the first 20, and the
largest relative difference between the two routes' step times.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from costmodel.comm import Cluster
from costmodel.parallel.layouts import candidate_layouts
from costmodel.parallel.step import parallel_step
from costmodel.presets_hardware import HARDWARE
from costmodel.presets_interconnect import INTERCONNECTS
from costmodel.presets_models import resolve_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="gpt3-175b")
    p.add_argument("--gpus", type=int, default=1024)
    p.add_argument("--hardware", default="a100-80gb")
    args = p.parse_args()
    model = resolve_model(args.model)
    cluster = Cluster(8, INTERCONNECTS["nvlink3"], INTERCONNECTS["ib-hdr"])
    profile = HARDWARE[args.hardware]
    layouts = candidate_layouts(model, args.gpus, args.gpus)
    n = int(np.size(layouts.dp))
    opts = {"seq": min(model.seq, 2048), "rank": 4, "targets": "q,v"}
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        many = parallel_step(model, "lora", layouts, cluster, profile, **opts)
        best = min(best, time.perf_counter() - t0)
    k = min(n, 20)
    t0 = time.perf_counter()
    single = [float(parallel_step(model, "lora", layouts.pick(i), cluster, profile, **opts).step_time_s)
              for i in range(k)]
    per_one = (time.perf_counter() - t0) / k
    gap = max(abs(single[i] / float(many.step_time_s[i]) - 1) for i in range(k))
    print(f"{args.model} on {args.gpus} devices: {n:,} candidate layouts")
    print(f"vectorised: {best:.3f} s for all ({best / n * 1e3:.3f} ms per layout)")
    print(f"one at a time: {per_one * 1e3:.1f} ms per layout ({per_one * n / best:,.0f}× slower for all)")
    print(f"largest relative difference of step times between the two routes: {gap:.1e}")


if __name__ == "__main__":
    main()
