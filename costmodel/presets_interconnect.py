"""Datasheet interconnects: per-direction bandwidth per device and per-step latency α.

Bandwidth B is what ONE device sends in one direction (a ring sends and receives at the
same time). NVIDIA datasheets quote NVLink and PCIe as the sum of both directions, so they
are halved here; network ports are quoted per direction (200 Gb/s = 25 GB/s).

Latency α is NCCL's own per-step estimate for ring collectives with its Simple protocol
(the one large messages use): `hwLat` in NVIDIA NCCL's src/graph/tuning.cc at commit
01afd20a77b5804e0ecf1042509dd9d20ebf9e93 (2020; table "hwLat", row Ring, column
Simple): NVLink 3.4 µs, PCI 5.7 µs, network 9.6 µs per step. Later releases keep NVLink
and PCI and raise the network figure to 14.0 µs (e.g. commit
b6475625fbcaa2c3c0e50eed2fa1255d7514d4a2), so α_net here is the older, lower one. It is
NCCL's tuning model, not a measurement; `python -m measure.collectives` and `analysis` fit α and B on the
machine at hand, and a fitted profile replaces these (`costmodel.comm.Cluster.with_fitted`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from costmodel.comm import Interconnect

_GB = 1e9  # datasheet GB/s are decimal
_NCCL = ("α: NCCL src/graph/tuning.cc hwLat (Ring, Simple), "
         "https://github.com/NVIDIA/nccl/blob/01afd20a77b5804e0ecf1042509dd9d20ebf9e93/src/graph/tuning.cc")
#: NCCL's per-step ring latencies (Simple protocol), seconds; see the module docstring.
ALPHA_NVLINK_S = 3.4e-6
ALPHA_PCI_S = 5.7e-6
ALPHA_NET_S = 9.6e-6

_PRESETS = (
    # V100 SXM2: "NVIDIA NVLink 300 GB/s" (six links, both directions) -> 150 GB/s each way.
    Interconnect("nvlink2", 150 * _GB, ALPHA_NVLINK_S,
                 "NVIDIA Tesla V100 datasheet (SXM2: NVLink 300 GB/s, both directions), "
                 "https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf; "
                 + _NCCL),
    # A100 SXM: "NVLink: 600 GB/s" (twelve third-generation links) -> 300 GB/s each way.
    Interconnect("nvlink3", 300 * _GB, ALPHA_NVLINK_S,
                 "NVIDIA A100 datasheet (SXM: NVLink 600 GB/s, both directions), "
                 "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf; "
                 + _NCCL),
    # H100 SXM: "NVLink: 900GB/s" (eighteen fourth-generation links) -> 450 GB/s each way.
    Interconnect("nvlink4", 450 * _GB, ALPHA_NVLINK_S,
                 "NVIDIA H100 datasheet (SXM: NVLink 900 GB/s, both directions), "
                 "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet; "
                 + _NCCL),
    # A100 PCIe: "PCIe Gen4: 64 GB/s" (x16, both directions) -> 32 GB/s each way.
    Interconnect("pcie4", 32 * _GB, ALPHA_PCI_S,
                 "NVIDIA A100 datasheet (PCIe Gen4 64 GB/s, x16, both directions), "
                 "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf; "
                 + _NCCL),
    # H100: "PCIe Gen5: 128GB/s" (x16, both directions) -> 64 GB/s each way.
    Interconnect("pcie5", 64 * _GB, ALPHA_PCI_S,
                 "NVIDIA H100 datasheet (PCIe Gen5 128 GB/s, x16, both directions), "
                 "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet; "
                 + _NCCL),
    # InfiniBand HDR: 200 Gb/s per port (ConnectX-6) -> 25 GB/s each way.
    Interconnect("ib-hdr", 200 / 8 * _GB, ALPHA_NET_S,
                 "InfiniBand Trade Association roadmap (HDR 4x: 200 Gb/s per port, as on NVIDIA "
                 "ConnectX-6 VPI), https://www.infinibandta.org/infiniband-roadmap/; "
                 + _NCCL),
    # InfiniBand NDR: 400 Gb/s per port (ConnectX-7) -> 50 GB/s each way.
    Interconnect("ib-ndr", 400 / 8 * _GB, ALPHA_NET_S,
                 "InfiniBand Trade Association roadmap (NDR 4x: 400 Gb/s per port, as on NVIDIA "
                 "ConnectX-7), https://www.infinibandta.org/infiniband-roadmap/; "
                 + _NCCL),
    # 100 Gigabit Ethernet: 100 Gb/s per port -> 12.5 GB/s each way (RoCE or TCP; NCCL's
    # network latency is used, which flatters TCP).
    Interconnect("100gbe", 100 / 8 * _GB, ALPHA_NET_S,
                 "IEEE Std 802.3-2018, clause 80 (100 Gb/s Ethernet, per direction); " + _NCCL),
)

#: Interconnect presets by stable lower-case name.
INTERCONNECTS: Mapping[str, Interconnect] = MappingProxyType({i.name: i for i in _PRESETS})


def resolve_interconnect(name: str) -> Interconnect:
    """The preset called `name`; ValueError (one line, listing the valid names) otherwise."""
    try:
        return INTERCONNECTS[name]
    except KeyError:
        raise ValueError(f"unknown interconnect {name!r}; choose one of {', '.join(INTERCONNECTS)}") from None
