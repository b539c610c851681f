"""The fitted parameters as physical factors (FLOP/s, bytes/s, µs per kernel and per call,
LoRA multipliers) with their intervals, and the device profile's priors that bound them.

`analysis.fit` estimates the design coefficients (ms per GFLOP, per GB, per kernel, per call);
this module turns them into `Factor`s, once, with stable keys, and holds the rule by which a
measured overhead bounds its term (`bounds_of`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.design import LOG_FORMS
from costmodel.vocab import LORA_METHODS

CI_LEVEL = 0.95

#: An overhead with a device-profile value v (per kernel, per call) is held in
#: [0, v · OVERHEAD_TOLERANCE[term]]: its physical sign below, and above the profile's value
#: with a tolerance. `measure.device` times a chain of dependent 8×8 dots and an empty call
#: alone; inside a real call the same overhead meets other cache and scheduling states, so the
#: fit may move it up, but not past this factor. No lower end but 0: most kernels a LoRA call
#: adds are small fusions (scale, add), which XLA's CPU runtime runs for far less than a dot
#: thunk (the kernel-overhead probe), so a floor at v / T would assert what nothing measured
#: (with one, the batch-2 fitted d* followed the floor: `benchmarks/stability.py`).
#: Per kernel 3. Per call 10: the probe's empty call passes and returns one buffer each way,
#: a training call many more (the attention layer 8 under full fine-tuning, 13 under LoRA:
#: input, parameters, loss, gradients; dicts of them to flatten), each about 1 µs on the CI
#: CPU against 10 µs for the empty call (`python benchmarks/bench_device.py` prints both). The
#: fits of the 30 cold runs that `benchmarks/stability.py --keep` kept on 2026-12-02 put the
#: per-call time at 0.7–5.7 times the empty call, two at 8.9 and 10 (the cap; `--reanalyse`
#: prints each beside the profile's); a box of 3 cut into that, and the per-kernel time, the
#: term beside it, took up the rest.
OVERHEAD_TOLERANCE = {"kernels": 3.0, "Intercept": 10.0}

#: Terms whose device-profile value also enters the fit as a prior (mixed estimation, Theil &
#: Goldberger, Int. Econ. Rev. 2(1), 1961): one pseudo-observation "term = v" with standard
#: deviation PRIOR_REL_SD · v, weighted against the rows by the fit's own residual scale. The
#: per-kernel time only: the data see it through the few kernels LoRA adds to a call, a few µs
#: in tens, so fitted from them alone it moved the batch-2 fitted d* by a factor 3 between
#: cold runs (89, 29, 44 in one `benchmarks/stability.py` check of 2026-12-02). The
#: dispatch time is in every row alike and cancels in LoRA/full; the data pin it themselves.
PRIOR_TERMS = ("kernels",)
#: The prior's standard deviation relative to the profile's value: 95% of it within [0, 2v].
#: The probe times 8×8 dot thunks, and most kernels XLA adds for LoRA are small fusions
#: (`benchmarks/kernel_counts.py`), cheaper per kernel, so the sweep's mean per-kernel time may lie below
#: v; the cold runs' own probes gave 0.46–1.02 µs, most 0.69–0.92 (`benchmarks/stability.py`
#: prints each).
PRIOR_REL_SD = 0.5


def priors_from_profile(profile) -> dict[str, float]:
    """Prior values (design units, ms) of the overhead terms from a measured device profile:
    per kernel (`kernel_overhead_s`) and per call (`extra["dispatch_overhead_s"]`, written by
    `measure.device`). Empty without a profile."""
    if profile is None:
        return {}
    out = {"kernels": float(profile.kernel_overhead_s) * 1e3}
    dispatch = profile.extra.get("dispatch_overhead_s")
    if dispatch is not None and np.isfinite(dispatch) and dispatch >= 0:
        out["Intercept"] = float(dispatch) * 1e3
    return out


@dataclass(frozen=True)
class Factor:
    """One fitted factor as a physical quantity with its 95% interval."""

    name: str
    estimate: float
    ci_low: float
    ci_high: float
    unit: str
    note: str = ""
    #: fitted | at_bound (an overhead held at an end of its box around the device profile's
    #: measured value: the data alone put it outside) | dropped (a rate at its bound 0: the
    #: data cannot identify it)
    status: str = "fitted"
    #: A stable key (``flop_rate``, ``byte_rate``, ``result_rate``, ``kernel_time``,
    #: ``dispatch_time``, ``lora_multiplier_lora``, ...); `name` is for people.
    key: str = ""
    #: The physical box the estimate was held in, in the factor's unit (NaN: unbounded).
    lower_bound: float = float("nan")
    upper_bound: float = float("nan")
    #: The prior the fit used for it (`PRIOR_TERMS`), mean and standard deviation in the
    #: factor's unit (NaN: none).
    prior_mean: float = float("nan")
    prior_sd: float = float("nan")


def prior_sds(priors: dict[str, float]) -> dict[str, float]:
    """The prior's standard deviation (design units) of each `PRIOR_TERMS` term with a
    positive profile value: PRIOR_REL_SD · v."""
    return {t: PRIOR_REL_SD * v for t, v in priors.items() if t in PRIOR_TERMS and v > 0}


def bounds_of(term: str, priors: dict[str, float]) -> tuple[float, float]:
    """The box (design units) a physical term is held in: [0, v·T] with a positive
    device-profile value v (T = `OVERHEAD_TOLERANCE[term]`), else [0, inf)."""
    v = priors.get(term)
    if v is not None and v > 0:
        return 0.0, v * OVERHEAD_TOLERANCE[term]
    return 0.0, np.inf


def critical_value(df: int | None = None) -> float:
    """Two-sided `CI_LEVEL` critical value: Student's t with `df` degrees of freedom (G − 1
    for G clusters: the cluster-robust covariance has G − 1, not n − p; Cameron & Miller,
    J. Human Resources 2015, §VI.B), the normal one when df is None."""
    q = 0.5 + CI_LEVEL / 2
    return float(stats.norm.ppf(q) if df is None else stats.t.ppf(q, max(int(df), 1)))


def _rate_from_inverse(beta: float, se: float, scale: float, z: float
                       ) -> tuple[float, float, float]:
    """A rate r = scale/β with the interval from β's (monotone inversion); inf when β's
    interval reaches 0 (the data cannot bound the rate from above)."""
    lo_b, hi_b = beta - z * se, beta + z * se
    est = scale / beta if beta > 0 else np.inf
    lo = scale / hi_b if hi_b > 0 else np.inf
    hi = scale / lo_b if lo_b > 0 else np.inf
    return est, lo, hi


#: Stable keys of the factors of the additive forms: design column -> (key, name, unit, note).
RATE_FACTORS = {
    "gflops": ("flop_rate", "effective FLOP/s", "FLOP/s", "dense compute rate"),
    "gbytes": ("byte_rate", "effective bytes/s", "bytes/s", "memory traffic rate"),
    "gresult": ("result_rate", "result-buffer bytes/s", "bytes/s",
                "first touch of the returned gradients' fresh buffers"),
}
OVERHEAD_FACTORS = {
    "kernels": ("kernel_time", "time per kernel", "per launched op"),
    "Intercept": ("dispatch_time", "dispatch per call", "fixed cost of one call"),
}


def factors_of(form: str, cols: list[str], params: np.ndarray, cov: np.ndarray,
             fixed: dict[str, float] | None = None, df: int | None = None,
             priors: dict[str, float] | None = None, tied: Sequence[str] = ()
             ) -> tuple[Factor, ...]:
    z = critical_value(df)
    priors = priors or {}
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    idx = {c: j for j, c in enumerate(cols)}
    out: list[Factor] = []
    if form in LOG_FORMS:
        j = idx["Intercept"]
        if form == "gamma_log_roofline":
            jr = idx["log_roof"]
            out.append(Factor("elasticity of time in roofline time", params[jr],
                              params[jr] - z * se[jr], params[jr] + z * se[jr], "",
                              "1: time proportional to the roofline", key="roofline_elasticity"))
        out.append(Factor("time / roofline (all methods)" if form == "gamma_log_offset"
                          else "time / roofline at 1 ms", *np.exp(
            [params[j], params[j] - z * se[j], params[j] + z * se[j]]), "x",
            "measured time over the device profile's roofline", key="roofline_scale"))
        for m in LORA_METHODS:
            if m in idx:
                j = idx[m]
                out.append(Factor(f"LoRA multiplier ({m})", *np.exp(
                    [params[j], params[j] - z * se[j], params[j] + z * se[j]]), "x",
                    f"{m} time over full's at equal roofline time", key=f"lora_multiplier_{m}"))
        return tuple(out)
    # ms per GFLOP -> FLOP/s: 1e9 FLOP / (beta * 1e-3 s); a rate at its bound 0 is unbounded.
    for col, (key, name, unit, note) in RATE_FACTORS.items():
        if col in idx:
            f, lo, hi = _rate_from_inverse(params[idx[col]], se[idx[col]], 1e12, z)
            out.append(Factor(name, f, lo, hi, unit, note, key=key, lower_bound=0.0))
        else:
            out.append(Factor(name, np.inf, np.inf, np.inf, unit,
                              "not identified: its time per unit fitted at the bound 0",
                              "dropped", key=key, lower_bound=0.0))
    sds = prior_sds(priors)
    for col, (key, name, note) in OVERHEAD_FACTORS.items():
        lo_b, hi_b = bounds_of(col, priors)
        box = dict(key=key, lower_bound=lo_b * 1e3, upper_bound=hi_b * 1e3)
        if col in sds:
            box.update(prior_mean=priors[col] * 1e3, prior_sd=sds[col] * 1e3)
            note = (f"{note}; prior {priors[col] * 1e3:.3g} ± {sds[col] * 1e3:.2g} us "
                    "(the device profile's)")
        if col in idx:
            j = idx[col]
            out.append(Factor(name, params[j] * 1e3, max((params[j] - z * se[j]) * 1e3,
                                                         box["lower_bound"]),
                              min((params[j] + z * se[j]) * 1e3, box["upper_bound"]), "us", note,
                              **box))
        elif fixed and col in fixed and fixed[col] > 0:
            v = fixed[col] * 1e3
            out.append(Factor(name, v, v, v, "us", f"not identified: held at the upper end of "
                              f"its box, the device profile's {priors[col] * 1e3:.3g} us "
                              f"x {OVERHEAD_TOLERANCE[col]:g}", "at_bound", **box))
        else:
            out.append(Factor(name, 0.0, 0.0, 0.0, "us",
                              "not identified: fitted at the bound 0", "dropped", **box))
    if "gflops" not in idx:
        return tuple(out)
    jf = idx["gflops"]
    for m in LORA_METHODS:
        name = f"gflops:{m}"
        if m in tied:
            out.append(Factor(f"LoRA multiplier ({m})", 0.0, 0.0, 0.0, "x",
                              "not identified: held at its bound 0", "at_bound",
                              key=f"lora_multiplier_{m}", lower_bound=0.0))
            continue
        if name not in idx:
            continue
        jm = idx[name]
        # lambda = (b_f + b_m) / b_f = 1 + b_m / b_f; delta method for the ratio.
        ratio = params[jm] / params[jf]
        grad = np.zeros(len(params))
        grad[jm] = 1.0 / params[jf]
        grad[jf] = -params[jm] / params[jf] ** 2
        se_r = float(np.sqrt(max(grad @ cov @ grad, 0.0)))
        out.append(Factor(f"LoRA multiplier ({m})", 1 + ratio, 1 + ratio - z * se_r,
                          1 + ratio + z * se_r, "x",
                          f"time per FLOP under {m} over full's (delta method)",
                          key=f"lora_multiplier_{m}", lower_bound=0.0))
    return tuple(out)
