"""Which configurations a sweep measures: named grids and custom products.

A `Config` is everything that identifies a measurement except the method; a sweep times all
its methods for one config together (interleaved), so a method's row and its rivals' rows
come from the same minutes of the machine's life.

Named grids (all at float32 unless ``--dtype``):

``quick``
    attention, batch {2, 256} x e = h in {64, 128, 256, 512, 1024, 1536} x rank {1, 4}:
    24 configs per method spread over six widths (enough for the analysis regressions to fit
    4-5 parameters with cross-validation), spanning the sizes where the LoRA/full ratio
    changes on a CPU, and small enough that three methods finish in about 40 s on a 2-core
    CPU with the quick timing budget.
``seed``
    the blog's grid: batch {2, 64, 256, 1024} x e {256, 512, 1024, 2048} x
    h {256, 512, 1024, 2048} x rank {1, 3, 5} = 192 configs, attention.
``square``
    e = h = d over powers of two 64 .. 4096, batch {8, 128, 1024}, rank {1, 8, 64}
    (rank <= d): the crossover-fitting grid.
``models``
    whole training steps (`measure.wholemodel`) of published shapes scaled down
    (`MODELS_GRID_SHAPES`): GPT-2-like (LM head tied), LLaMA-like (grouped-query attention,
    SwiGLU, RMSNorm, untied LM head) and BERT-like (token types, embedding norm, a new
    classifier head), widths 64-1024, 2-8 layers, batch 1-32, seq 64-256, AdamW with
    clipping at float32, LoRA rank 8 on q,v; and at one GPT-2-like shape each option once
    (`MODELS_GRID_OPTIONS`): SGD, no clipping, bf16-mixed, recomputation, 2 micro-batches,
    fused attention. 29 configs x 3 methods; see benchmarks/bench_models_grid.py for its
    wall time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

from measure.vocab import (  # noqa: F401 -- re-exported for measure.sweep
    DTYPES,
    GRIDS,
    LAYERS,
    METHODS,
    SEED_METHODS,
    TIMING_MODES,
    VARIANTS,
)

#: Per-config timing budget (seconds of the timing loop) each named grid is tuned for.
DEFAULT_BUDGET_S: dict[str, float] = {
    "quick": 0.3, "seed": 1.5, "square": 2.0, "custom": 2.0, "models": 0.3, "custom-model": 1.0,
}

#: The `models` grid's shapes: (preset, d_model, layers, vocab, head, [(batch, seq), ...]).
#: Vocabularies are scaled down with the widths (a 50k-row table would dominate every step
#: of a 64-wide model); the (batch, seq) pairs keep each step below ~0.5 s on a 2-core CPU.
MODELS_GRID_SHAPES: tuple[tuple[str, int, int, int, str, tuple[tuple[int, int], ...]], ...] = (
    ("gpt2-small", 64, 2, 2048, "lm-tied", ((1, 64), (1, 256), (8, 128), (32, 128))),
    ("gpt2-small", 128, 4, 4096, "lm-tied", ((1, 128), (8, 64), (16, 64))),
    ("gpt2-small", 256, 4, 8192, "lm-tied", ((1, 64), (4, 64))),
    ("gpt2-small", 512, 4, 8192, "lm-tied", ((1, 64),)),
    ("gpt2-small", 1024, 2, 4096, "lm-tied", ((1, 64),)),
    ("llama2-7b", 128, 2, 4096, "lm", ((1, 128), (8, 64), (16, 64))),
    ("llama2-70b", 256, 8, 4096, "lm", ((1, 64), (2, 64))),
    ("llama2-7b", 512, 2, 8192, "lm", ((1, 64), (2, 64))),
    ("bert-base", 128, 2, 4096, "classifier", ((1, 128), (8, 128), (32, 64))),
    ("bert-base", 256, 4, 8192, "classifier", ((1, 128), (8, 64))),
)
#: Each option once, at the GPT-2-like shape d_model 128, 4 layers, batch 8, seq 64.
MODELS_GRID_OPTIONS: tuple[dict, ...] = (
    dict(optimizer="sgd"), dict(clip=False), dict(precision="bf16-mixed"), dict(recompute=True),
    dict(grad_accum=2), dict(attention="fused"),
)
MODELS_GRID_RANK = 8


@dataclass(frozen=True)
class Config:
    """One measured configuration, all methods aside. Field names match `measure.schema`.

    targets: the adapted matrices, or None for the kernel's default; the dataset's
    ``targets`` column holds the resolved, sorted names.
    """

    layer: str
    batch: int
    embed: int
    hidden: int
    rank: int
    variant: str = "clean"
    timing_mode: str = "aot"
    seq: int = 1
    heads: int = 1
    targets: tuple[str, ...] | None = None
    input_requires_grad: bool = False
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ValueError(f"unknown layer {self.layer!r}; choose one of {', '.join(LAYERS)}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose {', '.join(VARIANTS)}")
        if self.timing_mode not in TIMING_MODES:
            raise ValueError(
                f"unknown timing mode {self.timing_mode!r}; choose {', '.join(TIMING_MODES)}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        for name in ("batch", "embed", "hidden", "rank", "seq", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.variant == "seed":
            if self.layer != "attention":
                raise ValueError("the seed variant is the blog's attention layer only")
            if self.dtype != "float32":
                raise ValueError("the seed variant runs at float32 only, as the blog did")
            if self.input_requires_grad or self.targets is not None:
                raise ValueError("the seed variant fixes its targets and input gradients")
        elif self.timing_mode != "aot":
            raise ValueError("timing mode 'as_written' exists for the seed variant only")

    def label(self) -> str:
        extra = f" s={self.seq} nh={self.heads}" if self.layer == "block" else ""
        tag = "" if self.variant == "clean" else f" [{self.variant}/{self.timing_mode}]"
        return (
            f"{self.layer} b={self.batch} e={self.embed} h={self.hidden} r={self.rank}"
            f"{extra} {self.dtype}{tag}"
        )


@dataclass(frozen=True)
class Grid:
    name: str
    configs: tuple[Config, ...]  # or ModelConfigs (layer "model"), which the sweep tells apart
    methods: tuple[str, ...]

    def identity(self) -> str:
        """A hash of the grid's content: its configs (in any order) and methods.

        Two grids with one identity measure the same (config, method) pairs; run.json records
        it, so a folder is "complete" for one grid only (sha256 of the sorted configs, 16 hex).
        """
        configs = sorted(json.dumps(dataclasses.asdict(c), sort_keys=True) for c in self.configs)
        text = json.dumps({"configs": configs, "methods": sorted(self.methods)})
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> dict:
        return {"name": self.name, "n_configs": len(self.configs), "methods": list(self.methods),
                "identity": self.identity(), "n_pairs": len(self.configs) * len(self.methods)}

    @property
    def whole_model(self) -> bool:
        """Its configs are whole-model steps (`measure.modelconfig.ModelConfig`)."""
        return bool(self.configs) and self.configs[0].layer == "model"


def default_methods(variant: str) -> tuple[str, ...]:
    return tuple(SEED_METHODS) if variant == "seed" else METHODS


def check_methods(methods: Sequence[str], variant: str) -> tuple[str, ...]:
    """Validate and de-duplicate `methods` (order kept); ValueError names the first bad one."""
    allowed = default_methods(variant)
    out: list[str] = []
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if m not in allowed:
            raise ValueError(f"method {m!r} does not exist in the {variant} variant ({', '.join(allowed)})")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("no methods to measure")
    return tuple(out)


def product_configs(
    *,
    batch: Sequence[int],
    embed: Sequence[int],
    hidden: Sequence[int] | None,
    rank: Sequence[int],
    square: bool = False,
    drop_rank_above_width: bool = False,
    **common,
) -> tuple[Config, ...]:
    """Configs of the product batch x embed x hidden x rank (hidden = embed when `square`).

    With `drop_rank_above_width`, ranks above min(e, h) are skipped (named grids); otherwise
    they are kept and the cost model's validation rejects them (custom grids: a user error).
    """
    out = []
    widths = [(e, e) for e in embed] if square else list(itertools.product(embed, hidden or embed))
    for b, (e, h), r in itertools.product(batch, widths, rank):
        if drop_rank_above_width and r > min(e, h):
            continue
        out.append(Config(batch=int(b), embed=int(e), hidden=int(h), rank=int(r), **common))
    return tuple(out)


def settings(
    *,
    layer: str | None = None,
    variant: str = "clean",
    timing_mode: str = "aot",
    dtype: str = "float32",
    input_requires_grad: bool = False,
    targets: tuple[str, ...] | None = None,
    seq: int = 1,
    heads: int = 1,
) -> dict:
    """The settings every config of a grid shares (the `Config` fields besides the sizes)."""
    return dict(layer=layer or "attention", variant=variant, timing_mode=timing_mode, dtype=dtype,
                input_requires_grad=input_requires_grad, targets=targets, seq=seq, heads=heads)


def _grid(name: str, configs: tuple[Config, ...], methods: Sequence[str] | None, variant: str) -> Grid:
    return Grid(name, configs, check_methods(methods or default_methods(variant), variant))


def named_grid(name: str, *, methods: Sequence[str] | None = None, **shared) -> Grid:
    """The named grid `name` (see module docstring); `shared` as in `settings`."""
    common = settings(**shared)
    if name == "quick":
        configs = product_configs(
            batch=(2, 256), embed=(64, 128, 256, 512, 1024, 1536), hidden=None, rank=(1, 4),
            square=True, **common,
        )
    elif name == "seed":
        configs = product_configs(
            batch=(2, 64, 256, 1024), embed=(256, 512, 1024, 2048),
            hidden=(256, 512, 1024, 2048), rank=(1, 3, 5), **common,
        )
    elif name == "square":
        configs = product_configs(
            batch=(8, 128, 1024), embed=tuple(2**p for p in range(6, 13)), hidden=None,
            rank=(1, 8, 64), square=True, drop_rank_above_width=True, **common,
        )
    else:
        raise ValueError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)}")
    return _grid(name, configs, methods, common["variant"])


def custom_grid(
    *,
    batch: Sequence[int],
    embed: Sequence[int],
    hidden: Sequence[int] | None,
    rank: Sequence[int],
    methods: Sequence[str] | None = None,
    **shared,
) -> Grid:
    """The product of the given sizes; `shared` as in `settings`.

    hidden defaults to embed (square layers), or to 4·embed for the block layer, whose
    hidden is the MLP width (GPT-2's ratio, as `costmodel.layers` assumes).
    """
    common = settings(**shared)
    if hidden is None and common["layer"] == "block":
        configs = tuple(
            c for e in embed
            for c in product_configs(batch=batch, embed=(e,), hidden=(4 * e,), rank=rank, **common)
        )
    else:
        configs = product_configs(batch=batch, embed=embed, hidden=hidden, rank=rank,
                                  square=hidden is None, **common)
    return _grid("custom", configs, methods, common["variant"])


def models_grid(methods: Sequence[str] | None = None) -> Grid:
    """The named grid ``models`` (see the module docstring)."""
    from measure.modelconfig import ModelConfig, scaled_model

    configs = []
    for preset, d, layers, vocab, head, sizes in MODELS_GRID_SHAPES:
        longest = max(s for _, s in sizes)
        shape = scaled_model(preset, d_model=d, layers=layers, vocab=vocab, seq=longest)
        for batch, seq in sizes:
            configs.append(ModelConfig(shape, batch=batch, seq=seq, rank=MODELS_GRID_RANK, head=head))
    shape = scaled_model("gpt2-small", d_model=128, layers=4, vocab=4096, seq=128)
    for option in MODELS_GRID_OPTIONS:
        configs.append(ModelConfig(shape, batch=8, seq=64, rank=MODELS_GRID_RANK, head="lm-tied", **option))
    return _grid("models", tuple(configs), methods, "clean")  # type: ignore[arg-type]


def custom_model_grid(
    *,
    model: str,
    batch: Sequence[int],
    seq: int,
    rank: Sequence[int],
    d_model: Sequence[int | None] = (None,),
    layers: Sequence[int | None] = (None,),
    heads: int | None = None,
    kv_heads: int | None = None,
    ffn: int | None = None,
    vocab: int | None = None,
    methods: Sequence[str] | None = None,
    **options,
) -> Grid:
    """Whole-model steps of the preset `model` scaled to each d_model x layers, over batch x
    rank; `options` are `ModelConfig`'s (head, optimizer, clip, precision, ...).
    ValueError (one line) on a bad preset, size or option."""
    from measure.modelconfig import ModelConfig, scaled_model

    configs = []
    for d, n_layers in itertools.product(d_model, layers):
        shape = scaled_model(model, d_model=d, layers=n_layers, heads=heads, kv_heads=kv_heads,
                             ffn=ffn, vocab=vocab, seq=seq)
        for b, r in itertools.product(batch, rank):
            configs.append(ModelConfig(shape, batch=int(b), seq=seq, rank=int(r), **options))
    return _grid("custom-model", tuple(configs), methods, "clean")  # type: ignore[arg-type]
