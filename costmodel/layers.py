"""The layers the project measures, built on `Graph`, under the three training methods.

Layers (x is the layer input; loss = Σ output, as in the blog's benchmark):
- ``linear``: y = xW, x: n×e, W: e×h.
- ``attention``: the blog's single-head self-attention: Q = XWq, K = XWk, V = XWv,
  P = softmax(QKᵀ/√h) over rows, output PV; X: n×e (n = the blog's batch size), W: e×h.
- ``block``: a pre-LayerNorm transformer block (Radford et al. 2019, GPT-2):
  x + Attn(LN₁(x)), then + MLP(LN₂(·)); multi-head (optionally grouped-query) attention with
  output projection; MLP of width ``hidden`` (default 4·embed), GELU or SwiGLU; tokens =
  batch × seq.

Methods, for each adapted ("target") matrix W (e×h):
- ``full``: every weight is trainable.
- ``lora``: y = xW + s·(xA)B with W frozen and A: e×r, B: r×h trainable (Hu et al. 2021,
  "LoRA", eq. 3; the scale s = α/r is one multiply per output element).
- ``lora_merged``: the blog's formulation, W' = W + AB, then y = xW'; it still forms the dense
  e×h gradient dW' before reaching A and B.
Non-target weights are frozen under both LoRA methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from costmodel.graph import Cost, Graph, Tensor, Terms, Vjp
from costmodel.hardware import dtype_bytes
from costmodel.primitives import (
    Size,
    elementwise_bytes,
    elementwise_flops,
    first_where,
    matmul_flops,
    positive,
    reduction_bytes,
    reduction_flops,
)
from costmodel.vocab import ATTENTIONS, LAYERS, METHODS, MLPS, NORMS

TARGETS = {
    "linear": ("w",),
    "attention": ("q", "k", "v"),
    "block": ("q", "k", "v", "o", "mlp"),
}
DEFAULT_TARGETS = {
    "linear": ("w",),
    "attention": ("q", "k"),  # the blog adapts Wq and Wk
    "block": ("q", "v"),  # Hu et al. 2021, sec. 7.1: adapting Wq and Wv works best
}
#: Physical upper bounds of a size given by a user or read from a table: beyond them a number
#: is a typo, not a layer. The widest published models are ~10^5 wide (GPT-3 175B: d_model
#: 12,288, MLP 49,152; Brown et al. 2020, table 2.1), contexts reach ~10^6-10^7 tokens; a
#: batch of 10^9 rows is far beyond any accelerator's memory.
MAX_WIDTH = 10**7
MAX_BATCH = 10**9
MAX_SEQ = 10**7


def parse_targets(layer: str, targets: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Targets as a sorted tuple; "q,v" or ("q", "v"); None gives the layer's default."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(LAYERS)}")
    if targets is None:
        return DEFAULT_TARGETS[layer]
    if isinstance(targets, str):
        targets = [t for t in (s.strip() for s in targets.split(",")) if t]
    targets = tuple(targets)
    if not targets:
        raise ValueError("the target list is empty; name at least one matrix to adapt")
    valid = TARGETS[layer]
    for t in targets:
        if t not in valid:
            raise ValueError(f"unknown target {t!r} for layer {layer}; choose from {', '.join(valid)}")
    if len(set(targets)) != len(targets):
        raise ValueError(f"target list {','.join(targets)} repeats a matrix")
    return tuple(t for t in valid if t in targets)


@dataclass(frozen=True)
class LayerConfig:
    """One layer under one method; sizes may be numpy arrays (broadcast together)."""

    layer: str
    method: str
    batch: Size
    embed: Size
    hidden: Size | None = None  # e→h width (linear, attention); MLP width (block, default 4·embed)
    rank: Size = 0
    targets: tuple[str, ...] | str | None = None
    input_requires_grad: bool = False
    dtype: str = "float32"
    seq: Size = 1
    heads: Size = 1
    kv_heads: Size | None = None
    mlp: str = "gelu"
    norm: str = "layernorm"
    bias: bool = False
    causal: bool = False
    lora_dropout: bool = False  # lora: dropout on the adapter's input path (PEFT's lora_dropout)
    attention: str = "naive"  # block: naive (materialised scores) | fused (FlashAttention)
    #: block: tensor-parallel degree; the graph is ONE device's shard (`costmodel.parallel`)
    tp: Size = 1

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        set_("targets", parse_targets(self.layer, self.targets))
        dtype_bytes(self.dtype)
        if self.mlp not in MLPS:
            raise ValueError(f"unknown mlp {self.mlp!r}; choose one of {', '.join(MLPS)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {self.attention!r}; choose one of {', '.join(ATTENTIONS)}")
        if self.attention != "naive" and self.layer != "block":
            raise ValueError(f"attention {self.attention!r} is a block option; layer {self.layer} is naive")
        for name in ("batch", "embed", "seq", "heads"):
            set_(name, positive(name, getattr(self, name)))
        if self.hidden is None:
            if self.layer != "block":
                raise ValueError(f"layer {self.layer} needs hidden (the output width h)")
            set_("hidden", 4 * self.embed)
        set_("hidden", positive("hidden", self.hidden))
        set_("kv_heads", self.heads if self.kv_heads is None else positive("kv_heads", self.kv_heads))
        set_("tp", positive("tp", self.tp))
        if self.layer == "block":
            whole = self.embed == np.round(self.embed)
            if np.any((self.embed % self.heads != 0) & whole):
                raise ValueError("heads must divide embed (the model width)")
            if np.any(self.heads % self.kv_heads):
                raise ValueError("kv_heads must divide heads")
        elif np.any(self.seq != 1) or np.any(self.heads != 1):
            raise ValueError(f"layer {self.layer} has no seq or heads; leave them at 1")
        if self.layer != "block" and np.any(self.tp != 1):
            raise ValueError(f"layer {self.layer} has no tensor-parallel split; leave tp at 1")
        if self.layer == "block":
            if np.any(self.heads % self.tp):
                raise ValueError("tp must divide heads (Megatron splits attention by heads)")
            if np.any(self.hidden % self.tp):
                raise ValueError("tp must divide the MLP width")
            if np.any((self.kv_heads % self.tp != 0) & (self.tp % self.kv_heads != 0)):
                raise ValueError("tp must divide kv_heads or be a multiple of it")
        if self.method == "full":
            set_("rank", np.asarray(0))
            return
        rank = positive("rank", self.rank)
        limit = self._rank_limit()
        if np.any(rank > limit):
            bad = rank > limit
            raise ValueError(
                f"rank {first_where(rank, bad):g} exceeds min(e, h) = {first_where(limit, bad):g} of an adapted matrix"
            )
        set_("rank", rank)

    def _rank_limit(self) -> np.ndarray:
        """min(e, h) over the adapted matrices: a rank above it adds nothing a full W lacks."""
        e, h = self.embed, self.hidden
        if self.layer != "block":
            return np.minimum(e, h)
        kv = self.embed // self.heads * self.kv_heads
        dims = {"q": e, "o": e, "k": np.minimum(e, kv), "v": np.minimum(e, kv), "mlp": np.minimum(e, h)}
        return np.minimum.reduce([np.broadcast_to(dims[t], np.broadcast(e, h, kv).shape) for t in self.targets])


def layer_cost(layer: str, method: str, **shape) -> Cost:
    """FLOPs, bytes, kernels, trainable parameters and saved activations of one training step.

    `shape` takes the fields of `LayerConfig` (batch, embed, hidden, rank, targets,
    input_requires_grad, dtype, seq, heads, kv_heads, mlp, norm, bias, causal, lora_dropout). Raises
    ValueError with a one-line message for a size ≤ 0, a rank above min(e, h), an unknown
    layer, method, target or dtype.
    """
    return build(LayerConfig(layer, method, **shape))


def build(cfg: LayerConfig) -> Cost:
    """Record the layer's forward ops for `cfg` and return the step's cost."""
    g = Graph(cfg.dtype)
    x = g.input("X", (cfg.batch * cfg.seq, cfg.embed), requires_grad=cfg.input_requires_grad)
    out = record(g, x, cfg)
    return g.cost(g.sum_all(f"loss=Σ{out.name}", out))


def record(g: Graph, x: Tensor, cfg: LayerConfig) -> Tensor:
    """Record the layer's forward ops on `g` from input `x`; return its output (no loss).

    For composing layers into a model (`costmodel.step`): the caller seeds the backward
    with `g.cost(output)`, i.e. with the gradient arriving from the layer above.
    """
    return {"linear": _linear, "attention": _attention, "block": _block}[cfg.layer](g, x, cfg)


def project(g: Graph, name: str, x: Tensor, e: Size, h: Size, cfg: LayerConfig,
            target: bool, bias: bool = False) -> Tensor:
    """y = xW (+ b) for W: e×h under `cfg.method`, adapted when `target` is true."""
    method = cfg.method if target else "frozen"
    trainable_w = cfg.method == "full"
    Y, X = name.upper() or "Y", x.name
    W = g.param(f"W{name}", (e, h), trainable=trainable_w)
    if method == "lora_merged":
        A = g.param(f"A{name}", (e, cfg.rank), trainable=True)
        B = g.param(f"B{name}", (cfg.rank, h), trainable=True)
        dW = g.matmul(f"ΔW{name}=A{name}·B{name}", A, B)
        W = g.add(f"W{name}'=W{name}+ΔW{name}", W, dW)
    if method == "lora":
        A = g.param(f"A{name}", (e, cfg.rank), trainable=True)
        B = g.param(f"B{name}", (cfg.rank, h), trainable=True)
        xw = g.matmul(f"{X}W{name}={X}·W{name}", x, W)
        xd = _dropout(g, f"drop{X}{name}", x) if cfg.lora_dropout else x
        xa = g.matmul(f"{X}A{name}={xd.name}·A{name}", xd, A)
        xab = g.matmul(f"{X}A{name}B{name}={X}A{name}·B{name}", xa, B)
        sxab = g.scale(f"s{X}A{name}B{name}=s·{X}A{name}B{name}", xab)
        y = g.add(f"{Y}={X}W{name}+s{X}A{name}B{name}", xw, sxab)
    else:
        y = g.matmul(f"{Y}={X}·{W.name}", x, W)
    if bias:
        b = g.param(f"b{name}", (h,), trainable=trainable_w)
        y = g.add(f"{Y}={Y}+b{name}", y, b)
    return y


def _linear(g: Graph, x: Tensor, cfg: LayerConfig) -> Tensor:
    return project(g, "", x, cfg.embed, cfg.hidden, cfg, target=True, bias=cfg.bias)


def _attention(g: Graph, x: Tensor, cfg: LayerConfig) -> Tensor:
    e, h = cfg.embed, cfg.hidden
    q = project(g, "q", x, e, h, cfg, "q" in cfg.targets)
    k = project(g, "k", x, e, h, cfg, "k" in cfg.targets)
    v = project(g, "v", x, e, h, cfg, "v" in cfg.targets)
    s = g.scale("S'=S/√h", g.matmul("S=Q·Kᵀ", q, k, transpose_b=True))
    p = g.softmax("P=softmax(S')", s)
    return g.matmul("O=P·V", p, v)


def _block(g: Graph, x: Tensor, cfg: LayerConfig) -> Tensor:
    """One device's shard of the block under tensor parallelism of degree `cfg.tp` (1: the
    whole block). Megatron's split (Shoeybi et al. 2019, "Megatron-LM", sec. 3, Fig. 3):
    q, k, v and the MLP's first matrices are split by columns (heads; ffn/tp), o and the
    MLP's last matrix by rows; norms and residual adds are replicated. Under grouped-query
    attention with tp > kv_heads each kv head is replicated on tp/kv_heads devices. A LoRA
    factor on the unsplit side is replicated (A of a column-split matrix, B of a row-split
    one), the other is split with its matrix. The all-reduces that join the shards are
    listed by `costmodel.parallel.collectives`, not costed here.
    """
    d, ffn, tp = cfg.embed, cfg.hidden, cfg.tp
    b, t, nh, nkv = cfg.batch, cfg.seq, cfg.heads, cfg.kv_heads
    hd = d // nh
    nh, nkv = nh / tp, np.maximum(nkv / tp, 1)  # heads of this device
    kv = hd * nkv
    ffn = ffn / tp
    train_w = cfg.method == "full"

    def norm(ln: str, out: str, a: Tensor) -> Tensor:
        gamma = g.param(f"γ{ln}", (d,), trainable=train_w)
        name = f"{out}={ln}({a.name})"
        if cfg.norm == "rmsnorm":
            return g.rmsnorm(name, a, gamma)
        return g.layernorm(name, a, gamma, g.param(f"β{ln}", (d,), trainable=train_w))

    h1 = norm("ln1", "H1", x)
    q = project(g, "q", h1, d, hd * nh, cfg, "q" in cfg.targets, cfg.bias)
    k = project(g, "k", h1, d, kv, cfg, "k" in cfg.targets, cfg.bias)
    v = project(g, "v", h1, d, kv, cfg, "v" in cfg.targets, cfg.bias)
    # Heads are reshapes (free); grouped-query heads are repeated, whose VJP is a group sum.
    qh = _reshape(g, q, (b * nh, t, hd))
    if cfg.attention == "fused":
        kh, vh = _reshape(g, k, (b * nkv, t, hd)), _reshape(g, v, (b * nkv, t, hd))
        # its output is the (tokens × d) input of Wo directly (heads merged by a free view), so
        # O saved for the attention backward and for dWo is one tensor
        o = fused_attention(g, qh, kh, vh, nh / nkv, cfg.causal, (b * t, hd * nh))
    else:
        kh = _repeat_kv(g, _reshape(g, k, (b * nkv, t, hd)), nh / nkv, (b * nh, t, hd))
        vh = _repeat_kv(g, _reshape(g, v, (b * nkv, t, hd)), nh / nkv, (b * nh, t, hd))
        s = g.scale("S'=S/√hd", g.matmul("S=Q·Kᵀ", qh, kh, transpose_b=True))
        if cfg.causal:
            s = g.causal_mask("S'=mask(S')", s)
        p = g.softmax("P=softmax(S')", s)
        o = _reshape(g, g.matmul("O=P·V", p, vh), (b * t, hd * nh))
    o = project(g, "o", o, hd * nh, d, cfg, "o" in cfg.targets, cfg.bias)
    x2 = g.add("X2=X+O", x, o)
    h2 = norm("ln2", "H2", x2)
    adapt = "mlp" in cfg.targets
    if cfg.mlp == "gelu":
        u = g.gelu("U=gelu(FC)", project(g, "fc", h2, d, ffn, cfg, adapt, cfg.bias))
    else:
        gate = g.silu("G=silu(GATE)", project(g, "gate", h2, d, ffn, cfg, adapt, cfg.bias))
        u = g.mul("U=G⊙UP", gate, project(g, "up", h2, d, ffn, cfg, adapt, cfg.bias))
    y = project(g, "proj", u, ffn, d, cfg, adapt, cfg.bias)
    return g.add("Z=X2+PROJ", x2, y)


def fused_attention(g: Graph, q: Tensor, k: Tensor, v: Tensor, groups: Size, causal: bool,
                    out_shape: tuple[Size, ...]) -> Tensor:
    """O = softmax(mask(Q·Kᵀ/√hd))·V in one kernel that never writes the (t × t) scores:
    FlashAttention (Dao et al. 2022, "FlashAttention: Fast and Memory-Efficient Exact
    Attention with IO-Awareness", arXiv:2205.14135, Algorithms 1 and 4).

    q: (B·h, t, hd); k, v: (B·h_kv, t, hd), each kv head serving `groups` query heads (read
    in place, not repeated); out_shape: O's shape (the heads merged, a free view). With
    n = B·h·t·t score elements and m = B·h·t rows:
    - forward: the same arithmetic as the naive path -- S = Q·Kᵀ (2·n·hd), scale (n), causal
      mask (2n), softmax (max, shift, exp, sum, divide: 4n − 2m + n exp), O = P·V (2·n·hd) --
      plus the row log-sum-exp L = max + log Σ (m FLOPs, m logs) kept for the backward;
      it reads Q, K, V and writes O and L; one kernel.
    - backward, done once for whichever inputs need a gradient: recompute S = Q·Kᵀ, scale,
      mask and P = exp(S − L) (2·n·hd + n + 2n + n, n exp), D = rowsum(dO ⊙ O)
      (2·m·hd − m), dP = dO·Vᵀ (2·n·hd), dS = P ⊙ (dP − D) (2n) and its 1/√hd (n); it reads
      Q, K, V, O, dO and L; one kernel (Algorithm 4). Then dQ = dS·K, dK = dSᵀ·Q and
      dV = Pᵀ·dO (2·n·hd each, inside the same kernel: no launch), each written once; under
      grouped-query attention dK and dV are summed over the `groups` query heads of a kv head.
      So the backward runs five (t × t × hd) products against the naive path's four: the
      recomputation FlashAttention trades for not storing P.
    Saved for the backward: Q, K, V, O and L (m values), never an n-sized tensor.
    Bytes count each input read once and each output written once: the re-reads of K and V
    tiles through on-chip memory (Θ(t²·hd²/M) for on-chip size M, Dao et al. Theorem 2) are
    not counted, nor are tiles skipped above a causal diagonal (their FLOPs are counted).
    """
    bh, t, hd = q.shape
    s = g.itemsize
    n = bh * t * t
    m = bh * t
    nq, nkv = q.numel, k.numel
    mm = matmul_flops(t, hd, t, bh)  # one (t × hd)·(hd × t) product per head: 2·t·t·hd
    mask = elementwise_flops(n, 2) if causal else 0
    softmax_fwd = 2 * reduction_flops(n, m) + 2 * elementwise_flops(n)
    fwd = Terms(mm + elementwise_flops(n) + mask + softmax_fwd + mm + elementwise_flops(m),
                n + m, (nq + 2 * nkv + nq + m) * s, 1)
    shared = Vjp(
        "attention",
        Terms(mm + elementwise_flops(n) + mask + elementwise_flops(n)  # recompute S, P
              + elementwise_flops(nq, 2) - m  # D = rowsum(dO ⊙ O)
              + mm + elementwise_flops(n, 2) + elementwise_flops(n),  # dP, dS, dS/√hd
              n, (nq + 2 * nkv + nq + nq + m) * s, 1),
        reads=(q, k, v), residuals=(("attention:L", m),), reads_output=True)
    group_sum = np.where(np.asarray(groups) > 1, reduction_flops(nq, nkv), 0)
    dq = Vjp("attention", Terms(mm, 0, nq * s, 0))
    dkv = Vjp("attention", Terms(mm + group_sum, 0, nkv * s, 0))
    return g.custom("O=flash_attention(Q,K,V)", "attention", fwd, (q, k, v), out_shape,
                    (dq, dkv, dkv), shared=shared)


#: Bytes per element of a dropout mask (a bool).
MASK_BYTES = 1


def _dropout(g: Graph, name: str, x: Tensor) -> Tensor:
    """Inverted dropout, y = x ⊙ m / (1 − p), on LoRA's input path (Hu et al. 2021, sec. 6;
    PEFT's ``lora_dropout``). Each adapted matrix draws its own mask.

    Forward: draw the mask and apply it, 2 FLOPs per element (compare, multiply); reads x,
    writes y and the 1-byte mask. VJP: dx = g ⊙ m / (1 − p), 1 FLOP per element; reads the
    saved mask (kept as a residual, its numel in units of the graph's itemsize).
    """
    n = x.numel
    s = g.itemsize
    fwd = Terms(elementwise_flops(n, 2), 0, elementwise_bytes(n, (n,), s) + n * MASK_BYTES, 1)
    bwd = Terms(elementwise_flops(n), 0, elementwise_bytes(n, (n,), s) + n * MASK_BYTES, 1)
    vjp = Vjp("elementwise", bwd, residuals=((f"{name}:mask", n * MASK_BYTES / s),))
    return g.custom(f"{name}=dropout({x.name})", "elementwise", fwd, (x,), x.shape, (vjp,))


def _reshape(g: Graph, a: Tensor, shape: tuple) -> Tensor:
    """A view with a new shape: no cost, gradient passes through."""
    return g.custom(f"{a.name}=heads({a.name})", "reshape", Terms(), (a,), shape, (None,))


def _repeat_kv(g: Graph, a: Tensor, groups: Size, shape: tuple) -> Tensor:
    """Repeat grouped kv heads `groups` times (a broadcast); VJP sums each group."""
    if np.all(np.asarray(groups) == 1):
        return a
    n_out = a.numel * groups
    vjp = Vjp("reduction",
              Terms(reduction_flops(n_out, a.numel), 0, reduction_bytes(n_out, a.numel, g.itemsize), 1))
    return g.custom(f"{a.name}=repeat({a.name})", "broadcast", Terms(0, 0, 0, 0), (a,), shape, (vjp,))
