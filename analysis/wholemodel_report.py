"""The whole-model section of the main job: `python -m analysis.crossover --data DIR` on a
`models` dataset (`python -m measure.sweep --grid models --out DIR`).

It loads the measured steps, rebuilds each step's cost (`measure.wholemodel`'s own mapping
from a measured config to `costmodel`'s StepSpec, so the two stay one-to-one), finds the
layer-fitted rates (`--layer-fit`, default ./crossover-results/fitted_profile.json, made by
measuring and analysing the quick grid when absent), runs `analysis.wholemodel.validate`
and writes report.md, whole_model_validation.csv, whole_model_predictions.csv,
whole_model_parts.csv, a predicted-vs-measured figure per method and fitted_profile.json
(the device profile with the layer-fitted and the step-level rates), into --out.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis import data
from analysis import wholemodel as wm
from costmodel.cliutil import UserError
from costmodel.fileio import atomic_write_text
from costmodel.hardware import HardwareProfile
from costmodel.steptime import FIT_KEYS, STEP_FIT_KEYS, FittedRates
from measure import schema

DEFAULT_LAYER_FIT = os.path.join("crossover-results", "fitted_profile.json")


# ------------------------------------------------------------------------------ loading


def is_models(frame: pd.DataFrame) -> bool:
    """A `models` dataset: its rows time whole training steps (layer ``model``)."""
    return bool(len(frame)) and bool((frame["layer"].astype(str) == "model").all())


def step_config(row: pd.Series):
    """The `measure.modelconfig.StepConfig` a schema-v3 whole-model row describes.

    The shape is the row's preset scaled to its recorded sizes (`scaled_model`); a learned
    position table's rows, which the row does not record, follow from `model_params`
    (the table is the only part of the count that depends on them)."""
    from measure.modelconfig import StepConfig, scaled_model

    seq = int(row["seq"])
    shape = scaled_model(str(row["model"]), d_model=int(row["embed"]), layers=int(row["layers"]),
                         heads=int(row["heads"]), kv_heads=int(row["kv_heads"]), ffn=int(row["hidden"]),
                         vocab=int(row["vocab"]), seq=seq)
    targets = str(row["targets"]) or None
    kw = dict(batch=int(row["batch"]), seq=seq, rank=max(int(row["rank"]), 1), targets=targets,
              head=str(row["head"]), n_classes=max(int(row["n_classes"]), 1), optimizer=str(row["optimizer"]),
              clip=bool(row["clip"]), precision=str(row["precision"]), recompute=bool(row["recompute"]),
              grad_accum=int(row["grad_accum"]), attention=str(row["attention"]))
    cfg = StepConfig(shape, str(row["method"]), **kw)
    if shape.positional == "learned":
        extra = (int(row["model_params"]) - _params(cfg)) / shape.d_model
        if extra != int(extra) or extra < 0:
            raise UserError(f"a models row's model_params ({int(row['model_params'])}) does not fit "
                            f"its recorded shape ({row['model']}, d {row['embed']}, {row['layers']} layers)")
        if extra:
            import dataclasses

            cfg = StepConfig(dataclasses.replace(shape, seq=seq + int(extra)), str(row["method"]), **kw)
    return cfg


def _params(cfg) -> int:
    from costmodel.step import step_param_count
    from measure.modelconfig import step_cost

    return step_param_count(step_cost(cfg).spec)


def load_steps(frame: pd.DataFrame) -> wm.Steps:
    """The rows that ran, with their cost-model steps, as `wm.Steps`.

    The config key is every schema KEY column but method, rank and targets (and the
    refinement marker); the options are the columns of `OPTION_COLUMNS` the dataset varies.
    """
    from costmodel.step import step_param_count
    from measure.modelconfig import step_cost

    ok = schema.is_ok(frame)
    df = frame.loc[ok].reset_index(drop=True)
    if df.empty:
        raise UserError("the models dataset holds no step that ran")
    costs, params = [], []
    for _, row in df.iterrows():
        try:
            cost = step_cost(step_config(row))
        except (ValueError, NotImplementedError) as exc:
            raise UserError(f"a models row cannot be costed: {exc}") from None
        costs.append(cost)
        params.append(step_param_count(cost.spec))
    key_cols = [c for c in schema.KEY if c not in ("method", "rank", "targets") and c in df]
    out = pd.DataFrame({
        "config": df[key_cols].astype(str).agg(";".join, axis=1),
        "label": [_label(r) for _, r in df.iterrows()],
        "method": df["method"].astype(str),
        "params": np.asarray(params, float),
        "time_s": df["time_median_s"].to_numpy(float),
        "noise_pct": ((df["time_ci_high_s"] - df["time_ci_low_s"]) / 2 / df["time_median_s"] * 100).to_numpy(float),
    })
    if "paired_ratio" in df:
        out["paired_ratio"] = df["paired_ratio"].to_numpy(float)
        out["paired_noise_pct"] = ((df["paired_ratio_ci_high"] - df["paired_ratio_ci_low"]) / 2
                                   / df["paired_ratio"] * 100).to_numpy(float)
    options = []
    for c in OPTION_COLUMNS:
        if c in df and df[c].nunique() > 1:
            out[c] = df[c].to_numpy()
            options.append(c)
    return wm.Steps(out, tuple(costs), tuple(options))


def _label(row: pd.Series) -> str:
    """A short name of a measured config: preset, sizes and the options that are not the
    grid's defaults."""
    opts = [str(row["head"])]
    if str(row["optimizer"]) != "adamw":
        opts.append(str(row["optimizer"]))
    if not bool(row["clip"]):
        opts.append("no-clip")
    if str(row["precision"]) != "fp32":
        opts.append(str(row["precision"]))
    if bool(row["recompute"]):
        opts.append("recompute")
    if int(row["grad_accum"]) > 1:
        opts.append(f"accum{int(row['grad_accum'])}")
    if str(row["attention"]) != "naive":
        opts.append(f"{row['attention']} attention")
    return (f"{row['model']} d{int(row['embed'])} L{int(row['layers'])} V{int(row['vocab'])} "
            f"b{int(row['batch'])} s{int(row['seq'])} " + " ".join(opts))


