"""The measurement harness's vocabularies, each defined once; importing this imports no JAX.

`measure.grids`, `measure.sweep`, `measure.seed` and `analysis.crossover` (whose ``--help``
must not import JAX) take the harness's own names from here. Methods, layers and the kernel
dtypes are the cost model's (`costmodel.vocab`), re-exported: a kernel is timed for each
configuration the cost model describes.
"""

from __future__ import annotations

from costmodel.vocab import KERNEL_DTYPES as DTYPES
from costmodel.vocab import LAYERS, LORA_METHODS, METHODS

#: The methods of the blog's code (variant seed), ours -> the post's names.
SEED_METHODS: dict[str, str] = {"full": "vanilla", "lora_merged": "lora"}
#: Kernel variants: ours, and the blog's code (`measure.seed`).
VARIANTS: tuple[str, ...] = ("clean", "seed")
#: How a call is timed: compiled ahead of time, or the blog's code as written (it compiles on
#: every call); see `measure.seed`.
TIMING_MODES: tuple[str, ...] = ("aot", "as_written")
#: The named grids of `measure.grids.named_grid`.
GRIDS: tuple[str, ...] = ("quick", "seed", "square", "models")

__all__ = ["DTYPES", "GRIDS", "LAYERS", "LORA_METHODS", "METHODS", "SEED_METHODS", "TIMING_MODES",
           "VARIANTS"]
