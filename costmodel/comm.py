"""Collectives and their α-β cost: what a parallel training step sends, and how long it takes.

A `Collective` is one communication of a training step as one device sees it: its kind, the
message size V in bytes, the size p of the group it runs over, the link it crosses, how many
times per step it runs, and whether it may hide behind the backward pass.

Cost of one collective on a link with per-step latency α (seconds) and bandwidth B (bytes/s
per direction per device), ring algorithms (Thakur, Rabenseifner & Gropp 2005, "Optimization
of Collective Communication Operations in MPICH", IJHPCA 19(1), sec. 4; Patarasuk & Yuan
2009 for the bandwidth-optimal all-reduce; the JAX scaling book, "Sharding", for the same
forms):

    all-reduce      t = 2(p−1)·α + 2(p−1)/p · V/B        (reduce-scatter, then all-gather)
    all-gather      t =  (p−1)·α +  (p−1)/p · V/B        (V: the gathered, whole buffer)
    reduce-scatter  t =  (p−1)·α +  (p−1)/p · V/B        (V: the whole input buffer)
    p2p             t =       α  +            V/B        (one send of V bytes)

p = 1 costs nothing. The bytes each device puts on the wire are the same factors times V
(`wire_bytes`). A group that spans nodes is costed on the inter-node link (its slowest hop
sets a ring's pace); hierarchical algorithms (NCCL's trees, two-level rings) are not
modelled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from costmodel.primitives import Size, whole

#: Collective kinds, as `Collective.kind` spells them.
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "p2p")
#: The two links of a cluster: inside one node, and between nodes.
LINKS = ("intra", "inter")
#: Device groups of a layout that communicate.
GROUPS = ("tp", "dp", "pp", "embedding", "world")
#: Which pipeline stage's devices run it (with one stage, both tags name the same device).
STAGES = ("first", "last")
#: When a collective runs: per micro-batch or once per optimizer step.
PER = ("micro-batch", "step")


@dataclass(frozen=True)
class Interconnect:
    """One link technology: per-step latency α and per-direction bandwidth B per device.

    bandwidth_bytes_per_s: what one device can send (and at the same time receive) on this
    link; latency_s: the fixed cost of one algorithm step (one hop of a ring). source: where
    the numbers come from; measured: True when α and B were fitted to timings.
    """

    name: str
    bandwidth_bytes_per_s: float
    latency_s: float
    source: str = ""
    measured: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bandwidth_bytes_per_s) and self.bandwidth_bytes_per_s > 0):
            raise ValueError(f"interconnect {self.name!r}: bandwidth must be > 0")
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise ValueError(f"interconnect {self.name!r}: latency must be >= 0")


#: `HardwareProfile.extra` keys under which a fitted profile may carry α and B per link
#: (`analysis` writes them after fitting collective timings); see `Cluster.with_fitted`.
FIT_COMM_KEYS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "intra": ("fit_comm_alpha_s_intra", "fit_comm_bandwidth_bytes_per_s_intra"),
    "inter": ("fit_comm_alpha_s_inter", "fit_comm_bandwidth_bytes_per_s_inter"),
})


@dataclass(frozen=True)
class Cluster:
    """Nodes of `gpus_per_node` devices; `intra` links devices of one node, `inter` the nodes.

    nics_per_node: network ports per node (default one per device, as in DGX A100/H100).
    Concurrent rings that leave a node share its ports, so each device gets
    B_inter · nics_per_node / gpus_per_node of the inter-node bandwidth (`link`).
    """

    gpus_per_node: int
    intra: Interconnect
    inter: Interconnect
    nics_per_node: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus_per_node", int(whole("gpus_per_node", self.gpus_per_node)))
        if self.nics_per_node is not None:
            object.__setattr__(self, "nics_per_node", int(whole("nics_per_node", self.nics_per_node)))

    def link(self, name: str) -> Interconnect:
        """The `Interconnect` a collective on link `name` sees, per device."""
        if name == "intra":
            return self.intra
        if name != "inter":
            raise ValueError(f"unknown link {name!r}; choose one of {', '.join(LINKS)}")
        nics = self.nics_per_node or self.gpus_per_node
        share = min(1.0, nics / self.gpus_per_node)
        if share == 1.0:
            return self.inter
        return Interconnect(f"{self.inter.name} (×{share:g} per device)",
                            self.inter.bandwidth_bytes_per_s * share, self.inter.latency_s,
                            self.inter.source, self.inter.measured)

    def with_fitted(self, extra: Mapping[str, float]) -> Cluster:
        """This cluster with each link whose fitted α and B are in `extra` (`FIT_COMM_KEYS`)
        replaced by the fitted values; links without both keys are kept."""
        links = {}
        for name, (a_key, b_key) in FIT_COMM_KEYS.items():
            if a_key in extra and b_key in extra:
                links[name] = Interconnect(f"{getattr(self, name).name} (fitted)", float(extra[b_key]),
                                           float(extra[a_key]), "α and B fitted to collective timings",
                                           measured=True)
        return Cluster(self.gpus_per_node, links.get("intra", self.intra), links.get("inter", self.inter),
                       self.nics_per_node)


@dataclass(frozen=True)
class Collective:
    """One communication of a step, as one device sees it.

    kind: one of `KINDS`; message_bytes: V, the whole buffer (see the module docstring);
    group_size: p; group: which layout dimension it runs over (`GROUPS`); inter_node: the group spans
    nodes, so it runs on the inter-node link; count: how many times it runs per `per` ("micro-batch" or "step");
    phase: "forward", "backward" or "optimizer"; stage: the pipeline stage whose devices
    run it, "first" or "last" (the same devices when pp = 1); overlappable: data-parallel traffic that
    can run while the backward pass computes; purpose: a stable key saying what it carries.
    message_bytes and count may be numpy arrays (one entry per layout of a vectorised search).
    """

    purpose: str
    kind: str
    message_bytes: np.ndarray
    group_size: np.ndarray
    group: str
    inter_node: np.ndarray  # bool: True where the group spans nodes (inter-node link)
    count: np.ndarray
    per: str
    phase: str
    stage: str
    overlappable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown collective {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.group not in GROUPS:
            raise ValueError(f"unknown group {self.group!r}")
        if self.per not in PER:
            raise ValueError(f"unknown per {self.per!r}")
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}")
        for name in ("message_bytes", "group_size", "count"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=float))
        object.__setattr__(self, "inter_node", np.asarray(self.inter_node, dtype=bool))

    def wire_bytes(self) -> np.ndarray:
        """Bytes one device sends per run: V · algorithm factor (2(p−1)/p, (p−1)/p or 1)."""
        return self.message_bytes * wire_factor(self.kind, self.group_size)

    def time_s(self, cluster: Cluster) -> np.ndarray:
        """Seconds of ONE run on `cluster` (intra- or inter-node link, elementwise)."""
        intra = collective_time(self.kind, self.message_bytes, self.group_size, cluster.link("intra"))
        inter = collective_time(self.kind, self.message_bytes, self.group_size, cluster.link("inter"))
        return np.where(self.inter_node, inter, intra)

    def as_dict(self, index: tuple | None = None) -> dict:
        """JSON-ready fields of one layout (`index` into the arrays; scalars when None)."""
        pick = (lambda a: np.asarray(a)[index]) if index is not None else (lambda a: a)

        def f(a):
            return float(np.asarray(pick(np.broadcast_to(a, np.broadcast(
                self.message_bytes, self.group_size, self.count, self.inter_node).shape))).reshape(()))
        return {"purpose": self.purpose, "kind": self.kind, "message_bytes": f(self.message_bytes),
                "group_size": int(f(self.group_size)), "group": self.group,
                "link": "inter" if f(self.inter_node) else "intra", "count": f(self.count), "per": self.per,
                "phase": self.phase, "stage": self.stage, "overlappable": self.overlappable}


def wire_factor(kind: str, group_size: Size) -> np.ndarray:
    """Bytes on the wire per byte of message, per device: ring all-reduce 2(p−1)/p,
    all-gather and reduce-scatter (p−1)/p, p2p 1 (0 when p = 1)."""
    p = np.asarray(group_size, dtype=float)
    if kind == "all-reduce":
        return 2 * (p - 1) / p
    if kind in ("all-gather", "reduce-scatter"):
        return (p - 1) / p
    if kind == "p2p":
        return np.where(p > 1, 1.0, 0.0)
    raise ValueError(f"unknown collective {kind!r}; choose one of {', '.join(KINDS)}")


def latency_steps(kind: str, group_size: Size) -> np.ndarray:
    """Algorithm steps that each pay α: ring all-reduce 2(p−1), all-gather and
    reduce-scatter p−1, p2p 1 (0 when p = 1)."""
    p = np.asarray(group_size, dtype=float)
    if kind == "all-reduce":
        return 2 * (p - 1)
    if kind in ("all-gather", "reduce-scatter"):
        return p - 1
    if kind == "p2p":
        return np.where(p > 1, 1.0, 0.0)
    raise ValueError(f"unknown collective {kind!r}; choose one of {', '.join(KINDS)}")


def collective_time(kind: str, message_bytes: Size, group_size: Size, link: Interconnect) -> np.ndarray:
    """α-β time of one collective (module docstring): steps(p)·α + factor(p)·V/B."""
    v = np.asarray(message_bytes, dtype=float)
    return (latency_steps(kind, group_size) * link.latency_s
            + wire_factor(kind, group_size) * v / link.bandwidth_bytes_per_s)


def total_time_s(collectives: Iterable[Collective], cluster: Cluster, **match) -> np.ndarray:
    """Σ count · time (one run each) over the collectives whose fields equal `match`
    (e.g. per="micro-batch", group="tp", stage="first")."""
    total = np.zeros(())
    for c in collectives:
        if all(getattr(c, k) == v for k, v in match.items()):
            total = total + c.count * c.time_s(cluster)
    return total
