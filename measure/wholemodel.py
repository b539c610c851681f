"""One whole training step of a transformer in JAX, the architecture `costmodel.model` costs.

    >>> from measure.wholemodel import StepConfig, build, scaled_model
    >>> cfg = StepConfig(scaled_model("gpt2-small", d_model=64, layers=2, vocab=512, seq=64),
    ...                  "lora", batch=2, seq=32, rank=4, targets=("q", "v"))
    >>> step = build(cfg)            # step.fn(*step.args) -> (trainable, opt_state, loss)

Built from the project's own kernels (`measure.kernels`: the block, its norms, activations and
softmax with the explicit VJPs that `costmodel.graph` counts):

- embeddings: token gather (+ learned positions, + BERT token types, + the embedding norm of
  post-norm models); the tables train under full fine-tuning only;
- L blocks (`kernels._block`: pre-norm, multi-head or grouped-query attention, GELU or
  SwiGLU MLP, LayerNorm or RMSNorm). Post-norm presets run their blocks pre-norm, which the
  cost model costs the same; rotary position embeddings (RoPE) are not applied, as the cost
  model does not count them (they have no parameters);
- the final norm (pre-norm models) and a head: ``lm`` (untied vocabulary projection),
  ``lm-tied`` (the token table, transposed; BERT's MLM transform and vocabulary bias where
  the model has them), each with softmax cross-entropy over every token; or ``classifier``
  (the first token's final hidden state → `n_classes` logits with a bias, cross-entropy over
  the batch), a new head trained under every method, as LoRA libraries do for classification
  (PEFT's ``modules_to_save``);
- methods ``full`` (everything trains), ``lora`` and ``lora_merged`` (only the adapters of
  `targets` and a classifier head train; every base weight, norm and embedding is frozen);
- gradient accumulation over `grad_accum` micro-batches of `batch` sequences each, then one
  optimizer update (optax SGD or AdamW, optionally after `optax.clip_by_global_norm`);
- precision ``fp32``, ``bf16`` (weights, activations, gradients and optimizer states in
  bfloat16) or ``bf16-mixed`` (float32 master copy of the trainable weights and float32
  optimizer states; the forward and backward run in bfloat16 on a cast copy; Micikevicius et
  al. 2018, "Mixed Precision Training");
- activation recomputation per block (`jax.checkpoint`) and attention ``naive`` or ``fused``
  (`kernels.fused_attention`).

Micro-batches and layers are unrolled Python loops, not `lax.scan`: XLA's `cost_analysis`
counts a loop body once, and the FLOP test compares it with the cost model for the whole step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from costmodel.presets_models import ModelShape
from measure import kernels
from measure.modelconfig import (  # noqa: F401 -- re-exported: the step's vocabulary
    ATTENTIONS,
    HEADS,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    TARGETS,
    StepConfig,
    scaled_model,
    step_cost,
)

#: Hyper-parameters of the update. They do not change its cost; common fine-tuning values
#: (AdamW's decoupled weight decay 0.01: Loshchilov & Hutter 2019; global-norm clip 1.0: the
#: Hugging Face Trainer's default max_grad_norm).
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01
CLIP_NORM = 1.0
#: Standard deviation of the embedding tables at initialisation (GPT-2's 0.02).
EMBED_STD = 0.02


# --------------------------------------------------------------------------- parameters

def param_shapes(cfg: StepConfig) -> dict[str, tuple[tuple[int, ...], bool]]:
    """name -> (shape, trainable) of every parameter, named as `costmodel.model`'s graphs.

    Blocks' parameters are ``"{i}.{name}"`` with the names of `kernels.param_shapes`.
    """
    m, full = cfg.shape, cfg.full
    d = m.d_model
    out: dict[str, tuple[tuple[int, ...], bool]] = {"E": ((m.vocab, d), full)}
    if m.n_position_rows:
        out["Epos"] = ((m.n_position_rows, d), full)
    if m.type_vocab:
        out["Etype"] = ((m.type_vocab, d), full)

    def norm(name: str) -> None:
        out[f"γ{name}"] = ((d,), full)
        if m.norm == "layernorm" and m.bias:
            out[f"β{name}"] = ((d,), full)

    if m.norm_placement == "post":
        norm("ln_emb")
    for i in range(m.layers):
        for name, spec in kernels.param_shapes(cfg.block_config()).items():
            out[f"{i}.{name}"] = spec
    if m.norm_placement == "pre":
        norm("ln_f")
    if cfg.head == "classifier":
        out["Wcls"] = ((d, cfg.n_classes), True)
        out["bcls"] = ((cfg.n_classes,), True)
        return out
    if m.mlm_head:
        out["Wmlm"] = ((d, d), full)
        out["bmlm"] = ((d,), full)
        norm("ln_mlm")
    if not m.tied_embeddings:
        out["Wout"] = ((d, m.vocab), full)
    if m.mlm_head:
        out["bvocab"] = ((m.vocab,), full)
    return out


def param_counts(cfg: StepConfig) -> dict[str, int]:
    """Parameters of the JAX model: ``total`` (base model and head, adapters aside),
    ``trainable`` and ``adapters`` (LoRA's A and B)."""
    total = trainable = adapters = 0
    for name, (shape, is_trainable) in param_shapes(cfg).items():
        n = int(np.prod(shape))
        is_adapter = name.split(".")[-1].startswith(("A", "B"))
        adapters += n * is_adapter
        total += n * (not is_adapter)
        trainable += n * is_trainable
    return {"total": total, "trainable": trainable, "adapters": adapters}


def init_params(cfg: StepConfig, seed: int = 0) -> tuple[dict, dict]:
    """(trainable, frozen) parameter dicts: N(0, 1/fan_in) matrices, N(0, 0.02²) tables, unit
    γ, zero β and biases. Trainable weights are held in the master dtype, frozen ones in the
    compute dtype. B is random too (LoRA starts it at zero, which would make dA vanish in
    the tests); the cost is the same for any values. Drawn with numpy's generator, not
    jax.random, which compiles a kernel for every new shape (as `measure.kernels`)."""
    rng = np.random.default_rng(seed)
    trainable: dict[str, jax.Array] = {}
    frozen: dict[str, jax.Array] = {}
    for name, (shape, is_trainable) in param_shapes(cfg).items():
        dtype = jnp.dtype(cfg.master_dtype if is_trainable else cfg.compute_dtype)
        leaf = name.split(".")[-1]
        if leaf.startswith("γ"):
            value = jnp.ones(shape, dtype)
        elif leaf.startswith(("β", "b")):
            value = jnp.zeros(shape, dtype)
        else:
            scale = EMBED_STD if leaf.startswith("E") else 1 / np.sqrt(shape[0])
            value = jnp.asarray(rng.standard_normal(shape, dtype=np.float32)
                                * np.float32(scale), dtype)
        (trainable if is_trainable else frozen)[name] = value
    return trainable, frozen


def init_batch(cfg: StepConfig, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """Random token ids (grad_accum, batch, seq) and labels: next-token ids of the same shape
    (``lm``), or one class per sequence (grad_accum, batch) (``classifier``)."""
    rng = np.random.default_rng(seed + 1)
    shape = (cfg.grad_accum, cfg.batch, cfg.seq)
    tokens = jnp.asarray(rng.integers(0, cfg.shape.vocab, shape), jnp.int32)
    n_labels = cfg.n_classes if cfg.head == "classifier" else cfg.shape.vocab
    labels = jnp.asarray(rng.integers(0, n_labels, shape[:2] if cfg.head == "classifier"
                                      else shape), jnp.int32)
    return tokens, labels


# --------------------------------------------------------------------------- the model

@jax.custom_vjp
def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of n rows of logits against integer labels.

    Forward: m = max, z = x − m, lse = log Σ exp z, logp = z − lse, loss = −Σ logp[label] / n.
    VJP: dlogits = (exp(logp) − onehot(label)) · g / n, from the saved logp; the passes
    `costmodel.model._cross_entropy` counts."""
    return _cross_entropy_fwd(logits, labels)[0]


def _cross_entropy_fwd(logits, labels):
    z = logits - jnp.max(logits, axis=-1, keepdims=True)
    logp = z - jnp.log(jnp.sum(jnp.exp(z), axis=-1, keepdims=True))
    picked = jnp.take_along_axis(logp, labels[:, None], axis=-1)
    return -jnp.sum(picked) / logits.shape[0], (logp, labels)


def _cross_entropy_bwd(res, g):
    logp, labels = res
    onehot = jax.nn.one_hot(labels, logp.shape[-1], dtype=logp.dtype)
    return (jnp.exp(logp) - onehot) * (g / logp.shape[0]).astype(logp.dtype), None


cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def _norm(p: dict, name: str, x, m: ModelShape):
    if m.norm == "rmsnorm":
        return kernels.rmsnorm(x, p[f"γ{name}"])
    beta = p.get(f"β{name}")
    if beta is None:
        beta = jnp.zeros_like(p[f"γ{name}"])
    return kernels.layernorm(x, p[f"γ{name}"], beta)


def loss_fn_for(cfg: StepConfig, dtype: str | None = None) -> Callable:
    """loss(trainable, frozen, tokens, labels) of ONE micro-batch (tokens: batch × seq),
    divided by grad_accum so that the summed gradients are the mean over micro-batches.

    dtype: the compute dtype, if not the precision's (float64 for finite differences)."""
    m = cfg.shape
    b, t, d = cfg.batch, cfg.seq, m.d_model
    block_cfg = cfg.block_config()
    compute = jnp.dtype(dtype or cfg.compute_dtype)
    block: Callable = functools.partial(kernels._block, cfg=block_cfg, alpha=cfg.alpha,
                                        attention=cfg.attention)
    if cfg.recompute:
        block = jax.checkpoint(block)

    def loss(trainable, frozen, tokens, labels):
        p = {**frozen, **{k: v.astype(compute) for k, v in trainable.items()}}
        x = jnp.take(p["E"], tokens, axis=0)
        if m.n_position_rows:
            x = x + p["Epos"][:t]
        if m.type_vocab:
            x = x + jnp.take(p["Etype"], jnp.zeros_like(tokens), axis=0)
        if m.norm_placement == "post":
            x = _norm(p, "ln_emb", x, m)
        x = x.reshape(b * t, d)
        for i in range(m.layers):
            prefix = f"{i}."
            x = block(x, {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)})
        if m.norm_placement == "pre":
            x = _norm(p, "ln_f", x, m)
        if cfg.head == "classifier":
            logits = x.reshape(b, t, d)[:, 0] @ p["Wcls"] + p["bcls"]
            return cross_entropy(logits, labels) / cfg.grad_accum
        if m.mlm_head:
            x = _norm(p, "ln_mlm", kernels.gelu(x @ p["Wmlm"] + p["bmlm"]), m)
        logits = x @ p["E"].T if m.tied_embeddings else x @ p["Wout"]
        if m.mlm_head:
            logits = logits + p["bvocab"]
        return cross_entropy(logits, labels.reshape(b * t)) / cfg.grad_accum

    return loss


def optimizer_for(cfg: StepConfig):
    """The optax transformation: [clip_by_global_norm →] sgd | adamw."""
    import optax

    if cfg.optimizer == "sgd":
        tx = optax.sgd(LEARNING_RATE)
    else:
        tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    if cfg.clip:
        tx = optax.chain(optax.clip_by_global_norm(CLIP_NORM), tx)
    return tx


def step_fn_for(cfg: StepConfig) -> Callable:
    """step(trainable, frozen, opt_state, tokens, labels) -> (trainable, opt_state, loss):
    forward and backward over each micro-batch, the gradients summed, one update."""
    import optax

    loss = loss_fn_for(cfg)
    tx = optimizer_for(cfg)
    grad = jax.value_and_grad(loss)

    def step(trainable, frozen, opt_state, tokens, labels):
        total, grads = grad(trainable, frozen, tokens[0], labels[0])
        for i in range(1, cfg.grad_accum):
            value, g = grad(trainable, frozen, tokens[i], labels[i])
            total = total + value
            grads = jax.tree_util.tree_map(jnp.add, grads, g)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, total

    return step


@dataclass(frozen=True)
class WholeStep:
    """A whole training step ready to compile: `fn(*args)` -> (trainable, opt_state, loss),
    args = (trainable, frozen, opt_state, tokens, labels)."""

    name: str
    cfg: StepConfig
    fn: Callable
    args: tuple
    loss_fn: Callable  # loss_fn(trainable, frozen, tokens[i], labels[i]) -> scalar


def build(cfg: StepConfig, seed: int = 0) -> WholeStep:
    """The step of `cfg` with parameters, optimizer state and a batch from `seed`."""
    trainable, frozen = init_params(cfg, seed)
    opt_state = optimizer_for(cfg).init(trainable)
    tokens, labels = init_batch(cfg, seed)
    return WholeStep(f"model/{cfg.method}", cfg, step_fn_for(cfg),
                     (trainable, frozen, opt_state, tokens, labels), loss_fn_for(cfg))


