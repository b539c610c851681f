"""Run in a fresh process with 4 host devices: collective results and sharded steps.

Prints one JSON object for `test_multidevice.py` to assert on (the test process itself has
one CPU device, and JAX cannot add devices once its backend started).
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from measure import collective_ops as ops
from measure import collectives as mc
from measure import parallel_steps as ps
from measure import sharded_programs as shp

jax.config.update("jax_num_cpu_devices", 4)  # before the first use starts JAX's backend


def collective_results() -> dict:
    out = {}
    for p in (2, 4):
        for name in mc.COLLECTIVES:
            built = ops.build(name, jax.devices()[:p], 64)  # 16 floats
            got = np.asarray(jax.device_get(built.prepared.call(*built.prepared.args)))
            out[f"{name}/{p}"] = {"output": got.tolist(), "check": ops.check(built)}
    # the check must catch a wrong answer
    built = ops.build("all_reduce", jax.devices()[:2], 64)
    wrong = ops.Built(built.name, built.prepared, built.expected + 1.0, built.message_bytes)
    out["wrong_answer_check"] = ops.check(wrong)
    return out


SHAPE = ps.BlockShape(batch=4, seq=8, embed=32, heads=4, hidden=64, rank=2, targets=("q", "v"))


def sharded_results() -> dict:
    out = {}
    for method in ("full", "lora"):
        x, frozen, trainable = ps.init_params(SHAPE, method)
        ref_loss, ref_grads = ps.reference_step(SHAPE, method, x, frozen, trainable)
        for dp, tp in ((1, 1), (2, 1), (4, 1), (1, 2), (2, 2)):
            lay = ps.Layout(dp, tp)
            mesh = ps.make_mesh(lay)
            args = ps.place(SHAPE, method, mesh)
            compiled = jax.jit(ps.step_fn(SHAPE, method, mesh)).lower(*args).compile()
            loss, grads = compiled(*args)
            err = max(
                float(np.max(np.abs(np.asarray(grads[k]) - ref_grads[k])) / np.max(np.abs(ref_grads[k])))
                for k in ref_grads
            )
            out[f"{method}/{lay.label()}"] = {
                "loss": float(loss), "ref_loss": ref_loss, "grad_rel_err": err,
                "collectives": [[c.collective, c.result_bytes, c.group_size, list(c.first_group)]
                                for c in ps.hlo_collectives(compiled.as_text())],
                "trainable": int(sum(v.size for v in trainable.values())),
            }
    # every device's share at once, no collectives: device (0, 0)'s gradients equal the
    # one-device step on its share (local_params), computed apart
    lay = ps.Layout(2, 2)
    mesh = ps.make_mesh(lay)
    compiled = jax.jit(ps.concurrent_fn(SHAPE, "lora", mesh)).lower(*ps.place(SHAPE, "lora", mesh)).compile()
    _loss, grads = compiled(*ps.place(SHAPE, "lora", mesh))
    shape_local = shp.local_shape(SHAPE, lay)
    _ref_loss, ref = ps.reference_step(SHAPE, "lora", *shp.local_params(SHAPE, "lora", lay))
    out["concurrent"] = {
        "collectives": len(ps.hlo_collectives(compiled.as_text())),
        "rows": int(grads["Bq"].shape[0]),
        "grad_rel_err": max(float(np.max(np.abs(np.asarray(grads[k])[0] - ref[k])) / np.max(np.abs(ref[k])))
                            for k in ref),
        "local_heads": shape_local.heads,
    }
    # the one-device share: its x rows and weight slices
    x1, _f1, t1 = shp.local_params(SHAPE, "lora", ps.Layout(2, 2))
    out["local_shapes"] = {"x": list(x1.shape), **{k: list(v.shape) for k, v in t1.items()}}
    return out


if __name__ == "__main__":
    what = sys.argv[1]
    result = collective_results() if what == "collectives" else sharded_results()
    print(json.dumps(result))
