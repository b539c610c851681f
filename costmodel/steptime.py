"""Time of one training step on a hardware profile: the roofline over the step's parts,
at documented default efficiencies, a measured profile's achieved rates, or rates fitted to
this project's own timings (`FittedRates`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from costmodel.hardware import HardwareProfile
from costmodel.roofline import RooflineTime, roofline
from costmodel.step import StepCost


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the profile's peaks a real step achieves, and where they come from.

    flops: achieved / peak FLOP/s; bandwidth: achieved / peak bytes/s; overhead: multiplier
    on the per-kernel overhead. label: "unfitted", "measured" or "fitted".
    """

    flops: float
    bandwidth: float
    overhead: float
    label: str
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("flops", "bandwidth"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ValueError(f"efficiency {name} must be in (0, 1], got {v}")
        if not self.overhead >= 0:
            raise ValueError(f"overhead multiplier must be >= 0, got {self.overhead}")


#: Documented defaults for datasheet profiles, not fitted to any measurement:
#: - 0.75 of peak FLOP/s: large cuBLAS GEMMs reach roughly 70-90% of the tensor-core peak
#:   (NVIDIA, "Matrix Multiplication Background User's Guide", Deep Learning Performance
#:   docs), less at small or misaligned shapes;
#: - 0.8 of peak bandwidth: microbenchmarks reach ~83% of V100's 900 GB/s (750 GB/s; Jia et
#:   al. 2018, "Dissecting the NVIDIA Volta GPU Architecture via Microbenchmarking", arXiv:1804.06826);
#: - the profile's per-kernel overhead as is.
UNFITTED = Efficiency(0.75, 0.8, 1.0, "unfitted",
                      "documented default efficiencies (0.75 of peak FLOP/s, 0.8 of peak bandwidth); "
                      "not fitted to measurements")
@dataclass(frozen=True)
class FittedRates:
    """Rates fitted to measured timings (`analysis.fit`'s additive form) for one device:

        t = dispatch_s + flops / flops_per_s · λ_m + bytes / bytes_per_s + kernels · kernel_overhead_s

    with λ_m the LoRA methods' compute multiplier (1 for full). `analysis` hands them over
    in a profile JSON's `extra` under `FIT_KEYS`, or directly to `step_time(fitted=...)`.
    The fit's result-buffer term (the single-layer benchmark returns its gradients in fresh
    buffers) is left out: a training step that updates its weights in place returns none.
    """

    flops_per_s: float
    bytes_per_s: float
    kernel_overhead_s: float
    dispatch_s: float = 0.0
    lora_multiplier: float = 1.0
    lora_merged_multiplier: float = 1.0
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("flops_per_s", "bytes_per_s", "lora_multiplier", "lora_merged_multiplier"):
            if not getattr(self, name) > 0:
                raise ValueError(f"fitted {name} must be > 0, got {getattr(self, name)}")
        for name in ("kernel_overhead_s", "dispatch_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"fitted {name} must be >= 0, got {getattr(self, name)}")

    def multiplier(self, method: str) -> float:
        return {"lora": self.lora_multiplier, "lora_merged": self.lora_merged_multiplier}.get(method, 1.0)

    @classmethod
    def from_profile(cls, profile: HardwareProfile, level: str = "auto") -> "FittedRates | None":
        """The rates in `profile.extra`, else None.

        level ``layer``: those fitted on single layers (`FIT_KEYS`); ``step``: those fitted on
        whole training steps (`STEP_FIT_KEYS`, written by `analysis` for a `models` dataset);
        ``auto``: the step-level rates when the profile has them, else the layer-level ones.
        Each set needs its first three keys.
        """
        if level not in ("auto", "layer", "step"):
            raise ValueError(f"unknown level {level!r}; choose auto, layer or step")
        extra = profile.extra
        for lvl, keys, what in (("step", STEP_FIT_KEYS, "whole training steps"),
                                ("layer", FIT_KEYS, "layer kernels")):
            if level not in ("auto", lvl) or not all(k in extra for k in list(keys)[:3]):
                continue
            values = {field_: float(extra[key]) for key, field_ in keys.items() if key in extra}
            return cls(**values, note=f"rates fitted to timings of {what} on this device ({profile.name})")
        return None


_LARGEST = float(np.finfo(float).max)

#: `HardwareProfile.extra` key -> `FittedRates` field; the first three are required.
FIT_KEYS: Mapping[str, str] = MappingProxyType({
    "fit_flops_per_s": "flops_per_s",
    "fit_bytes_per_s": "bytes_per_s",
    "fit_kernel_overhead_s": "kernel_overhead_s",
    "fit_dispatch_s": "dispatch_s",
    "fit_lora_multiplier": "lora_multiplier",
    "fit_lora_merged_multiplier": "lora_merged_multiplier",
})
#: The same rates fitted on whole training steps (`analysis.wholemodel`); preferred by
#: `step_time` when a profile carries both.
STEP_FIT_KEYS: Mapping[str, str] = MappingProxyType({f"step_{k}": v for k, v in FIT_KEYS.items()})


def efficiency_for(profile: HardwareProfile) -> Efficiency:
    """Achieved rates (efficiency 1) when the profile was measured; otherwise the documented
    unfitted defaults. (Fitted rates, when the profile carries them, take precedence in
    `step_time`; see `FittedRates`.)"""
    if profile.measured:
        return Efficiency(1.0, 1.0, 1.0, "measured",
                          f"achieved rates measured on {profile.name}; no fitted factors")
    return UNFITTED


@dataclass(frozen=True)
class StepTime:
    """Time of a whole step (seconds, arrays over the step's shapes).

    basis: "unfitted" (datasheet peaks × documented default efficiencies), "measured"
    (a measured profile's achieved rates) or "fitted" (rates fitted to timings); note says
    more. time_s is the roofline estimate Σ max(T_math, T_mem) + overhead for the first two,
    and the fitted additive form (the roofline's upper bound plus a dispatch cost) for
    "fitted".
    """

    time_s: np.ndarray
    t_math_s: np.ndarray
    t_mem_s: np.ndarray
    t_overhead_s: np.ndarray
    lower_bound_s: np.ndarray
    upper_bound_s: np.ndarray
    part_time_s: Mapping[str, np.ndarray]
    tokens_per_s: np.ndarray
    basis: str
    note: str
    hardware: str
    efficiency: Efficiency | None = None
    fitted: FittedRates | None = None


def step_time(cost: StepCost, profile: HardwareProfile, efficiency: Efficiency | None = None,
              fitted: FittedRates | None = None) -> StepTime:
    """Time of one step on `profile`, per op from `costmodel.roofline`.

    Unfitted or measured: each op takes max(flops / (e_f · peak), bytes / (e_b · bandwidth))
    + kernels · e_o · overhead, at the peak of the precision's compute dtype (the optimizer's
    elementwise ops are memory bound, so its dtype does not matter); the efficiencies are
    `efficiency` or `efficiency_for(profile)`.
    Fitted (`fitted`, or `FittedRates.from_profile(profile)`): the additive form the rates
    were fitted with, dispatch + Σ (flops·λ_m / F + bytes / B + kernels · τ).
    `basis` and `note` say which was used.
    """
    dtype = cost.spec.prec.compute_dtype
    rates = fitted
    if rates is None and efficiency is None:
        rates = FittedRates.from_profile(profile)
    eff = None
    if rates is not None:
        # a rate the fit left unbounded (its term not identified by the data: infinite) costs
        # nothing; the largest float stands for it, as a profile's rates must be finite
        peak = min(rates.flops_per_s, _LARGEST)
        bandwidth, overhead = min(rates.bytes_per_s, _LARGEST), rates.kernel_overhead_s
        basis, note = "fitted", rates.note or "rates fitted to measurements"
    else:
        eff = efficiency or efficiency_for(profile)
        peak = profile.peak(dtype) * eff.flops
        bandwidth = profile.mem_bandwidth_bytes_per_s * eff.bandwidth
        overhead = profile.kernel_overhead_s * eff.overhead
        basis, note = eff.label, eff.note
    derated = HardwareProfile(name=profile.name, peak_flops_per_s={dtype: peak},
                              mem_bandwidth_bytes_per_s=bandwidth, kernel_overhead_s=overhead,
                              source=profile.source, measured=profile.measured)
    times: dict[str, RooflineTime] = {name: roofline(c, derated, dtype) for name, c in cost.parts.items()}
    if rates is not None and rates.multiplier(cost.spec.method) != 1.0:
        # λ_m was fitted on layers that carry adapters: it scales the compute of the trained
        # blocks only, not the embeddings, head, frozen blocks or optimizer, which are the
        # same arithmetic under every method.
        slow = HardwareProfile(name=profile.name, peak_flops_per_s={dtype: peak / rates.multiplier(cost.spec.method)},
                               mem_bandwidth_bytes_per_s=bandwidth, kernel_overhead_s=overhead,
                               source=profile.source, measured=profile.measured)
        for name in ("first_block", "middle_blocks"):
            times[name] = roofline(cost.parts[name], slow, dtype)
    total = {k: sum((getattr(rt, k) for rt in times.values()), np.zeros(()))
             for k in ("t_math_s", "t_mem_s", "t_overhead_s", "lower_bound_s", "upper_bound_s")}
    if rates is not None:
        part_time = {name: rt.upper_bound_s for name, rt in times.items()}
        part_time["dispatch"] = np.asarray(rates.dispatch_s)
        total["upper_bound_s"] = total["upper_bound_s"] + rates.dispatch_s
        time_s = total["upper_bound_s"]
    else:
        part_time = {name: rt.time_s for name, rt in times.items()}
        time_s = sum(part_time.values(), np.zeros(()))
    return StepTime(
        time_s=time_s,
        **total,
        part_time_s=MappingProxyType(part_time),
        tokens_per_s=cost.tokens / time_s,
        basis=basis,
        note=note,
        hardware=profile.name,
        efficiency=eff,
        fitted=rates,
    )
