"""The one tidy schema shared by `measure` (which writes it) and `analysis` (which reads it).

Long form: one row per (config, method) summary of repeated timings. A row times either one
layer's forward+backward (``layer`` linear, attention or block) or a whole model's training
step (``layer`` = "model": embeddings, blocks, head, loss, clipping and the optimizer
update; `measure.wholemodel`), described by the version-3 columns.

Format history (bump SCHEMA_VERSION on any change of names, meaning or dtype):
  1 -- first version.
  2 -- ``refinement`` marks the rows the crossover refinement measured after the grid
       (`measure.refine`); ``paired_ratio`` with ``paired_ratio_ci_low/high``: the median over
       interleaved rounds of t_method / t_full and its 95% bootstrap interval. Version-1
       tables are read as grid rows without paired ratios (`upgrade`).
  3 -- whole-model steps: ``model`` (the preset scaled down), ``layers``, ``kv_heads``,
       ``vocab``, ``mlp``, ``norm``, ``head``, ``n_classes``, ``attention``, ``optimizer``,
       ``clip``, ``precision``, ``recompute``, ``grad_accum``, ``model_params``; for a
       whole-model row embed is d_model, hidden the MLP width, batch the sequences per
       micro-batch, dtype the compute dtype. Layer rows (and older tables) hold
       `ADDED_IN_3`: "" or 0 where a field does not apply to a layer.
  4 -- ``paired_blocks``: the independent timing blocks behind the paired ratio. With two or
       more, ``paired_ratio`` is the geometric mean of the blocks' median round ratios and
       its interval the t interval over the blocks (`timing_stats.block_ratio`): the rounds
       of one block share the machine's slow drift, so a bootstrap over them alone is too
       narrow. Older rows hold 1: their interval is that bootstrap over one block's rounds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

SCHEMA_VERSION = 4
#: Columns added since version 1 and the value a version-1 row takes for them.
ADDED_IN_2: Mapping[str, object] = {
    "refinement": False, "paired_ratio": float("nan"), "paired_ratio_ci_low": float("nan"),
    "paired_ratio_ci_high": float("nan"),
}
#: Columns added in version 3 and the value a layer row (and a version-2 row) holds:
#: not a whole model ("" / 0), no optimizer update, no clipping, no recomputation, one
#: micro-batch.
ADDED_IN_3: Mapping[str, object] = {
    "model": "", "layers": 0, "kv_heads": 0, "vocab": 0, "mlp": "", "norm": "", "head": "",
    "n_classes": 0, "attention": "", "optimizer": "", "clip": False, "precision": "",
    "recompute": False, "grad_accum": 1, "model_params": 0,
}
#: Columns added in version 4 and the value an older row holds: one timing block.
ADDED_IN_4: Mapping[str, object] = {"paired_blocks": 1}
#: The columns each version added, and their value in rows of the versions before.
ADDED: Mapping[int, Mapping[str, object]] = {2: ADDED_IN_2, 3: ADDED_IN_3, 4: ADDED_IN_4}

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
    "dtype": "string",  # float32 | bfloat16 (a whole-model step: its compute dtype)
    # --- whole-model steps (layer == "model", v3); layer rows hold ADDED_IN_3
    "model": "string",  # the preset the shape was scaled from (costmodel.presets_models)
    "layers": "int64",  # blocks
    "kv_heads": "int64",  # key/value heads (== heads without grouped-query attention)
    "vocab": "int64",  # vocabulary rows
    "mlp": "string",  # gelu | swiglu
    "norm": "string",  # layernorm | rmsnorm
    "head": "string",  # lm | lm-tied | classifier
    "n_classes": "int64",  # classifier outputs (0 for an LM head)
    "attention": "string",  # naive | fused
    "optimizer": "string",  # sgd | adamw
    "clip": "bool",  # global-norm gradient clipping
    "precision": "string",  # fp32 | bf16 | bf16-mixed
    "recompute": "bool",  # activation recomputation per block
    "grad_accum": "int64",  # micro-batches of `batch` sequences per optimizer update
    "model_params": "int64",  # the base model's parameters (adapters aside)
    # --- timing summary of one forward+backward call
    "n_repeats": "int64",
    "calls_per_repeat": "int64",  # k back-to-back calls per timed repeat (sub-ms kernels)
    "time_median_s": "float64",
    "time_iqr_s": "float64",
    "time_min_s": "float64",
    # 95% CI of the median: the t interval over the timing blocks (`timing_stats.
    # block_median_ci`); a bootstrap over the rounds for one-block records
    "time_ci_low_s": "float64",
    "time_ci_high_s": "float64",
    "time_cv": "float64",  # coefficient of variation (std / mean)
    "unstable": "bool",
    "compile_s": "float64",
    # --- paired with full fine-tuning in the same interleaved loop (v2)
    "paired_ratio": "float64",  # t_method / t_full, round by round; 1 for full, NaN unpaired
    "paired_ratio_ci_low": "float64",  # its 95% interval (t over blocks; v4 docstring)
    "paired_ratio_ci_high": "float64",
    "paired_blocks": "int64",  # independent timing blocks behind that interval (v4)
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
    "model", "layers", "kv_heads", "vocab", "mlp", "norm", "head", "n_classes", "attention",
    "optimizer", "clip", "precision", "recompute", "grad_accum",
)
#: The sizes of a config: the axes the sweeps and the fits vary.
SIZE_COLUMNS: tuple[str, ...] = ("batch", "embed", "hidden", "rank")
#: The columns that, with the sizes, identify a layer config: every KEY column but method
#: and targets (the adapted matrices differ between the methods of one config) and the
#: whole-model columns (constant on layer rows; `analysis.wholemodel` reads those).
CONTEXT_COLUMNS: tuple[str, ...] = tuple(
    c for c in KEY if c not in ("method", "targets") and c not in SIZE_COLUMNS and c not in ADDED_IN_3
)
#: The columns that identify a config across its methods: context and sizes.
CONFIG_COLUMNS: tuple[str, ...] = tuple(c for c in KEY if c not in ("method", "targets"))
#: The columns that identify a curve along the width axis (embed, hidden): context, batch, rank.
CURVE_COLUMNS: tuple[str, ...] = CONTEXT_COLUMNS + ("batch", "rank")


class SchemaError(ValueError):
    """A table does not follow the schema; the message names the first bad column."""


def validate(df: pd.DataFrame, row_names=None, unique: bool = True) -> pd.DataFrame:
    """Check `df` against the schema and return it with the schema's dtypes and column order.

    Raises SchemaError naming the first missing column, the first column whose values cannot
    take the schema dtype, a foreign schema version, the first bad row and column
    (`check_rows`), or (when `unique`) a (config, method) key repeated on one device.
    Version-1 tables are upgraded first (`upgrade`).
    """
    out = coerce_columns(upgrade(df), COLUMNS)
    versions = set(out["schema_version"].unique().tolist())
    if versions - {SCHEMA_VERSION}:
        raise SchemaError(
            f"column 'schema_version' holds {sorted(versions)}, this tool reads {SCHEMA_VERSION}"
        )
    out = out.reset_index(drop=True)
    check_rows(out, row_names)
    # one key per device: the same grid measured on two devices is two devices' data (which
    # the analysis refuses to pool), not a duplicate
    dup = out.duplicated([*DEVICE_COLUMNS, *KEY])
    if unique and dup.any():
        row = out.loc[dup].iloc[0]
        raise SchemaError(
            "duplicated (config, method) key: " + ", ".join(f"{k}={row[k]}" for k in KEY)
        )
    return out


#: The columns naming the device a row was measured on.
DEVICE_COLUMNS: tuple[str, ...] = ("backend", "device_kind")
_TIME_COLUMNS = ("time_median_s", "time_iqr_s", "time_min_s", "time_ci_low_s", "time_ci_high_s",
                 "compile_s")
_COUNT_COLUMNS = ("model_flops", "model_bytes", "model_kernels", "xla_flops", "xla_bytes")


def _row_checks(df: pd.DataFrame) -> list[tuple[str, np.ndarray, str]]:
    """(column, bad-row mask, what a bad value breaks), in column order."""
    from costmodel.layers import MAX_BATCH, MAX_SEQ, MAX_WIDTH, TARGETS
    from measure.grids import DTYPES, LAYERS, METHODS, TIMING_MODES, VARIANTS
    from measure.modelconfig import ATTENTIONS, HEADS, OPTIMIZERS, PRECISIONS

    whole = (df["layer"] == "model").to_numpy()
    attention_like = whole | (df["layer"] == "block").to_numpy()

    def outside(name: str, low: int, high: int | None = None) -> np.ndarray:
        v = df[name].to_numpy()
        return (v < low) | ((v > high) if high is not None else False)

    ok_run = (df["error"] == "").to_numpy()
    median = df["time_median_s"].to_numpy(dtype=float)
    rank_limit = np.minimum(df["embed"].to_numpy(), df["hidden"].to_numpy())

    def bad_targets() -> np.ndarray:
        pairs = df[["layer", "method", "targets"]].drop_duplicates()
        bad = set()
        for layer, method, targets in pairs.itertuples(index=False):
            names = [t for t in str(targets).split(",") if t]
            if method == "full":
                wrong = bool(names)
            else:
                valid = TARGETS.get("block" if layer == "model" else layer, ())
                wrong = not names or any(t not in valid for t in names) or len(set(names)) != len(names)
            if wrong:
                bad.add((layer, method, targets))
        keys = list(zip(df["layer"], df["method"], df["targets"]))
        return np.array([k in bad for k in keys], dtype=bool)

    checks = [
        ("layer", ~df["layer"].isin((*LAYERS, "model")).to_numpy(),
         f"not a layer ({', '.join(LAYERS)}) or a whole model (model)"),
        ("method", ~df["method"].isin(METHODS).to_numpy(), f"not a method ({', '.join(METHODS)})"),
        ("variant", ~df["variant"].isin(VARIANTS).to_numpy(), "not a variant"),
        ("timing_mode", ~df["timing_mode"].isin(TIMING_MODES).to_numpy(), "not a timing mode"),
        ("batch", outside("batch", 1, MAX_BATCH), f"must be 1 to {MAX_BATCH:.0e}"),
        ("embed", outside("embed", 1, MAX_WIDTH), f"must be 1 to {MAX_WIDTH:.0e}"),
        ("hidden", outside("hidden", 1, MAX_WIDTH), f"must be 1 to {MAX_WIDTH:.0e}"),
        ("rank", (df["rank"].to_numpy() < 1) | (df["rank"].to_numpy() > rank_limit),
         "must be 1 to min(embed, hidden)"),
        ("seq", outside("seq", 1, MAX_SEQ), f"must be 1 to {MAX_SEQ:.0e}"),
        ("heads", outside("heads", 1) | (attention_like
                                          & (df["embed"].to_numpy() % np.maximum(df["heads"].to_numpy(), 1) != 0))
         | (~attention_like & ((df["heads"] != 1) | (df["seq"] != 1)).to_numpy()),
         "must divide embed (block layer, whole model), be 1 with seq 1 otherwise"),
        ("targets", bad_targets(), "not valid for the layer and method"),
        ("dtype", ~df["dtype"].isin(DTYPES).to_numpy(), f"not a dtype ({', '.join(DTYPES)})"),
        # whole-model rows (v3): sizes >= 1 and options the step knows
        ("layers", whole & (df["layers"].to_numpy() < 1), "must be >= 1 for a whole model"),
        ("kv_heads", whole & ((df["kv_heads"].to_numpy() < 1)
                              | (df["heads"].to_numpy() % np.maximum(df["kv_heads"].to_numpy(), 1) != 0)),
         "must divide heads (a whole model)"),
        ("vocab", whole & (df["vocab"].to_numpy() < 1), "must be >= 1 for a whole model"),
        ("head", whole & ~df["head"].isin(HEADS).to_numpy(), f"not a head ({', '.join(HEADS)})"),
        ("attention", whole & ~df["attention"].isin(ATTENTIONS).to_numpy(), "not an attention"),
        ("optimizer", whole & ~df["optimizer"].isin(OPTIMIZERS).to_numpy(),
         f"not an optimizer ({', '.join(OPTIMIZERS)})"),
        ("precision", whole & ~df["precision"].isin(PRECISIONS).to_numpy(),
         f"not a precision ({', '.join(PRECISIONS)})"),
        ("grad_accum", df["grad_accum"].to_numpy() < 1, "must be >= 1"),
        ("paired_blocks", df["paired_blocks"].to_numpy() < 0, "must be >= 0"),
        ("n_repeats", ok_run & (df["n_repeats"].to_numpy() < 1), "must be >= 1 for a row that ran"),
        ("time_median_s", ok_run & ~(np.isfinite(median) & (median > 0)),
         "must be a finite time > 0 for a row that ran"),
    ]
    for name in ("paired_ratio", "paired_ratio_ci_low", "paired_ratio_ci_high"):
        v = df[name].to_numpy(dtype=float)
        checks.append((name, np.isinf(v) | (v <= 0), "must be a finite ratio > 0 (or empty)"))
    for name in _TIME_COLUMNS[1:] + _COUNT_COLUMNS:
        v = df[name].to_numpy(dtype=float)
        checks.append((name, np.isinf(v) | (v < 0), "must be finite and >= 0 (or empty)"))
    order = list(COLUMNS)
    return sorted(checks, key=lambda c: order.index(c[0]))


def check_rows(df: pd.DataFrame, row_names=None) -> None:
    """Raise SchemaError naming the first bad row and its first bad column: sizes within
    their physical bounds (`costmodel.layers.MAX_WIDTH` ...), 1 <= rank <= min(embed, hidden),
    targets and methods valid for the layer, a finite time > 0 for every row that ran.

    `row_names[i]` names row i in the message (a file line, say); default "row i+1".
    """
    if df.empty:
        return
    checks = _row_checks(df)
    first = min((int(np.argmax(mask)) for _n, mask, _w in checks if mask.any()), default=None)
    if first is None:
        return
    name, _mask, what = next(c for c in checks if c[1][first])
    where = row_names[first] if row_names is not None else f"row {first + 1}"
    value = df[name].iloc[first]
    value = value.item() if hasattr(value, "item") else value  # 2000, not np.int64(2000)
    raise SchemaError(f"{where}: column {name!r} is {value!r}: {what}")


def upgrade(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of older versions as the current one: each column a version added takes its value
    for the rows before it (`ADDED`: grid rows, no paired ratio, layer rows). Other versions
    pass through for `validate` to name."""
    if "schema_version" not in df.columns or len(df) == 0:
        return df
    try:
        version = pd.to_numeric(df["schema_version"], errors="coerce")
    except (TypeError, ValueError):
        return df
    old = version.isin(list(range(1, SCHEMA_VERSION)))
    if not old.any():
        return df
    df = df.copy()
    for added_in, columns in ADDED.items():
        rows = old & (version < added_in)
        for name, value in columns.items():
            if name not in df.columns:
                df[name] = value
            df.loc[rows, name] = value
    df.loc[old, "schema_version"] = SCHEMA_VERSION
    return df


def upgrade_record(rec: Mapping[str, object]) -> dict:
    """One record (a dict) of an older version as the current one; see `upgrade`."""
    out = dict(rec)
    version = rec.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and 1 <= version < SCHEMA_VERSION:
        for added_in, columns in ADDED.items():
            if version < added_in:
                out.update(columns)
        out["schema_version"] = SCHEMA_VERSION
    return out


def coerce_columns(df: pd.DataFrame, columns: Mapping[str, str], where: str = "") -> pd.DataFrame:
    """`df`'s `columns` (name -> dtype) in that dtype, in that order; SchemaError naming the first
    missing or unconvertible column (prefixed by `where`, the table's name, when given)."""
    prefix = f"{where}: " if where else ""
    for name in columns:
        if name not in df.columns:
            raise SchemaError(f"{prefix}missing column {name!r}")
    out = pd.DataFrame(index=df.index)
    for name, dtype in columns.items():
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
            raise SchemaError(f"{prefix}column {name!r} is not {dtype}: {exc}") from None
        out[name] = col
    return out


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
