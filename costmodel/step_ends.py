"""The two ends of a training step around its blocks: the embeddings in front (token
gather, learned positions, token types, the embedding norm of post-norm models) and the head
behind (final norm, BERT's MLM transform, the vocabulary projection or a classifier, and the
loss). `costmodel.step.build_step` assembles them with the blocks and the optimizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from costmodel.graph import Cost, Graph, OpCost, Tensor, Terms, Vjp
from costmodel.presets_models import ModelShape
from costmodel.primitives import (
    Size,
    elementwise_bytes,
    elementwise_flops,
    reduction_bytes,
    reduction_flops,
)

if TYPE_CHECKING:
    from costmodel.step import StepSpec

#: Token ids are int32.
TOKEN_ID_BYTES = 4


def largest_trainable(g: Graph) -> np.ndarray:
    sizes = [np.asarray(p.numel, float) for p in g.params if p.requires_grad]
    return np.maximum.reduce(sizes) if sizes else np.zeros(())


# --------------------------------------------------------------------------- embeddings


def _gather(g: Graph, name: str, table: Tensor, rows: Size, out_shape: tuple) -> Tensor:
    """Look up `rows` rows of a (V, d) table: read the ids and the rows, write the rows.

    VJP (only when the table trains): a zero-filled (V, d) gradient, then a scatter-add of
    the `rows` incoming row gradients into it (PyTorch's `embedding_dense_backward`).
    """
    s = g.itemsize
    v, d = table.shape
    n_out = rows * d
    fwd = Terms(0, 0, rows * TOKEN_ID_BYTES + 2 * n_out * s, 1)
    scatter = Terms(elementwise_flops(n_out), 0,
                    v * d * s + rows * TOKEN_ID_BYTES + n_out * s + 2 * n_out * s, 2)
    vjp = Vjp("scatter", scatter,
              residuals=((f"{name}:ids", rows * TOKEN_ID_BYTES / s),))  # int32 ids, in itemsize units
    return g.custom(name, "gather", fwd, (table,), out_shape, (vjp,))


def embeddings_cost(spec: StepSpec) -> tuple[Cost, int, np.ndarray]:
    """The lookups' cost, their trainable tensors and the largest one's elements."""
    m = spec.model
    d, b, t = m.d_model, spec.batch, spec.seq
    g = Graph(spec.prec.compute_dtype)
    train = spec.tables_train
    tied = spec.head == "lm-tied"
    # A tied token table is one parameter shared with the LM head; it is counted (and its
    # head gradient taken) in the head part, so here it is a leaf that only carries grad.
    if tied:
        E = g.input("E", (m.vocab, d), requires_grad=train)
    else:
        E = g.param("E", (m.vocab, d), trainable=train)
    x = _gather(g, "x=E[tokens]", E, b * t, (b, t, d))
    if m.n_position_rows:
        P = g.param("Epos", (m.n_position_rows, d), trainable=train)
        x = g.add("x=x+pos", x, _gather(g, "pos=Epos[0:seq]", P, t, (t, d)))
    if m.type_vocab:
        T = g.param("Etype", (m.type_vocab, d), trainable=train)
        x = g.add("x=x+type", x, _gather(g, "type=Etype[token types]", T, b * t, (b, t, d)))
    if m.norm_placement == "post":
        x = _norm(g, "ln_emb", x, m, train)
    cost = g.cost(x)
    if tied and train:
        # the lookup's scatter-add and the head's dE meet in one gradient buffer
        n = m.vocab * d
        acc = OpCost("accumulate dE (tied with the LM head)", "backward", "elementwise",
                     elementwise_flops(n), 0, elementwise_bytes(n, (n, n), g.itemsize), 1)
        cost = Cost(cost.ops + (acc,), cost.trainable_params, cost.saved_bytes, cost.dtype)
    return cost, sum(1 for p in g.params if p.requires_grad), largest_trainable(g)


def _norm(g: Graph, name: str, x: Tensor, m: ModelShape, trainable: bool) -> Tensor:
    gamma = g.param(f"γ{name}", (m.d_model,), trainable=trainable)
    if m.norm == "rmsnorm":
        return g.rmsnorm(name, x, gamma)
    beta = g.param(f"β{name}", (m.d_model,), trainable=trainable) if m.bias else None
    return g.layernorm(name, x, gamma, beta)


# --------------------------------------------------------------------------- head and loss


def _cross_entropy(g: Graph, logits: Tensor) -> Tensor:
    """Mean softmax cross-entropy over n rows of V logits (fused log-softmax + NLL).

    Forward: row max (n(V−1)), shift (nV), exp (nV transcendentals), row sum (n(V−1)),
    log (n transcendentals), log-probabilities = shift − log Σ (nV), pick the targets and
    average (n). VJP: dlogits = (exp(logp) − onehot)/n, as NLL backward (writes nV) then
    log-softmax backward (exp, row sum, multiply, subtract: 3nV FLOPs + nV exp); it reads the
    saved log-probabilities (n × V).
    """
    n, v = logits.shape
    nv = logits.numel
    s = g.itemsize
    red = reduction_flops(nv, n)
    fwd = Terms(
        flops=red + elementwise_flops(nv) + red + elementwise_flops(nv) + reduction_flops(n, 1) + 1,
        transcendentals=nv + n,
        bytes_moved=(reduction_bytes(nv, n, s) + elementwise_bytes(nv, (nv, n), s)
                     + elementwise_bytes(nv, (nv,), s) + reduction_bytes(nv, n, s)
                     + elementwise_bytes(nv, (nv, n), s) + n * TOKEN_ID_BYTES + reduction_bytes(n, 1, s)),
        kernels=6,
    )
    bwd = Terms(
        flops=red + 2 * elementwise_flops(nv),
        transcendentals=nv,
        bytes_moved=nv * s + n * TOKEN_ID_BYTES + elementwise_bytes(nv, (nv, nv), s),
        kernels=2,
    )
    vjp = Vjp("softmax", bwd, residuals=(("logp", nv),))
    return g.custom("loss=cross-entropy(logits)", "softmax", fwd, (logits,), (), (vjp,))


def head_cost(spec: StepSpec) -> tuple[Cost, int, np.ndarray]:
    """The final norm (pre-norm models), the head of `spec.head` and its loss, over one
    micro-batch; with the head's trainable tensors and the largest one's elements.

    - ``lm`` / ``lm-tied``: [BERT's MLM transform,] the vocabulary projection (the token
      table transposed when tied) [+ a vocabulary bias], cross-entropy over every token;
      trained under full fine-tuning only.
    - ``classifier``: the final norm over every token (as the base model computes it), the
      first token of each sequence (a slice: reads and writes b·d; its VJP writes the whole
      zero-padded (tokens × d) gradient), logits = h₀·Wcls + bcls (d → n_classes),
      cross-entropy over the b sequences; Wcls and bcls train under every method.
    - ``none``: loss = Σ of the final hidden state, as the layer benchmarks do.
    """
    m = spec.model
    d = m.d_model
    n = spec.micro_tokens
    g = Graph(spec.prec.compute_dtype)
    full = spec.method == "full"
    # blocks always train (frozen_prefix < layers), so the head input carries a gradient
    h = g.input("h", (n, d), requires_grad=True)
    if m.norm_placement == "pre":
        h = _norm(g, "ln_f", h, m, full)
    if spec.head == "none":
        loss = g.sum_all("loss=Σh", h)
    elif spec.head == "classifier":
        b, s = spec.batch, g.itemsize
        pool = Vjp("scatter", Terms(0, 0, (n * d + b * d) * s, 1))
        h0 = g.custom("h0=h[:, 0]", "gather", Terms(0, 0, 2 * b * d * s, 1), (h,), (b, d), (pool,))
        W = g.param("Wcls", (d, spec.n_classes), trainable=True)
        logits = g.add("logits=logits+bcls", g.matmul("logits=h0·Wcls", h0, W),
                       g.param("bcls", (spec.n_classes,), trainable=True))
        loss = _cross_entropy(g, logits)
    else:
        if m.mlm_head:  # BERT: dense + GELU + LayerNorm before the vocabulary projection
            Wt = g.param("Wmlm", (d, d), trainable=full)
            h = g.add("t=t+bmlm", g.matmul("t=h·Wmlm", h, Wt), g.param("bmlm", (d,), trainable=full))
            h = _norm(g, "ln_mlm", g.gelu("u=gelu(t)", h), m, full)
        if spec.head == "lm-tied":
            E = g.param("E", (m.vocab, d), trainable=full)
            logits = g.matmul("logits=h·Eᵀ", h, E, transpose_b=True)
        else:
            W = g.param("Wout", (d, m.vocab), trainable=full)
            logits = g.matmul("logits=h·Wout", h, W)
        if m.mlm_head:
            logits = g.add("logits=logits+bvocab", logits, g.param("bvocab", (m.vocab,), trainable=full))
        loss = _cross_entropy(g, logits)
    cost = g.cost(loss)
    return cost, sum(1 for p in g.params if p.requires_grad), largest_trainable(g)
