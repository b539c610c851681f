"""Fit and validate communication: α-β per collective, then predict sharded training steps.

    python -m analysis.comm --data results/            # collectives.csv and sharded.csv
    python -m analysis.comm --data results/ --json

**α-β per collective and group size** (Hockney 1994; Thakur, Rabenseifner & Gropp 2005,
"Optimization of collective communication operations in MPICH", sec. 2): the median time
of one call, t = α + β·V, V = message_bytes (`measure.comm_schema`), fitted by weighted least
squares with weights 1/t² (relative errors: the sizes span five decades) in statsmodels, with
95% CIs. The bus bandwidth B = f(p)/β uses the algorithm's factor f: 2(p−1)/p for a ring
all-reduce, (p−1)/p for all-gather and reduce-scatter, 1 for ppermute (nccl-tests,
doc/PERFORMANCE.md, "bus bandwidth").

**Across group sizes**: per collective, t = t₀ + a·s(p) + b·f(p)·V with s(p) the ring's
latency steps (2(p−1) all-reduce, p−1 all-gather and reduce-scatter, 1 ppermute; same
sources), so a group size that was not measured is predicted.

**Validation**: leave-one-size-out (refit without a message size, predict it) and
leave-one-group-size-out (the cross-group model without that p); median |relative error|.

**Sharded steps** (`measure.sharded`): each step is predicted from its one-device share
t_local, measured alone on one device, plus its collectives as the compiled HLO lists them
(kind, bytes, group), each costed by the fit:

    t_step ≈ k · t_local + Σ_collectives (α + β·V)

k is how many of the step's devices share one device's compute: on a CPU the N host
devices share the same cores, so their shares add up (k = N); GPUs each have their own
(k = 1). The compute-only model is k·t_local alone. Reported: the median |relative error| of
the step times and of the LoRA/full ratio, over the layouts DP=2, DP=4 and TP=2.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from costmodel.cliutil import OneLineArgumentParser, UserError, add_debug_flag, one_line, run
from costmodel.fileio import atomic_write_text

#: layouts the issue's target is stated on
TARGET_LAYOUTS: tuple[tuple[int, int], ...] = ((2, 1), (4, 1), (1, 2))
TARGET_REL_ERROR = 0.15


#: measure's collective names -> costmodel.comm's kinds (the formulas' one home)
COSTMODEL_KIND: dict[str, str] = {
    "all_reduce": "all-reduce", "all_gather": "all-gather", "reduce_scatter": "reduce-scatter",
    "ppermute": "p2p",
}


def _kind(collective: str) -> str:
    try:
        return COSTMODEL_KIND[collective]
    except KeyError:
        raise ValueError(f"unknown collective {collective!r}") from None


def bandwidth_factor(collective: str, p: np.ndarray | int) -> np.ndarray:
    """f(p): bytes each device sends per message byte (`costmodel.comm.wire_factor`)."""
    from costmodel.comm import wire_factor

    return np.asarray(wire_factor(_kind(collective), p), dtype=float)


def latency_steps(collective: str, p: np.ndarray | int) -> np.ndarray:
    """s(p): sequential steps of the ring algorithm (`costmodel.comm.latency_steps`)."""
    from costmodel.comm import latency_steps as steps

    return np.asarray(steps(_kind(collective), p), dtype=float)


# ----------------------------------------------------------------------------- fits

@dataclass(frozen=True)
class AlphaBeta:
    """t = alpha_s + beta_s_per_byte · V for one (collective, group size)."""

    collective: str
    devices: int
    alpha_s: float
    alpha_ci_s: tuple[float, float]
    beta_s_per_byte: float
    beta_ci: tuple[float, float]
    n: int

    @property
    def bus_bandwidth_bytes_per_s(self) -> float:
        f = float(bandwidth_factor(self.collective, self.devices))
        return f / self.beta_s_per_byte if self.beta_s_per_byte > 0 else math.inf

    def predict_s(self, message_bytes: np.ndarray | float) -> np.ndarray:
        return self.alpha_s + self.beta_s_per_byte * np.asarray(message_bytes, dtype=float)


@dataclass(frozen=True)
class CrossGroup:
    """t = t0_s + step_s · s(p) + b_s_per_byte · f(p) · V for one collective, all group sizes."""

    collective: str
    t0_s: float
    step_s: float
    b_s_per_byte: float
    devices: tuple[int, ...]

    def predict_s(self, devices, message_bytes) -> np.ndarray:
        p = np.asarray(devices, dtype=float)
        v = np.asarray(message_bytes, dtype=float)
        return (self.t0_s + self.step_s * latency_steps(self.collective, p)
                + self.b_s_per_byte * bandwidth_factor(self.collective, p) * v)


def _wls(y: np.ndarray, X: np.ndarray):
    import statsmodels.api as sm

    return sm.WLS(y, X, weights=1.0 / np.square(y)).fit()


def fit_alpha_beta(df: pd.DataFrame, collective: str, devices: int) -> AlphaBeta:
    """WLS of time_median_s on message_bytes for one (collective, devices); needs 2 sizes."""
    d = df[(df["collective"] == collective) & (df["devices"] == devices)]
    if d["message_bytes"].nunique() < 2:
        raise ValueError(f"{collective} on {devices} devices: fewer than 2 message sizes")
    y = d["time_median_s"].to_numpy(float)
    X = np.column_stack([np.ones(len(d)), d["message_bytes"].to_numpy(float)])
    res = _wls(y, X)
    ci = np.asarray(res.conf_int(0.05)) if len(d) > 2 else np.full((2, 2), np.nan)
    return AlphaBeta(collective, int(devices), float(res.params[0]), (float(ci[0, 0]), float(ci[0, 1])),
                     float(res.params[1]), (float(ci[1, 0]), float(ci[1, 1])), len(d))


def fit_cross_group(df: pd.DataFrame, collective: str) -> CrossGroup:
    d = df[df["collective"] == collective]
    p = d["devices"].to_numpy(float)
    v = d["message_bytes"].to_numpy(float)
    cols = [np.ones(len(d)), latency_steps(collective, p), bandwidth_factor(collective, p) * v]
    X = np.column_stack(cols)
    if collective == "ppermute" or d["devices"].nunique() < 2:  # s(p) ≡ 1: not separable from t0
        X = X[:, [0, 2]]
    y = d["time_median_s"].to_numpy(float)
    res = _wls(y, X)
    params = list(res.params)
    if X.shape[1] == 2:
        params = [params[0], 0.0, params[1]]
    return CrossGroup(collective, float(params[0]), float(params[1]), float(params[2]),
                      tuple(sorted(int(x) for x in d["devices"].unique())))


@dataclass(frozen=True)
class LinkFit:
    """`costmodel.comm`'s link model fitted to every collective and group size at once:
    t = α·s(p) + f(p)·V/B (no other term), so `Cluster.with_fitted` can use α and B."""

    alpha_s: float
    bandwidth_bytes_per_s: float
    median_rel_error: float
    n: int


def fit_link(df: pd.DataFrame) -> LinkFit:
    d = usable(df)
    d = d[d["processes"] == d["processes"].min()]
    steps = np.array([latency_steps(c, p) for c, p in zip(d["collective"], d["devices"])], dtype=float)
    wire = np.array([bandwidth_factor(c, p) for c, p in zip(d["collective"], d["devices"])], dtype=float)
    y = d["time_median_s"].to_numpy(float)
    res = _wls(y, np.column_stack([steps, wire * d["message_bytes"].to_numpy(float)]))
    alpha, inv_b = float(res.params[0]), float(res.params[1])
    pred = alpha * steps + inv_b * wire * d["message_bytes"].to_numpy(float)
    return LinkFit(alpha, 1.0 / inv_b if inv_b > 0 else math.inf, float(np.median(_rel(pred, y))), len(d))


def usable(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["error"] == "") & (df["time_median_s"] > 0)].copy()


@dataclass
class CollectiveFit:
    per_group: dict[tuple[str, int], AlphaBeta]
    cross: dict[str, CrossGroup]
    link: LinkFit | None = None

    def predict_s(self, collective: str, devices: int, message_bytes: float) -> float:
        ab = self.per_group.get((collective, int(devices)))
        if ab is not None:
            return float(ab.predict_s(message_bytes))
        if collective in self.cross:
            return float(self.cross[collective].predict_s(devices, message_bytes))
        raise KeyError(f"no fit for {collective} on {devices} devices")

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([
            {"collective": ab.collective, "devices": ab.devices, "n_sizes": ab.n,
             "alpha_s": ab.alpha_s, "alpha_ci_low_s": ab.alpha_ci_s[0], "alpha_ci_high_s": ab.alpha_ci_s[1],
             "beta_s_per_byte": ab.beta_s_per_byte, "beta_ci_low": ab.beta_ci[0], "beta_ci_high": ab.beta_ci[1],
             "bus_bandwidth_gb_per_s": ab.bus_bandwidth_bytes_per_s / 1e9}
            for ab in self.per_group.values()
        ])


def fit_collectives(df: pd.DataFrame) -> CollectiveFit:
    d = usable(df)
    d = d[d["processes"] == d["processes"].min()] if len(d) else d  # one transport per fit
    per, cross = {}, {}
    for (c, p), _g in d.groupby(["collective", "devices"]):
        try:
            per[str(c), int(p)] = fit_alpha_beta(d, str(c), int(p))
        except ValueError:
            continue
    for c in sorted(d["collective"].unique()):
        if d.loc[d["collective"] == c, "message_bytes"].nunique() >= 2:
            cross[str(c)] = fit_cross_group(d, str(c))
    link = fit_link(d) if d["message_bytes"].nunique() >= 2 else None
    return CollectiveFit(per, cross, link)


# ----------------------------------------------------------------------------- validation

def _rel(pred: np.ndarray, obs: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(pred, float) - np.asarray(obs, float)) / np.asarray(obs, float)


def validate_collectives(df: pd.DataFrame) -> pd.DataFrame:
    """Held-out predictions: one row per measured point and scheme ('size' or 'devices')."""
    d = usable(df)
    d = d[d["processes"] == d["processes"].min()] if len(d) else d
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
    out["rel_error"] = _rel(out["predicted_s"], out["time_s"]) if len(out) else []
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
        out["rel_error"] = _rel(out["predicted_s"], out["time_s"])
        out["compute_only_rel_error"] = _rel(out["compute_only_s"], out["time_s"])
        out["concurrent_rel_error"] = _rel(out["concurrent_predicted_s"], out["time_s"])
        out["concurrent_only_rel_error"] = _rel(out["concurrent_s"], out["time_s"])
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


# ----------------------------------------------------------------------------- output

def profile_entries(a: CommAnalysis) -> dict[str, Any]:
    """The fitted α, β for `fitted_profile.json`: the link (FIT_COMM_KEYS), per collective and group size."""
    if a.fit is None:
        return {}
    out: dict[str, Any] = {}
    if a.fit.link is not None and math.isfinite(a.fit.link.bandwidth_bytes_per_s) and a.fit.link.alpha_s >= 0:
        from costmodel.comm import FIT_COMM_KEYS

        # the host devices of this machine are one node's devices: its intra-node link
        a_key, b_key = FIT_COMM_KEYS["intra"]
        out[a_key] = a.fit.link.alpha_s
        out[b_key] = a.fit.link.bandwidth_bytes_per_s
    return {**out,
        "source": "analysis.comm: WLS of measure.collectives timings on this machine",
        "alpha_beta": [
            {"collective": ab.collective, "devices": ab.devices, "alpha_s": ab.alpha_s,
             "beta_s_per_byte": ab.beta_s_per_byte,
             "bus_bandwidth_bytes_per_s": ab.bus_bandwidth_bytes_per_s}
            for ab in a.fit.per_group.values()
        ],
        "cross_group": [
            {"collective": cg.collective, "t0_s": cg.t0_s, "step_s": cg.step_s,
             "b_s_per_byte": cg.b_s_per_byte, "devices": list(cg.devices)}
            for cg in a.fit.cross.values()
        ],
    }


def to_json(a: CommAnalysis) -> dict[str, Any]:
    def records(df: pd.DataFrame) -> list[dict[str, Any]]:
        return json.loads(df.to_json(orient="records")) if len(df) else []

    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in a.summary.items()}
    return {"summary": summary, "alpha_beta": records(a.fit.table()) if a.fit else [],
            "validation": records(a.validation), "sharded": records(a.sharded),
            "ratios": records(a.ratios)}


def text_report(a: CommAnalysis) -> str:
    lines = ["Communication (analysis.comm)"]
    if a.fit is not None:
        t = a.fit.table()
        for _, r in t.sort_values(["collective", "devices"]).iterrows():
            lines.append(
                f"  {r['collective']:<15} p={r['devices']}: α = {r['alpha_s'] * 1e6:.1f} µs "
                f"[{r['alpha_ci_low_s'] * 1e6:.1f}, {r['alpha_ci_high_s'] * 1e6:.1f}], "
                f"bus bandwidth {r['bus_bandwidth_gb_per_s']:.2f} GB/s")
    if a.fit is not None and a.fit.link is not None:
        lk = a.fit.link
        lines.append(f"  one link for all (costmodel.comm's form t = α·s(p) + f(p)·V/B): α = "
                     f"{lk.alpha_s * 1e6:.1f} µs per step, B = {lk.bandwidth_bytes_per_s / 1e9:.2f} GB/s "
                     f"(median |error| {100 * lk.median_rel_error:.1f}% over {lk.n} points)")
    s = a.summary
    if "collective_heldout_size_median_rel_error" in s:
        lines.append(f"  held-out message sizes: median |error| "
                     f"{100 * s['collective_heldout_size_median_rel_error']:.1f}%")
    if "collective_heldout_devices_median_rel_error" in s:
        lines.append(f"  held-out device counts: median |error| "
                     f"{100 * s['collective_heldout_devices_median_rel_error']:.1f}%")
    if len(a.sharded):
        for _, r in a.sharded.sort_values(["dp", "tp", "method"]).iterrows():
            lines.append(
                f"  {r['method']:<5} dp={r['dp']},tp={r['tp']} ({r['processes']} proc): measured "
                f"{r['time_s'] * 1e3:.2f} ms, predicted {r['predicted_s'] * 1e3:.2f} ms "
                f"(compute {r['compute_only_s'] * 1e3:.2f} + comm {r['comm_predicted_s'] * 1e3:.2f})")
        lines.append(
            f"  sharded steps ({', '.join(s['sharded_layouts'])}): median |error| "
            f"{100 * s['sharded_step_median_rel_error']:.1f}% "
            f"(compute-only {100 * s['sharded_step_compute_only_median_rel_error']:.1f}%)")
        if math.isfinite(s.get("sharded_step_concurrent_median_rel_error", math.nan)):
            lines.append(
                f"  diagnostic, compute measured with all devices busy (concurrent) + comm: "
                f"{100 * s['sharded_step_concurrent_median_rel_error']:.1f}% "
                f"(concurrent alone {100 * s['sharded_step_concurrent_only_median_rel_error']:.1f}%)")
        if "lora_full_ratio_median_rel_error" in s:
            lines.append(
                f"  LoRA/full ratio: median |error| {100 * s['lora_full_ratio_median_rel_error']:.1f}% "
                f"(compute-only {100 * s['lora_full_ratio_compute_only_median_rel_error']:.1f}%)")
        lines.append(f"  target (both <= {100 * TARGET_REL_ERROR:.0f}% and better than compute-only): "
                     + ("met" if s.get("meets_target") else "NOT met"))
    return "\n".join(lines)


def load(folder: str | os.PathLike) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    from measure import comm_store

    return comm_store.read_table(folder, "collectives"), comm_store.read_table(folder, "sharded")


def has_comm(folder: str | os.PathLike) -> bool:
    from measure import comm_store

    return os.path.isdir(folder) and any(
        comm_store.files(folder, t)[1].exists() for t in ("collectives", "sharded"))


def from_folder(folder: str | os.PathLike | None) -> CommAnalysis | None:
    """The analysis of a folder's communication tables, None if it holds no collectives.csv
    (the hook `analysis.crossover` calls: a new section when the dataset has them)."""
    if folder is None or not has_comm(folder):
        return None
    coll, sharded = load(folder)
    if coll is None or not len(usable(coll)):
        return None
    return analyse(coll, sharded)


def _with_comm(prof: dict[str, Any], entries: dict[str, Any]) -> dict[str, Any]:
    """`prof` (a device profile dict) with the link's α, B under FIT_COMM_KEYS in ``extra``
    (numbers only: `HardwareProfile` reads them) and the per-collective fits under the
    top-level ``comm_fits`` (which `HardwareProfile` ignores)."""
    from costmodel.comm import FIT_COMM_KEYS

    entries = dict(entries)
    extra = prof.setdefault("extra", {})
    for keys in FIT_COMM_KEYS.values():  # scalars beside the rates, as costmodel reads them
        for k in keys:
            if k in entries:
                extra[k] = entries.pop(k)
    prof["comm_fits"] = entries
    return prof


def write(a: CommAnalysis, out: str, profile: str | None = None) -> list[str]:
    """comm_alpha_beta.csv, comm_validation.csv, comm_sharded.csv, comm_ratios.csv, and the
    fitted α, B: added to ``<out>/fitted_profile.json`` when the kernel analysis wrote one,
    else to a copy of the device profile `profile` written there, else ``comm_profile.json``."""
    os.makedirs(out, exist_ok=True)
    written = []
    tables = {"comm_alpha_beta.csv": a.fit.table() if a.fit else pd.DataFrame(),
              "comm_validation.csv": a.validation, "comm_sharded.csv": a.sharded,
              "comm_ratios.csv": a.ratios}
    for name, df in tables.items():
        if len(df):
            atomic_write_text(os.path.join(out, name), df.to_csv(index=False))
            written.append(name)
    entries = profile_entries(a)
    if not entries:
        return written
    path = os.path.join(out, "fitted_profile.json")
    source = path if os.path.isfile(path) else profile
    if source is not None:
        with open(source, encoding="utf-8") as fh:
            prof = json.load(fh)
        atomic_write_text(path, json.dumps(_with_comm(prof, entries), indent=2) + "\n")
        written.append("fitted_profile.json")
    else:
        atomic_write_text(os.path.join(out, "comm_profile.json"),
                          json.dumps(_with_comm({}, entries), indent=2) + "\n")
        written.append("comm_profile.json")
    return written


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(prog="python -m analysis.comm", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True,
                   help="folder with collectives.csv (python -m measure.collectives) and/or "
                        "sharded.csv (python -m measure.sharded)")
    p.add_argument("--out", help="write the comm_*.csv tables here (default: print only)")
    p.add_argument("--profile",
                   help="a device profile JSON (python -m measure.device): with --out, written "
                        "there as fitted_profile.json with the fitted link α, B, usable as "
                        "python -m costmodel --hardware")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_debug_flag(p)
    return p


PROG = "python -m analysis.comm"


def main(argv: Sequence[str] | None = None) -> int:
    return run(PROG, _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.data):
        raise UserError(f"--data {args.data} is not a folder")
    coll, sharded = load(args.data)
    if coll is None:
        raise UserError(f"{args.data} holds no collectives.csv (python -m measure.collectives --out {args.data})")
    if not len(usable(coll)):
        raise UserError(f"{args.data}/collectives.csv holds no successful measurement")
    if args.profile:
        from costmodel.hardware import HardwareProfile

        try:
            HardwareProfile.from_json(args.profile)
        except (OSError, ValueError) as exc:
            raise UserError(f"--profile {args.profile}: {one_line(exc)}") from None
        if not args.out:
            raise UserError("--profile needs --out (where fitted_profile.json goes)")
    a = analyse(coll, sharded)
    if args.out:
        write(a, args.out, args.profile)
    if args.json:
        print(json.dumps(to_json(a), indent=1))
    else:
        print(text_report(a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
