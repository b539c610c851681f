"""How much of the blog's result was compilation, and how much was merging A·B into W?

    python benchmarks/blog_vs_correct.py [--out DIR] [--batch 2,256] [--embed 256,1024] [--rank 1]

Times one small slice of the blog's grid three ways into one dataset (`measure.sweep`, so
the same harness, device and interleaving apply to all three), then prints, per way, how
often LoRA beats full training and the median t_LoRA / t_full (`analysis.factors.blog_summary`):

1. the blog's code as written: re-jitted per call, so every call compiles (`--variant seed
   --timing as_written`);
2. the blog's code compiled once and timed correctly (`--variant seed --timing aot`): still
   the merged LoRA with the post's bugs;
3. our kernels (`--variant clean`): factored LoRA next to the merged one, timed correctly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import pandas as pd

from analysis import data
from analysis.factors import blog_summary
from measure import sweep


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="dataset folder (default: a new temporary one)")
    p.add_argument("--batch", default="2,256")
    p.add_argument("--embed", default="256,1024")
    p.add_argument("--rank", default="1")
    args = p.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="blog-vs-correct-")
    sizes = ["--batch", args.batch, "--embed", args.embed, "--rank", args.rank, "--out", out]
    for extra in (["--variant", "seed", "--timing", "as_written"],
                  ["--variant", "seed", "--timing", "aot"],
                  ["--variant", "clean"]):
        rc = sweep.main([*sizes, *extra])
        if rc != 0:
            return rc
    summary = blog_summary(data.load(out).frame)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"\n{out}: t_LoRA / t_full per way of timing (< 1: LoRA faster)")
        print(summary.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
