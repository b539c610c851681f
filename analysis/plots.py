"""Figures of an `Analysis` (PNG, Agg backend). Each function draws from computed tables only.

Kept cheap (small figures, 90 dpi): the whole set takes a few seconds on two cores.
"""

from __future__ import annotations

import itertools
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.factors import FACTORS  # noqa: E402
from analysis.pipeline import Analysis  # noqa: E402
from costmodel.fileio import atomic_output  # noqa: E402

DPI = 90
METHOD_COLORS = {"full": "#1f77b4", "lora": "#d62728", "lora_merged": "#2ca02c"}


def save(fig, out: str, name: str, tight: bool = True) -> str:
    """Write `fig` to out/name atomically (PNG at DPI) and close it; returns name."""
    try:
        with atomic_output(os.path.join(out, name)) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight" if tight else None, format="png")
    finally:
        plt.close(fig)
    return name


def factor_pairs(a: Analysis, out: str) -> str:
    """The blog's bar plots made rigorous: median time per method for every pair of factors,
    one row of facets per pair (x: the first factor, facets: levels of the second), log y."""
    med = a.factor_analysis.pair_medians
    pairs = list(itertools.combinations(FACTORS, 2))
    ncol = max(int(med.loc[med["factor_b"] == fb, "level_b"].nunique()) for _, fb in pairs)
    fig, axes = plt.subplots(len(pairs), ncol, figsize=(2.3 * ncol, 1.9 * len(pairs)),
                             squeeze=False, sharey=True)
    for i, (fa, fb) in enumerate(pairs):
        part = med[(med["factor_a"] == fa) & (med["factor_b"] == fb)]
        levels_b = sorted(part["level_b"].unique())
        order = sorted(part["level_a"].unique())
        for j in range(ncol):
            ax = axes[i, j]
            if j >= len(levels_b):
                ax.set_visible(False)
                continue
            sub = part[part["level_b"] == levels_b[j]]
            sns.pointplot(data=sub, x="level_a", y="median_time_s", hue="method", order=order,
                          palette=METHOD_COLORS, ax=ax, markersize=3, linewidth=1,
                          legend=(i == 0 and j == 0))
            ax.set_yscale("log")
            ax.set_title(f"{fb} = {levels_b[j]}", fontsize=7, pad=2)
            ax.set_xlabel(fa if i == len(pairs) - 1 or True else "", fontsize=7, labelpad=1)
            ax.set_ylabel("median time (s)" if j == 0 else "", fontsize=7)
            ax.tick_params(labelsize=6)
    if axes[0, 0].get_legend() is not None:
        axes[0, 0].legend(fontsize=6)
    fig.suptitle("median time per method for every pair of factors (log scale)", fontsize=9)
    fig.subplots_adjust(hspace=0.75, wspace=0.12, top=0.95, bottom=0.04, left=0.07, right=0.99)
    return save(fig, out, "factor_pairs.png", tight=False)


def predicted_vs_measured(a: Analysis, out: str) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    t = a.rows["time_ms"].to_numpy() / 1e3
    for m, c in METHOD_COLORS.items():
        sel = (a.rows["method"] == m).to_numpy()
        if sel.any():
            ax.scatter(t[sel], a.fitted[sel], s=14, color=c, label=m, alpha=0.8)
    lo, hi = min(t.min(), a.fitted.min()) / 1.5, max(t.max(), a.fitted.max()) * 1.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi),
           xlabel="measured time (s)", ylabel=f"fitted time (s), {a.fit.form}")
    ax.legend(fontsize=8)
    return save(fig, out, "predicted_vs_measured.png")


def residuals_by_factor(a: Analysis, out: str) -> str:
    rel = a.rows["time_ms"].to_numpy() / 1e3 / a.fitted
    data = a.rows.assign(rel_error_pct=(1 / rel - 1) * 100)
    fig, axes = plt.subplots(1, len(FACTORS), figsize=(3.0 * len(FACTORS), 3.0), sharey=True)
    for ax, f in zip(axes, FACTORS):
        sns.stripplot(data=data, x=f, y="rel_error_pct", hue="method", palette=METHOD_COLORS,
                      dodge=True, size=3, ax=ax, legend=ax is axes[-1])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("(fitted - measured) / measured, %" if ax is axes[0] else "")
    return save(fig, out, "residuals_by_factor.png")


def _groups(table: pd.DataFrame) -> list[tuple[int, int]]:
    return sorted({(int(b), int(r)) for b, r in zip(table["batch"], table["rank"])})


def _panels(n: int):
    """A figure of n small panels, three to a row (axes as a 2-D array)."""
    ncol = min(3, n)
    nrow = int(np.ceil(n / ncol))
    return plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)


