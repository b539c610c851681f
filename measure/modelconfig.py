"""What a whole-model training step is, without JAX: the vocabulary of its options, the
scaled-down shapes, one step's configuration and its cost-model description.

`measure.wholemodel` builds the JAX step from a `StepConfig`; `measure.grids` lists
`ModelConfig`s (a step without its method, which the sweep times interleaved); the sweep
describes each row with `step_cost` (`costmodel.step`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from costmodel import vocab
from costmodel.layers import TARGETS as BLOCK_TARGETS
from costmodel.layers import LayerConfig, parse_targets
from costmodel.optimizer import PRECISIONS as COST_PRECISIONS
from costmodel.presets_models import ModelShape, resolve_model

#: The whole-model options the JAX step implements: the cost model's vocabularies
#: (`costmodel.vocab`), less what it does not measure: head ``none`` (no task loss),
#: ``adamw-8bit`` (no 8-bit optimizer in optax), precision ``fp16-mixed`` (loss scaling).
METHODS = vocab.METHODS
ATTENTIONS = vocab.ATTENTIONS
HEADS: tuple[str, ...] = tuple(h for h in vocab.HEADS if h != "none")
OPTIMIZERS: tuple[str, ...] = tuple(o for o in vocab.OPTIMIZERS if o != "adamw-8bit")
PRECISIONS: tuple[str, ...] = tuple(p for p in COST_PRECISIONS if p != "fp16-mixed")
TARGETS: tuple[str, ...] = BLOCK_TARGETS["block"]
#: LoRA's α (Hu et al. 2021, sec. 4.1: s = α / r); any value costs the same.
LORA_ALPHA = 16.0

#: precision -> (compute dtype, dtype of the trainable weights the optimizer updates)
DTYPES: dict[str, tuple[str, str]] = {
    "fp32": ("float32", "float32"),
    "bf16": ("bfloat16", "bfloat16"),
    "bf16-mixed": ("bfloat16", "float32"),
}


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


def scaled_model(preset: str | ModelShape, *, d_model: int | None = None, layers: int | None = None,
                 heads: int | None = None, kv_heads: int | None = None, ffn: int | None = None,
                 vocab: int | None = None, seq: int | None = None) -> ModelShape:
    """A published shape (`costmodel.presets_models.MODELS`) scaled down: the same kinds of
    parts (MLP, norm, placement, biases, positions, heads) with other sizes.

    Defaults: heads keep the preset's head width where d_model allows (d_model / head_dim,
    at least 1, lowered until it divides d_model); kv_heads keep the preset's heads/kv_heads
    grouping where it divides; ffn keeps the preset's ffn/d_model ratio; a learned position
    table has `seq` rows. ValueError (one line) on sizes that do not fit together.
    """
    base = resolve_model(preset) if isinstance(preset, str) else preset
    d = base.d_model if d_model is None else _positive_int("d_model", d_model)
    if heads is None:
        heads = max(1, d // base.head_dim)
        while d % heads:
            heads -= 1
    heads = _positive_int("heads", heads)
    if kv_heads is None:
        group = base.heads // base.kv_heads
        kv_heads = heads // group if heads % group == 0 and heads >= group else heads
    kv_heads = _positive_int("kv_heads", kv_heads)
    if d % heads:
        raise ValueError(f"heads {heads} do not divide d_model {d}")
    if heads % kv_heads:
        raise ValueError(f"kv_heads {kv_heads} do not divide heads {heads}")
    if ffn is None:
        ffn = max(1, round(base.ffn * d / base.d_model))
    return dataclasses.replace(
        base,
        name=base.name,
        d_model=d,
        layers=base.layers if layers is None else _positive_int("layers", layers),
        heads=heads, kv_heads=kv_heads, ffn=_positive_int("ffn", ffn),
        vocab=base.vocab if vocab is None else _positive_int("vocab", vocab),
        seq=base.seq if seq is None else _positive_int("seq", seq),
        position_rows=0,
    )


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """The options of a whole-model step beside its shape, batch, sequence length and method,
    keyword-only: LoRA's rank and targets (rank 0 under full), the head (n_classes: the
    classifier's outputs), optimizer, global-norm clipping, precision, recomputation,
    micro-batches per update and the attention kernel. One field list for `StepConfig` and
    `ModelConfig`."""

    rank: int = 4
    targets: tuple[str, ...] | str | None = ("q", "v")
    head: str = "lm"
    n_classes: int = 2
    optimizer: str = "adamw"
    clip: bool = True
    precision: str = "fp32"
    recompute: bool = False
    grad_accum: int = 1
    attention: str = "naive"


@dataclass(frozen=True)
class StepConfig(StepOptions):
    """One whole training step: a model shape under a method, head, optimizer and options
    (`StepOptions`).

    batch: sequences per micro-batch; the step runs `grad_accum` micro-batches, then one
    update. alpha: LoRA's scale. ValueError (one line) on bad input.
    """

    model: ModelShape
    method: str
    batch: int
    seq: int
    alpha: float = LORA_ALPHA

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        _choice("method", self.method, METHODS)
        _choice("head", self.head, HEADS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("attention", self.attention, ATTENTIONS)
        for name in ("batch", "seq", "n_classes"):
            set_(name, _positive_int(name, getattr(self, name)))
        if isinstance(self.grad_accum, bool) or not isinstance(self.grad_accum, (int, np.integer)) \
                or self.grad_accum < 1:
            raise ValueError(f"gradient accumulation needs >= 1 micro-batch, got {self.grad_accum!r}")
        set_("grad_accum", int(self.grad_accum))
        set_("targets", parse_targets("block", self.targets))
        set_("rank", 0 if self.method == "full" else _positive_int("rank", self.rank))
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        rows = self.shape.n_position_rows
        if rows and self.seq > rows:
            raise ValueError(f"seq {self.seq} exceeds the {rows} learned positions of {self.model.name}")

    @property
    def shape(self) -> ModelShape:
        """The model with the head's tying: ``lm`` unties, ``lm-tied`` ties the LM head."""
        if self.head == "classifier":
            return self.model
        return dataclasses.replace(self.model, tied_embeddings=self.head == "lm-tied")

    @property
    def compute_dtype(self) -> str:
        return DTYPES[self.precision][0]

    @property
    def master_dtype(self) -> str:
        return DTYPES[self.precision][1]

    @property
    def full(self) -> bool:
        return self.method == "full"

    def block_config(self) -> LayerConfig:
        m = self.shape
        return LayerConfig(
            "block", self.method, batch=self.batch, embed=m.d_model, hidden=m.ffn, rank=self.rank,
            targets=self.targets, dtype=self.compute_dtype, seq=self.seq, heads=m.heads,
            kv_heads=m.kv_heads, mlp=m.mlp, norm=m.norm, bias=m.bias, causal=m.causal,
        )


