"""Render an `Analysis` for people: the short stdout report and report.md (the JSON, the CSV
tables and the report folder's files: `analysis.export`).

Nothing here fits or solves; every number comes from the `Analysis` it is given.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.formatting import (  # noqa: F401 -- re-exported: report.fmt_width, ...
    fmt_factor,
    fmt_rate,
    fmt_time,
    fmt_width,
    md_table,
    text_table,
)
from analysis.pipeline import Analysis
from analysis.validate import POOLED
from costmodel.vocab import METHODS

#: Columns of the stdout report.
WIDTH = 100
VALIDATION_COLUMNS = ["model", "kind", "scheme", "quantity", "n", "median_ape_pct", "p90_ape_pct"]


# ------------------------------------------------------------------------ tables


def factors_table(a: Analysis) -> pd.DataFrame:
    return pd.DataFrame([{"key": f.key, "name": f.name, "estimate": f.estimate,
                          "ci_low": f.ci_low, "ci_high": f.ci_high, "unit": f.unit,
                          "status": f.status, "lower_bound": f.lower_bound,
                          "upper_bound": f.upper_bound, "prior_mean": f.prior_mean,
                          "prior_sd": f.prior_sd, "note": f.note}
                         for f in a.fit.factors])


def _ci(lo: float, hi: float, lo_censored: bool = False) -> str:
    """A d* interval; a lower end at the search floor is censored (those replicates were
    already past their crossing there), so it prints as an upper bound: "≤16"."""
    if math.isinf(lo) and math.isinf(hi):
        return "none in any replicate"
    low = f"≤{fmt_width(lo)}" if lo_censored else fmt_width(lo)
    return f"[{low}, {fmt_width(hi)}]"


#: Short flags of the crossover table: stable key -> (letter, footnote said once).
FLAGS = {
    "extrapolated": ("E", "d* lies outside the measured widths: an extrapolation"),
    "censored_low": ("C", "the interval reaches the search floor (16): its low end is a bound"),
    "disagrees_with_measurements": ("D", "fitted and measured verdicts disagree at some width "
                                         "(crossover.csv: disagrees_at)"),
    "point_fit_off": ("W", "fit and a measurement on either side of 1, within model error "
                           "(crossover.csv: point_fit_off_at)"),
    "measured_within_noise": ("N", "measured ratio ≈ 1 within noise over a bracket"),
    "measured_outside_interval": ("O", "the measured d* lies outside the fitted d*'s interval"),
    "constrained_terms": ("P", "set by a term held at its physical bound (see the factors)"),
}

VERDICTS = {"above d*": "faster > d*", "below d*": "faster < d*", "whole range": "faster all",
            "nowhere in range": "slower all", "alternates": "alternates"}


def _d_with_ci(d: float, lo: float, hi: float, censored: bool = False) -> str:
    if not math.isfinite(d):
        return "-"
    return f"{fmt_width(d)} {_ci(lo, hi, censored)}"


def _measured_cell(r) -> str:
    if r["measured_sign_changes"] == 1:
        low = fmt_width(r["measured_ci_low"])
        low = f"≤{low}" if r["measured_ci_low_censored"] else low
        high = fmt_width(r["measured_ci_high"])
        high = f"≥{high}" if r["measured_ci_high_censored"] else high
        if r["measured_within_noise"] or not math.isfinite(r["measured_d_star"]):
            return f"≈1 [{low}, {high}]"
        return f"{fmt_width(r['measured_d_star'])} [{low}, {high}]"
    if r["measured_sign_changes"] > 1:
        return f"{r['measured_sign_changes']} crossings"
    if r["measured_faster_everywhere"]:
        return "faster all"
    if r["measured_slower_everywhere"]:
        return "slower all"
    return "-"


def _fitted_cell(r) -> str:
    if len(r["crossings"]) > 1:
        return ", ".join(fmt_width(x) for x in r["crossings"])
    return _d_with_ci(r["d_star"], r["ci_low"], r["ci_high"], bool(r["ci_low_censored"]))


def crossover_display(a: Analysis, short: bool = False) -> pd.DataFrame:
    """The crossover table from fields only. short: the stdout form (verdict, d* with CI,
    measured d* with CI, asymptotic speedup, flag letters); else every column, with the
    prose notes."""
    t = a.crossover.table
    if t.empty:
        return pd.DataFrame()
    out = pd.DataFrame({
        "batch": t["batch"], "rank": t["rank"], "method": t["method"],
        "LoRA": [VERDICTS.get(v, v) for v in t["lora_faster"]],
        "fitted d* [95%]": [_fitted_cell(r) for _, r in t.iterrows()],
        "measured d* [95%]": [_measured_cell(r) for _, r in t.iterrows()],
        "d->inf": [f"{x:.3g}x" if math.isfinite(x) else "-" for x in t["asymptotic_speedup"]],
        "flags": ["".join(FLAGS[f][0] for f in fl if f in FLAGS) or "-" for fl in t["flags"]],
    })
    if not short:
        out.insert(0, "layer", t["layer"])
        out["agrees"] = ["yes" if x else "NO" for x in t["agrees_with_measurements"]]
        out["(roofline)"] = [f"{x:.3g}x" if math.isfinite(x) else "-"
                             for x in t["asymptotic_speedup_roofline"]]
        out["note"] = ["; ".join(x for x in (n, m) if x)
                       for n, m in zip(t["note"], t["measured_note"])]
    return out


def flag_footnotes(a: Analysis) -> list[str]:
    """One line per flag the crossover table uses, once each."""
    used = {f for fl in a.crossover.table.get("flags", []) for f in fl}
    return [f"  {letter}: {text}" for key, (letter, text) in FLAGS.items() if key in used]


def validation_display(a: Analysis, short: bool = False) -> pd.DataFrame:
    """Wide: one row per model and scheme; per quantity 'median / p90' APE in %. short: the
    pooled and ratio columns only (stdout)."""
    t = a.validation.table
    if short:
        t = t[t["quantity"].isin([POOLED, "ratio lora/full", "ratio lora_merged/full"])]
    t = t.assign(cell=[f"{m:.1f} / {p:.1f}" for m, p in zip(t["median_ape_pct"], t["p90_ape_pct"])])
    wide = t.pivot_table(index=["model", "scheme"], columns="quantity", values="cell",
                         aggfunc="first").reset_index()
    order = {m: i for i, m in enumerate(pd.unique(t["model"]))}
    wide = wide.sort_values(["scheme", "model"], key=lambda s: s.map(order) if s.name == "model" else s)
    wide["model"] = [m + (" (chosen)" if m == a.validation.chosen else "") for m in wide["model"]]
    wide = wide.fillna("-").reset_index(drop=True)
    if short:
        wide.columns = [{"ratio lora/full": "lora/full", "ratio lora_merged/full": "merged/full",
                         POOLED: "all methods"}.get(c, c) for c in wide.columns]
        wide["model"] = wide["model"].str.replace("replicates (noise floor)", "noise floor")
    return wide


def extrapolation_reference(a: Analysis) -> tuple[int, int]:
    """The (batch, rank) the short report shows: the largest batch, the smallest rank."""
    t = a.extrapolation.table
    b = int(t["batch"].max())
    r = int(t.loc[t["batch"] == b, "rank"].min())
    return b, r


def extrapolation_display(a: Analysis, short: bool = False) -> pd.DataFrame:
    """Times with 95% PI and full/LoRA ratios with 95% CI per width. short: times without
    intervals (stdout; report.md and extrapolation.csv keep them)."""
    t = a.extrapolation.table
    b, r = extrapolation_reference(a)
    t = t[(t["batch"] == b) & (t["rank"] == r)]
    rows = []
    for w, g in t.groupby("width"):
        row = {"width": int(w)}
        for _, x in g.iterrows():
            name = "merged" if short and x["method"] == "lora_merged" else x["method"]
            row[name] = (fmt_time(x["time_s"]) if short else
                         f"{fmt_time(x['time_s'])} [{fmt_time(x['pi_low_s'])}, "
                         f"{fmt_time(x['pi_high_s'])}]")
            if x["method"] != "full":
                row[f"full/{name}"] = (f"{x['speedup_vs_full']:.2f} "
                                       f"[{x['speedup_ci_low']:.2f}, {x['speedup_ci_high']:.2f}]")
        extrap = bool(g["extrapolated"].iloc[0])
        row["note"] = ("extrap." if short else "extrapolation") if extrap else (
            "measured" if short else "within measured widths")
        rows.append(row)
    return pd.DataFrame(rows)


def validation_verdict(a: Analysis) -> str:
    """The validation target (≤ 10%), read plainly: the median out-of-scale error over every held-out
    prediction of time (all methods pooled), the worst method's median beside it, and the
    same pooled figure for each baseline."""
    t = a.validation.table
    pooled = t[(t["quantity"] == POOLED) & (t["scheme"] == "out_of_scale")].set_index("model")
    per_method = t[t["quantity"].isin(METHODS) & (t["scheme"] == "out_of_scale")]
    chosen = a.validation.chosen
    if chosen not in pooled.index:
        return "no out-of-scale validation (too few configs above the median e·h)"
    med = pooled["median_ape_pct"]
    worst = per_method[per_method["model"] == chosen].sort_values("median_ape_pct").iloc[-1]
    parts = [f"median out-of-scale error of the chosen form, all methods pooled: {med[chosen]:.1f}% "
             f"({'meets' if med[chosen] <= 10 else 'misses'} the 10% target; worst method "
             f"{worst['quantity']} {worst['median_ape_pct']:.1f}%)"]
    baselines = [b for b in ("flops_proportional", "roofline_unfitted") if b in med]
    parts += [f"{b} {med[b]:.1f}%" for b in baselines]
    beats = all(med[chosen] < med[b] for b in baselines)
    parts.append("lower than every baseline" if beats else "NOT lower than every baseline")
    return "; ".join(parts)


# ------------------------------------------------------------------------ stdout / markdown


def wrap(text: str, width: int = WIDTH, indent: str = "") -> str:
    """Prose for stdout, at most `width` columns."""
    return "\n".join(textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "  ",
                                    break_on_hyphens=False)) or text


def header(a: Analysis) -> str:
    s = a.slice
    lines = []
    if a.withheld:
        from analysis.diagnose import headline

        lines.append(headline(a.scaling))
    lines += [
        f"lora-crossover analysis of {a.dataset.source} ({a.dataset.kind})",
        f"device {s.device}; variant {s.variant}, timing {s.timing_mode}; {s.stratum_text()}; "
        f"{s.n_configs} configs, {len(a.rows)} rows; profile: {a.profile_note}",
        f"model form: {a.fit.form} -- {a.validation.reason}",
    ]
    for d in s.dropped:
        lines.append(f"left out: {d}")
    for category, message in a.warnings:
        lines.append(f"numerical note (handled): {category}: {message}")
    return "\n".join(wrap(x) for x in lines)


def stdout_report(a: Analysis, files: Sequence[str], out: str) -> str:
    """The short report: at most `WIDTH` columns; report.md keeps the full tables."""
    parts = [header(a), ""]
    if a.withheld:
        parts += ["Crossover and extrapolation withheld (see the first line).", ""]
    else:
        parts += [
            wrap(f"Crossover along e = h = d, {', '.join(sorted(set(a.crossover.table['layer'])))} "
                 f"(fitted d*: 95% interval, {a.boot.params.shape[0]:,} bootstrap refits over shapes "
                 "plus conformal model error; measured d*: bisection of paired ratios; d->inf: "
                 "full/LoRA as d grows):"),
            text_table(crossover_display(a, short=True)), *flag_footnotes(a), "",
        ]
    parts += [
        f"Fitted factors (95% CI, {a.fit.cov_type}):",
        *[f"  {f.name:32s} {fmt_factor(f)}" for f in a.fit.factors], "",
        "Validation, absolute % error of predicted time (median / p90):",
        text_table(validation_display(a, short=True)),
        wrap(validation_verdict(a), indent="  "), "",
    ]
    if not a.withheld:
        b, r = extrapolation_reference(a)
        parts += [
            wrap(f"Extrapolation at e = h = width, batch {b}, rank {r}, on "
                 f"{a.extrapolation.device} (full/LoRA: 95% CI of the mean; beyond width "
                 f"{a.extrapolation.max_measured_width:g} = extrapolation; times with 95% "
                 "prediction intervals in report.md):"),
            text_table(extrapolation_display(a, short=True)), "",
        ]
    tbl = a.extras.get("model_speedups")
    if isinstance(tbl, pd.DataFrame) and not tbl.empty:
        short = pd.DataFrame({
            "model": tbl["model"], "params": [f"{p / 1e6:,.0f}M" for p in tbl["params"]],
            "full step": [fmt_time(x) for x in tbl["full_step_s"]],
            "LoRA step": [fmt_time(x) for x in tbl["lora_step_s"]],
            "full/LoRA time": ["-" if not np.isfinite(x) else f"{x:.2f}x"
                               for x in tbl["speedup_full_over_lora"]],
            "full/LoRA memory": [f"{x:.2f}x" for x in tbl["memory_ratio_full_over_lora"]],
        })
        hw = tbl["hardware"].iloc[0]
        misfits = [f"{r['model']} {m} (lacks {r[f'{m}_lacks_gb']:,.0f} GB)"
                   for _, r in tbl.iterrows() for m in ("full", "lora") if _misfit(r.get(f"{m}_fits"))]
        head = (f"Does not fit on one {hw}, so no full/LoRA time: {', '.join(misfits)}. " if misfits else "")
        parts += [wrap(head + f"Whole training step, predicted on {hw} "
                       f"({tbl['time_basis'].iloc[0]} rates; batch 1, LoRA r=4 on q,v, "
                       "bf16-mixed, AdamW):"), text_table(short), ""]
    parts.append(f"wrote {len(files)} files to {out}")
    return "\n".join(parts)


def _misfit(fits) -> bool:
    """A `{method}_fits` cell that says "does not fit" (False; None or NaN = capacity unknown)."""
    return fits is not None and not (isinstance(fits, float) and math.isnan(fits)) and not bool(fits)


def markdown_report(a: Analysis, figures: Sequence[str]) -> str:
    withheld = ["Withheld: the times do not scale with the work (see the header).", ""]
    crossover = withheld if a.withheld else [
        "Along e = h = d. The verdict covers the whole searched range (16-65536): every fitted "
        "sign change, LoRA faster or not between them; a single d* only when there is exactly "
        "one. Its 95% interval joins the case bootstrap over shapes "
        f"({a.boot.params.shape[0]:,} refits, {a.boot.n_failed:,} failed) and the conformal model "
        "error of the ratio (out-of-sample residuals); a lower end written '≤d' is censored at "
        "the search floor. Measured d*: bisection of the paired ratio after the grid "
        "(`measure.refine`), with the interval between the nearest widths measured surely on "
        "either side ('≤d' or '≥d' when the ratio is ≈ 1 within noise up to the measured "
        "range's end). 'agrees': no measured width whose ratio interval excludes 1 lies on "
        "the other side of 1 from the fitted ratio's band (bootstrap and model error, as for "
        "d*); flag W lists where only the point fit is on the other side. 'd->inf' is the "
        "fitted full/LoRA time ratio as d grows without "
        "bound, '(roofline)' the same from the cost model alone on the device profile.", "",
        md_table(crossover_display(a)), "",
        *[x.strip() + "  " for x in flag_footnotes(a)], ""]
    parts = [
        "# LoRA vs full fine-tuning: crossover analysis", "",
        "```", header(a), "```", "",
        "## Crossover", "",
        *crossover,
        "## Fitted factors", "",
        f"Form `{a.fit.form}`, standard errors {a.fit.cov_type}.", "",
        md_table(factors_table(a)), "",
        "## Validation", "",
        "Absolute percentage error of predicted time (median / p90), per method, and of the "
        "LoRA/full time ratio per config.", "",
        md_table(validation_display(a)), "",
        validation_verdict(a), "",
        "## Extrapolation", "",
        *(withheld if a.withheld else _extrapolation_md(a)),
        "## Factor analysis (the blog's question)", "",
        "Share of variance of log(t_lora / t_full) per factor (type-II ANOVA):", "",
        md_table(a.factor_analysis.anova) if not a.factor_analysis.anova.empty else "(too few configs)",
        "", "LoRA vs full over every slice of the dataset:", "",
        md_table(a.blog_summary) if not a.blog_summary.empty else "(no pairs)", "",
    ]
    for name, tbl in a.extras.items():
        if isinstance(tbl, pd.DataFrame) and not tbl.empty:
            parts += [f"## {name.replace('_', ' ')}", "", md_table(tbl), ""]
    if figures:
        parts += ["## Figures", ""]
        parts += [f"![{os.path.splitext(f)[0]}]({f})" for f in figures]
    return "\n".join(parts) + "\n"


def _extrapolation_md(a: Analysis) -> list[str]:
    b, r = extrapolation_reference(a)
    return [
        f"Batch {b}, rank {r}, device {a.extrapolation.device}; times with 95% prediction "
        "intervals (the bootstrap CI of the mean widened by the conformal model error, which "
        "grows with the distance beyond the largest measured width), the full/LoRA ratios "
        "with the 95% bootstrap CI of the mean ratio (not a prediction interval); "
        f"every width above {a.extrapolation.max_measured_width:g} is an extrapolation "
        "beyond the data. All (batch, rank) pairs are in extrapolation.csv.", "",
        md_table(extrapolation_display(a)), ""]
