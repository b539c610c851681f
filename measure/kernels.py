"""The JAX kernels that get timed, one-to-one with `costmodel.layers`.

Each kernel is one training step's arithmetic: the loss (Σ of the layer output, as in the
blog) and its gradient with respect to the trainable parameters only (plus the layer input
when `input_requires_grad`). Parameters and inputs are arguments, never closed over, so XLA
cannot fold them. Softmax, LayerNorm, RMSNorm, GELU and SiLU carry explicit VJPs
(`jax.custom_vjp`) that perform exactly the passes `costmodel.graph` counts, so XLA's own
FLOP count can check the cost model op for op.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from costmodel.layers import LayerConfig

LORA_ALPHA = 16.0  # s = α / r (Hu et al. 2021, sec. 4.1); any constant costs the same
_EPS = 1e-5


# --------------------------------------------------------------------------- primitives
@jax.custom_vjp
def softmax(x):
    """Row softmax: max, subtract, exp, sum, divide."""
    z = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return z / jnp.sum(z, axis=-1, keepdims=True)


def _softmax_fwd(x):
    y = softmax(x)
    return y, y


def _softmax_bwd(y, g):
    return (y * (g - jnp.sum(g * y, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _norm_fwd_parts(x, centred: bool):
    d = x.shape[-1]
    if centred:
        xc = x - jnp.sum(x, axis=-1, keepdims=True) / d
    else:
        xc = x
    r = jax.lax.rsqrt(jnp.sum(xc * xc, axis=-1, keepdims=True) / d + _EPS)
    return xc * r, r


@jax.custom_vjp
def layernorm(x, gamma, beta):
    xhat, _ = _norm_fwd_parts(x, True)
    return xhat * gamma + beta


def _layernorm_fwd(x, gamma, beta):
    xhat, r = _norm_fwd_parts(x, True)
    return xhat * gamma + beta, (xhat, r, gamma)


def _layernorm_bwd(res, g):
    xhat, r, gamma = res
    d = xhat.shape[-1]
    gg = g * gamma
    mean_gg = jnp.sum(gg, axis=-1, keepdims=True) / d
    mean_ggx = jnp.sum(gg * xhat, axis=-1, keepdims=True) / d
    dx = (gg - mean_gg - xhat * mean_ggx) * r
    lead = tuple(range(g.ndim - 1))
    return dx, jnp.sum(g * xhat, axis=lead), jnp.sum(g, axis=lead)


layernorm.defvjp(_layernorm_fwd, _layernorm_bwd)


@jax.custom_vjp
def rmsnorm(x, gamma):
    xhat, _ = _norm_fwd_parts(x, False)
    return xhat * gamma


def _rmsnorm_fwd(x, gamma):
    xhat, r = _norm_fwd_parts(x, False)
    return xhat * gamma, (xhat, r, gamma)


def _rmsnorm_bwd(res, g):
    xhat, r, gamma = res
    d = xhat.shape[-1]
    gg = g * gamma
    mean_ggx = jnp.sum(gg * xhat, axis=-1, keepdims=True) / d
    dx = (gg - xhat * mean_ggx) * r
    return dx, jnp.sum(g * xhat, axis=tuple(range(g.ndim - 1)))


rmsnorm.defvjp(_rmsnorm_fwd, _rmsnorm_bwd)

_C0 = math.sqrt(2.0 / math.pi)
_C1 = 0.044715


@jax.custom_vjp
def gelu(x):
    """GELU, tanh approximation (GPT-2's gelu_new)."""
    return _gelu_fwd(x)[0]


def _gelu_fwd(x):
    t = jnp.tanh(_C0 * (x + _C1 * (x * x * x)))
    return 0.5 * x * (1.0 + t), (x, t)


def _gelu_bwd(res, g):
    x, t = res
    dydx = 0.5 * (1.0 + t) + (0.5 * x) * (1.0 - t * t) * (_C0 * (1.0 + (3.0 * _C1) * (x * x)))
    return (g * dydx,)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


@jax.custom_vjp
def silu(x):
    return x * jax.nn.sigmoid(x)


def _silu_fwd(x):
    s = jax.nn.sigmoid(x)
    return x * s, (x, s)


def _silu_bwd(res, g):
    x, s = res
    return (g * (s * (1.0 + x * (1.0 - s))),)


silu.defvjp(_silu_fwd, _silu_bwd)


# ------------------------------------------------------------------------------ layers
def project(x, p: dict, name: str, cfg: LayerConfig, target: bool, alpha: float = LORA_ALPHA):
    """y = xW (+ b), LoRA-factored or merged when `target`; mirrors costmodel.layers.project.

    alpha: LoRA's α; the adapter's product is scaled by s = α / r (factored form only: merged
    LoRA's W' = W + AB absorbs s into B)."""
    W = p[f"W{name}"]
    method = cfg.method if target else "frozen"
    if method == "lora_merged":
        W = W + p[f"A{name}"] @ p[f"B{name}"]
    y = x @ W
    if method == "lora":
        s = alpha / p[f"A{name}"].shape[1]
        y = y + s * ((x @ p[f"A{name}"]) @ p[f"B{name}"])
    if f"b{name}" in p:
        y = y + p[f"b{name}"]
    return y


def _linear(x, p, cfg):
    return project(x, p, "", cfg, True)


def _attention(x, p, cfg):
    q = project(x, p, "q", cfg, "q" in cfg.targets)
    k = project(x, p, "k", cfg, "k" in cfg.targets)
    v = project(x, p, "v", cfg, "v" in cfg.targets)
    s = (q @ k.T) * (1.0 / math.sqrt(cfg.hidden))
    return softmax(s) @ v


from costmodel.vocab import ATTENTIONS  # noqa: E402 -- one home for the vocabulary


def fused_attention(q, k, v, causal: bool):
    """softmax(qkᵀ/√d)v by `jax.nn.dot_product_attention` on (batch, seq, heads, head_dim).

    Keys and values may have fewer heads (grouped-query attention). On a GPU, JAX picks
    cuDNN's fused kernel (FlashAttention's algorithm: Dao et al. 2022, "FlashAttention",
    arXiv:2205.14135), which keeps no seq×seq tensor for the backward and recomputes the
    scores and their softmax there. On other backends JAX lowers it to plain XLA ops; we wrap
    that in `jax.checkpoint`, so the backward likewise keeps only q, k, v and recomputes
    scores and probabilities (the output product PV is not needed by its own VJP and is not
    recomputed): the same arithmetic FlashAttention performs, without its tiling.
    """
    if jax.default_backend() == "gpu":
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    return jax.checkpoint(
        lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
    )(q, k, v)


def _block(x, p, cfg, *, alpha: float = LORA_ALPHA, attention: str = "naive"):
    """A pre-norm transformer block on x: (batch·seq, embed); see costmodel.layers.

    attention: "naive" materialises the (seq × seq) scores with the project's own softmax;
    "fused" is `fused_attention`."""
    if attention not in ATTENTIONS:
        raise ValueError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTIONS)}")
    b, t, d = int(cfg.batch), int(cfg.seq), int(cfg.embed)
    nh, nkv = int(cfg.heads), int(cfg.kv_heads)
    hd = d // nh

    def norm(name, a):
        if cfg.norm == "rmsnorm":
            return rmsnorm(a, p[f"γ{name}"])
        return layernorm(a, p[f"γ{name}"], p[f"β{name}"])

    def heads(a, n):
        return a.reshape(b, t, n, hd).transpose(0, 2, 1, 3)

    def proj(a, name, target):
        return project(a, p, name, cfg, target, alpha)

    h1 = norm("ln1", x)
    q, k, v = (proj(h1, n, n in cfg.targets) for n in ("q", "k", "v"))
    if attention == "fused":
        o = fused_attention(q.reshape(b, t, nh, hd), k.reshape(b, t, nkv, hd),
                            v.reshape(b, t, nkv, hd), bool(cfg.causal)).reshape(b * t, d)
    else:
        q, k, v = heads(q, nh), heads(k, nkv), heads(v, nkv)
        if nkv != nh:
            k = jnp.repeat(k, nh // nkv, axis=1)
            v = jnp.repeat(v, nh // nkv, axis=1)
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k) * (1.0 / math.sqrt(hd))
        if cfg.causal:
            s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
        o = jnp.einsum("bhqk,bhkd->bhqd", softmax(s), v).transpose(0, 2, 1, 3).reshape(b * t, d)
    x2 = x + proj(o, "o", "o" in cfg.targets)
    h2 = norm("ln2", x2)
    adapt = "mlp" in cfg.targets
    if cfg.mlp == "gelu":
        u = gelu(proj(h2, "fc", adapt))
    else:
        u = silu(proj(h2, "gate", adapt)) * proj(h2, "up", adapt)
    return x2 + proj(u, "proj", adapt)


LAYER_FNS: dict[str, Callable] = {"linear": _linear, "attention": _attention, "block": _block}


# ---------------------------------------------------------------------------- building
@dataclass(frozen=True)
class Kernel:
    """A compiled-to-be training step: `fn(*args)` returns (loss, gradients)."""

    name: str
    cfg: LayerConfig
    fn: Callable
    args: tuple
    loss_fn: Callable  # loss_fn(x, frozen, trainable) -> scalar


def param_shapes(cfg: LayerConfig) -> dict[str, tuple[tuple[int, ...], bool]]:
    """name -> (shape, trainable) for every parameter of `cfg`, as costmodel.layers declares."""
    e, h, r = int(cfg.embed), int(cfg.hidden), int(cfg.rank)
    full = cfg.method == "full"
    shapes: dict[str, tuple[tuple[int, ...], bool]] = {}

    def proj(name, din, dout, target, bias=False):
        shapes[f"W{name}"] = ((din, dout), full)
        if target and not full:
            shapes[f"A{name}"] = ((din, r), True)
            shapes[f"B{name}"] = ((r, dout), True)
        if bias:
            shapes[f"b{name}"] = ((dout,), full)

    if cfg.layer == "linear":
        proj("", e, h, True, cfg.bias)
    elif cfg.layer == "attention":
        for n in ("q", "k", "v"):
            proj(n, e, h, n in cfg.targets)
    else:
        kv = e // int(cfg.heads) * int(cfg.kv_heads)
        for ln in ("ln1", "ln2"):
            shapes[f"γ{ln}"] = ((e,), full)
            if cfg.norm == "layernorm":
                shapes[f"β{ln}"] = ((e,), full)
        for n, dout in (("q", e), ("k", kv), ("v", kv)):
            proj(n, e, dout, n in cfg.targets, cfg.bias)
        proj("o", e, e, "o" in cfg.targets, cfg.bias)
        adapt = "mlp" in cfg.targets
        for n in (("fc",) if cfg.mlp == "gelu" else ("gate", "up")):
            proj(n, e, h, adapt, cfg.bias)
        proj("proj", h, e, adapt, cfg.bias)
    return shapes


def init_params(cfg: LayerConfig, seed: int = 0) -> tuple[jax.Array, dict, dict]:
    """X, frozen and trainable parameters: N(0, 1/fan_in) weights, unit γ, zero β and b.

    B is random too (LoRA initialises it to zero, which would make dA vanish in tests);
    the cost is the same for any values.
    """
    dt = jnp.dtype(cfg.dtype)
    # numpy's generator, not jax.random: jax.random compiles a kernel for every new shape
    # (a third of a quick sweep's time went to compiling random-number kernels)
    rng = np.random.default_rng(seed)

    def normal(shape, scale=1.0):
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale), dt)

    x = normal((int(cfg.batch) * int(cfg.seq), int(cfg.embed)))
    frozen, trainable = {}, {}
    for name, (shape, is_trainable) in param_shapes(cfg).items():
        if name.startswith("γ"):
            value = jnp.asarray(np.ones(shape, np.float32), dt)
        elif name.startswith(("β", "b")):
            value = jnp.asarray(np.zeros(shape, np.float32), dt)
        else:
            value = normal(shape, 1 / np.sqrt(shape[0]))
        (trainable if is_trainable else frozen)[name] = value
    return x, frozen, trainable


