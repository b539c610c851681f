"""Model error from out-of-sample residuals: split-conformal bands that widen out of range.

A bootstrap of the parameters says how well the data pin the fitted *mean* down; it says
nothing about how far a new measurement lands from it, nor how wrong the form itself is. Both
are in the out-of-sample residuals of `analysis.validate`:

* in range, the 95% conformal quantile q_in of |log(t / t̂_cv)| over the cross-validated
  predictions (`cv5`, folds over shapes): with n exchangeable residuals the
  ⌈(n+1)·0.95⌉-th smallest (Vovk, Gammerman & Shafer, "Algorithmic Learning in a Random
  World", 2005; Lei et al., JASA 2018, split conformal);
* out of range, the same quantile q_out of the out-of-scale residuals (train on the small
  half, predict the large), which sit at a median distance δ_out = log(d / d_train_max) beyond
  the training half's largest width.

At a width d the band half-width (in log time) is q(d) = q_in + max(q_out − q_in, 0) ·
max(log(d / d_max), 0) / δ_out, with d_max the largest measured width: linear growth in log
distance, calibrated by the one extrapolation the data let us test. A band
[t̂·e^−q, t̂·e^+q] is positive whenever t̂ is. The ratio t_lora / t_full gets the same from the
residuals of the per-config log ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from costmodel.vocab import LORA_METHODS

LEVEL = 0.95


def conformal_quantile(abs_resid: np.ndarray, level: float = LEVEL) -> float:
    """The ⌈(n+1)·level⌉-th smallest |residual| (the largest when that exceeds n); NaN if none."""
    r = np.sort(np.asarray(abs_resid, dtype=float)[np.isfinite(abs_resid)])
    if r.size == 0:
        return math.nan
    k = min(int(math.ceil((r.size + 1) * level)), r.size)
    return float(r[k - 1])


@dataclass(frozen=True)
class Conformal:
    """Band half-widths in log units; see the module docstring."""

    q_time_in: float
    q_time_out: float
    q_ratio_in: float
    q_ratio_out: float
    delta_out: float  # median log distance of the out-of-scale test rows past the training max
    max_width: float

    def _grow(self, q_in: float, q_out: float, width) -> np.ndarray:
        w = np.asarray(width, dtype=float)
        q_in = 0.0 if not np.isfinite(q_in) else q_in
        extra = 0.0
        if np.isfinite(q_out) and np.isfinite(self.delta_out) and self.delta_out > 0:
            extra = max(q_out - q_in, 0.0) / self.delta_out
        return q_in + extra * np.maximum(np.log(w / self.max_width), 0.0)

    def q_time(self, width) -> np.ndarray:
        return self._grow(self.q_time_in, self.q_time_out, width)

    def q_ratio(self, width) -> np.ndarray:
        return self._grow(self.q_ratio_in, self.q_ratio_out, width)


def _log_ratio_resid(rows: pd.DataFrame, pred_ms: np.ndarray) -> np.ndarray:
    """Per config and LoRA method: log(measured ratio) − log(predicted ratio) to full."""
    f = pd.DataFrame({"cid": rows["config_id"].to_numpy(), "method": rows["method"].to_numpy(),
                      "t": rows["time_ms"].to_numpy(), "p": pred_ms})
    f = f[np.isfinite(f["p"]) & (f["p"] > 0)]
    wide_t = f.pivot(index="cid", columns="method", values="t")
    wide_p = f.pivot(index="cid", columns="method", values="p")
    out = []
    for m in LORA_METHODS:
        if m in wide_t and "full" in wide_t:
            r = np.log(wide_t[m] / wide_t["full"]) - np.log(wide_p[m] / wide_p["full"])
            out.append(r.to_numpy(dtype=float))
    return np.concatenate(out) if out else np.array([])


def from_validation(rows: pd.DataFrame, cv_pred: np.ndarray | None,
                    os_pred: np.ndarray | None, train_max_width: float) -> Conformal:
    """The bands of the chosen form from its `validate` predictions (ms, aligned with rows)."""
    t = rows["time_ms"].to_numpy(dtype=float)
    d = np.sqrt(rows["embed"].to_numpy(float) * rows["hidden"].to_numpy(float))
    max_w = float(d.max())
    nan = math.nan

    def q_of(pred):
        if pred is None:
            return nan, nan
        ok = np.isfinite(pred) & (pred > 0)
        if not ok.any():
            return nan, nan
        qt = conformal_quantile(np.abs(np.log(t[ok] / pred[ok])))
        sub = rows[ok]
        qr = conformal_quantile(np.abs(_log_ratio_resid(sub, pred[ok])))
        return qt, qr

    qt_in, qr_in = q_of(cv_pred)
    qt_out, qr_out = q_of(os_pred)
    delta = nan
    if os_pred is not None and np.isfinite(os_pred).any() and train_max_width > 0:
        delta = float(np.median(np.log(d[np.isfinite(os_pred)] / train_max_width)))
    return Conformal(qt_in, qt_out, qr_in, qr_out, delta, max_w)
