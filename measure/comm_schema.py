"""The tidy tables of communication measurements, beside `measure.schema`'s kernel table.

Two tables, long form, one row per (config, what) summary of repeated timings:

``collectives``
    one collective (all_reduce, all_gather, reduce_scatter, ppermute) at one message size on
    one group of devices. ``message_bytes`` follows nccl-tests' "size" (NVIDIA nccl-tests,
    doc/PERFORMANCE.md): the reduced buffer for all_reduce, the gathered output for
    all_gather, the input for reduce_scatter, the buffer each device sends for ppermute.
``sharded``
    one transformer-block training step under a data × tensor parallel layout (``dp``,
    ``tp``; ``devices`` = dp·tp, over ``processes`` processes), full or LoRA, with the
    collectives the compiled program holds (``hlo_*``). ``program`` is ``step`` (the sharded
    step on dp·tp devices), ``local`` (one device's share of the same step, run alone on one
    device with no communication: the single-device reference the analysis scales) or
    ``concurrent`` (every device runs its share at the same time, with no communication:
    what devices sharing one machine's cores cost, apart from communication).

Format history (bump TABLE_VERSION on any change of names, meaning or dtype):
  1 -- first version.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from measure.schema import SchemaError, coerce_columns

TABLE_VERSION = 1

COLLECTIVES: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "ppermute")
PROGRAMS: tuple[str, ...] = ("step", "local", "concurrent")

_TIMING: dict[str, str] = {
    "n_repeats": "int64",
    "calls_per_repeat": "int64",
    "time_median_s": "float64",
    "time_iqr_s": "float64",
    "time_min_s": "float64",
    "time_ci_low_s": "float64",
    "time_ci_high_s": "float64",
    "time_cv": "float64",
    "unstable": "bool",
    "compile_s": "float64",
}
_BOOK: dict[str, str] = {
    "error": "string",  # "" when it ran and matched its known answer; else one line
    "timestamp": "string",
}

COLLECTIVE_COLUMNS: Mapping[str, str] = {
    "table_version": "int64",
    "run_id": "string",
    "backend": "string",
    "device_kind": "string",
    "collective": "string",
    "devices": "int64",  # group size p
    "processes": "int64",  # processes the group spans (1: one process, N host devices)
    "dtype": "string",
    "message_bytes": "int64",
    **_TIMING,
    **_BOOK,
}
COLLECTIVE_KEY: tuple[str, ...] = ("collective", "devices", "processes", "dtype", "message_bytes")

SHARDED_COLUMNS: Mapping[str, str] = {
    "table_version": "int64",
    "run_id": "string",
    "backend": "string",
    "device_kind": "string",
    "layer": "string",  # block
    "method": "string",  # full | lora
    "program": "string",  # step | local | concurrent
    "dp": "int64",
    "tp": "int64",
    "devices": "int64",
    "processes": "int64",
    "batch": "int64",  # global batch (the local program gets batch / dp)
    "seq": "int64",
    "embed": "int64",
    "heads": "int64",
    "hidden": "int64",
    "rank": "int64",
    "targets": "string",
    "dtype": "string",
    "trainable_params": "int64",
    **_TIMING,
    # collectives of the compiled program (what the step communicates, per device)
    "hlo_collectives": "int64",
    "hlo_all_reduce_bytes": "float64",
    "hlo_other_bytes": "float64",
    "hlo_detail": "string",  # "kind:bytes:group;..." in program order
    **_BOOK,
}
SHARDED_KEY: tuple[str, ...] = (
    "layer", "method", "program", "dp", "tp", "processes", "batch", "seq", "embed", "heads",
    "hidden", "rank", "targets", "dtype",
)

TABLES: dict[str, tuple[Mapping[str, str], tuple[str, ...]]] = {
    "collectives": (COLLECTIVE_COLUMNS, COLLECTIVE_KEY),
    "sharded": (SHARDED_COLUMNS, SHARDED_KEY),
}


def validate_table(df: pd.DataFrame, table: str) -> pd.DataFrame:
    """Check `df` against table `table`'s columns; SchemaError naming the first bad column."""
    columns, key = TABLES[table]
    out = coerce_columns(df, columns, table)
    versions = set(out["table_version"].unique().tolist())
    if versions - {TABLE_VERSION}:
        raise SchemaError(f"{table}: table_version {sorted(versions)}, this tool reads {TABLE_VERSION}")
    dup = out.duplicated(list(key))
    if dup.any():
        row = out.loc[dup].iloc[0]
        raise SchemaError(f"{table}: duplicated key " + ", ".join(f"{k}={row[k]}" for k in key))
    return out.reset_index(drop=True)


def empty_table(table: str) -> pd.DataFrame:
    columns, _ = TABLES[table]
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in columns.items()})