def loss_fn_for(cfg: LayerConfig) -> Callable:
    layer = LAYER_FNS[cfg.layer]

    def loss(x, frozen, trainable):
        return jnp.sum(layer(x, {**frozen, **trainable}, cfg))

    return loss


def build(layer: str, method: str, *, seed: int = 0, **shape) -> Kernel:
    """The training-step kernel of `layer` under `method`; `shape` as in costmodel.layer_cost.

    `fn(x, frozen, trainable)` returns (loss, grads): grads of the trainable dict, and of x
    first when `input_requires_grad`.
    """
    cfg = LayerConfig(layer, method, **shape)
    for name in ("batch", "embed", "hidden", "rank", "seq", "heads", "kv_heads"):
        if np.ndim(getattr(cfg, name)) != 0:
            raise ValueError(f"a kernel needs scalar sizes; {name} is an array")
    loss = loss_fn_for(cfg)
    argnums = (0, 2) if cfg.input_requires_grad else 2
    fn = jax.value_and_grad(loss, argnums=argnums)
    name = f"{layer}/{method}"
    return Kernel(name, cfg, fn, init_params(cfg, seed), loss)


def xla_cost(kernel: Kernel) -> dict[str, float]:
    """XLA's own cost analysis of the compiled kernel: flops, transcendentals, bytes_accessed."""
    from measure.timing import xla_cost as compiled_cost

    return compiled_cost(jax.jit(kernel.fn).lower(*kernel.args).compile())
