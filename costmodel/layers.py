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
from costmodel.primitives import Size, reduction_bytes, reduction_flops

LAYERS = ("linear", "attention", "block")
METHODS = ("full", "lora", "lora_merged")
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
MLPS = ("gelu", "swiglu")
NORMS = ("layernorm", "rmsnorm")


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


def _positive(name: str, value: Size) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        arr = arr.astype(np.int64)
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got {_first(arr, arr <= 0)}")
    return arr.astype(np.int64)


def _first(arr: np.ndarray, mask: np.ndarray) -> int:
    return int(np.broadcast_to(arr, np.shape(mask))[mask].flat[0])


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
        for name in ("batch", "embed", "seq", "heads"):
            set_(name, _positive(name, getattr(self, name)))
        if self.hidden is None:
            if self.layer != "block":
                raise ValueError(f"layer {self.layer} needs hidden (the output width h)")
            set_("hidden", 4 * self.embed)
        set_("hidden", _positive("hidden", self.hidden))
        set_("kv_heads", self.heads if self.kv_heads is None else _positive("kv_heads", self.kv_heads))
        if self.layer == "block":
            if np.any(self.embed % self.heads):
                raise ValueError("heads must divide embed (the model width)")
            if np.any(self.heads % self.kv_heads):
                raise ValueError("kv_heads must divide heads")
        elif np.any(self.seq != 1) or np.any(self.heads != 1):
            raise ValueError(f"layer {self.layer} has no seq or heads; leave them at 1")
        if self.method == "full":
            set_("rank", np.asarray(0))
            return
        rank = _positive("rank", self.rank)
        limit = self._rank_limit()
        if np.any(rank > limit):
            bad = rank > limit
            raise ValueError(
                f"rank {_first(rank, bad)} exceeds min(e, h) = {_first(limit, bad)} of an adapted matrix"
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
    input_requires_grad, dtype, seq, heads, kv_heads, mlp, norm, bias, causal). Raises
    ValueError with a one-line message for a size ≤ 0, a rank above min(e, h), an unknown
    layer, method, target or dtype.
    """
    return build(LayerConfig(layer, method, **shape))


def build(cfg: LayerConfig) -> Cost:
    """Record the layer's forward ops for `cfg` and return the step's cost."""
    g = Graph(cfg.dtype)
    x = g.input("X", (cfg.batch * cfg.seq, cfg.embed), requires_grad=cfg.input_requires_grad)
    out = {"linear": _linear, "attention": _attention, "block": _block}[cfg.layer](g, x, cfg)
    return g.cost(g.sum_all("loss", out))


def project(g: Graph, name: str, x: Tensor, e: Size, h: Size, cfg: LayerConfig,
            target: bool, bias: bool = False) -> Tensor:
    """y = xW (+ b) for W: e×h under `cfg.method`, adapted when `target` is true."""
    method = cfg.method if target else "frozen"
    trainable_w = cfg.method == "full"
    W = g.param(f"W{name}", (e, h), trainable=trainable_w)
    if method == "lora_merged":
        A = g.param(f"A{name}", (e, cfg.rank), trainable=True)
        B = g.param(f"B{name}", (cfg.rank, h), trainable=True)
        W = g.add(f"W{name}+A{name}B{name}", W, g.matmul(f"A{name}B{name}", A, B))
    y = g.matmul(f"{name.upper() or 'Y'}=XW{name}", x, W)
    if method == "lora":
        A = g.param(f"A{name}", (e, cfg.rank), trainable=True)
        B = g.param(f"B{name}", (cfg.rank, h), trainable=True)
        xa = g.matmul(f"XA{name}", x, A)
        xab = g.matmul(f"XA{name}B{name}", xa, B)
        y = g.add(f"{name.upper() or 'Y'}+s·XAB", y, g.scale(f"s·XA{name}B{name}", xab))
    if bias:
        b = g.param(f"b{name}", (h,), trainable=trainable_w)
        y = g.add(f"{name.upper() or 'Y'}+b{name}", y, b)
    return y


def _linear(g: Graph, x: Tensor, cfg: LayerConfig) -> Tensor:
    return project(g, "", x, cfg.embed, cfg.hidden, cfg, target=True, bias=cfg.bias)


def _attention(g: Graph, x: Tensor, cfg: LayerConfig) -> Tensor:
    e, h = cfg.embed, cfg.hidden
    q = project(g, "q", x, e, h, cfg, "q" in cfg.targets)
    k = project(g, "k", x, e, h, cfg, "k" in cfg.targets)
    v = project(g, "v", x, e, h, cfg, "v" in cfg.targets)
    s = g.scale("S/√h", g.matmul("S=QKᵀ", q, k, transpose_b=True))
    p = g.softmax("P=softmax(S)", s)
    return g.matmul("O=PV", p, v)


def _block(g: Graph, x: Tensor, cfg: LayerConfig) -> Tensor:
    d, ffn = cfg.embed, cfg.hidden
    b, t, nh, nkv = cfg.batch, cfg.seq, cfg.heads, cfg.kv_heads
    hd = d // nh
    kv = hd * nkv
    train_w = cfg.method == "full"

    def norm(name: str, a: Tensor) -> Tensor:
        gamma = g.param(f"γ{name}", (d,), trainable=train_w)
        if cfg.norm == "rmsnorm":
            return g.rmsnorm(name, a, gamma)
        return g.layernorm(name, a, gamma, g.param(f"β{name}", (d,), trainable=train_w))

    h1 = norm("ln1", x)
    q = project(g, "q", h1, d, d, cfg, "q" in cfg.targets, cfg.bias)
    k = project(g, "k", h1, d, kv, cfg, "k" in cfg.targets, cfg.bias)
    v = project(g, "v", h1, d, kv, cfg, "v" in cfg.targets, cfg.bias)
    # Heads are reshapes (free); grouped-query heads are repeated, whose VJP is a group sum.
    qh = _reshape(g, q, (b * nh, t, hd))
    kh = _repeat_kv(g, _reshape(g, k, (b * nkv, t, hd)), nh // nkv, (b * nh, t, hd))
    vh = _repeat_kv(g, _reshape(g, v, (b * nkv, t, hd)), nh // nkv, (b * nh, t, hd))
    s = g.scale("S/√hd", g.matmul("S=QKᵀ", qh, kh, transpose_b=True))
    if cfg.causal:
        s = g.causal_mask("mask", s)
    p = g.softmax("P=softmax(S)", s)
    o = _reshape(g, g.matmul("O=PV", p, vh), (b * t, d))
    o = project(g, "o", o, d, d, cfg, "o" in cfg.targets, cfg.bias)
    x2 = g.add("x+attn", x, o)
    h2 = norm("ln2", x2)
    adapt = "mlp" in cfg.targets
    if cfg.mlp == "gelu":
        u = g.gelu("gelu", project(g, "fc", h2, d, ffn, cfg, adapt, cfg.bias))
    else:
        gate = g.silu("silu", project(g, "gate", h2, d, ffn, cfg, adapt, cfg.bias))
        u = g.mul("silu·up", gate, project(g, "up", h2, d, ffn, cfg, adapt, cfg.bias))
    y = project(g, "proj", u, ffn, d, cfg, adapt, cfg.bias)
    return g.add("x+mlp", x2, y)


def _reshape(g: Graph, a: Tensor, shape: tuple) -> Tensor:
    """A view with a new shape: no cost, gradient passes through."""
    return g.custom(f"{a.name}↦heads", "reshape", Terms(), (a,), shape, (None,))


def _repeat_kv(g: Graph, a: Tensor, groups: Size, shape: tuple) -> Tensor:
    """Repeat grouped kv heads `groups` times (a broadcast); VJP sums each group."""
    if np.all(np.asarray(groups) == 1):
        return a
    n_out = a.numel * groups
    vjp = Vjp(f"d{a.name}", "reduction",
              Terms(reduction_flops(n_out, a.numel), 0, reduction_bytes(n_out, a.numel, g.itemsize), 1))
    return g.custom(f"repeat {a.name}", "broadcast", Terms(0, 0, 0, 0), (a,), shape, (vjp,))
