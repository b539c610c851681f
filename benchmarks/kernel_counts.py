"""The cost model's kernel counts against the kernels XLA's compiled program launches.

    python benchmarks/kernel_counts.py [--layer attention] [--batch 2] [--widths 16,64,256]

For each method at e = h = d (rank 1, as the quick grid), prints the cost model's kernels of
one training call beside the instructions of the compiled program's entry computation that
run as kernels on XLA's CPU backend, by kind (dot, fusion, other), and each LoRA method's
excess over full fine-tuning. The fit's per-kernel time multiplies the model's count; its
prior is the device profile's per-kernel time of a dot thunk (`measure.device`). Where XLA
adds more kernels for LoRA than the model counts, and most of them are fusions (cheaper than
a dot thunk), the per-kernel time the rows want lies below the prior's centre.
"""

from __future__ import annotations

import argparse
import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from costmodel import METHODS, layer_cost  # noqa: E402
from measure.kernels import build  # noqa: E402
from measure.timing import compile_ahead  # noqa: E402

#: Entry-computation instructions that launch no kernel: arguments, tuples, views.
NOT_KERNELS = ("parameter", "tuple", "get-tuple-element", "constant", "bitcast")


def xla_kernels(kernel) -> dict[str, int]:
    """Kernels of the compiled program's entry computation by kind: dot, fusion, other."""
    text = compile_ahead(kernel.fn, kernel.args)[0].as_text()
    entry = text[text.index("ENTRY"):]
    entry = entry[: entry.index("\n}")]
    counts = {"dot": 0, "fusion": 0, "other": 0}
    for line in entry.splitlines()[1:]:
        match = re.search(r"=\s*\S+\s+([\w-]+)\(", line)
        if match is None or match.group(1) in NOT_KERNELS:
            continue
        kind = match.group(1)
        counts[kind if kind in counts else "other"] += 1
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layer", default="attention")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--widths", default="16,64,256")
    args = p.parse_args()
    print(f"{'d':>5s} {'method':11s} {'model':>6s} {'XLA':>4s} {'dot':>4s} {'fusion':>6s} "
          f"{'other':>5s}   {'excess over full: model / XLA (dot, fusion)':s}")
    for d in (int(w) for w in args.widths.split(",")):
        base = None
        for method in METHODS:
            shape = dict(batch=args.batch, embed=d, hidden=d, rank=1)
            model = int(np.sum(layer_cost(args.layer, method, **shape).kernels))
            xla = xla_kernels(build(args.layer, method, **shape))
            total = sum(xla.values())
            if base is None:
                base = (model, total, xla)
                excess = ""
            else:
                excess = (f"{model - base[0]:+d} / {total - base[1]:+d} ("
                          f"{xla['dot'] - base[2]['dot']:+d}, "
                          f"{xla['fusion'] - base[2]['fusion']:+d})")
            print(f"{d:5d} {method:11s} {model:6d} {total:4d} {xla['dot']:4d} "
                  f"{xla['fusion']:6d} {xla['other']:5d}   {excess}")


if __name__ == "__main__":
    main()
