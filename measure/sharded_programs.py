"""The programs `measure.sharded` times for one layout and method, compiled ahead of time:

- ``step``: the sharded step on dp·tp devices (`measure.parallel_steps`), whose loss and
  gradients are checked against the unsharded step on one device (`prepare_step`);
- ``local``: one device's share of that step alone on one device, no communication
  (`prepare_local`, from `local_params` and `local_shape`);
- ``concurrent``: every device's share at once, no communication (`prepare_concurrent`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from measure.parallel_steps import BlockShape, Layout

#: relative tolerance of the sharded gradients against the one-device step (float32 sums
#: in another order)
CHECK_RTOL = 1e-4


def programs_of(layout: Layout) -> tuple[str, ...]:
    """The programs measured for `layout`: the one-device step alone has no share to time."""
    return ("step",) if layout.devices == 1 else ("step", "local", "concurrent")


def local_params(shape: BlockShape, method: str, layout: Layout, seed: int = 0) -> tuple:
    """(x, frozen, trainable) of device (0, 0)'s share: its rows of x, its slices of W, A, B."""
    from measure.parallel_steps import init_params, param_specs

    x, frozen, trainable = init_params(shape, method, seed)
    fspec, tspec = param_specs(shape, method, tp=layout.tp > 1)

    def first(a: np.ndarray, spec) -> np.ndarray:
        idx = []
        for dim, axis in zip(a.shape, tuple(spec) + (None,) * (a.ndim - len(tuple(spec)))):
            idx.append(slice(0, dim // layout.tp) if axis == "tp" else slice(None))
        return np.ascontiguousarray(a[tuple(idx)])

    rows = x.shape[0] // layout.dp
    return (x[:rows], {k: first(v, fspec[k]) for k, v in frozen.items()},
            {k: first(v, tspec[k]) for k, v in trainable.items()})


def local_shape(shape: BlockShape, layout: Layout) -> BlockShape:
    from dataclasses import replace

    return replace(shape, batch=shape.batch // layout.dp, heads=shape.heads // layout.tp,
                   embed=shape.embed, hidden=shape.hidden // layout.tp)


def prepare_local(shape: BlockShape, method: str, layout: Layout, device) -> Any:
    """The per-device program on `device` alone (no collectives), compiled ahead of time."""
    import jax
    import jax.numpy as jnp

    from measure.parallel_steps import _local_block
    from measure.timing import Prepared, xla_cost

    x, frozen, trainable = local_params(shape, method, layout)

    def loss(x, frozen, trainable):
        return jnp.sum(_local_block(x, {**frozen, **trainable}, shape, method, None))

    args = jax.device_put((x, frozen, trainable), device)
    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss, argnums=2)).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    cost = xla_cost(compiled)
    return Prepared("local", compiled, tuple(args), compile_s, cost["flops"], cost["bytes_accessed"])


def prepare_step(shape: BlockShape, method: str, layout: Layout, devices: list) -> tuple[Any, list]:
    """The sharded step, compiled, checked against the one-device step; (Prepared, collectives)."""
    import jax

    from measure import parallel_steps as ps
    from measure.timing import Prepared, xla_cost

    mesh = ps.make_mesh(layout, devices)
    args = ps.place(shape, method, mesh)
    t0 = time.perf_counter()
    compiled = jax.jit(ps.step_fn(shape, method, mesh)).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    cost = xla_cost(compiled)
    collectives = ps.hlo_collectives(compiled.as_text())
    _check(shape, method, compiled(*args))
    return Prepared("step", compiled, args, compile_s, cost["flops"], cost["bytes_accessed"]), collectives


def prepare_concurrent(shape: BlockShape, method: str, layout: Layout, devices: list) -> Any:
    """Every device's share at once, no collectives (`parallel_steps.concurrent_fn`)."""
    import jax

    from measure import parallel_steps as ps
    from measure.timing import Prepared, xla_cost

    mesh = ps.make_mesh(layout, devices)
    args = ps.place(shape, method, mesh)
    t0 = time.perf_counter()
    compiled = jax.jit(ps.concurrent_fn(shape, method, mesh)).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    if ps.hlo_collectives(compiled.as_text()):
        raise ValueError("the concurrent program holds a collective")
    cost = xla_cost(compiled)
    return Prepared("concurrent", compiled, args, compile_s, cost["flops"], cost["bytes_accessed"])


def _check(shape: BlockShape, method: str, out) -> None:
    """ValueError unless the sharded loss and gradients equal the one-device step's."""
    from measure.parallel_steps import init_params, reference_step

    value, grads = out
    ref_value, ref_grads = reference_step(shape, method, *init_params(shape, method))
    if not np.isclose(_scalar(value), ref_value, rtol=CHECK_RTOL, atol=1e-3):
        raise ValueError(f"sharded loss {_scalar(value)} != one-device loss {ref_value}")
    for name, ref in ref_grads.items():
        scale = float(np.max(np.abs(ref))) or 1.0
        for shard in grads[name].addressable_shards:
            got = np.asarray(shard.data)
            if not np.allclose(got, ref[shard.index], rtol=CHECK_RTOL, atol=CHECK_RTOL * scale):
                raise ValueError(f"sharded gradient of {name} differs from the one-device step's")


def _scalar(value) -> float:
    return float(np.asarray(value.addressable_shards[0].data))
