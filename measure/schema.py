"""The one tidy schema shared by `measure` (which writes it) and `analysis` (which reads it).

Long form: one row per (config, method) summary of repeated timings.

Format history (bump SCHEMA_VERSION on any change of names, meaning or dtype):
  1 -- first version.
  2 -- ``refinement`` marks the rows the crossover refinement measured after the grid
       (`measure.refine`); ``paired_ratio`` with ``paired_ratio_ci_low/high``: the median over
       interleaved rounds of t_method / t_full and its 95% bootstrap interval. Version-1
       tables are read as grid rows without paired ratios (`upgrade`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

SCHEMA_VERSION = 2
#: Columns added since version 1 and the value a version-1 row takes for them.
ADDED_IN_2: Mapping[str, object] = {
    "refinement": False, "paired_ratio": float("nan"), "paired_ratio_ci_low": float("nan"),
    "paired_ratio_ci_high": float("nan"),
}

#: column name -> pandas dtype. Units are in the names (``_s`` seconds).
COLUMNS: Mapping[str, str] = {
    "schema_version": "int64",
    "run_id": "string",
    "backend": "string",  # jax.default_backend(): cpu, gpu, tpu; "unknown" for foreign data
    "device_kind": "string",  # jax.devices()[0].device_kind, "unknown" for foreign data
    # --- config
    "layer": "string",  # linear | attention | block
    "method": "string",  # full | lora | lora_merged
    "variant": "string",  # clean (ours) | seed (the blog's code, bugs included)
    "timing_mode": "string",  # aot (compiled once) | as_written (the blog's re-jit per call)
    "batch": "int64",
    "embed": "int64",
    "hidden": "int64",
    "rank": "int64",
    "seq": "int64",  # 1 for linear/attention
    "heads": "int64",  # 1 for linear/attention
    "targets": "string",  # comma-joined sorted adapted matrices, "" for full
    "input_requires_grad": "bool",
    "dtype": "string",  # float32 | bfloat16
    # --- timing summary of one forward+backward call
    "n_repeats": "int64",
    "calls_per_repeat": "int64",  # k back-to-back calls per timed repeat (sub-ms kernels)
    "time_median_s": "float64",
    "time_iqr_s": "float64",
    "time_min_s": "float64",
    "time_ci_low_s": "float64",  # 95% bootstrap CI of the median
    "time_ci_high_s": "float64",
    "time_cv": "float64",  # coefficient of variation (std / mean)
    "unstable": "bool",
    "compile_s": "float64",
    # --- paired with full fine-tuning in the same interleaved loop (v2)
    "paired_ratio": "float64",  # median over rounds of t_method / t_full; 1 for full, NaN unpaired
    "paired_ratio_ci_low": "float64",  # its 95% bootstrap interval
    "paired_ratio_ci_high": "float64",
    "refinement": "bool",  # measured by the crossover refinement after the grid (v2)
    # --- cost model of the same config (costmodel.layer_cost)
    "model_flops": "float64",
    "model_bytes": "float64",
    "model_kernels": "float64",
    "trainable_params": "int64",
    # --- XLA's own cost_analysis of the compiled kernel (advisory; NaN when unavailable)
    "xla_flops": "float64",
    "xla_bytes": "float64",
    # --- bookkeeping
    "error": "string",  # "" when the config ran; the exception's one-line message otherwise
    "timestamp": "string",  # ISO 8601, UTC
}

#: The columns that identify a (config, method) pair; a dataset holds each at most once.
KEY: tuple[str, ...] = (
    "layer", "method", "variant", "timing_mode", "batch", "embed", "hidden", "rank",
    "seq", "heads", "targets", "input_requires_grad", "dtype",
)


class SchemaError(ValueError):
    """A table does not follow the schema; the message names the first bad column."""


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Check `df` against the schema and return it with the schema's dtypes and column order.

    Raises SchemaError naming the first missing column, the first column whose values cannot
    take the schema dtype, a foreign schema version, or a duplicated (config, method) key.
    Version-1 tables are upgraded first (`upgrade`).
    """
    df = upgrade(df)
    for name in COLUMNS:
        if name not in df.columns:
            raise SchemaError(f"missing column {name!r}")
    out = pd.DataFrame(index=df.index)
    for name, dtype in COLUMNS.items():
        col = df[name]
        try:
            if dtype == "bool":
                col = _as_bool(col)
            elif dtype == "string":
                # astype first: an all-empty column read from CSV arrives as float NaN
                col = col.astype("string").fillna("")
            else:
                col = col.astype(dtype)
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"column {name!r} is not {dtype}: {exc}") from None
        out[name] = col
    versions = set(out["schema_version"].unique().tolist())
    if versions - {SCHEMA_VERSION}:
        raise SchemaError(
            f"column 'schema_version' holds {sorted(versions)}, this tool reads {SCHEMA_VERSION}"
        )
    dup = out.duplicated(list(KEY))
    if dup.any():
        row = out.loc[dup].iloc[0]
        raise SchemaError(
            "duplicated (config, method) key: " + ", ".join(f"{k}={row[k]}" for k in KEY)
        )
    return out.reset_index(drop=True)


def upgrade(df: pd.DataFrame) -> pd.DataFrame:
    """A version-1 table as version 2: the added columns at their version-1 meaning (grid rows,
    no paired ratio). Other versions pass through for `validate` to name."""
    if "schema_version" not in df.columns or len(df) == 0:
        return df
    try:
        v1 = pd.to_numeric(df["schema_version"], errors="coerce") == 1
    except (TypeError, ValueError):
        return df
    if not v1.any():
        return df
    df = df.copy()
    for name, value in ADDED_IN_2.items():
        if name not in df.columns:
            df[name] = value
        else:
            df.loc[v1, name] = value
    df.loc[v1, "schema_version"] = SCHEMA_VERSION
    return df


def _as_bool(col: pd.Series) -> pd.Series:
    if col.dtype == bool:
        return col
    mapping = {"true": True, "false": False, "1": True, "0": False}
    lowered = col.astype(str).str.strip().str.lower()
    bad = ~lowered.isin(mapping)
    if bad.any():
        raise ValueError(f"value {col[bad].iloc[0]!r} is not a boolean")
    return lowered.map(mapping).astype(bool)


def empty_frame() -> pd.DataFrame:
    """An empty table with the schema's columns and dtypes."""
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in COLUMNS.items()})


def is_ok(df: pd.DataFrame) -> np.ndarray:
    """Rows that ran (no error) and carry a positive median time."""
    return (df["error"].fillna("") == "").to_numpy() & (df["time_median_s"] > 0).to_numpy()
