"""α-β fits of collectives: per collective and group size, across group sizes, one link for all.

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

Validated and used to predict sharded steps in `analysis.comm_predict`; reported by
`analysis.comm` (`python -m analysis.comm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

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
    return LinkFit(alpha, 1.0 / inv_b if inv_b > 0 else math.inf, float(np.median(relative_error(pred, y))), len(d))


def usable(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["error"] == "") & (df["time_median_s"] > 0)].copy()


#: The dtype a fit prefers when a table holds several: the harness's default.
PREFERRED_DTYPE = "float32"


def fit_dtype(df: pd.DataFrame) -> str | None:
    """The one dtype a fit uses: float32 when present, else the dtype with the most rows.

    Strata are not pooled (issue 12): a reduction's arithmetic and its wire bytes per element
    differ by dtype, so one α, β per (collective, devices) is fitted to one dtype only."""
    if not len(df):
        return None
    counts = df["dtype"].astype(str).value_counts()
    return PREFERRED_DTYPE if PREFERRED_DTYPE in counts.index else str(counts.index[0])


def one_stratum(df: pd.DataFrame) -> pd.DataFrame:
    """The usable rows of one transport (the fewest processes) and one dtype (`fit_dtype`)."""
    d = usable(df)
    if not len(d):
        return d
    d = d[d["processes"] == d["processes"].min()]  # one transport per fit
    return d[d["dtype"].astype(str) == fit_dtype(d)]


@dataclass
class CollectiveFit:
    per_group: dict[tuple[str, int], AlphaBeta]
    cross: dict[str, CrossGroup]
    link: LinkFit | None = None
    dtype: str | None = None
    #: dtypes present in the table but left out of this fit (never pooled)
    dtypes_left_out: tuple[str, ...] = ()

    def predict_s(self, collective: str, devices: int, message_bytes: float) -> float:
        ab = self.per_group.get((collective, int(devices)))
        if ab is not None:
            return float(ab.predict_s(message_bytes))
        if collective in self.cross:
            return float(self.cross[collective].predict_s(devices, message_bytes))
        raise KeyError(f"no fit for {collective} on {devices} devices")

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([
            {"collective": ab.collective, "devices": ab.devices, "dtype": self.dtype, "n_sizes": ab.n,
             "alpha_s": ab.alpha_s, "alpha_ci_low_s": ab.alpha_ci_s[0], "alpha_ci_high_s": ab.alpha_ci_s[1],
             "beta_s_per_byte": ab.beta_s_per_byte, "beta_ci_low": ab.beta_ci[0], "beta_ci_high": ab.beta_ci[1],
             "bus_bandwidth_gb_per_s": ab.bus_bandwidth_bytes_per_s / 1e9}
            for ab in self.per_group.values()
        ])


def fit_collectives(df: pd.DataFrame) -> CollectiveFit:
    d = one_stratum(df)
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
    dtype = fit_dtype(d)
    left_out = tuple(sorted(set(usable(df)["dtype"].astype(str)) - {dtype})) if dtype else ()
    return CollectiveFit(per, cross, link, dtype, left_out)


def relative_error(pred: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """|pred − obs| / obs, elementwise."""
    return np.abs(np.asarray(pred, float) - np.asarray(obs, float)) / np.asarray(obs, float)
