"""One collective, built and checked: all-reduce, all-gather, reduce-scatter, ppermute.

Each collective is a `jax.shard_map` over a one-axis `jax.sharding.Mesh` of p devices
(``jax.lax.psum``, ``all_gather``, ``psum_scatter``, ``ppermute`` to the next device), compiled
ahead of time, run once and compared with its known answer (small integers, exact in float32
and bfloat16). `measure.collectives` times the ones that match.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


def elements(message_bytes: int, devices: int, itemsize: int) -> int:
    """Elements of the message, rounded up to a multiple of the group size (≥ one per device)."""
    n = max(1, -(-message_bytes // itemsize))
    return -(-n // devices) * devices


def known_input(collective: str, n: int, p: int) -> np.ndarray:
    """The global input: device i's block is (i + 1)·c with c = 1, 2, 3, 1, 2, 3, ...

    Block length: n for all_reduce, reduce_scatter and ppermute; n/p for all_gather (whose
    output, the message, has n elements). Sums stay below 3·p(p+1)/2, exact in bfloat16 for
    p ≤ 8.
    """
    block = n // p if collective == "all_gather" else n
    c = (np.arange(block) % 3 + 1).astype(np.float64)
    return np.concatenate([(i + 1) * c for i in range(p)])


def known_answer(collective: str, x: np.ndarray, p: int) -> np.ndarray:
    """The global output the collective must produce from `known_input` (numpy, by hand)."""
    blocks = x.reshape(p, -1)
    if collective == "all_reduce":  # every device holds the sum
        return np.tile(blocks.sum(axis=0), p)
    if collective == "all_gather":  # every device holds the whole input
        return np.tile(x, p)
    if collective == "reduce_scatter":  # device i holds block i of the sum
        return blocks.sum(axis=0)
    if collective == "ppermute":  # device i receives from device i - 1
        return np.roll(blocks, 1, axis=0).reshape(-1)
    raise ValueError(f"unknown collective {collective!r}")


def collective_fn(collective: str, mesh, p: int) -> Callable:
    """The jitted shard_map of `collective` over mesh axis "x" (global array in, global out)."""
    import jax
    from jax.sharding import PartitionSpec as P

    def body(a):
        if collective == "all_reduce":
            return jax.lax.psum(a, "x")
        if collective == "all_gather":
            return jax.lax.all_gather(a, "x", tiled=True)
        if collective == "reduce_scatter":
            return jax.lax.psum_scatter(a, "x", tiled=True)
        if collective == "ppermute":
            return jax.lax.ppermute(a, "x", [(i, (i + 1) % p) for i in range(p)])
        raise ValueError(f"unknown collective {collective!r}")

    # outputs stay per device (P("x")): an all-reduced or gathered buffer on every device
    return jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=P("x"), check_vma=False)


@dataclass(frozen=True)
class Built:
    name: str
    prepared: Any  # measure.timing.Prepared
    expected: np.ndarray
    message_bytes: int


def build(collective: str, devices: list, message_bytes: int, dtype: str = "float32") -> Built:
    """Place the known input on `devices`, compile the collective, ready to check and time."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from measure.timing import Prepared, xla_cost

    p = len(devices)
    dt = jnp.dtype(dtype)
    n = elements(message_bytes, p, dt.itemsize)
    mesh = Mesh(np.array(devices, dtype=object), ("x",))
    host = known_input(collective, n, p).astype(dt)
    x = jax.make_array_from_callback(host.shape, NamedSharding(mesh, P("x")), lambda idx: host[idx])
    t0 = time.perf_counter()
    compiled = jax.jit(collective_fn(collective, mesh, p)).lower(x).compile()
    compile_s = time.perf_counter() - t0
    cost = xla_cost(compiled)
    prepared = Prepared(collective, compiled, (x,), compile_s, cost["flops"], cost["bytes_accessed"])
    expected = known_answer(collective, host.astype(np.float64), p)
    return Built(collective, prepared, expected, n * dt.itemsize)


def check(built: Built) -> str:
    """Run the collective once and compare every local shard with the known answer.

    Returns "" if all match exactly, else a one-line description of the first mismatch.
    """
    import jax

    out = jax.block_until_ready(built.prepared.call(*built.prepared.args))
    if out.shape != built.expected.shape:
        return f"{built.name}: output shape {out.shape}, expected {built.expected.shape}"
    for shard in out.addressable_shards:
        got = np.asarray(shard.data, dtype=np.float64)
        want = built.expected[shard.index]
        if got.shape != want.shape or not np.array_equal(got, want):
            bad = np.flatnonzero(got.reshape(-1) != want.reshape(-1))
            where = int(bad[0]) if bad.size else -1
            return (f"{built.name}: wrong result on device {shard.device.id} "
                    f"(element {where}: {got.reshape(-1)[where] if where >= 0 else got.shape} "
                    f"!= {want.reshape(-1)[where] if where >= 0 else want.shape})")
    return ""