@dataclass(frozen=True)
class ModelConfig(StepOptions):
    """A whole-model step without its method: what one sweep config times for every method.

    model: the preset scaled down (`scaled_model`); the rest as `StepConfig`. The class
    attributes below let the sweep treat it as it treats a layer `measure.grids.Config`.
    """

    model: ModelShape
    batch: int
    seq: int

    layer = "model"
    variant = "clean"
    timing_mode = "aot"

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", parse_targets("block", self.targets))
        self.step("lora")  # validates every field once

    def step(self, method: str) -> StepConfig:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return StepConfig(method=method, **fields)

    @property
    def dtype(self) -> str:
        return DTYPES[self.precision][0]

    def label(self) -> str:
        m = self.model
        opts = [self.head, self.optimizer + ("+clip" if self.clip else ""), self.precision]
        if self.attention != "naive":
            opts.append(self.attention)
        if self.recompute:
            opts.append("recompute")
        if self.grad_accum > 1:
            opts.append(f"accum{self.grad_accum}")
        return (f"{m.name} L={m.layers} d={m.d_model} V={m.vocab} b={self.batch} s={self.seq} "
                f"r={self.rank} " + " ".join(opts))


# --------------------------------------------------------------------------- cost model

def cost_options(cfg: StepConfig) -> dict[str, Any]:
    """The `costmodel.step.StepSpec` options that describe `cfg` (its model: `cfg.shape`).

    The optimizer is launched as XLA compiles it (``optimizer_impl`` "xla"), the update after
    the backward pass, as `measure.wholemodel` runs it."""
    opts: dict[str, Any] = dict(
        batch=cfg.batch, seq=cfg.seq, precision=cfg.precision, optimizer=cfg.optimizer,
        recompute=cfg.recompute, clip_grad=cfg.clip, head=cfg.head, n_classes=cfg.n_classes,
        attention=cfg.attention, grad_accum=cfg.grad_accum, optimizer_impl="xla",
    )
    if not cfg.full:
        opts.update(rank=cfg.rank, targets=cfg.targets)
    return opts


def step_cost(cfg: StepConfig):
    """`costmodel.step.step_cost` of the step `cfg` describes."""
    from costmodel import step as cm

    return cm.step_cost(cfg.shape, cfg.method, **cost_options(cfg))
