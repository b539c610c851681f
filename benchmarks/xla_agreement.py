"""The cost model's FLOPs against XLA's own count of the kernels `measure` times.

    python benchmarks/xla_agreement.py

Prints, for every layer × method × input-gradient setting at the blog's extreme shapes (the
same cases as tests/costmodel/test_xla_flops.py), the model's FLOPs, XLA's
`compiled.cost_analysis()["flops"]` and their relative gap, then the largest gap.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from costmodel import METHODS, layer_cost  # noqa: E402
from measure.kernels import build, xla_cost  # noqa: E402

SHAPES = {
    "linear": [dict(batch=2, embed=256, hidden=256, rank=1), dict(batch=1024, embed=2048, hidden=2048, rank=5),
               dict(batch=2, embed=2048, hidden=256, rank=5), dict(batch=1024, embed=256, hidden=2048, rank=1)],
    "block": [dict(batch=2, seq=16, embed=256, heads=4, rank=1),
              dict(batch=2, seq=64, embed=256, heads=4, rank=5, causal=True, bias=True),
              dict(batch=2, seq=16, embed=256, heads=8, kv_heads=2, rank=3, mlp="swiglu",
                   norm="rmsnorm", hidden=512, targets="q,k,v,o,mlp")],
}
SHAPES["attention"] = SHAPES["linear"]


def main() -> None:
    worst = (0.0, "")
    print(f"{'layer':9s} {'method':11s} {'dX':3s} {'shape':58s} {'model':>14s} {'XLA':>14s} {'gap':>8s}")
    for layer in ("linear", "attention", "block"):
        for shape in SHAPES[layer]:
            for method in METHODS:
                for dx in (False, True):
                    model = float(layer_cost(layer, method, input_requires_grad=dx, **shape).flops)
                    xla = xla_cost(build(layer, method, input_requires_grad=dx, **shape))["flops"]
                    gap = model / xla - 1
                    label = ",".join(f"{k}={v}" for k, v in shape.items())
                    print(f"{layer:9s} {method:11s} {'yes' if dx else 'no':3s} {label[:58]:58s} "
                          f"{model:14.6g} {xla:14.6g} {gap:+8.3%}")
                    if abs(gap) > abs(worst[0]):
                        worst = (gap, f"{layer}/{method}, dX {'yes' if dx else 'no'}, {label}")
    print(f"\nlargest gap: {worst[0]:+.3%} ({worst[1]})")


if __name__ == "__main__":
    main()
