"""Compute everything the report shows, once, from a loaded dataset: `run(...) -> Analysis`."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import bootstrap as bootmod
from analysis import conformal, costs, data, diagnose, factors
from analysis import crossover_table as xomod
from analysis import curves as curvmod
from analysis import fit as fitmod
from analysis import validate as valmod
from analysis.prepare import terms_for
from costmodel.hardware import HardwareProfile


@dataclass(frozen=True)
class Analysis:
    """All computed results; `analysis.report` and `analysis.plots` only render these."""

    dataset: data.Dataset
    slice: data.Slice
    rows: pd.DataFrame  # the fitted rows: terms, ids, measured time
    profile: HardwareProfile | None
    profile_note: str
    validation: valmod.Validation
    fit: fitmod.FitResult
    boot: bootmod.Bootstrap
    crossover: xomod.CrossoverTable
    curves: curvmod.Curves
    extrapolation: curvmod.Extrapolation
    factor_analysis: factors.FactorAnalysis
    blog_summary: pd.DataFrame
    op_breakdown: pd.DataFrame
    fitted: np.ndarray  # in-sample fitted time (s) of each row of `rows`
    scaling: diagnose.Scaling | None = None  # does time follow the work? (withholds if not)
    bands: conformal.Conformal | None = None  # model error from out-of-sample residuals
    #: numerical warnings raised inside the analysis, handled there: (category, message) once each
    warnings: tuple[tuple[str, str], ...] = ()
    extras: dict = field(default_factory=dict)  # e.g. the whole-model preset tables

    @property
    def withheld(self) -> bool:
        """Crossover and extrapolation withheld: the times do not scale with the work."""
        return self.scaling is not None and not self.scaling.scales


def run(dataset: data.Dataset, profile: HardwareProfile | None, profile_note: str,
        widths: tuple[int, ...] = curvmod.GPT_WIDTHS, n_boot: int = bootmod.N_BOOT,
        seed: int = 0) -> Analysis:
    """Everything the report shows. Warnings that numpy, pandas, scipy or statsmodels raise
    inside are caught here, never reach the terminal, and are listed once each in
    `Analysis.warnings` for the report's own words."""
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        a = _run(dataset, profile, profile_note, widths, n_boot, seed)
    seen = dict.fromkeys((w.category.__name__, str(w.message).splitlines()[0]) for w in caught)
    return dataclasses.replace(a, warnings=tuple(seen))


def _run(dataset: data.Dataset, profile: HardwareProfile | None, profile_note: str,
         widths: tuple[int, ...], n_boot: int, seed: int) -> Analysis:
    sl = data.select(dataset, fitmod.MIN_CONFIGS)
    rows = terms_for(sl.frame, profile, measured=True)
    forms = tuple(f for f in fitmod.FORMS if f not in fitmod.LOG_FORMS or profile is not None)
    priors = fitmod.priors_from_profile(profile)
    validation = valmod.validate(rows, forms, priors)
    # clusters are shapes: the full rows of a shape at several ranks are replicates
    result = fitmod.fit(validation.chosen, rows, valmod.shape_ids(rows), priors)
    boot = bootmod.bootstrap(result, rows, n_boot=n_boot, seed=seed)
    train = valmod.out_of_scale_split(rows["embed"].to_numpy(), rows["hidden"].to_numpy())
    d_train = float(np.sqrt((rows["embed"] * rows["hidden"]).to_numpy(float)[train]).max())
    bands = conformal.from_validation(rows, validation.cv_pred.get(validation.chosen),
                                      validation.os_pred.get(validation.chosen), d_train)
    xo = xomod.crossover_table(result, boot, rows, profile, measured=sl.frame, bands=bands)
    curves = curvmod.curves(result, boot, rows, profile, bands)
    extra = curvmod.extrapolate(result, boot, rows, widths, profile, sl.device, bands)
    # The blog's question is about its grid: the refinement's extra widths (bunched near the
    # crossovers, `measure.refine`) would tilt the ANOVA and the per-slice shares.
    on_grid = ~sl.frame["refinement"].to_numpy(dtype=bool)
    fa = factors.analyse(rows[on_grid].reset_index(drop=True))
    summary = factors.blog_summary(dataset.frame[~dataset.frame["refinement"].astype(bool)])
    fitted = result.predict_ms(rows, bootmod.full_params(result)) / 1e3
    ops = op_breakdown(result, rows, profile)
    return Analysis(dataset, sl, rows, profile, profile_note, validation, result, boot, xo,
                    curves, extra, fa, summary, ops, fitted, diagnose.scaling(rows), bands)


def op_breakdown(result: fitmod.FitResult, rows: pd.DataFrame,
                 profile: HardwareProfile | None) -> pd.DataFrame:
    """Fitted time per op of the cost model, for the largest measured config, per method.

    Each op is priced by the fitted factors as if it were a call of its own, without the
    per-call dispatch, which is reported as its own row.
    """
    big = rows.sort_values(["embed", "hidden", "batch", "rank"],
                           ascending=[False, False, False, True])
    key = big.iloc[0]
    same = np.ones(len(rows), dtype=bool)
    for c in list(data.CONTEXT_COLUMNS) + list(data.SIZE_COLUMNS):
        same &= (rows[c] == key[c]).to_numpy()
    params = bootmod.full_params(result)
    _, _, cols = fitmod.design_matrix(result.form, rows.iloc[:1])
    out = []
    for _, row in rows[same].iterrows():
        ops = costs.op_table(row, profile)
        if ops.empty:
            continue
        roof_s = ops.pop("roofline_s").to_numpy()
        roof = None if profile is None else roof_s
        terms = fitmod.terms_frame(ops["flops"], ops["bytes_moved"], ops["kernels"],
                                   [row["method"]] * len(ops), roof)
        p = params.copy()
        if result.form not in fitmod.LOG_FORMS:
            p[cols.index("Intercept")] = 0.0
        t = fitmod.predict_ms(result.form, terms, p) / 1e3
        part = ops.assign(method=row["method"], time_s=t)
        if result.form not in fitmod.LOG_FORMS:
            per_call = [("dispatch (per call)", 0.0, params[cols.index("Intercept")])]
            if "gresult" in cols:
                per_call.append(("result buffers (per call)", row["gresult"] * 1e9,
                                 row["gresult"] * params[cols.index("gresult")]))
            part = pd.concat([part, pd.DataFrame([{
                "op": op, "phase": "call", "kind": "overhead", "flops": 0.0,
                "bytes_moved": nbytes, "kernels": 0.0, "method": row["method"],
                "time_s": ms / 1e3} for op, nbytes, ms in per_call])], ignore_index=True)
        out.append(part)
    table = pd.concat(out, ignore_index=True) if out else pd.DataFrame()
    for c in data.SIZE_COLUMNS:
        table[c] = int(key[c])
    return table
