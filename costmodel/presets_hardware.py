"""Datasheet profiles of common NVIDIA GPUs, and `resolve_hardware` for names or measured JSON.

Every figure is a dense peak (no 2:4 structured sparsity: NVIDIA's headline tensor-core
numbers for A100 and later assume sparsity and are halved here) as printed on the datasheet
named in `source`. Keys of `peak_flops_per_s`:
- "float32": plain FP32 on the CUDA cores (no tensor cores), what an fp32 matmul gets
  with TF32 disabled. TF32 tensor-core peaks, where the part has them, are kept in
  `extra["tfloat32_flops_per_s"]`; they are not a storage dtype.
- "bfloat16" / "float16": tensor-core peak with FP32 accumulation (what mixed-precision
  training uses). Volta and Turing parts (V100, T4, Quadro RTX 8000) have no bfloat16;
  they list "float16" only and `HardwareProfile.peak("bfloat16")` falls back to it, which
  flatters bf16 on those parts (in practice frameworks emulate or refuse it).
- "float64": FP64 on the CUDA cores, where the datasheet gives it.

`extra["memory_bytes"]` is the datasheet capacity with GB taken as 1e9 bytes (usable
capacity as reported by the driver is within a few percent of it).

Default kernel overhead, `DEFAULT_KERNEL_OVERHEAD_S` = 5 µs per kernel. Basis: NVIDIA's
"Getting Started with CUDA Graphs" (A. Gray, 2019,
https://developer.nvidia.com/blog/cuda-graphs/) times a 2.9 µs kernel at 9.6 µs per launch
when each launch is synchronised and 3.8 µs when launches are queued back to back, i.e.
~1-7 µs of launch and synchronisation cost per kernel; eager frameworks add their own
dispatch on top, so 5 µs is a mid value for an un-graphed training step. It is a default,
not a measurement: a profile written by `python -m measure.device` replaces it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType

from costmodel.hardware import HardwareProfile

#: Fixed cost per kernel launch (launch + synchronisation); see the module docstring.
DEFAULT_KERNEL_OVERHEAD_S = 5e-6

_T = 1e12  # TFLOP/s
_GB = 1e9  # datasheet GB and GB/s are decimal


def _profile(name: str, *, fp32: float, half: float, bandwidth_gb_s: float, memory_gb: float,
             source: str, bf16: bool, tf32: float | None = None, fp64: float | None = None) -> HardwareProfile:
    peaks = {"float32": fp32 * _T, ("bfloat16" if bf16 else "float16"): half * _T}
    if bf16:
        peaks["float16"] = half * _T  # same tensor-core rate on Ampere, Hopper and Ada
    if fp64 is not None:
        peaks["float64"] = fp64 * _T
    extra = {"memory_bytes": memory_gb * _GB}
    if tf32 is not None:
        extra["tfloat32_flops_per_s"] = tf32 * _T
    return HardwareProfile(
        name=name,
        peak_flops_per_s=peaks,
        mem_bandwidth_bytes_per_s=bandwidth_gb_s * _GB,
        kernel_overhead_s=DEFAULT_KERNEL_OVERHEAD_S,
        source=source,
        measured=False,
        extra=extra,
    )


_PRESETS = (
    # Tesla V100 SXM2: FP64 7.8, FP32 15.7, Tensor (FP16) 125 TFLOPS; HBM2 900 GB/s; 32 GB.
    _profile("v100", fp32=15.7, half=125, fp64=7.8, bandwidth_gb_s=900, memory_gb=32, bf16=False,
             source="NVIDIA Tesla V100 GPU Accelerator datasheet (SXM2 column), "
                    "https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf"),
    # A100 SXM: FP64 9.7, FP32 19.5, TF32 156, BF16/FP16 312 TFLOPS dense; 40 GB HBM2 1,555 GB/s.
    _profile("a100-40gb", fp32=19.5, half=312, tf32=156, fp64=9.7, bandwidth_gb_s=1555, memory_gb=40, bf16=True,
             source="NVIDIA A100 Tensor Core GPU datasheet (A100 40GB SXM column), "
                    "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"),
    # Same chip, 80 GB HBM2e at 2,039 GB/s.
    _profile("a100-80gb", fp32=19.5, half=312, tf32=156, fp64=9.7, bandwidth_gb_s=2039, memory_gb=80, bf16=True,
             source="NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM column), "
                    "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"),
    # H100 SXM: FP64 34, FP32 67 TFLOPS; TF32 989 and BF16/FP16 1,979 TFLOPS *with sparsity*,
    # so 494.5 and 989.5 dense; 80 GB HBM3 at 3.35 TB/s.
    _profile("h100-sxm", fp32=67, half=989.5, tf32=494.5, fp64=34, bandwidth_gb_s=3350, memory_gb=80, bf16=True,
             source="NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column; sparse figures halved), "
                    "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"),
    # H200 SXM: same compute as H100 SXM; 141 GB HBM3e at 4.8 TB/s.
    _profile("h200", fp32=67, half=989.5, tf32=494.5, fp64=34, bandwidth_gb_s=4800, memory_gb=141, bf16=True,
             source="NVIDIA H200 Tensor Core GPU datasheet (H200 SXM column; sparse figures halved), "
                    "https://nvdam.widen.net/s/nb5zzzsjdf/hpc-datasheet-sc23-h200-datasheet-3002446"),
    # L40S: FP32 91.6; TF32 183, BF16/FP16 362.05 TFLOPS dense (366/733 with sparsity);
    # 48 GB GDDR6 at 864 GB/s.
    _profile("l40s", fp32=91.6, half=362.05, tf32=183, bandwidth_gb_s=864, memory_gb=48, bf16=True,
             source="NVIDIA L40S GPU datasheet, https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413"),
    # GeForce RTX 4090: FP32 82.6; FP16/BF16 tensor with FP32 accumulate 165.2 dense (GeForce
    # parts run FP32 accumulation at half the FP16-accumulate rate of 330.3); TF32 82.6;
    # 24 GB GDDR6X at 1,008 GB/s.
    _profile("rtx4090", fp32=82.6, half=165.2, tf32=82.6, bandwidth_gb_s=1008, memory_gb=24, bf16=True,
             source="NVIDIA Ada GPU Architecture whitepaper, Appendix A (GeForce RTX 4090 column, "
                    "FP32-accumulate tensor rates), "
                    "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf"),
    # Quadro RTX 8000: single precision 16.3, tensor (FP16) 130.5 TFLOPS; 48 GB GDDR6 at 672 GB/s.
    _profile("rtx8000", fp32=16.3, half=130.5, bandwidth_gb_s=672, memory_gb=48, bf16=False,
             source="NVIDIA Quadro RTX 8000 datasheet, "
                    "https://www.nvidia.com/content/dam/en-zz/Solutions/design-visualization/quadro-product-literature/quadro-rtx-8000-us-nvidia-946977-r1-web.pdf"),
    # T4: single precision 8.1, mixed precision (FP16/FP32) 65 TFLOPS; 16 GB GDDR6 at 320 GB/s.
    _profile("t4", fp32=8.1, half=65, bandwidth_gb_s=320, memory_gb=16, bf16=False,
             source="NVIDIA T4 Tensor Core GPU datasheet, "
                    "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf"),
)

#: Datasheet profiles by stable lower-case name.
HARDWARE: Mapping[str, HardwareProfile] = MappingProxyType({p.name: p for p in _PRESETS})


def resolve_hardware(name_or_path: str | os.PathLike) -> HardwareProfile:
    """A preset by name, or a measured profile from the JSON file at that path.

    ValueError (one line, listing the valid names) when it is neither.
    """
    key = os.fspath(name_or_path)
    if key in HARDWARE:
        return HARDWARE[key]
    if os.path.isfile(key):
        return HardwareProfile.from_json(key)
    raise ValueError(
        f"unknown hardware {key!r}: not a preset ({', '.join(HARDWARE)}) nor a profile JSON file"
    )
