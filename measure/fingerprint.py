"""Where and with what a process measures: the device fingerprint of a dataset's run.json.

`fingerprint()` imports JAX (when called, not on import); `fingerprint_differences` compares
two fingerprints on the entries that must agree for two sessions to share a dataset, cf.
pyperf's ``_CHECKED_METADATA``.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Fingerprint entries that must agree for two sessions to share a dataset.
CHECKED_FINGERPRINT: tuple[str, ...] = (
    "backend", "device_kind", "device_count", "platform_version", "cpu_model", "cpu_count",
    "cpu_threads_usable",  # a run pinned to fewer cores (taskset) is another machine
    "python", "jax", "jaxlib", "numpy", "xla_flags", "jax_config", "package_version",
)


#: Entries a device profile must share with the data it is a prior for: the device, the
#: CPU (model, cores) that drives it, and the libraries that compile the kernels.
PROFILE_CHECKED: tuple[str, ...] = (
    "backend", "device_kind", "device_count", "cpu_model", "cpu_count", "cpu_threads_usable",
    "jax", "jaxlib",
)


def profile_differences(profile_fp: Mapping[str, Any], data_fp: Mapping[str, Any]) -> list[str]:
    """'name: profile -> data' for each PROFILE_CHECKED entry both record and that differs."""
    return [
        f"{k}: {profile_fp[k]!r} -> {data_fp[k]!r}"
        for k in PROFILE_CHECKED
        if k in profile_fp and k in data_fp and str(profile_fp[k]) != str(data_fp[k])
    ]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def fingerprint() -> dict[str, Any]:
    """Where and with what this process measures (imports JAX)."""
    import jax
    import jaxlib
    import numpy as np

    devices = jax.devices()
    try:
        platform_version = str(devices[0].client.platform_version)
    except Exception:  # noqa: BLE001 -- best effort, differs across jaxlib versions
        platform_version = ""
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:
        threads = os.cpu_count() or 0
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "platform_version": platform_version,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "cpu_threads_usable": threads,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "scipy": _version("scipy"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
        "jax_config": {
            "jax_enable_x64": bool(jax.config.jax_enable_x64),
            "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
            "jax_disable_jit": bool(jax.config.jax_disable_jit),
        },
        "package_version": _version("lora-crossover"),
        "git_commit": _git_commit(),
        "os": platform.platform(),
    }


def fingerprint_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Names of the checked fingerprint entries that differ, as 'name: old -> new'."""
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in CHECKED_FINGERPRINT
        if old.get(k) != new.get(k)
    ]
