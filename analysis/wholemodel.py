"""Whole training steps, predicted three ways and checked against their measurements.

For every measured step of a `models` dataset (`python -m measure.sweep --grid models`), the
cost model's step (`costmodel.step.build_step`) is priced by three routes:

1. ``unfitted``: the roofline on the device profile alone (`step_time` with the measured
   profile's achieved rates, efficiency 1; no dispatch term): the baseline;
2. ``layer_fit``: the rates `analysis` fitted on single *layer* kernels (the quick grid's
   `fitted_profile.json`): the transfer from layers to whole models that GPT-scale
   extrapolation relies on;
3. ``step_fit``: the same additive form refitted on whole steps,

       t = dispatch + Σ_parts (flops·λ_m[blocks] / F + bytes / B + kernels · τ)

   by least squares on relative error (WLS, weights 1/t²), with scheme ``out_of_scale``:
   fitted on the models at or below the median parameter count, scored on the larger half;
   and scheme ``all``: fitted on every step (the rates `fitted_profile.json` carries as
   ``step_fit_*``, scored in sample).

Errors are |predicted/measured − 1| of the step time per (config, method), and of the
LoRA/full ratio t_m/t_full per config and LoRA method (the sweep's paired ratio, timed side
by side in interleaved rounds, where the dataset has one); reported as the median and 90th
percentile, by method and by option, beside the replicate noise floor: the median relative
half-width of the measured medians' 95% CIs (for a ratio, the paired ratio's CI, else the two
medians' combined in quadrature).

Where a route misses, `part_multipliers` says which term is responsible: the non-negative
least-squares multipliers β_p of measured ≈ Σ_p β_p · predicted_p over the step's parts
(relative error weighted), and `worst` lists the worst configs' predicted parts against their
measured total. No term is adjusted to meet a target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from costmodel.hardware import HardwareProfile
from costmodel.step import StepCost
from costmodel.steptime import FittedRates, efficiency_for, step_time
from costmodel.vocab import LORA_METHODS

ROUTES = ("unfitted", "layer_fit", "step_fit")
SCHEMES = ("out_of_scale", "all")
TARGETS = ("step_time", "ratio")
#: Issue 8's targets on this CPU: (route, scheme, target) -> the largest median |error| in %.
GOALS = {
    ("layer_fit", "all", "ratio"): 10.0,
    ("step_fit", "out_of_scale", "ratio"): 8.0,
    ("step_fit", "out_of_scale", "step_time"): 15.0,
}
#: Parts of a step as the diagnosis groups them (the two block parts are one term).
DIAG_PARTS = {
    "embeddings": ("embeddings",),
    "frozen_blocks": ("frozen_blocks",),
    "blocks": ("first_block", "middle_blocks"),
    "head": ("head",),
    "grad_accum": ("grad_accum",),
    "optimizer": ("optimizer",),
    "dispatch": ("dispatch",),
}
WORST_N = 3


@dataclass(frozen=True)
class Steps:
    """Measured steps and their cost-model steps, one per row.

    frame columns: config (a key shared by the methods of one config), method, params (the
    base model's parameter count), time_s (measured median), noise_pct (relative half-width
    of its 95% CI, %), and any option columns named in `options` (and, optionally, label: a
    readable name of the config; paired_ratio and paired_noise_pct: the LoRA rows' t_m / t_full
    measured side by side and the relative half-width of its CI, preferred for the ratio).
    """

    frame: pd.DataFrame
    costs: tuple[StepCost, ...]
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.frame) != len(self.costs):
            raise ValueError("one StepCost per measured row")
        for c in ("config", "method", "params", "time_s", "noise_pct"):
            if c not in self.frame:
                raise ValueError(f"measured steps lack column {c!r}")


@dataclass(frozen=True)
class Validation:
    """Everything the whole-model section reports."""

    predictions: pd.DataFrame  # one row per (measured row, route, scheme): predicted_s, error_pct
    summary: pd.DataFrame  # route, scheme, target, method, option, median/p90 |error| %, n
    noise: dict  # step_time / ratio: median noise floor in %
    rates: dict[str, FittedRates]  # "out_of_scale" and "all" step-level rates; "layer" if given
    part_multipliers: pd.DataFrame  # route, scheme, part, beta, predicted_share
    worst: pd.DataFrame  # the worst configs per route: predicted parts and measured
    goals: pd.DataFrame  # route, scheme, target, goal_pct, median_abs_pct, met, baseline_pct
    split_params: float  # the parameter count at or below which models train the step fit
    notes: tuple[str, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------- the step fit


def _block_flops(cost: StepCost) -> float:
    return float(cost.parts["first_block"].flops + cost.parts["middle_blocks"].flops)


def design(steps: Steps) -> pd.DataFrame:
    """The regressors of the step-level fit, in ms-friendly units (GFLOP, GB, kernels)."""
    methods = steps.frame["method"].to_numpy()
    out = pd.DataFrame({
        "dispatch": np.ones(len(steps.costs)),
        "gflops": [float(c.flops) / 1e9 for c in steps.costs],
        "gbytes": [float(c.bytes_moved) / 1e9 for c in steps.costs],
        "kernels": [float(c.kernels) for c in steps.costs],
    }, index=steps.frame.index)
    blocks = np.array([_block_flops(c) / 1e9 for c in steps.costs])
    for m in LORA_METHODS:
        out[f"gflops_{m}"] = np.where(methods == m, blocks, 0.0)
    return out


def fit_rates(steps: Steps, train: np.ndarray, note: str) -> FittedRates:
    """WLS (weights 1/t²) of measured ms on `design`, over the rows `train`.

    A time-per-unit coefficient (dispatch, per GFLOP, per GB, per kernel) that comes out
    negative is not identified by these rows: its column is dropped and the fit redone (the
    term is then 0: an unbounded rate). A LoRA multiplier that would be ≤ 0 is dropped the
    same way (λ = 1).
    """
    X = design(steps)[train.astype(bool)]
    y = steps.frame["time_s"].to_numpy()[train.astype(bool)] * 1e3
    w = 1.0 / y
    cols = [c for c in X.columns if X[c].abs().sum() > 0]
    while True:
        A = X[cols].to_numpy() * w[:, None]
        coef, *_ = np.linalg.lstsq(A, y * w, rcond=None)
        est = dict(zip(cols, coef))
        bad = [c for c in ("dispatch", "gflops", "gbytes", "kernels") if c in est and est[c] < 0]
        flop_coef = est.get("gflops", 0.0)
        bad += [c for c in cols if c.startswith("gflops_") and flop_coef + est[c] <= 0]
        if not bad:
            break
        cols.remove(bad[0])
    per = {c: est.get(c, 0.0) for c in X.columns}
    f = per["gflops"]

    def rate(c: float, unit: float) -> float:
        return unit / c if c > 0 else float("inf")

    return FittedRates(
        flops_per_s=rate(f, 1e9 * 1e3), bytes_per_s=rate(per["gbytes"], 1e9 * 1e3),
        kernel_overhead_s=per["kernels"] / 1e3, dispatch_s=per["dispatch"] / 1e3,
        lora_multiplier=(f + per["gflops_lora"]) / f if f > 0 else 1.0,
        lora_merged_multiplier=(f + per["gflops_lora_merged"]) / f if f > 0 else 1.0,
        note=note)


# --------------------------------------------------------------------------- predictions


def predict(costs: Sequence[StepCost], profile: HardwareProfile,
            rates: FittedRates | None) -> tuple[np.ndarray, pd.DataFrame]:
    """Predicted seconds per step and per diagnosis part: with `rates` the fitted additive
    form (`costmodel` `step_time(fitted=...)`), else the unfitted roofline on `profile`."""
    total, parts = [], []
    for c in costs:
        t = (step_time(c, profile, fitted=rates) if rates is not None
             else step_time(c, profile, efficiency=efficiency_for(profile)))
        total.append(float(t.time_s))
        parts.append({k: float(sum(float(t.part_time_s[p]) for p in v if p in t.part_time_s))
                      for k, v in DIAG_PARTS.items()})
    return np.array(total), pd.DataFrame(parts)


def abs_pct(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """|predicted / measured − 1| in percent."""
    return np.abs(signed_pct(predicted, measured))


def signed_pct(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """(predicted / measured − 1) in percent: > 0 where the prediction is too slow."""
    return (np.asarray(predicted, float) / np.asarray(measured, float) - 1.0) * 100.0


def ratio_frame(pred: pd.DataFrame) -> pd.DataFrame:
    """Per config and LoRA method: measured and predicted t_m / t_full, the error and the
    noise floor of the measured ratio (the two CIs' relative half-widths in quadrature)."""
    key = ["route", "scheme", "config"]
    full = pred.loc[pred["method"] == "full", [*key, "time_s", "predicted_s", "noise_pct"]]
    out = []
    for m in LORA_METHODS:
        both = pred[pred["method"] == m].merge(full, on=key, suffixes=("", "_full"))
        if both.empty:
            continue
        both["measured_ratio"] = both["time_s"] / both["time_s_full"]
        both["noise_pct"] = np.hypot(both["noise_pct"], both["noise_pct_full"])
        if "paired_ratio" in both:
            # the sweep's paired ratio (median over interleaved rounds of t_m / t_full, with
            # its bootstrap CI) where it has one: the two methods timed side by side
            paired = np.isfinite(both["paired_ratio"].to_numpy(float))
            both.loc[paired, "measured_ratio"] = both.loc[paired, "paired_ratio"]
            both.loc[paired, "noise_pct"] = both.loc[paired, "paired_noise_pct"]
        both["predicted_ratio"] = both["predicted_s"] / both["predicted_s_full"]
        both["error_pct"] = abs_pct(both["predicted_ratio"], both["measured_ratio"])
        both["signed_pct"] = signed_pct(both["predicted_ratio"], both["measured_ratio"])
        out.append(both)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(
        columns=[*key, "method", "measured_ratio", "predicted_ratio", "error_pct", "noise_pct"])


def _summarise(frame: pd.DataFrame, target: str, options: Sequence[str]) -> list[dict]:
    rows = []
    for (route, scheme), g in frame.groupby(["route", "scheme"], sort=False):
        groups = [("all", "all", g)] + [(m, "all", gm) for m, gm in g.groupby("method")]
        for opt in options:
            if opt in g and g[opt].nunique() > 1:
                for value, gv in g.groupby(opt):
                    groups.append(("all", f"{opt}={value}", gv))
                    for m, gm in gv.groupby("method"):
                        groups.append((m, f"{opt}={value}", gm))
        for method, option, part in groups:
            e = part["error_pct"].to_numpy(float)
            signed = part["signed_pct"].to_numpy(float) if "signed_pct" in part else np.full(e.size, np.nan)
            rows.append({"route": route, "scheme": scheme, "target": target, "method": method,
                         "option": option, "median_abs_pct": float(np.median(e)),
                         "p90_abs_pct": float(np.percentile(e, 90)), "n": int(e.size),
                         "median_signed_pct": float(np.median(signed))})
    return rows


def part_multipliers(pred: pd.DataFrame) -> pd.DataFrame:
    """Per route and scheme: β ≥ 0 per part minimising Σ_i (Σ_p β_p·pred_ip / t_i − 1)²
    (scipy's NNLS), and each part's share of the predicted time. β_p far from 1 on a part
    with a large share is the term that is off."""
    out = []
    parts = list(DIAG_PARTS)
    for (route, scheme), g in pred.groupby(["route", "scheme"], sort=False):
        P = g[[f"part_{p}" for p in parts]].to_numpy(float)
        keep = P.sum(axis=0) > 0
        if not keep.any():
            continue
        A = P[:, keep] / g["time_s"].to_numpy(float)[:, None]
        beta, _ = nnls(A, np.ones(len(g)))
        share = P.sum(axis=0) / P.sum()
        betas = dict(zip(np.array(parts)[keep], beta))
        for p, s in zip(parts, share):
            if s > 0:
                out.append({"route": route, "scheme": scheme, "part": p, "beta": float(betas[p]),
                            "predicted_share": float(s)})
    return pd.DataFrame(out, columns=["route", "scheme", "part", "beta", "predicted_share"])


def responsible(multipliers: pd.DataFrame, route: str, scheme: str) -> str:
    """The part whose misprediction weighs most: max |β − 1| · share; '' when none."""
    g = multipliers[(multipliers["route"] == route) & (multipliers["scheme"] == scheme)]
    if g.empty:
        return ""
    score = (g["beta"] - 1).abs() * g["predicted_share"]
    r = g.loc[score.idxmax()]
    return (f"{r['part']} (predicted {r['predicted_share'] * 100:.0f}% of the time; the "
            f"measurements want it ×{r['beta']:.2f})")


# --------------------------------------------------------------------------- the validation


def validate(steps: Steps, profile: HardwareProfile, layer_rates: FittedRates | None) -> Validation:
    """Predict every step by the three routes and score them (see the module docstring)."""
    f = steps.frame.reset_index(drop=True)
    steps = Steps(f, steps.costs, steps.options)
    params = f["params"].to_numpy(float)
    split = float(np.median(np.unique(params)))
    small = params <= split
    notes = []
    if small.all():
        notes.append("every model has the same parameter count: no out-of-scale split")
    rates = {"all": fit_rates(steps, np.ones(len(f), bool),
                              "step-level rates fitted by analysis.wholemodel to whole training steps")}
    if (~small).any() and small.any():
        rates["out_of_scale"] = fit_rates(
            steps, small, f"step-level rates fitted to the models of ≤ {split:,.0f} parameters")
    if layer_rates is not None:
        rates["layer"] = layer_rates
    frames = []
    base = f.assign(in_test=~small)

    def add(route: str, scheme: str, rows: np.ndarray, r: FittedRates | None) -> None:
        idx = np.flatnonzero(rows)
        t, parts = predict([steps.costs[i] for i in idx], profile, r)
        part = base.iloc[idx].copy()
        part["route"], part["scheme"], part["predicted_s"] = route, scheme, t
        part["error_pct"] = abs_pct(t, part["time_s"])
        part["signed_pct"] = signed_pct(t, part["time_s"])
        for p in parts:
            part[f"part_{p}"] = parts[p].to_numpy()
        frames.append(part)

    everything = np.ones(len(f), bool)
    for route, r in (("unfitted", None), ("layer_fit", layer_rates)):
        if route == "layer_fit" and r is None:
            continue
        add(route, "all", everything, r)
        if "out_of_scale" in rates:
            add(route, "out_of_scale", ~small, r)
    add("step_fit", "all", everything, rates["all"])
    if "out_of_scale" in rates:
        add("step_fit", "out_of_scale", ~small, rates["out_of_scale"])
    pred = pd.concat(frames, ignore_index=True)
    ratios = ratio_frame(pred)
    summary = pd.DataFrame(_summarise(pred, "step_time", steps.options)
                           + _summarise(ratios, "ratio", steps.options))
    noise = {"step_time": float(np.nanmedian(f["noise_pct"])) if len(f) else float("nan"),
             "ratio": float(np.nanmedian(ratios.loc[(ratios["route"] == "unfitted")
                                                    & (ratios["scheme"] == "all"), "noise_pct"]))
             if len(ratios) else float("nan")}
    mult = part_multipliers(pred)
    return Validation(pred, summary, noise, rates, mult, worst_configs(pred),
                      goals_table(summary, mult), split, tuple(notes))


def worst_configs(pred: pd.DataFrame, n: int = WORST_N) -> pd.DataFrame:
    """Per route and scheme, the n worst steps: predicted part times against the measured."""
    out = []
    for (route, scheme), g in pred.groupby(["route", "scheme"], sort=False):
        out.append(g.nlargest(n, "error_pct"))
    return pd.concat(out, ignore_index=True) if out else pred.head(0)


def goals_table(summary: pd.DataFrame, mult: pd.DataFrame) -> pd.DataFrame:
    """Each issue-8 target: the median |error| reached, met or not, the unfitted baseline on
    the same rows, and the term responsible when missed."""
    rows = []
    pooled = summary[(summary["method"] == "all") & (summary["option"] == "all")]
    for (route, scheme, target), goal in GOALS.items():
        hit = pooled[(pooled["route"] == route) & (pooled["scheme"] == scheme) & (pooled["target"] == target)]
        base = pooled[(pooled["route"] == "unfitted") & (pooled["scheme"] == scheme) & (pooled["target"] == target)]
        if hit.empty:
            rows.append({"route": route, "scheme": scheme, "target": target, "goal_pct": goal,
                         "median_abs_pct": float("nan"), "met": False,
                         "baseline_pct": float("nan"), "better_than_baseline": False,
                         "responsible": "not computed (no data for this route)"})
            continue
        med = float(hit["median_abs_pct"].iloc[0])
        b = float(base["median_abs_pct"].iloc[0]) if not base.empty else float("nan")
        met = med <= goal
        rows.append({"route": route, "scheme": scheme, "target": target, "goal_pct": goal,
                     "median_abs_pct": med, "met": bool(met), "baseline_pct": b,
                     "better_than_baseline": bool(med < b) if np.isfinite(b) else False,
                     "responsible": "" if met else responsible(mult, route, scheme)})
    return pd.DataFrame(rows)


def json_records(v: Validation) -> list[dict]:
    """`--json`'s `whole_model_validation`: route, scheme, target, method, option,
    median_abs_pct, p90_abs_pct, n (option "all" pools the options), and median_signed_pct
    (the median of predicted/measured − 1: > 0 where predictions run slow)."""
    cols = ["route", "scheme", "target", "method", "option", "median_abs_pct", "p90_abs_pct", "n",
            "median_signed_pct"]
    return [{k: (r[k] if not isinstance(r[k], (np.floating, np.integer)) else r[k].item()) for k in cols}
            for r in v.summary[cols].to_dict(orient="records")]