#: Columns the report breaks the errors down by, where the dataset varies them.
OPTION_COLUMNS = ("model", "head", "attention", "grad_accum", "optimizer", "clip", "precision",
                  "recompute", "batch", "seq")


# ------------------------------------------------------------------------------ layer rates


def layer_rates(path: str | None, profile: HardwareProfile, out: str) -> tuple[FittedRates | None, str]:
    """The layer-fitted rates of `path` (default `DEFAULT_LAYER_FIT`, measured and analysed
    now when absent), checked to be of the same device as `profile`."""
    given = path is not None
    path = path or DEFAULT_LAYER_FIT
    if not os.path.isfile(path):
        if given:
            raise UserError(f"--layer-fit {path!r} does not exist")
        results = os.path.dirname(path)
        print(f"no layer fit at {path}: measuring and analysing the quick grid into {results} "
              "(python -m analysis.crossover --no-plots)", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "analysis.crossover", "--no-plots", "--out", results]
        rc = subprocess.call(cmd, stdout=subprocess.DEVNULL)
        if rc != 0 or not os.path.isfile(path):
            return None, f"none: the quick grid's analysis wrote no {path} (exit {rc})"
    try:
        layer = HardwareProfile.from_json(path)
    except ValueError as exc:
        raise UserError(f"bad --layer-fit: {exc}") from None
    if layer.name != profile.name:
        return None, (f"none: {path} was fitted on '{layer.name}', the steps were measured on "
                      f"'{profile.name}'")
    rates = FittedRates.from_profile(layer, "layer")
    if rates is None:
        return None, f"none: {path} carries no layer-fitted rates"
    return rates, f"{path} (rates fitted on the quick grid's layer kernels)"


