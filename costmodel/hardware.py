"""Hardware profiles: the few numbers a roofline needs, each with its source.

A profile is peak dense FLOP/s per dtype, memory bandwidth and a fixed overhead per kernel
launch. Profiles are data: the presets in `costmodel.presets_hardware` cite datasheets, and
`python -m measure.device` writes a measured one that `HardwareProfile.from_json` loads.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from costmodel.fileio import atomic_write_text

#: Bytes per element of each dtype the model knows.
DTYPE_BYTES: Mapping[str, int] = MappingProxyType(
    {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
)


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of `dtype`; ValueError naming the dtype if it is unknown."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}"
        ) from None


@dataclass(frozen=True)
class HardwareProfile:
    """Peak rates of one device.

    peak_flops_per_s: dense matmul FLOP/s per dtype (2 FLOPs per multiply-add).
    mem_bandwidth_bytes_per_s: sustained main-memory (HBM/DRAM) bandwidth.
    kernel_overhead_s: fixed time per kernel launch (launch + sync), added per op.
    source: where the numbers come from (a datasheet, or "measured by measure.device on ...").
    measured: True when the numbers are achieved rates measured on this device, not peaks.
    """

    name: str
    peak_flops_per_s: Mapping[str, float]
    mem_bandwidth_bytes_per_s: float
    kernel_overhead_s: float
    source: str = ""
    measured: bool = False
    extra: Mapping[str, float] = field(default_factory=dict)
    #: where a measured profile was measured (measure.fingerprint.PROFILE_CHECKED entries:
    #: backend, device kind, CPU model and cores, jax versions); {} for a datasheet profile
    fingerprint: Mapping[str, str | int | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.peak_flops_per_s:
            raise ValueError(f"profile {self.name!r}: peak_flops_per_s is empty")
        for dtype, rate in self.peak_flops_per_s.items():
            dtype_bytes(dtype)
            if not (math.isfinite(rate) and rate > 0):
                raise ValueError(f"profile {self.name!r}: peak FLOP/s for {dtype} must be > 0")
        if not (math.isfinite(self.mem_bandwidth_bytes_per_s) and self.mem_bandwidth_bytes_per_s > 0):
            raise ValueError(f"profile {self.name!r}: memory bandwidth must be > 0")
        if not (math.isfinite(self.kernel_overhead_s) and self.kernel_overhead_s >= 0):
            raise ValueError(f"profile {self.name!r}: kernel overhead must be >= 0")
        object.__setattr__(self, "peak_flops_per_s", MappingProxyType(dict(self.peak_flops_per_s)))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        object.__setattr__(self, "fingerprint", MappingProxyType(dict(self.fingerprint)))

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s at `dtype`; float16 falls back to bfloat16 and vice versa."""
        for candidate in (dtype, {"float16": "bfloat16", "bfloat16": "float16"}.get(dtype)):
            if candidate is not None and candidate in self.peak_flops_per_s:
                return self.peak_flops_per_s[candidate]
        raise ValueError(
            f"profile {self.name!r} has no peak FLOP/s for {dtype}; "
            f"it knows {', '.join(self.peak_flops_per_s)}"
        )

    def critical_intensity(self, dtype: str) -> float:
        """FLOPs per byte above which a kernel is compute bound: peak / bandwidth."""
        return self.peak(dtype) / self.mem_bandwidth_bytes_per_s

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "peak_flops_per_s": dict(self.peak_flops_per_s),
            "mem_bandwidth_bytes_per_s": self.mem_bandwidth_bytes_per_s,
            "kernel_overhead_s": self.kernel_overhead_s,
            "source": self.source,
            "measured": self.measured,
            "extra": dict(self.extra),
            **({"fingerprint": dict(self.fingerprint)} if self.fingerprint else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "HardwareProfile":
        """Build a profile from `to_dict`'s form; extra keys are kept under `extra` if numeric."""
        required = ("name", "peak_flops_per_s", "mem_bandwidth_bytes_per_s", "kernel_overhead_s")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"hardware profile lacks {', '.join(missing)}")
        try:
            return cls(
                name=str(data["name"]),
                peak_flops_per_s={str(k): float(v) for k, v in dict(data["peak_flops_per_s"]).items()},
                mem_bandwidth_bytes_per_s=float(data["mem_bandwidth_bytes_per_s"]),
                kernel_overhead_s=float(data["kernel_overhead_s"]),
                source=str(data.get("source", "")),
                measured=bool(data.get("measured", False)),
                # numbers only: analysis writes nested tables beside them (extra["comm"])
                extra={str(k): float(v) for k, v in dict(data.get("extra", {})).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)},
                fingerprint={str(k): v for k, v in dict(data.get("fingerprint", {})).items()
                             if isinstance(v, (str, int, float)) and not isinstance(v, bool)},
            )
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"malformed hardware profile: {exc}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "HardwareProfile":
        """Load a profile written by `to_json` or by `python -m measure.device`."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise ValueError(f"hardware profile {os.fspath(path)!r} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"hardware profile {os.fspath(path)!r} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"hardware profile {os.fspath(path)!r} is not a JSON object")
        return cls.from_dict(data)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file + os.replace)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