def time_vs_width(a: Analysis, out: str) -> str:
    """Measured points, fitted curves with 95% bands, crossover marked, per (batch, rank)."""
    cur = a.curves.table
    groups = _groups(cur)
    fig, axes = _panels(len(groups))
    xo = a.crossover.table
    for ax, (b, r) in zip(axes.flat, groups):
        c = cur[(cur["batch"] == b) & (cur["rank"] == r)]
        m_rows = a.rows[(a.rows["batch"] == b) & (a.rows["rank"] == r)]
        for m, g in c.groupby("method"):
            col = METHOD_COLORS.get(m, "gray")
            ax.plot(g["width"], g["time_s"], color=col, lw=1.2, label=m)
            ax.fill_between(g["width"], g["ci_low_s"], g["ci_high_s"], color=col, alpha=0.2)
            mm = m_rows[m_rows["method"] == m]
            ax.scatter(np.sqrt(mm["embed"] * mm["hidden"]), mm["time_ms"] / 1e3, color=col, s=10)
        for _, x in xo[(xo["batch"] == b) & (xo["rank"] == r)].iterrows():
            for d in x["crossings"]:  # every fitted sign change, from the field
                ax.axvline(d, color=METHOD_COLORS.get(x["method"], "gray"), ls=":", lw=1)
        ax.axvline(a.crossover.max_measured_width, color="gray", lw=0.6, ls="--")
        ax.set(xscale="log", yscale="log", title=f"batch {b}, rank {r}", xlabel="width d (e = h)",
               ylabel="time (s)")
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("fitted time vs width (bands: 95% bootstrap CI; dotted: crossings; dashed: "
                 "largest measured)",
                 fontsize=9)
    fig.tight_layout()
    return save(fig, out, "time_vs_width.png")


def extrapolation(a: Analysis, out: str) -> str:
    ex = a.extrapolation.table
    groups = _groups(ex)
    fig, axes = _panels(len(groups))
    for ax, (b, r) in zip(axes.flat, groups):
        e = ex[(ex["batch"] == b) & (ex["rank"] == r)]
        for m, g in e.groupby("method"):
            col = METHOD_COLORS.get(m, "gray")
            ax.plot(g["width"], g["time_s"], "o-", color=col, ms=3, lw=1, label=m)
            ax.fill_between(g["width"], g["pi_low_s"], g["pi_high_s"], color=col, alpha=0.15)
        ax.axvspan(a.extrapolation.max_measured_width, e["width"].max() * 1.1, color="gray",
                   alpha=0.08)
        ax.set(xscale="log", yscale="log", title=f"batch {b}, rank {r}", xlabel="width",
               ylabel="predicted time (s)")
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"extrapolation on {a.extrapolation.device} (bands: 95% PI; shaded: beyond "
                 f"measured width {a.extrapolation.max_measured_width:g})", fontsize=9)
    fig.tight_layout()
    return save(fig, out, "extrapolation.png")


def op_breakdown(a: Analysis, out: str) -> str:
    t = a.op_breakdown
    fig, ax = plt.subplots(figsize=(7, 3.2))
    methods = list(pd.unique(t["method"]))
    cmap = plt.get_cmap("tab20")
    for i, m in enumerate(methods):
        g = t[t["method"] == m].sort_values("time_s", ascending=False)
        left = 0.0
        for j, (_, op) in enumerate(g.iterrows()):
            ax.barh(i, op["time_s"] * 1e3, left=left, color=cmap(j % 20), edgecolor="white", lw=0.3)
            if op["time_s"] * 1e3 > 0.06 * g["time_s"].sum() * 1e3:
                ax.text(left + op["time_s"] * 5e2, i, op["op"], ha="center", va="center", fontsize=6)
            left += op["time_s"] * 1e3
    ax.set_yticks(range(len(methods)), methods)
    row = t.iloc[0]
    ax.set(xlabel="fitted time (ms)",
           title=f"per-op time, batch {row['batch']}, e {row['embed']}, h {row['hidden']}, "
                 f"rank {row['rank']}")
    return save(fig, out, "op_breakdown.png")


def model_figures(a: Analysis, out: str) -> list[str]:
    """The whole-model tables of `analysis.presets` (present with --model/--hardware): ratios
    across the presets, and the chosen model's memory per method as stacked bars."""
    names = []
    t = a.extras.get("model_speedups")
    if t is not None and not t.empty:
        fig, ax = plt.subplots(figsize=(8, 3.4))
        x = np.arange(len(t))
        ax.plot(x, t["speedup_full_over_lora"], "o-", label="step time full / LoRA")
        ax.plot(x, t["memory_ratio_full_over_lora"], "s-", label="memory full / LoRA")
        ax.axhline(1, color="k", lw=0.7)
        ax.set_xticks(x, t["model"], rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"predicted whole-step ratios on {t['hardware'].iloc[0]} "
                     f"({t['time_basis'].iloc[0]} efficiencies)", fontsize=9)
        ax.legend(fontsize=7)
        names.append(save(fig, out, "model_speedups.png"))
    m = a.extras.get("memory_breakdown")
    if m is not None and not m.empty:
        parts = ["weights_gb", "gradients_gb", "optimizer_gb", "activations_gb", "transient_gb"]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        bottom = np.zeros(len(m))
        for p in parts:
            ax.bar(m["method"], m[p], bottom=bottom, label=p.replace("_gb", ""))
            bottom += m[p].to_numpy()
        ax.set_ylabel("GB")
        ax.set_title(f"memory of one training step, {m['model'].iloc[0]}", fontsize=9)
        ax.legend(fontsize=7)
        names.append(save(fig, out, "memory_breakdown.png"))
    return names


def all_figures(a: Analysis, out: str) -> list[str]:
    names = [factor_pairs(a, out)]
    names.append(predicted_vs_measured(a, out))
    names.append(residuals_by_factor(a, out))
    if not a.withheld:  # times that do not follow the work: no curves to draw
        names.append(time_vs_width(a, out))
        names.append(extrapolation(a, out))
    if not a.op_breakdown.empty:
        names.append(op_breakdown(a, out))
    return names
