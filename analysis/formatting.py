"""Numbers and tables as people read them: widths, rates, times, fitted factors, and plain or
Markdown tables (no third-party formatter). Pure functions; `analysis.report` and
`analysis.wholemodel_report` print with them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def fmt_width(d: float) -> str:
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return "-"
    if math.isinf(d):
        return "none in range"
    return f"{d:,.0f}"


def fmt_rate(x: float) -> str:
    if not math.isfinite(x):
        return "unbounded"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "


def fmt_time(t: float) -> str:
    if not math.isfinite(t):
        return "-"
    if abs(t) >= 1:
        return f"{t:.3g} s"
    if abs(t) >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} us"


def fmt_factor(f) -> str:
    if f.status != "fitted":
        value = f"{f.estimate:.3g} {f.unit}" if np.isfinite(f.estimate) else "unbounded"
        return f"{value} ({f.note.split(':')[0]})"
    if f.unit in ("FLOP/s", "bytes/s"):
        return f"{fmt_rate(f.estimate)}{f.unit} [{fmt_rate(f.ci_low)}, {fmt_rate(f.ci_high)}]"
    if f.unit == "us":
        return f"{f.estimate:.3g} us [{f.ci_low:.3g}, {f.ci_high:.3g}]"
    return f"{f.estimate:.3g}x [{f.ci_low:.3g}, {f.ci_high:.3g}]"


def _cell(v, floatfmt: str) -> str:
    if isinstance(v, (float, np.floating)):
        return "-" if math.isnan(v) else floatfmt.format(v)
    return str(v)


def text_table(df: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    """A plain fixed-width table (no third-party formatter)."""
    cells = [[str(c) for c in df.columns]]
    for _, r in df.iterrows():
        cells.append([_cell(v, floatfmt) for v in r])
    widths = [max(len(row[j]) for row in cells) for j in range(len(cells[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(df: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = []
    for _, r in df.iterrows():
        body.append("| " + " | ".join(_cell(v, floatfmt) for v in r) + " |")
    return "\n".join([head, sep, *body])