# ------------------------------------------------------------------------------ rendering


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.1f}%"


def main_table(v: wm.Validation) -> pd.DataFrame:
    """Median / p90 |error| per route × scheme × target × method (options pooled)."""
    s = v.summary[v.summary["option"] == "all"]
    rows = []
    for (route, scheme, target), g in s.groupby(["route", "scheme", "target"], sort=False):
        row = {"route": route, "scheme": scheme, "target": target}
        for _, r in g.iterrows():
            row[r["method"]] = f"{r['median_abs_pct']:.1f} / {r['p90_abs_pct']:.1f} (n={r['n']})"
        pooled = g[g["method"] == "all"]
        if not pooled.empty:
            row["bias (median signed)"] = f"{pooled['median_signed_pct'].iloc[0]:+.1f}%"
        rows.append(row)
    return pd.DataFrame(rows).fillna("-")


def goals_display(v: wm.Validation) -> pd.DataFrame:
    g = v.goals
    return pd.DataFrame({
        "route": g["route"], "scheme": g["scheme"], "target": g["target"],
        "goal (median)": [f"≤ {x:g}%" for x in g["goal_pct"]],
        "reached": [_pct(x) for x in g["median_abs_pct"]],
        "met": ["yes" if m else f"no (by {x - goal:.1f} points)" if math.isfinite(x) else "no"
                for m, x, goal in zip(g["met"], g["median_abs_pct"], g["goal_pct"])],
        "unfitted, same rows": [_pct(x) for x in g["baseline_pct"]],
        "better than unfitted": ["yes" if b else "no" for b in g["better_than_baseline"]],
        "responsible term (if missed)": g["responsible"],
    })


def worst_display(v: wm.Validation) -> pd.DataFrame:
    w = v.worst
    parts = [c for c in w.columns if c.startswith("part_") and w[c].abs().sum() > 0]
    out = w[["route", "scheme", "label" if "label" in w else "config", "method"]].copy()
    out["measured"] = [f"{x * 1e3:.3g} ms" for x in w["time_s"]]
    out["predicted"] = [f"{x * 1e3:.3g} ms" for x in w["predicted_s"]]
    out["|error|"] = [_pct(x) for x in w["error_pct"]]
    for c in parts:  # an unbounded fitted rate leaves ~1e-300 ms: shown as 0
        out[c[5:]] = [f"{x * 1e3:.3g}" if x * 1e3 >= 1e-6 else "0" for x in w[c]]
    return out


def multipliers_display(v: wm.Validation) -> pd.DataFrame:
    """The NNLS multipliers of the parts holding at least 2% of the predicted time (a
    smaller part's β is not identified by the data)."""
    m = v.part_multipliers
    m = m[m["predicted_share"] >= 0.02]
    return pd.DataFrame({"route": m["route"], "scheme": m["scheme"], "part": m["part"],
                         "share of predicted time": [f"{x * 100:.0f}%" for x in m["predicted_share"]],
                         "measured / predicted (NNLS β)": [f"{x:.2f}" for x in m["beta"]]})


def rates_display(v: wm.Validation) -> pd.DataFrame:
    rows = []
    for name, r in v.rates.items():
        rows.append({"rates": name, "GFLOP/s": r.flops_per_s / 1e9, "GB/s": r.bytes_per_s / 1e9,
                     "µs/kernel": r.kernel_overhead_s * 1e6, "dispatch µs": r.dispatch_s * 1e6,
                     "λ lora": r.lora_multiplier, "λ lora_merged": r.lora_merged_multiplier})
    return pd.DataFrame(rows)


