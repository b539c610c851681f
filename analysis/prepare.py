"""Turn schema rows (measured, or hypothetical configs to predict) into the fit's terms."""

from __future__ import annotations

import pandas as pd

from analysis import costs
from analysis import fit as fitmod
from analysis.data import CONTEXT_COLUMNS, SIZE_COLUMNS
from costmodel.hardware import HardwareProfile

#: Columns kept beside the terms so tables and plots can name the rows.
ID_COLUMNS = tuple(CONTEXT_COLUMNS) + tuple(SIZE_COLUMNS) + ("method", "targets")


def terms_for(rows: pd.DataFrame, profile: HardwareProfile | None,
              measured: bool) -> pd.DataFrame:
    """`fit.terms_frame` of `rows` (counts from costmodel) with the identifying columns kept.

    measured: take `time_median_s` as the response; otherwise the time column is NaN.
    """
    rows = rows.reset_index(drop=True)
    c = costs.counts(rows, profile)
    terms = fitmod.terms_frame(
        c["flops"].to_numpy(), c["bytes_moved"].to_numpy(), c["kernels"].to_numpy(),
        rows["method"].astype(str).to_numpy(),
        c["roofline_s"].to_numpy(),
        rows["time_median_s"].to_numpy(dtype=float) if measured else None,
        c["result_bytes"].to_numpy(),
    )
    for col in ID_COLUMNS:
        terms[col] = rows[col].to_numpy()
    if "config_id" in rows:
        terms["config_id"] = rows["config_id"].to_numpy()
    terms["flops"] = c["flops"].to_numpy()
    terms["bytes_moved"] = c["bytes_moved"].to_numpy()
    return terms
