"""One training step of a whole transformer: embeddings, L blocks, final norm, a task head,
loss, gradient clipping and the optimizer update, under full fine-tuning or LoRA.

    >>> from costmodel.step import step_cost
    >>> from costmodel.presets_models import MODELS
    >>> c = step_cost(MODELS["gpt2-small"], "lora", batch=8, seq=1024, rank=4, targets="q,v")
    >>> int(c.trainable_params)  # 2 · L · d · r per square target type: 2 · 2·12·768·4
    147456

The step is built from the same cost graph as the single layers (`costmodel.graph`,
`costmodel.layers`), part by part (the embeddings and the head: `costmodel.step_ends`; the
optimizer: `costmodel.optimizer`), and `StepCost.total` is exactly the sum of the parts:

- ``embeddings``: token gather (+ learned positions, + BERT token types, + the embedding norm
  of post-norm models). Their backward (a scatter-add into the table) exists only when the
  tables train.
- ``frozen_blocks``: the `frozen_prefix` first blocks, forward only: nothing before or in them
  needs a gradient, so autodiff stops at the first trainable block.
- ``first_block``: the first block that trains. Its input needs a gradient only when the
  embeddings train (full fine-tuning without a frozen prefix); under LoRA it gets no dX.
- ``middle_blocks``: the other blocks, one block's cost scaled by their number (they are
  identical), so a 96-layer model costs two block graphs, not 96.
- ``head``: final norm (pre-norm models), then by `StepSpec.head`: BERT's MLM transform, the
  vocabulary projection (tied to the token embedding or not) and softmax cross-entropy over
  every token (``lm``, ``lm-tied``; the model's own by default); a classifier on the first
  token, trained under every method (``classifier``); or no head (``none``).
- ``grad_accum`` (only with grad_accum > 1): the sum of the micro-batches' gradients; the
  parts above run once per micro-batch.
- ``optimizer``: loss-scale unscaling (fp16-mixed), global-norm gradient clipping and the SGD,
  AdamW or 8-bit AdamW update, all per trainable parameter, once per step, launched as
  `optimizer_impl` says (`costmodel.optimizer`).

Post-norm (BERT) blocks are costed as the pre-norm block: the same ops in another order.
Attention materialises its (seq × seq) scores per head (``attention="naive"``, as the measured
kernels do), or is FlashAttention (``"fused"``: `costmodel.layers.fused_attention`).
Dropout inside the base model (attention/residual dropout) is not modelled; LoRA's own
input dropout (`dropout=True`) is. GPT-3's locally banded sparse layers are costed as dense.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from costmodel.graph import Cost, Graph, OpCost
from costmodel.hardware import dtype_bytes
from costmodel.layers import LayerConfig, parse_targets, record
from costmodel.optimizer import (
    OPTIMIZER_IMPLS,
    PRECISIONS,
    Precision,
    optimizer_cost,
    resolve_optimizer,
    resolve_precision,
)
from costmodel.presets_models import ModelShape, param_breakdown
from costmodel.primitives import (
    Size,
    elementwise_flops,
    positive,
    whole,
)
from costmodel.step_ends import embeddings_cost, head_cost, largest_trainable
from costmodel.vocab import ATTENTIONS, HEADS, METHODS

#: The parts of a step; ``grad_accum`` (summing the micro-batches' gradients) exists only
#: when grad_accum > 1.
PARTS = ("embeddings", "frozen_blocks", "first_block", "middle_blocks", "head", "grad_accum", "optimizer")

#: The sequence length a whole-model step uses when none is given (the CLI and the presets
#: table alike): the model's context, capped here. Llama 3.2's 131072 would materialise
#: 131072² attention scores per head; 4096 is Llama 2's context (Touvron et al. 2023).
DEFAULT_MAX_SEQ = 4096


def default_seq(model: ModelShape) -> int:
    """Tokens per sequence when none is given: min(the model's context, `DEFAULT_MAX_SEQ`)."""
    return min(model.seq, DEFAULT_MAX_SEQ)


# --------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class StepSpec:
    """One training step: a model shape under a method, precision and optimizer.

    batch: sequences per step; seq: tokens per sequence (default: the model's context);
    both may be numpy arrays (broadcast together). rank, targets, dropout: LoRA's (ignored by
    full). frozen_prefix: the first k blocks (and the embedding lookup) get no gradients.
    recompute: activation checkpointing per block (keep each block's input, recompute the
    block in the backward). clip_grad: global-norm gradient clipping.
    head: the task head (`HEADS`): ``lm`` (an untied vocabulary projection + cross-entropy
    over every token), ``lm-tied`` (the token table reused), ``classifier`` (the first
    token's final hidden state → `n_classes` logits with a bias, cross-entropy over the
    batch; a new head, trained under every method, as PEFT's ``modules_to_save``), ``none``
    (the loss is Σ of the final hidden state); None: the model's own LM head (tied or not).
    attention: ``naive`` or ``fused`` (FlashAttention; `costmodel.layers.fused_attention`).
    grad_accum: micro-batches per step (`batch` sequences each): forward and backward run
    grad_accum times, their gradients are summed, the optimizer and clipping run once.
    optimizer_impl: how the update is launched (`costmodel.optimizer.OPTIMIZER_IMPLS`).
    optimizer_in_backward: each tensor is updated inside the backward pass as soon as its
    gradient exists, so no whole gradient is ever held (memory); needs clip_grad off and
    grad_accum 1.
    """

    model: ModelShape
    method: str
    batch: Size = 1
    seq: Size | None = None
    rank: Size = 0
    targets: tuple[str, ...] | str | None = None
    dropout: bool = False
    frozen_prefix: int = 0
    precision: str = "bf16-mixed"
    optimizer: str = "adamw"
    recompute: bool = False
    clip_grad: bool = True
    head: str | None = None
    n_classes: int = 2
    attention: str = "naive"
    grad_accum: int = 1
    optimizer_impl: str = "xla"
    optimizer_in_backward: bool = False

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        resolve_precision(self.precision)
        resolve_optimizer(self.optimizer)
        if self.optimizer_impl not in OPTIMIZER_IMPLS:
            raise ValueError(f"unknown optimizer implementation {self.optimizer_impl!r}; "
                             f"choose one of {', '.join(OPTIMIZER_IMPLS)}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {self.attention!r}; choose one of {', '.join(ATTENTIONS)}")
        head = self.head
        if head is None:
            head = "lm-tied" if self.model.tied_embeddings else "lm"
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        set_("head", head)
        if head in ("lm", "lm-tied") and self.model.tied_embeddings != (head == "lm-tied"):
            set_("model", replace(self.model, tied_embeddings=head == "lm-tied"))
        for name in ("n_classes", "grad_accum"):
            whole(name, getattr(self, name))
        if self.optimizer_in_backward and self.clip_grad:
            raise ValueError("an update inside the backward cannot clip by the global norm (it needs "
                             "every gradient first); turn clipping off (--no-clip)")
        if self.optimizer_in_backward and self.grad_accum > 1:
            raise ValueError("an update inside the backward cannot accumulate gradients over micro-batches")
        set_("targets", parse_targets("block", self.targets))
        set_("batch", positive("batch", self.batch))
        set_("seq", positive("seq", self.model.seq if self.seq is None else self.seq))
        rows = self.model.n_position_rows
        if rows and np.any(self.seq > rows):
            raise ValueError(f"seq {int(np.max(self.seq)):,} exceeds the {rows} learned positions of {self.model.name}")
        k = self.frozen_prefix
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.model.layers:
            raise ValueError(
                f"frozen_prefix must be a whole number in [0, {self.model.layers - 1}] "
                f"(at least one block must train), got {k!r}")
        if self.method == "full":
            set_("rank", np.asarray(0.0))
            set_("dropout", False)
        else:
            rank = positive("rank", self.rank)
            set_("rank", rank)

    @property
    def prec(self) -> Precision:
        return PRECISIONS[self.precision]

    @property
    def micro_tokens(self) -> np.ndarray:
        """Tokens of one micro-batch: batch × seq."""
        return np.asarray(self.batch * self.seq)

    @property
    def tokens(self) -> np.ndarray:
        """Tokens of the whole step: grad_accum × batch × seq."""
        return np.asarray(self.grad_accum * self.batch * self.seq)

    @property
    def lm_head(self) -> bool:
        return self.head in ("lm", "lm-tied")

    @property
    def tables_train(self) -> bool:
        """The embedding tables get gradients through the lookup."""
        return self.method == "full" and self.frozen_prefix == 0

    def block_config(self, input_requires_grad: bool) -> LayerConfig:
        m = self.model
        return LayerConfig(
            "block", self.method, batch=self.batch, embed=m.d_model, hidden=m.ffn,
            rank=self.rank if self.method != "full" else 0, targets=self.targets,
            input_requires_grad=input_requires_grad, dtype=self.prec.compute_dtype,
            seq=self.seq, heads=m.heads, kv_heads=m.kv_heads, mlp=m.mlp, norm=m.norm,
            bias=m.bias, causal=m.causal, lora_dropout=self.dropout, attention=self.attention,
        )


def step_param_count(spec: StepSpec) -> int:
    """Parameters of the model `spec` trains, adapters aside: `param_count` of its shape with
    the head of `spec.head` (the LM head's tying as chosen; a classifier's d·n_classes +
    n_classes instead of the LM head; nothing for ``none``)."""
    parts = param_breakdown(spec.model)
    if not spec.lm_head:
        parts["lm_head"] = 0
    if spec.head == "classifier":
        parts["lm_head"] = spec.model.d_model * spec.n_classes + spec.n_classes
    return int(sum(parts.values()))


@dataclass(frozen=True)
class BlockCosts:
    """One block's step cost and what it keeps for the backward pass."""

    cost: Cost
    trainable_tensors: int
    largest: np.ndarray  # elements of its largest trainable tensor


@dataclass(frozen=True)
class StepCost:
    """The parts of one training step; `total` is their sum (op rows concatenated)."""

    spec: StepSpec
    parts: Mapping[str, Cost]
    #: saved-activation bytes of ONE block of each kind (first, middle), for the memory model
    block_saved_bytes: Mapping[str, np.ndarray]
    #: activations one block holds while its backward runs: with recomputation, its whole
    #: recomputed saved set (0 otherwise: it is already counted in `saved_bytes`)
    recompute_transient_bytes: np.ndarray
    trainable_tensors: int
    #: elements of the largest trainable tensor (what an update inside the backward holds)
    largest_trainable_tensor: np.ndarray = field(default_factory=lambda: np.zeros(()))
    total: Cost = field(init=False)

    def __post_init__(self) -> None:
        total = None
        for name in PARTS:
            if name in self.parts:
                total = self.parts[name] if total is None else total + self.parts[name]
        object.__setattr__(self, "total", total)

    @property
    def flops(self) -> np.ndarray:
        return self.total.flops

    @property
    def bytes_moved(self) -> np.ndarray:
        return self.total.bytes_moved

    @property
    def kernels(self) -> np.ndarray:
        return self.total.kernels

    @property
    def saved_bytes(self) -> np.ndarray:
        return self.total.saved_bytes

    @property
    def trainable_params(self) -> np.ndarray:
        return self.total.trainable_params

    @property
    def tokens(self) -> np.ndarray:
        return self.spec.tokens


def step_cost(model: ModelShape, method: str, **options) -> StepCost:
    """FLOPs, bytes, kernels, trainable parameters and saved activations of one training step.

    `options` are the fields of `StepSpec` (batch, seq, rank, targets, dropout, frozen_prefix,
    precision, optimizer, recompute, clip_grad, head, n_classes, attention, grad_accum,
    optimizer_impl, optimizer_in_backward). Raises ValueError (one line) on bad input.
    """
    return build_step(StepSpec(model, method, **options))


def build_step(spec: StepSpec) -> StepCost:
    """The step's parts for `spec` (see the module docstring); two block graphs, whatever L.

    With grad_accum = k > 1 every part but the optimizer runs k times (their ops scaled by k;
    saved activations are one micro-batch's), and the ``grad_accum`` part sums the k
    gradients: (k − 1)·P adds, reading two and writing one gradient each, one kernel per
    tensor (JAX's tree_map add; PyTorch's AccumulateGrad).
    """
    m = spec.model
    k = spec.frozen_prefix
    n_middle = m.layers - k - 1
    emb, emb_tensors, emb_big = embeddings_cost(spec)
    # the first trainable block needs dX only when something before it trains
    first = _block_cost(spec, input_requires_grad=spec.tables_train)
    middle = _block_cost(spec, input_requires_grad=True)
    frozen = _forward_only(_block_cost(spec, input_requires_grad=False, method="full").cost)
    head, head_tensors, head_big = head_cost(spec)
    tensors = emb_tensors + head_tensors + first.trainable_tensors + n_middle * middle.trainable_tensors
    params = emb.trainable_params + head.trainable_params + first.cost.trainable_params \
        + n_middle * middle.cost.trainable_params
    largest = np.maximum.reduce([np.asarray(x, float) for x in (emb_big, head_big, first.largest, middle.largest)])
    first_c, middle_c, transient = recomputed_blocks(first.cost, middle.cost, spec)
    micro = {
        "embeddings": emb,
        "frozen_blocks": frozen.scaled(k, "frozen: "),
        "first_block": first_c,
        "middle_blocks": middle_c.scaled(n_middle, "middle: "),
        "head": head,
    }
    acc = spec.grad_accum
    parts = {name: _repeated(c, acc) for name, c in micro.items()}
    if acc > 1:
        parts["grad_accum"] = _accumulate(params, tensors, acc, spec)
    parts["optimizer"] = optimizer_cost(params, tensors, spec.optimizer, spec.prec, spec.clip_grad,
                                        spec.optimizer_impl, spec.optimizer_in_backward)
    return StepCost(
        spec=spec,
        parts=MappingProxyType(parts),
        block_saved_bytes=MappingProxyType({"first": first_c.saved_bytes, "middle": middle_c.saved_bytes}),
        recompute_transient_bytes=transient,
        trainable_tensors=int(tensors),
        largest_trainable_tensor=largest,
    )


def _repeated(cost: Cost, k: int) -> Cost:
    """`cost` run k times one after the other (micro-batches): its ops ×k; the same
    trainable parameters, and one run's saved activations (freed before the next run)."""
    if k == 1:
        return cost
    ops = tuple(replace(op, flops=op.flops * k, transcendentals=op.transcendentals * k,
                        bytes_moved=op.bytes_moved * k, kernels=op.kernels * k) for op in cost.ops)
    return Cost(ops, cost.trainable_params, cost.saved_bytes, cost.dtype)


def _accumulate(params: Size, tensors: int, k: int, spec: StepSpec) -> Cost:
    """Σ of k micro-batch gradients: (k − 1) adds of P elements, each reading two gradients
    and writing one, one kernel per tensor."""
    g = dtype_bytes(spec.prec.compute_dtype)
    n = (k - 1) * np.asarray(params, float)
    op = OpCost("accumulate micro-batch gradients", "backward", "elementwise", elementwise_flops(n), 0,
                3 * n * g, (k - 1) * tensors)
    return Cost((op,), np.asarray(0), np.asarray(0), spec.prec.compute_dtype)


def _block_cost(spec: StepSpec, input_requires_grad: bool, method: str | None = None) -> BlockCosts:
    """One block's forward + the backward it needs, seeded by dY from the layer above."""
    cfg = spec.block_config(input_requires_grad)
    if method is not None:
        cfg = replace(cfg, method=method, rank=0)
    g = Graph(cfg.dtype)
    x = g.input("X", (cfg.batch * cfg.seq, cfg.embed), requires_grad=cfg.input_requires_grad)
    out = record(g, x, cfg)
    n_trainable = sum(1 for p in g.params if p.requires_grad)
    return BlockCosts(g.cost(out), n_trainable, largest_trainable(g))


def _forward_only(cost: Cost) -> Cost:
    """A frozen block: its forward ops; no backward, nothing saved, nothing trainable."""
    ops = tuple(op for op in cost.ops if op.phase == "forward")
    return Cost(ops, np.asarray(0), np.asarray(0), cost.dtype)


def recomputed_blocks(first: Cost, middle: Cost, spec: StepSpec) -> tuple[Cost, Cost, np.ndarray]:
    """The first and a middle block under `spec.recompute` (`_recomputed`; unchanged without
    it), and the transient bytes recomputation adds: the larger block's saved activations,
    re-materialised while its backward runs (0 without recomputation)."""
    if not spec.recompute:
        return first, middle, np.zeros(())
    return (_recomputed(first, spec), _recomputed(middle, spec),
            np.maximum(first.saved_bytes, middle.saved_bytes))


def _recomputed(cost: Cost, spec: StepSpec) -> Cost:
    """Activation checkpointing per block (Chen et al. 2016, "Training Deep Nets with
    Sublinear Memory Cost"): keep only the block input (tokens × d), re-run the block's
    forward inside the backward pass."""
    redo = tuple(replace(op, name=f"recompute {op.name}", phase="backward")
                 for op in cost.ops if op.phase == "forward")
    kept = spec.micro_tokens * spec.model.d_model * dtype_bytes(spec.prec.compute_dtype)
    return Cost(cost.ops + redo, cost.trainable_params, np.asarray(kept), cost.dtype)
