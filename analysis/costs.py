"""The one door from `analysis` to `costmodel`: counts and roofline times for table rows.

Nothing here computes a FLOP, a byte or a kernel: every figure comes from
`costmodel.layer_cost` and `costmodel.roofline`, evaluated once per group of rows that share
a layer, method and the other non-size settings, vectorised over the sizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pandas as pd

import costmodel
from costmodel.hardware import HardwareProfile

#: Columns passed to costmodel as non-size settings; rows sharing them are costed together.
SETTING_COLUMNS = ("layer", "method", "targets", "input_requires_grad", "dtype", "seq", "heads")


def _targets_arg(targets: str) -> tuple[str, ...] | None:
    targets = str(targets)
    return tuple(t for t in targets.split(",") if t) or None


def _groups(rows: pd.DataFrame) -> Iterator[tuple[np.ndarray, "costmodel.Cost", str]]:
    """(row positions, Cost over those rows' sizes, dtype) per group of shared settings."""
    keys = rows[list(SETTING_COLUMNS)].astype(str).agg("|".join, axis=1).to_numpy()
    for key in pd.unique(keys):
        pos = np.flatnonzero(keys == key)
        first = rows.iloc[pos[0]]
        cost = costmodel.layer_cost(
            str(first["layer"]), str(first["method"]),
            batch=rows["batch"].to_numpy()[pos].astype(float),
            embed=rows["embed"].to_numpy()[pos].astype(float),
            hidden=rows["hidden"].to_numpy()[pos].astype(float),
            rank=rows["rank"].to_numpy()[pos].astype(float),
            targets=_targets_arg(first["targets"]),
            input_requires_grad=bool(first["input_requires_grad"]),
            dtype=str(first["dtype"]),
            seq=int(first["seq"]),
            heads=int(first["heads"]),
        )
        yield pos, cost, str(first["dtype"])


def result_bytes(cost: "costmodel.Cost", batch, seq, embed, input_requires_grad: bool):
    """Bytes of the gradients one timed call returns: every trainable parameter's, and the
    input's (batch·seq·embed) when it needs one (see `analysis.fit` on why they cost time)."""
    itemsize = costmodel.dtype_bytes(cost.dtype)
    dx = np.asarray(batch, float) * np.asarray(seq, float) * np.asarray(embed, float)
    return (np.asarray(cost.trainable_params, float) + (dx if input_requires_grad else 0.0)) * itemsize


def counts(rows: pd.DataFrame, profile: HardwareProfile | None = None) -> pd.DataFrame:
    """flops, bytes_moved, kernels, trainable_params and result_bytes of each row, from
    costmodel, and roofline_s: the unfitted roofline time on `profile` (NaN without one)."""
    n = len(rows)
    names = ("flops", "bytes_moved", "kernels", "trainable_params")
    out = {k: np.full(n, np.nan) for k in (*names, "result_bytes", "roofline_s")}
    for pos, cost, dtype in _groups(rows):
        for k in names:
            out[k][pos] = np.broadcast_to(np.asarray(getattr(cost, k), dtype=float), pos.shape)
        sub = rows.iloc[pos]
        out["result_bytes"][pos] = result_bytes(
            cost, sub["batch"].to_numpy(), sub["seq"].to_numpy(), sub["embed"].to_numpy(),
            bool(sub["input_requires_grad"].iloc[0]))
        if profile is not None:
            roof = costmodel.roofline(cost, profile, dtype)
            out["roofline_s"][pos] = np.broadcast_to(np.asarray(roof.time_s, dtype=float), pos.shape)
    return pd.DataFrame(out, index=rows.index)


def fill_model_columns(df: pd.DataFrame, overwrite: bool = False) -> pd.DataFrame:
    """Schema rows with model_flops/model_bytes/model_kernels/trainable_params from costmodel
    (only where missing, unless `overwrite`)."""
    df = df.copy()
    need = df.index if overwrite else df.index[df[["model_flops", "model_bytes",
                                                   "model_kernels"]].isna().any(axis=1)]
    if len(need):
        c = counts(df.loc[need])
        df.loc[need, "model_flops"] = c["flops"].to_numpy()
        df.loc[need, "model_bytes"] = c["bytes_moved"].to_numpy()
        df.loc[need, "model_kernels"] = c["kernels"].to_numpy()
        df.loc[need, "trainable_params"] = c["trainable_params"].to_numpy().astype("int64")
    return df


def op_table(row: pd.Series, profile: HardwareProfile | None = None) -> pd.DataFrame:
    """The cost model's per-op rows (name, phase, kind, flops, bytes_moved, kernels) of one
    config and method, and roofline_s: each op's unfitted roofline time on `profile`
    (`costmodel.roofline`'s op_time_s; NaN without a profile)."""
    frame = row.to_frame().T.reset_index(drop=True)
    for c in ("batch", "embed", "hidden", "rank", "seq", "heads"):
        frame[c] = frame[c].astype("int64")
    (_, cost, dtype), = list(_groups(frame))
    roof = (costmodel.roofline(cost, profile, dtype).op_time_s if profile is not None
            else (np.nan,) * len(cost.ops))
    rows = []
    for op, t in zip(cost.ops, roof):
        rows.append({
            "op": op.name, "phase": op.phase, "kind": op.kind,
            "flops": float(np.sum(op.flops)), "bytes_moved": float(np.sum(op.bytes_moved)),
            "kernels": float(np.sum(op.kernels)), "roofline_s": float(np.sum(t)),
        })
    return pd.DataFrame(rows)


class SquareCounts(NamedTuple):
    """Counts along the width axis, one entry per width; roofline_s is NaN without a profile."""

    flops: np.ndarray
    bytes_moved: np.ndarray
    kernels: np.ndarray
    roofline_s: np.ndarray
    result_bytes: np.ndarray


def square_counts(template: pd.Series, method: str, targets: str, widths: np.ndarray,
                  profile: HardwareProfile | None) -> SquareCounts:
    """`SquareCounts` at embed = hidden = widths (a block: embed =
    width, hidden in the template's ratio) for the template's other settings: the lean path
    for root finding (no DataFrame per call)."""
    w = np.asarray(widths, dtype=float)
    # A block's `hidden` is its MLP width: keep the measured ratio (4 for GPT-style blocks);
    # for linear and attention layers the family is e = h = width.
    ratio = float(template["hidden"]) / float(template["embed"]) if template["layer"] == "block" else 1.0
    cost = costmodel.layer_cost(
        str(template["layer"]), method, batch=float(template["batch"]), embed=w, hidden=ratio * w,
        rank=float(template["rank"]), targets=_targets_arg(targets),
        input_requires_grad=bool(template["input_requires_grad"]),
        dtype=str(template["dtype"]), seq=int(template["seq"]), heads=int(template["heads"]),
    )
    shape = w.shape
    flops = np.broadcast_to(cost.flops, shape)
    bytes_moved = np.broadcast_to(cost.bytes_moved, shape)
    kernels = np.broadcast_to(cost.kernels, shape)
    if profile is None:
        roof = np.full(shape, np.nan)
    else:
        roof = np.broadcast_to(costmodel.roofline(cost, profile, str(template["dtype"])).time_s, shape)
    res = np.broadcast_to(result_bytes(cost, float(template["batch"]), int(template["seq"]), w,
                                       bool(template["input_requires_grad"])), shape)
    return SquareCounts(flops, bytes_moved, kernels, roof, res)