def option_table(v: wm.Validation) -> pd.DataFrame:
    """Per option value (all methods pooled): the routes as they are compared (unfitted and
    layer_fit on every step, step_fit out of scale); every row is in the CSV."""
    s = v.summary[(v.summary["option"] != "all") & (v.summary["method"] == "all")]
    keep = ((s["route"] != "step_fit") & (s["scheme"] == "all")) | ((s["route"] == "step_fit")
                                                                     & (s["scheme"] == "out_of_scale"))
    s = s[keep]
    wide = s.pivot_table(index=["target", "option"], columns="route", values="median_abs_pct", sort=False)
    n = s.groupby(["target", "option"], sort=False)["n"].max()
    wide = wide.reindex(columns=[r for r in wm.ROUTES if r in wide.columns])
    wide.columns = [f"{c} median %" for c in wide.columns]
    return wide.assign(n=n).reset_index()


def markdown(v: wm.Validation, header: Sequence[str], figures: Sequence[str]) -> str:
    from analysis.formatting import md_table

    parts = [
        "# Whole training steps: predicted against measured", "",
        *header, "",
        "Every measured step is predicted three ways: **unfitted** (the roofline on the device "
        "profile alone), **layer_fit** (the rates fitted on the quick grid's single-layer kernels: "
        "the transfer GPT-scale extrapolation relies on) and **step_fit** (the same additive form "
        "refitted on whole steps; *out_of_scale*: fitted on the models of at most "
        f"{v.split_params:,.0f} parameters, scored on the larger ones; *all*: fitted and scored on "
        "every step). Errors: |predicted / measured − 1|; for the ratio, of t_LoRA / t_full per "
        "config.", "",
        "## Median / p90 |error| (%) by method", "", md_table(main_table(v)), "",
        f"Replicate noise floor (median relative half-width of the measured medians' 95% CI): "
        f"step time {_pct(v.noise['step_time'])}, LoRA/full ratio {_pct(v.noise['ratio'])}.", "",
        "## Targets", "", md_table(goals_display(v)), "",
        "## Which term is off", "",
        "NNLS multipliers β of measured ≈ Σ_parts β · predicted part time (relative error); a part "
        "with a large share and β far from 1 is the term responsible.", "",
        md_table(multipliers_display(v)), "",
        "Worst configs per route (predicted part times in ms):", "", md_table(worst_display(v)), "",
        "## Fitted rates", "", md_table(rates_display(v)), "",
        "## By option (all methods)", "", md_table(option_table(v), "{:.3g}"), "",
    ]
    if v.notes:
        parts += ["Notes: " + "; ".join(v.notes), ""]
    parts += [f"![{f}]({f})" for f in figures]
    return "\n".join(parts) + "\n"


def stdout_summary(v: wm.Validation, header: Sequence[str], files: Sequence[str], out: str) -> str:
    from analysis.formatting import text_table

    return "\n".join([
        *header, "",
        "Whole-step validation, median / p90 |error| % (n):",
        text_table(main_table(v)), "",
        f"noise floor: step time {_pct(v.noise['step_time'])}, ratio {_pct(v.noise['ratio'])}",
        "targets:", text_table(goals_display(v)), "",
        f"wrote {len(files)} files to {out}",
    ])


