"""Synthetic timing tables generated from a known model, for tests with a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.costs import counts
from measure import schema

#: The generating model: effective rates, per-kernel and per-call overheads, LoRA multipliers.
TRUE = {
    "flops_per_s": 40e9, "bytes_per_s": 8e9, "kernel_s": 4e-6, "dispatch_s": 30e-6,
    "lambda_lora": 1.25, "lambda_lora_merged": 1.0,
}


def true_time_s(rows: pd.DataFrame, truth: dict = TRUE) -> np.ndarray:
    c = counts(rows)
    lam = np.where(rows["method"] == "lora", truth["lambda_lora"],
                   np.where(rows["method"] == "lora_merged", truth["lambda_lora_merged"], 1.0))
    return (truth["dispatch_s"] + lam * c["flops"].to_numpy() / truth["flops_per_s"]
            + c["bytes_moved"].to_numpy() / truth["bytes_per_s"]
            + c["kernels"].to_numpy() * truth["kernel_s"])


def synthetic_dataset(batches=(2, 256), widths=(64, 128, 256, 512, 1024, 1536), ranks=(1, 4),
                      methods=("full", "lora", "lora_merged"), cv: float = 0.03,
                      seed: int = 0, truth: dict = TRUE, device_kind: str = "synthetic") -> pd.DataFrame:
    """Schema rows of a square attention grid timed by the known model with lognormal noise."""
    rng = np.random.default_rng(seed)
    recs = []
    for b in batches:
        for d in widths:
            for r in ranks:
                for m in methods:
                    recs.append({"batch": b, "embed": d, "hidden": d, "rank": r, "method": m})
    df = pd.DataFrame(recs)
    df = df.assign(
        schema_version=schema.SCHEMA_VERSION, run_id="synthetic", backend="cpu",
        device_kind=device_kind, layer="attention", variant="clean", timing_mode="aot",
        seq=1, heads=1, targets=np.where(df["method"] == "full", "", "k,q"),
        input_requires_grad=False, dtype="float32", n_repeats=7, calls_per_repeat=1,
        time_iqr_s=0.0, time_min_s=0.0, time_ci_low_s=0.0, time_ci_high_s=0.0, time_cv=cv,
        unstable=False, compile_s=0.1, model_flops=np.nan, model_bytes=np.nan,
        model_kernels=np.nan, trainable_params=0, xla_flops=np.nan, xla_bytes=np.nan,
        error="", timestamp="2026-01-01T00:00:00Z", paired_ratio=np.nan,
        paired_ratio_ci_low=np.nan, paired_ratio_ci_high=np.nan, refinement=False,
        **schema.ADDED_IN_3, **schema.ADDED_IN_4,
    )
    t = true_time_s(df, truth) * np.exp(rng.normal(0, cv, len(df)))
    df["time_median_s"] = t
    from analysis.costs import fill_model_columns
    df = fill_model_columns(df, overwrite=True)
    return schema.validate(df[list(schema.COLUMNS)])
