"""Does one timing block's interval for a paired ratio cover what later blocks measure?
(a benchmark: it prints, it asserts nothing)

    python benchmarks/block_coverage.py [--widths 16,19,23,27,32,45] [--blocks 8]

For attention, batch 2, rank 1, LoRA against full, at each width: the compiled kernels are
timed in --blocks consecutive blocks with the quick grid's budget (0.3 s each,
`measure.timing.time_interleaved`). Each block gives the median of its per-round ratios and
the 95% bootstrap interval over its rounds (`timing_stats.paired_ratio`, what a sweep
recorded before schema 4). The script prints how often that interval covers the median over
all blocks (95% if the rounds were independent), the standard deviation of the blocks' log
ratios, and the t interval over three of them that a schema-4 sweep records instead
(`timing_stats.block_ratio`). Why the sweep times every config in blocks.
"""

from __future__ import annotations

import argparse

import numpy as np

from measure import timing
from measure.grids import Config
from measure.sweep_config import prepare


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="16,19,23,27,32,45")
    p.add_argument("--blocks", type=int, default=8)
    args = p.parse_args()
    policy = timing.TimingPolicy(min_repeats=5, max_repeats=500, target_rel_ci=0.02,
                                 budget_s=0.3)
    print(f"{'width':>5}  {'rounds/block':>12}  {'covered':>8}  {'sd(log r) blocks':>16}  "
          f"{'t interval over 3 blocks':>24}")
    for w in (int(x) for x in args.widths.split(",")):
        config = Config(layer="attention", batch=2, embed=w, hidden=w, rank=1)
        kernels = {m: prepare(config, m, 0) for m in ("full", "lora")}
        blocks = []
        for _ in range(args.blocks):
            rep = timing.time_interleaved(kernels, policy)
            blocks.append((timing.paired_ratio(rep.samples_s["lora"], rep.samples_s["full"],
                                               policy), len(rep.samples_s["lora"])))
        medians = np.array([ratio for (ratio, _, _), _ in blocks])
        pooled = float(np.median(medians))
        covered = np.mean([lo <= pooled <= hi for (_, lo, hi), _ in blocks])
        sd = float(np.std(np.log(medians), ddof=1))
        r, lo, hi = timing.block_ratio(medians[:3])
        rounds = int(np.median([n for _, n in blocks]))
        print(f"{w:>5}  {rounds:>12}  {covered:>8.0%}  {sd:>16.3f}  "
              f"{f'{r:.3f} [{lo:.3f}, {hi:.3f}]':>24}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
