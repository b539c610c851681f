"""The cost model's vocabularies, each defined once; every module and command line (and
`measure`, which imports them) takes its names from here.

Data keyed by names lives with the data: `costmodel.optimizer.PRECISIONS` (precision policies),
`costmodel.hardware.DTYPE_BYTES` (bytes per element), the presets' tables.
"""

from __future__ import annotations

#: Training methods: full fine-tuning, factored LoRA y = xW + s·(xA)B, the blog's merged
#: LoRA W' = W + AB.
METHODS: tuple[str, ...] = ("full", "lora", "lora_merged")
#: The methods that carry an adapter.
LORA_METHODS: tuple[str, ...] = ("lora", "lora_merged")
#: Layers the cost model and the measured kernels know.
LAYERS: tuple[str, ...] = ("linear", "attention", "block")
#: The dtypes the measured kernels run in (`measure.grids`, `measure.device`).
KERNEL_DTYPES: tuple[str, ...] = ("float32", "bfloat16")
#: MLP kinds: GPT-2 style (4d, GELU) and LLaMA style (gate, up, down; SiLU).
MLPS: tuple[str, ...] = ("gelu", "swiglu")
NORMS: tuple[str, ...] = ("layernorm", "rmsnorm")
#: Attention implementations of a block: ``naive`` materialises the (seq × seq) scores and
#: probabilities and saves them; ``fused`` is FlashAttention (Dao et al. 2022).
ATTENTIONS: tuple[str, ...] = ("naive", "fused")
POSITIONALS: tuple[str, ...] = ("learned", "rope")
NORM_PLACEMENTS: tuple[str, ...] = ("pre", "post")
#: Task heads of a whole-model step.
HEADS: tuple[str, ...] = ("lm", "lm-tied", "classifier", "none")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw", "adamw-8bit")
#: How the optimizer update is launched (see `costmodel.optimizer.optimizer_cost`).
OPTIMIZER_IMPLS: tuple[str, ...] = ("xla", "fused", "foreach", "per-tensor")
