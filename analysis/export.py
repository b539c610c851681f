"""The machine-readable side of an `Analysis`: the --json object, the CSV tables, the
fitted device profile, and the files of a report folder (`write_files`).

`analysis.report` renders the same results for people (stdout, report.md); nothing here
computes a number the `Analysis` does not hold.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.pipeline import Analysis
from analysis.report import VALIDATION_COLUMNS, factors_table, markdown_report
from costmodel.fileio import atomic_write_text

# ------------------------------------------------------------------------ JSON


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def to_json(a: Analysis) -> dict:
    """The --json object: crossover, factors, validation, extrapolation (+ context).
    Non-finite numbers (an unbounded interval end, no crossover) become null."""
    xo = a.crossover.table if not a.withheld else a.crossover.table.iloc[:0]
    ex = a.extrapolation.table if not a.withheld else a.extrapolation.table.iloc[:0]
    sc = a.scaling
    return _clean({
        "source": a.dataset.source,
        "device": a.slice.device,
        "variant": a.slice.variant,
        "timing_mode": a.slice.timing_mode,
        "model_form": a.fit.form,
        "model_form_reason": a.validation.reason,
        "profile": a.profile_note,
        "scaling": None if sc is None else {
            "scales_with_work": sc.scales, "cause": sc.cause, "elasticity": sc.elasticity,
            "elasticity_ci_low": sc.elasticity_ci_low, "elasticity_ci_high": sc.elasticity_ci_high,
            "flop_span": sc.flop_span, "time_span": sc.time_span,
            "fixed_time_s": sc.fixed_time_s, "fixed_share": sc.fixed_share},
        "withheld": a.withheld,
        "warnings": [{"category": c, "message": m} for c, m in a.warnings],
        "crossover": [
            {"layer": r["layer"], "batch": r["batch"], "rank": r["rank"], "method": r["method"],
             "d_star": r["d_star"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
             "ci_low_censored": r["ci_low_censored"],
             "lora_faster": r["lora_faster"],
             "measured_d_star": r["measured_d_star"],
             "measured_sign_changes": r["measured_sign_changes"],
             "measured_note": r["measured_note"],
             "asymptotic_speedup": r["asymptotic_speedup"],
             "asymptotic_speedup_roofline": r["asymptotic_speedup_roofline"], "note": r["note"],
             "measured_ci_low": r["measured_ci_low"], "measured_ci_high": r["measured_ci_high"],
             "measured_within_noise": r["measured_within_noise"],
             "measured_ci_low_censored": r["measured_ci_low_censored"],
             "measured_lo": r["measured_lo"], "measured_hi": r["measured_hi"],
             "measured_faster_everywhere": r["measured_faster_everywhere"],
             "measured_slower_everywhere": r["measured_slower_everywhere"],
             "measured_ci_high_censored": r["measured_ci_high_censored"],
             "measured_crossings": list(r["measured_crossings"]),
             "crossings": list(r["crossings"]), "directions": list(r["directions"]),
             "speedup_at_d_min": r["speedup_at_d_min"], "speedup_at_d_max": r["speedup_at_d_max"],
             "agrees_with_measurements": r["agrees_with_measurements"],
             "disagrees_at": list(r["disagrees_at"]),
             "point_fit_off_at": list(r["point_fit_off_at"]), "flags": list(r["flags"]),
             "boot_ci_low": r["boot_ci_low"], "boot_ci_high": r["boot_ci_high"]}
            for _, r in xo.iterrows()],
        # factors.csv's fields, less the note (its sentence)
        "factors": factors_table(a).drop(columns="note", errors="ignore").to_dict(orient="records"),
        "validation": a.validation.table[VALIDATION_COLUMNS].to_dict(orient="records"),
        "extrapolation": [
            {"width": r["width"], "method": r["method"], "time_s": r["time_s"],
             "pi_low": r["pi_low_s"], "pi_high": r["pi_high_s"], "batch": r["batch"],
             "rank": r["rank"], "speedup_vs_full": r["speedup_vs_full"],
             "extrapolated": r["extrapolated"]}
            for _, r in ex.iterrows()],
        **{k: v.to_dict(orient="records") for k, v in a.extras.items()
           if isinstance(v, pd.DataFrame)},
    })


# ------------------------------------------------------------------------ files


def fitted_profile(a: Analysis) -> dict | None:
    """The measured device profile with the fitted rates under `costmodel.steptime.FIT_KEYS`,
    so the whole-model step (`python -m costmodel --hardware PATH`) uses them."""
    from analysis.presets import fitted_rates

    rates = fitted_rates(a)
    if a.profile is None or rates is None:
        return None
    try:
        from costmodel.steptime import FIT_KEYS
    except ImportError:
        return None
    d = a.profile.to_dict()
    extra = dict(d.get("extra", {}))
    for key, field_ in FIT_KEYS.items():
        value = getattr(rates, field_)
        if not math.isfinite(value):
            return None
        extra[key] = float(value)
    d["extra"] = extra
    d["source"] = f"{d.get('source', '')}; {rates.note}"
    return d


def tables(a: Analysis) -> dict[str, pd.DataFrame]:
    """File name -> table, one CSV per table."""
    xo = a.crossover.table.copy()
    for c in ("crossings", "directions", "measured_crossings", "disagrees_at",
              "point_fit_off_at", "flags"):
        if c in xo:  # lists as ';'-joined cells
            xo[c] = [";".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in x)
                     for x in xo[c]]
    out = {
        "validation.csv": a.validation.table[VALIDATION_COLUMNS],
        "factors.csv": factors_table(a),
        "crossover.csv": xo,
        "extrapolation.csv": a.extrapolation.table,
        "anova.csv": a.factor_analysis.anova,
        "factor_pair_medians.csv": a.factor_analysis.pair_medians,
        "lora_vs_full_by_slice.csv": a.blog_summary,
        "op_breakdown.csv": a.op_breakdown,
        "fitted_curves.csv": a.curves.table,
    }
    if a.withheld:
        for name in ("crossover.csv", "extrapolation.csv", "fitted_curves.csv"):
            del out[name]
    for name, tbl in a.extras.items():
        if isinstance(tbl, pd.DataFrame):
            out[f"{name}.csv"] = tbl
    # every table names the one stratum it was fitted on (data.STRATUM_COLUMNS): no two rows of
    # two analyses look alike
    for name, tbl in out.items():
        if isinstance(tbl, pd.DataFrame) and len(tbl.columns):
            tbl = tbl.copy()
            for col, value in reversed(a.slice.stratum):
                if col not in tbl.columns:
                    tbl.insert(0, col, value)
            out[name] = tbl
    return out


def write_files(a: Analysis, out: str, figures: Sequence[str]) -> list[str]:
    """Write report.md, fit_summary.txt and the CSVs into `out`; return the names written."""
    written = []
    for name, tbl in tables(a).items():
        atomic_write_text(os.path.join(out, name), tbl.to_csv(index=False))
        written.append(name)
    atomic_write_text(os.path.join(out, "fit_summary.txt"),
                 f"model form: {a.fit.form} ({a.validation.reason})\n"
                 f"standard errors: {a.fit.cov_type}\n"
                 f"units: time_ms ~ GFLOP (gflops), GB (gbytes), kernels, GB of returned gradients (gresult)\n\n"
                 + a.fit.summary_text + "\n")
    written.append("fit_summary.txt")
    atomic_write_text(os.path.join(out, "report.md"), markdown_report(a, figures))
    written.append("report.md")
    fitted = fitted_profile(a)
    if fitted is not None:
        atomic_write_text(os.path.join(out, "fitted_profile.json"), json.dumps(fitted, indent=2) + "\n")
        written.append("fitted_profile.json")
    return written + list(figures)