def figures(v: wm.Validation, out: str) -> list[str]:
    """Per method: predicted against measured step time, one colour per route (step_fit out of
    scale; the others on every step), log axes, the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.plots import DPI
    from costmodel.fileio import atomic_output

    p = v.predictions
    shown = p[((p["route"] != "step_fit") & (p["scheme"] == "all"))
              | ((p["route"] == "step_fit") & (p["scheme"] == "out_of_scale"))]
    names = []
    for method, g in shown.groupby("method"):
        fig, ax = plt.subplots(figsize=(4.8, 4.2))
        for route, gr in g.groupby("route"):
            ax.scatter(gr["time_s"] * 1e3, gr["predicted_s"] * 1e3, s=14, alpha=0.75, label=route)
        lo = float(min(g["time_s"].min(), g["predicted_s"].min()) * 1e3)
        hi = float(max(g["time_s"].max(), g["predicted_s"].max()) * 1e3)
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="measured step (ms)", ylabel="predicted step (ms)",
               title=f"whole training steps: {method}")
        ax.legend(fontsize=8)
        name = f"whole_model_{method}.png"
        try:
            with atomic_output(os.path.join(out, name)) as tmp:
                fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
        finally:
            plt.close(fig)
        names.append(name)
    return names


def fitted_profile(v: wm.Validation, profile: HardwareProfile) -> dict:
    """The device profile with the layer-fitted rates (`FIT_KEYS`, when known) and the
    step-level rates fitted on every step (`STEP_FIT_KEYS`, finite values only)."""
    d = profile.to_dict()
    extra = dict(d.get("extra", {}))
    for keys, name in ((FIT_KEYS, "layer"), (STEP_FIT_KEYS, "all")):
        rates = v.rates.get(name)
        if rates is None:
            continue
        for key, field_ in keys.items():
            value = float(getattr(rates, field_))
            if math.isfinite(value):
                extra[key] = value
    d["extra"] = extra
    d["source"] = f"{d.get('source', '')}; step-level rates fitted by analysis.wholemodel to whole steps"
    return d


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def to_json(v: wm.Validation, meta: dict) -> dict:
    return {**meta,
            "whole_model_validation": [{k: _clean(val) for k, val in r.items()} for r in wm.json_records(v)],
            "noise_floor_pct": {k: _clean(x) for k, x in v.noise.items()},
            "targets": [{k: (_clean(val) if not isinstance(val, (np.bool_,)) else bool(val))
                         for k, val in r.items()} for r in v.goals.to_dict(orient="records")],
            "step_rates": {name: {"flops_per_s": _clean(r.flops_per_s), "bytes_per_s": _clean(r.bytes_per_s),
                                  "kernel_overhead_s": r.kernel_overhead_s, "dispatch_s": r.dispatch_s,
                                  "lora_multiplier": r.lora_multiplier,
                                  "lora_merged_multiplier": r.lora_merged_multiplier}
                           for name, r in v.rates.items()}}


# ------------------------------------------------------------------------------ the job


def run(args, dataset: data.Dataset, out: str, profile: HardwareProfile | None, profile_note: str) -> int:
    """The whole-model path of `analysis.crossover.run`."""
    if profile is None:
        raise UserError(f"the whole-model validation needs the device profile ({profile_note}); "
                        "give --profile")
    steps = load_steps(dataset.frame)
    if steps.frame["method"].nunique() < 2 or "full" not in set(steps.frame["method"]):
        raise UserError("the models dataset needs full and a LoRA method timed on the same configs")
    if len(set(steps.frame["params"])) < 2:
        raise UserError("every measured model has the same parameter count: nothing to test out of scale")
    rates, rates_note = layer_rates(getattr(args, "layer_fit", None), profile, out)
    v = wm.validate(steps, profile, rates)
    header = [f"data: {dataset.source} ({len(steps.frame)} steps, {steps.frame['config'].nunique()} configs)",
              f"device profile: {profile_note}", f"layer-fitted rates: {rates_note}"]
    os.makedirs(out, exist_ok=True)
    figs = [] if args.no_plots else figures(v, out)
    files = {
        "whole_model_validation.csv": v.summary,
        "whole_model_predictions.csv": v.predictions,
        "whole_model_parts.csv": v.part_multipliers,
        "whole_model_targets.csv": v.goals,
    }
    for name, tbl in files.items():
        atomic_write_text(os.path.join(out, name), tbl.to_csv(index=False))
    atomic_write_text(os.path.join(out, "report.md"), markdown(v, header, figs))
    atomic_write_text(os.path.join(out, "fitted_profile.json"),
                      json.dumps(fitted_profile(v, profile), indent=2) + "\n")
    written = [*files, "report.md", "fitted_profile.json", *figs]
    if args.json:
        print(json.dumps(to_json(v, {"source": dataset.source, "profile": profile_note,
                                     "layer_fit": rates_note}), indent=1, allow_nan=False))
    else:
        print(stdout_summary(v, header, written, out))
    return 0
