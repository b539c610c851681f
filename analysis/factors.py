"""The blog's factor analysis, made rigorous: median time per method for every pair of
factors (the data behind its bar plots), and an ANOVA of log(lora / full) on the factors.

The ANOVA uses statsmodels' formula layer, so the formula engine is pinned to patsy for the
call (`pinned_formula_engine`): statsmodels 0.15 otherwise picks patsy or formulaic from the
environment (``SM_FORMULA_ENGINE``), and the two may code factors differently.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.formula
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from costmodel.vocab import LORA_METHODS
from measure import schema

#: The blog's four factors: the sizes of a config.
FACTORS = schema.SIZE_COLUMNS
FORMULA_ENGINE = "patsy"


@contextlib.contextmanager
def pinned_formula_engine(engine: str = FORMULA_ENGINE) -> Iterator[None]:
    """Use `engine` for statsmodels formulas inside the block, restoring the setting after."""
    options = statsmodels.formula.options
    before = options.formula_engine
    options.formula_engine = engine
    try:
        yield
    finally:
        options.formula_engine = before


@dataclass(frozen=True)
class FactorAnalysis:
    """pair_medians: factor_a, level_a, factor_b, level_b, method, median_time_s.
    anova: per LoRA method, term rows with df, sum_sq, F, p-value and variance share."""

    pair_medians: pd.DataFrame
    anova: pd.DataFrame
    ratio_rows: pd.DataFrame  # config sizes with log_ratio per LoRA method (for plots)
    engine: str


def varying_factors(rows: pd.DataFrame) -> list[str]:
    return [f for f in FACTORS if rows[f].nunique() > 1]


def pair_medians(rows: pd.DataFrame) -> pd.DataFrame:
    """Median measured time per method for every pair of factors' levels."""
    out = []
    t = rows.assign(time_s=rows["time_ms"] / 1e3)
    for a, b in itertools.combinations(FACTORS, 2):
        g = t.groupby([a, b, "method"])["time_s"].median().reset_index()
        out.append(pd.DataFrame({"factor_a": a, "level_a": g[a], "factor_b": b,
                                 "level_b": g[b], "method": g["method"],
                                 "median_time_s": g["time_s"]}))
    return pd.concat(out, ignore_index=True)


def ratio_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per config and LoRA method: the sizes and log(t_lora / t_full)."""
    wide = rows.pivot_table(index=["config_id", *FACTORS], columns="method",
                            values="time_ms").reset_index()
    out = []
    for m in LORA_METHODS:
        if m in wide and "full" in wide:
            part = wide[["config_id", *FACTORS]].copy()
            part["method"] = m
            part["log_ratio"] = np.log(wide[m] / wide["full"])
            out.append(part.dropna(subset=["log_ratio"]))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(
        columns=["config_id", *FACTORS, "method", "log_ratio"])


def anova(ratios: pd.DataFrame) -> pd.DataFrame:
    """Type-II ANOVA of log(lora/full) on the varying factors (categorical), per LoRA method,
    with each term's share of the total sum of squares."""
    out = []
    for m, g in ratios.groupby("method"):
        g = g.copy()
        cols = list(FACTORS)
        if (g.groupby("embed")["hidden"].nunique().max() == 1
                and g.groupby("hidden")["embed"].nunique().max() == 1):
            # embed fixes hidden (square configs, or a block's MLP at 4x): one factor, width.
            g["width"] = g["embed"]
            cols = ["batch", "width", "rank"]
        factors = [f for f in cols if g[f].nunique() > 1]
        if not factors:
            continue
        formula = "log_ratio ~ " + " + ".join(f"C({f})" for f in factors)
        with pinned_formula_engine():  # anova_lm reads the engine option too
            model = smf.ols(formula, data=g).fit()
            if model.df_resid < 1:
                continue
            table = anova_lm(model, typ=2)
        total = table["sum_sq"].sum()
        table = table.reset_index().rename(columns={"index": "term", "PR(>F)": "p_value"})
        table["term"] = table["term"].str.replace(r"^C\((.*)\)$", r"\1", regex=True)
        table["share_of_variance"] = table["sum_sq"] / total
        table.insert(0, "method", m)
        out.append(table)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def analyse(rows: pd.DataFrame) -> FactorAnalysis:
    ratios = ratio_table(rows)
    return FactorAnalysis(pair_medians(rows), anova(ratios), ratios, FORMULA_ENGINE)


def blog_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, timing mode, LoRA method) of a whole dataset: configs, the share where
    LoRA is faster than full, and the median and range of t_lora / t_full -- the blog's
    question asked of every slice, so its as-written timing sits beside the correct one."""
    df = frame[schema.is_ok(frame)]
    keys = list(schema.CONFIG_COLUMNS)
    wide = df.pivot_table(index=keys, columns="method", values="time_median_s").reset_index()
    out = []
    for (variant, mode), g in wide.groupby(["variant", "timing_mode"]):
        for m in LORA_METHODS:
            if m not in g or "full" not in g:
                continue
            r = (g[m] / g["full"]).dropna()
            if r.empty:
                continue
            out.append({"variant": variant, "timing_mode": mode, "method": m,
                        "configs": int(r.size), "share_lora_faster": float((r < 1).mean()),
                        "median_ratio_lora_over_full": float(r.median()),
                        "min_ratio": float(r.min()), "max_ratio": float(r.max())})
    return pd.DataFrame(out)
