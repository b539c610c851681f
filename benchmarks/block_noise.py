"""How much a paired ratio moves from one timing block to the next (a benchmark: it prints).

    python benchmarks/block_noise.py --data data/quick-cpu

Every config of a schema-4 sweep is timed in `paired_blocks` independent blocks, and its
paired ratio's 95% interval is the t interval over them (`measure.timing_stats.block_ratio`):
exp(m ± t · s / √B) with t = t_{0.975, B−1}. This script recovers s, the standard deviation
of log ratio between blocks, from each row's interval, s = log(high / low) · √B / (2t), and
prints its median per batch and width band, per LoRA method: where the machine is noisy, and
so where the measured verdicts are "≈ 1 within noise" and the fit's residuals large.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
from scipy import stats

from analysis import data


def block_sd(rows: pd.DataFrame) -> pd.Series:
    """s per row from its paired-ratio interval (NaN where fewer than two blocks)."""
    b = rows["paired_blocks"].to_numpy(dtype=float)
    lo = rows["paired_ratio_ci_low"].to_numpy(dtype=float)
    hi = rows["paired_ratio_ci_high"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = stats.t.ppf(0.975, np.maximum(b - 1, 1))
        s = np.log(hi / lo) * np.sqrt(b) / (2 * t)
    return pd.Series(np.where(b >= 2, s, np.nan), index=rows.index)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a sweep folder (schema 4: paired_blocks)")
    args = p.parse_args()
    f = data.load(args.data, partial=True).frame
    f = f[(f["method"] != "full") & (f["error"].astype(str) == "")].copy()
    f["s"] = block_sd(f)
    f = f[np.isfinite(f["s"])]
    if f.empty:
        raise SystemExit(f"{args.data}: no rows timed in two or more blocks (schema 4)")
    d = np.sqrt(f["embed"].to_numpy(float) * f["hidden"].to_numpy(float))
    edges = [0, 64, 256, math.inf]
    f["widths"] = pd.cut(d, edges, right=False, labels=["d < 64", "64 <= d < 256", "d >= 256"])
    table = (f.groupby(["method", "batch", "widths"], observed=True)["s"]
             .agg(["median", "max", "count"]).round(3))
    print(f"{args.data}: standard deviation of log(t_method / t_full) between timing blocks, "
          f"from each row's interval ({int(f['paired_blocks'].iloc[0])} blocks per config)")
    print(table.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
