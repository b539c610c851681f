"""Validation of the collective fits, and sharded training steps predicted from them.

**Validation**: leave-one-size-out (refit without a message size, predict it) and
leave-one-group-size-out (the cross-group model without that p); median |relative error|.

**Sharded steps** (`measure.sharded`): each step is predicted from its one-device share
t_local, measured alone on one device, plus its collectives as the compiled HLO lists them
(kind, bytes, group), each costed by the fit (`analysis.comm_fit`):

    t_step ≈ k · t_local + Σ_collectives (α + β·V)

k is how many of the step's devices share one device's compute: on a CPU the N host
devices share the same cores, so their shares add up (k = N); GPUs each have their own
(k = 1). The compute-only model is k·t_local alone. Reported (by `analysis.comm`): the median
|relative error| of the step times and of the LoRA/full ratio, over the layouts DP=2, DP=4
and TP=2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.comm_fit import (
    CollectiveFit,
    fit_alpha_beta,
    fit_collectives,
    fit_cross_group,
    one_stratum,
    relative_error,
)
from costmodel.cliutil import one_line

#: layouts the issue's target is stated on
TARGET_LAYOUTS: tuple[tuple[int, int], ...] = ((2, 1), (4, 1), (1, 2))
TARGET_REL_ERROR = 0.15


# ----------------------------------------------------------------------------- validation

def validate_collectives(df: pd.DataFrame) -> pd.DataFrame:
    """Held-out predictions: one row per measured point and scheme ('size' or 'devices')."""
    d = one_stratum(df)
    rows = []
    for (c, p), g in d.groupby(["collective", "devices"]):
        sizes = sorted(g["message_bytes"].unique())
        if len(sizes) < 3:
            continue
        for s in sizes:
            train = g[g["message_bytes"] != s]
            ab = fit_alpha_beta(train, str(c), int(p))
            for _, r in g[g["message_bytes"] == s].iterrows():
                rows.append({"scheme": "size", "collective": c, "devices": int(p),
                             "message_bytes": int(s), "time_s": r["time_median_s"],
                             "predicted_s": float(ab.predict_s(s))})
    for c, g in d.groupby("collective"):
        groups = sorted(g["devices"].unique())
        if len(groups) < 3 and not (c == "ppermute" and len(groups) >= 2):
            continue
        for p in groups:
            train = g[g["devices"] != p]
            if train["message_bytes"].nunique() < 2:
                continue
            cg = fit_cross_group(train, str(c))
            for _, r in g[g["devices"] == p].iterrows():
                rows.append({"scheme": "devices", "collective": c, "devices": int(p),
                             "message_bytes": int(r["message_bytes"]), "time_s": r["time_median_s"],
                             "predicted_s": float(cg.predict_s(p, r["message_bytes"]))})
    out = pd.DataFrame(rows, columns=["scheme", "collective", "devices", "message_bytes", "time_s", "predicted_s"])
    out["rel_error"] = relative_error(out["predicted_s"], out["time_s"]) if len(out) else []
    return out


# ----------------------------------------------------------------------------- sharded steps

def parse_hlo_detail(text: str) -> list[tuple[str, int, int]]:
    """'all_reduce:3149828:2;...' -> [(collective, result_bytes, group_size), ...]."""
    out = []
    for item in str(text).split(";"):
        if not item:
            continue
        kind, nbytes, group = item.split(":")
        out.append((kind, int(nbytes), int(group)))
    return out


def message_bytes_of(collective: str, result_bytes: int, group: int) -> int:
    """The nccl-tests size of an HLO collective from its result bytes (reduce-scatter: ×p)."""
    return result_bytes * group if collective == "reduce_scatter" else result_bytes


def compute_sharing(backend: str, devices: int, processes: int) -> int:
    """k: how many of the step's devices share one device's compute (see module docstring).

    CPU devices on this machine (host devices of one process, or processes on one host)
    share its cores: k = devices. Accelerators each compute on their own: k = 1.
    """
    return int(devices) if backend == "cpu" else 1


def predict_sharded(sharded: pd.DataFrame, fit: CollectiveFit) -> pd.DataFrame:
    """One row per measured sharded step: measured, predicted, compute-only, errors."""
    d = sharded[(sharded["error"] == "") & (sharded["time_median_s"] > 0)]
    key = ["method", "dp", "tp", "batch", "seq", "embed", "heads", "hidden", "rank", "targets", "dtype"]
    local = d[d["program"] == "local"].set_index(key)["time_median_s"]
    conc = d[d["program"] == "concurrent"].set_index(key + ["processes"])["time_median_s"]
    rows = []
    for _, r in d[(d["program"] == "step") & (d["devices"] > 1)].iterrows():
        k_idx = tuple(r[c] for c in key)
        if k_idx not in local.index:
            continue
        t_local = float(local.loc[k_idx])
        k = compute_sharing(str(r["backend"]), int(r["devices"]), int(r["processes"]))
        comm = 0.0
        missing = ""
        for kind, nbytes, group in parse_hlo_detail(r["hlo_detail"]):
            try:
                comm += fit.predict_s(kind, group, message_bytes_of(kind, nbytes, group))
            except KeyError as exc:
                missing = one_line(exc)
        c_idx = (*k_idx, r["processes"])
        t_conc = float(conc.loc[c_idx]) if c_idx in conc.index else float("nan")
        comm_s = comm if not missing else float("nan")
        rows.append({
            "concurrent_s": t_conc, "concurrent_predicted_s": t_conc + comm_s,
            "method": r["method"], "dp": int(r["dp"]), "tp": int(r["tp"]), "devices": int(r["devices"]),
            "processes": int(r["processes"]), "time_s": float(r["time_median_s"]), "local_s": t_local,
            "compute_sharing": k, "comm_predicted_s": comm if not missing else float("nan"),
            "predicted_s": k * t_local + comm if not missing else float("nan"),
            "compute_only_s": k * t_local, "hlo_collectives": int(r["hlo_collectives"]),
            "hlo_bytes": float(r["hlo_all_reduce_bytes"] + r["hlo_other_bytes"]), "note": missing,
        })
    out = pd.DataFrame(rows)
    if len(out):
        out["rel_error"] = relative_error(out["predicted_s"], out["time_s"])
        out["compute_only_rel_error"] = relative_error(out["compute_only_s"], out["time_s"])
        out["concurrent_rel_error"] = relative_error(out["concurrent_predicted_s"], out["time_s"])
        out["concurrent_only_rel_error"] = relative_error(out["concurrent_s"], out["time_s"])
    return out


def ratio_table(pred: pd.DataFrame) -> pd.DataFrame:
    """LoRA/full step-time ratio per layout: measured, predicted, compute-only, errors."""
    rows = []
    for (dp, tp, procs), g in pred.groupby(["dp", "tp", "processes"]):
        by = g.set_index("method")
        if not {"full", "lora"} <= set(by.index):
            continue
        m = by.loc["lora", "time_s"] / by.loc["full", "time_s"]
        p = by.loc["lora", "predicted_s"] / by.loc["full", "predicted_s"]
        c = by.loc["lora", "compute_only_s"] / by.loc["full", "compute_only_s"]
        rows.append({"dp": dp, "tp": tp, "processes": procs, "ratio_measured": m, "ratio_predicted": p,
                     "ratio_compute_only": c, "rel_error": abs(p - m) / m,
                     "compute_only_rel_error": abs(c - m) / m})
    return pd.DataFrame(rows)


@dataclass
class CommAnalysis:
    fit: CollectiveFit | None
    validation: pd.DataFrame
    sharded: pd.DataFrame
    ratios: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


def _median(x) -> float:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def analyse(collectives: pd.DataFrame | None, sharded: pd.DataFrame | None) -> CommAnalysis:
    fit = fit_collectives(collectives) if collectives is not None and len(collectives) else None
    val = validate_collectives(collectives) if fit is not None else pd.DataFrame()
    pred = predict_sharded(sharded, fit) if fit is not None and sharded is not None else pd.DataFrame()
    ratios = ratio_table(pred) if len(pred) else pd.DataFrame()
    summary: dict[str, Any] = {}
    if len(val):
        for scheme in ("size", "devices"):
            v = val[val["scheme"] == scheme]
            summary[f"collective_heldout_{scheme}_median_rel_error"] = _median(v["rel_error"])
    if len(pred):
        tgt = pred[[(int(a), int(b)) in TARGET_LAYOUTS for a, b in zip(pred["dp"], pred["tp"])]]
        summary["sharded_layouts"] = sorted({f"dp={a},tp={b}" for a, b in zip(tgt["dp"], tgt["tp"])})
        summary["sharded_step_median_rel_error"] = _median(tgt["rel_error"])
        summary["sharded_step_compute_only_median_rel_error"] = _median(tgt["compute_only_rel_error"])
        # diagnostic: the compute measured with every device busy at once (core sharing as it is)
        summary["sharded_step_concurrent_median_rel_error"] = _median(tgt["concurrent_rel_error"])
        summary["sharded_step_concurrent_only_median_rel_error"] = _median(tgt["concurrent_only_rel_error"])
        rt = ratios[[(int(a), int(b)) in TARGET_LAYOUTS for a, b in zip(ratios["dp"], ratios["tp"])]] \
            if len(ratios) else ratios
        if len(rt):
            summary["lora_full_ratio_median_rel_error"] = _median(rt["rel_error"])
            summary["lora_full_ratio_compute_only_median_rel_error"] = _median(rt["compute_only_rel_error"])
        summary["target_rel_error"] = TARGET_REL_ERROR
        # the target: both medians within TARGET_REL_ERROR and both better than compute alone
        ratio = summary.get("lora_full_ratio_median_rel_error", math.inf)
        ratio_c = summary.get("lora_full_ratio_compute_only_median_rel_error", math.inf)
        step, step_c = (summary["sharded_step_median_rel_error"],
                        summary["sharded_step_compute_only_median_rel_error"])
        summary["meets_target"] = bool(
            step <= TARGET_REL_ERROR and ratio <= TARGET_REL_ERROR and step < step_c and ratio < ratio_c
        )
    return CommAnalysis(fit, val, pred, ratios, summary)
