"""Analytical cost model of LoRA vs full training. Pure numpy: it never imports JAX.

    >>> from costmodel import layer_cost
    >>> c = layer_cost("attention", "lora", batch=64, embed=512, hidden=512, rank=3)
    >>> int(sum(op.flops for op in c.ops if op.kind == "matmul"))  # 6neh + 10n²h + 8ner + 12nrh
    123600896
"""

from costmodel.crossover import Crossover, asymptotic_speedup, crossover, solve_crossover
from costmodel.graph import Cost, Graph, OpCost
from costmodel.hardware import DTYPE_BYTES, HardwareProfile, dtype_bytes
from costmodel.layers import (
    DEFAULT_TARGETS,
    TARGETS,
    LayerConfig,
    layer_cost,
    parse_targets,
)
from costmodel.roofline import RooflineTime, arithmetic_intensity, roofline
from costmodel.vocab import LAYERS, METHODS

__all__ = [
    "Cost", "Crossover", "DEFAULT_TARGETS", "DTYPE_BYTES", "Graph", "HardwareProfile", "LAYERS",
    "LayerConfig", "METHODS", "OpCost", "RooflineTime", "TARGETS", "arithmetic_intensity",
    "asymptotic_speedup", "crossover", "dtype_bytes", "layer_cost", "parse_targets", "roofline",
    "solve_crossover",
]
