"""Issue 5's part of the main job: `--model NAME --hardware NAME` adds a table and a plot of
predicted LoRA/full speedup and memory across the model presets (DistilBERT to GPT-3 175B) on
the chosen hardware, and a table of the chosen model's memory per method (drawn by
`analysis.plots.model_figures`).

Everything is `costmodel`'s whole-step model (`step_cost`, `step_time`, `memory_breakdown`).
The only thing `analysis` adds is the fitted factors: when the hardware is the very device
the timings were measured on (its measured profile JSON), the fitted rates go in as
`costmodel.steptime.FittedRates` and the table's `time_basis` says "fitted"; for any other
hardware the cost model's own basis is used ("unfitted" datasheet efficiencies, or
"measured" achieved rates) and labelled so. The run also writes `fitted_profile.json`, the
measured profile with the fitted rates under its `extra` keys, which
`python -m costmodel --hardware PATH` picks up.

Step settings are the cost-model CLI's defaults: batch 1, the model's context capped at
`costmodel.step.DEFAULT_MAX_SEQ` tokens (`default_seq`, the same cap as the CLI), LoRA rank 4
on q,v, bf16 mixed precision, AdamW. A method whose step does not fit one device of the
chosen hardware (`costmodel.memory.memory_fit`) gets `{method}_fits` False and how much it
lacks; its row has no speedup (NaN): a step that cannot run is not faster or slower.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from costmodel.errors import UserError

DEFAULT_MODEL = "gpt2-small"
DEFAULT_HARDWARE = "a100-80gb"
SETTINGS = {"batch": 1, "rank": 4, "targets": "q,v", "precision": "bf16-mixed",
            "optimizer": "adamw"}


def prepare(model: str | None, hardware: str | None) -> Callable:
    """Check the names now (before any work); return the function that computes the tables."""
    from costmodel.presets_hardware import resolve_hardware
    from costmodel.presets_models import MODELS, resolve_model

    try:
        shape = resolve_model(model or DEFAULT_MODEL) if model != "all" else MODELS[DEFAULT_MODEL]
        profile = resolve_hardware(hardware or DEFAULT_HARDWARE)
    except ValueError as exc:
        raise UserError(str(exc)) from None

    def compute(a) -> dict[str, pd.DataFrame]:
        rates = _rates_for(profile, a)
        return {"model_speedups": speedup_table(profile, rates),
                "memory_breakdown": memory_table(shape.name)}

    return compute


def fitted_rates(a):
    """The fitted additive factors as `costmodel.steptime.FittedRates`, or None (log-link form,
    an unbounded rate, or a cost model without `FittedRates`)."""
    try:
        from costmodel.steptime import FittedRates
    except ImportError:
        return None
    if a.fit.form not in ("ols_additive", "wls_additive", "gamma_identity"):
        return None
    f = {x.key: x.estimate for x in a.fit.factors}  # stable keys, not display names
    try:
        return FittedRates(
            flops_per_s=float(f["flop_rate"]), bytes_per_s=float(f["byte_rate"]),
            kernel_overhead_s=max(float(f["kernel_time"]), 0.0) * 1e-6,
            dispatch_s=max(float(f["dispatch_time"]), 0.0) * 1e-6,
            lora_multiplier=float(f.get("lora_multiplier_lora", 1.0)),
            lora_merged_multiplier=float(f.get("lora_multiplier_lora_merged", 1.0)),
            note=f"rates fitted by analysis ({a.fit.form}) to timings on {a.slice.device}")
    except (ValueError, TypeError, KeyError):
        return None


def _rates_for(profile, a):
    """Fitted rates when `profile` is the analysed device's own measured profile, else None."""
    if a.profile is None or not profile.measured or profile.name != a.profile.name:
        return None
    rates = fitted_rates(a)
    if rates is None or not all(np.isfinite([rates.flops_per_s, rates.bytes_per_s])):
        return None
    return rates


def speedup_table(profile, rates=None) -> pd.DataFrame:
    from costmodel.memory import memory_breakdown, memory_fit
    from costmodel.presets_models import MODELS, param_count
    from costmodel.step import default_seq, step_cost
    from costmodel.steptime import step_time

    rows = []
    capacity = profile.extra.get("memory_bytes")
    for name, shape in MODELS.items():
        seq = default_seq(shape)
        rec = {"model": name, "params": param_count(shape), "seq": seq}
        for method in ("full", "lora"):
            cost = step_cost(shape, method, seq=seq, **SETTINGS)
            t = step_time(cost, profile, fitted=rates) if rates is not None else step_time(cost, profile)
            mem = memory_breakdown(cost)
            rec[f"{method}_step_s"] = float(np.asarray(t.time_s))
            rec[f"{method}_memory_gb"] = float(np.asarray(mem.total_bytes)) / 1e9
            rec[f"{method}_trainable_params"] = int(np.asarray(mem.trainable_params))
            fit = memory_fit(float(np.asarray(mem.total_bytes)), capacity)
            rec[f"{method}_fits"] = fit.fits
            rec[f"{method}_lacks_gb"] = fit.lacks_bytes / 1e9
            rec["time_basis"] = getattr(t, "basis", None) or t.efficiency.label
        runs = rec["full_fits"] is not False and rec["lora_fits"] is not False
        rec["speedup_full_over_lora"] = rec["full_step_s"] / rec["lora_step_s"] if runs else np.nan
        rec["memory_ratio_full_over_lora"] = rec["full_memory_gb"] / rec["lora_memory_gb"]
        rec["hardware"] = profile.name
        rows.append(rec)
    return pd.DataFrame(rows).sort_values("params").reset_index(drop=True)


def memory_table(model: str) -> pd.DataFrame:
    from costmodel.memory import memory_breakdown
    from costmodel.presets_models import MODELS
    from costmodel.step import default_seq, step_cost

    shape = MODELS[model]
    seq = default_seq(shape)
    rows = []
    for method in ("full", "lora"):
        mem = memory_breakdown(step_cost(shape, method, seq=seq, **SETTINGS))
        rec = {"model": model, "method": method}
        rec.update({k: float(np.asarray(v)) / 1e9 for k, v in mem.as_dict().items()})
        rows.append(rec)
    out = pd.DataFrame(rows)
    out.columns = [c.replace("_bytes", "_gb") for c in out.columns]
    return out
