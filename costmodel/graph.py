"""A tiny cost graph that knows which gradients a training step really needs.

Layers record their forward ops on a `Graph`. Each op carries its forward cost and, for each
input, the cost of its vector-Jacobian product (VJP) and which tensors that VJP reads.
`Graph.cost(loss)` then runs reverse-mode bookkeeping, not arithmetic: walking the ops
backwards, it adds the VJP of an input only when that input leads to a trainable parameter
(or to the layer's input, when `input_requires_grad`). So a frozen, unadapted Wv gets no dV
product, and the first layer of a network gets no dX. Where several ops consume one tensor,
their gradient contributions are summed with (count − 1) elementwise adds, as autodiff does.

Sizes are ints or numpy arrays; every cost broadcasts, so one graph evaluates many shapes.
Reference for the VJP rules: Griewank & Walther, "Evaluating Derivatives" (2008), ch. 3;
for matrix products, dA = dC·Bᵀ and dB = Aᵀ·dC.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from costmodel.hardware import dtype_bytes
from costmodel.primitives import (
    Size,
    elementwise_bytes,
    elementwise_flops,
    matmul_bytes,
    matmul_flops,
    numel,
    reduction_bytes,
    reduction_flops,
)

PHASES = ("forward", "backward")


@dataclass(frozen=True)
class Terms:
    """Cost of one op: FLOPs, transcendental evaluations, bytes moved and kernels launched."""

    flops: Size = 0
    transcendentals: Size = 0
    bytes_moved: Size = 0
    kernels: Size = 0

    def __add__(self, other: "Terms") -> "Terms":
        return Terms(
            self.flops + other.flops,
            self.transcendentals + other.transcendentals,
            self.bytes_moved + other.bytes_moved,
            self.kernels + other.kernels,
        )

    def __mul__(self, k: Size) -> "Terms":
        return Terms(self.flops * k, self.transcendentals * k, self.bytes_moved * k, self.kernels * k)

    __rmul__ = __mul__


@dataclass(frozen=True)
class OpCost:
    """One row of the per-op table."""

    name: str
    phase: str  # "forward" | "backward"
    kind: str  # matmul | elementwise | reduction | softmax | norm | activation | ...
    flops: Size
    transcendentals: Size
    bytes_moved: Size
    kernels: Size


@dataclass(frozen=True)
class Cost:
    """Costs of one forward+backward step of a layer (or model) under one method.

    All totals are numpy arrays broadcast over the shapes the graph was built with.
    `saved_bytes` is the size of the forward activations the backward pass reads (the
    activation memory a training step must hold); `trainable_params` counts the parameters
    that receive gradients.
    """

    ops: tuple[OpCost, ...]
    trainable_params: np.ndarray
    saved_bytes: np.ndarray
    dtype: str

    def _total(self, attr: str, phase: str | None = None) -> np.ndarray:
        rows = [getattr(op, attr) for op in self.ops if phase is None or op.phase == phase]
        return np.asarray(sum(rows, np.zeros(())), dtype=float)

    @property
    def flops(self) -> np.ndarray:
        return self._total("flops")

    @property
    def transcendentals(self) -> np.ndarray:
        return self._total("transcendentals")

    @property
    def bytes_moved(self) -> np.ndarray:
        return self._total("bytes_moved")

    @property
    def kernels(self) -> np.ndarray:
        return self._total("kernels")

    def phase_total(self, attr: str, phase: str) -> np.ndarray:
        """Total of `attr` (flops, bytes_moved, ...) over the ops of one phase."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        return self._total(attr, phase)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(
            self.ops + other.ops,
            self.trainable_params + other.trainable_params,
            self.saved_bytes + other.saved_bytes,
            self.dtype,
        )

    def scaled(self, k: Size, prefix: str = "") -> "Cost":
        """This cost repeated k times (k identical layers), op names prefixed."""
        ops = tuple(
            OpCost(prefix + op.name, op.phase, op.kind, op.flops * k, op.transcendentals * k,
                   op.bytes_moved * k, op.kernels * k)
            for op in self.ops
        )
        return Cost(ops, self.trainable_params * k, self.saved_bytes * k, self.dtype)

    def table(self) -> list[dict]:
        """Per-op rows as plain dicts (floats), for a single configuration."""
        rows = []
        for op in self.ops:
            rows.append({
                "op": op.name,
                "phase": op.phase,
                "kind": op.kind,
                "flops": _scalar(op.flops),
                "transcendentals": _scalar(op.transcendentals),
                "bytes": _scalar(op.bytes_moved),
                "kernels": _scalar(op.kernels),
            })
        return rows


def _scalar(x: Size) -> float:
    arr = np.asarray(x, dtype=float)
    if arr.size != 1:
        raise ValueError("table() needs a single configuration; index the shapes first")
    return float(arr.reshape(()))


_ids = itertools.count()


@dataclass(frozen=True, eq=False)
class Tensor:
    """A node of the graph: a name, a shape (ints or arrays), and whether it needs a gradient."""

    name: str
    shape: tuple[Size, ...]
    role: str  # input | param | activation
    requires_grad: bool
    uid: int = field(default_factory=lambda: next(_ids))

    @property
    def numel(self) -> Size:
        return numel(self.shape)


@dataclass(frozen=True)
class Vjp:
    """The VJP of one op with respect to one input: its cost and the forward tensors it reads.

    `reads` holds tensors (saved activations when they are not parameters), `reads_output`
    says the VJP reads the op's own output (softmax's y), and `residuals` holds (key, numel)
    pairs for intermediates a fused op keeps for its backward that no other op sees.
    """

    kind: str
    terms: Terms
    reads: tuple[Tensor, ...] = ()
    residuals: tuple[tuple[str, Size], ...] = ()
    reads_output: bool = False


@dataclass(frozen=True)
class _Node:
    name: str
    kind: str
    terms: Terms
    inputs: tuple[Tensor, ...]
    output: Tensor
    vjps: tuple[Vjp | None, ...]  # one per input; None = identity (gradient passes through)
    shared: Vjp | None = None  # backward work done once for all inputs (a fused op's recompute)


class Graph:
    """Records forward ops; `cost(loss)` adds exactly the backward ops that are needed."""

    def __init__(self, dtype: str = "float32") -> None:
        self.dtype = dtype
        self.itemsize = dtype_bytes(dtype)
        self.nodes: list[_Node] = []
        self.params: list[Tensor] = []

    # ----------------------------------------------------------------- leaves
    def input(self, name: str, shape: tuple[Size, ...], requires_grad: bool = False) -> Tensor:
        return Tensor(name, tuple(shape), "input", bool(requires_grad))

    def param(self, name: str, shape: tuple[Size, ...], trainable: bool) -> Tensor:
        t = Tensor(name, tuple(shape), "param", bool(trainable))
        self.params.append(t)
        return t

    def _add_node(self, name, kind, terms, inputs, out_shape, vjps, shared=None) -> Tensor:
        """Record op `name` ("OUT=expression"); its output tensor is called OUT."""
        requires_grad = any(t.requires_grad for t in inputs)
        out = Tensor(name.split("=")[0], tuple(out_shape), "activation", requires_grad)
        self.nodes.append(_Node(name, kind, terms, tuple(inputs), out, tuple(vjps), shared))
        return out

    # ------------------------------------------------------------------- ops
    def matmul(self, name: str, a: Tensor, b: Tensor, transpose_b: bool = False) -> Tensor:
        """C = A·B (or A·Bᵀ). A is (..., m, k); B is (k, n), or batched like A.

        VJPs: dA = dC·Bᵀ (contraction over n), dB = Aᵀ·dC (contraction over m, and over A's
        batch when B is shared across it).
        """
        *lead, m, k = a.shape
        if transpose_b:
            *blead, n, kb = b.shape
        else:
            *blead, kb, n = b.shape
        batch = numel(tuple(lead))
        shared_b = not blead
        s = self.itemsize
        fwd = Terms(matmul_flops(m, k, n, batch), 0, matmul_bytes(m, k, n, s, batch), 1)
        da = Vjp("matmul",
                 Terms(matmul_flops(m, n, k, batch), 0, matmul_bytes(m, n, k, s, batch), 1),
                 reads=(b,))
        if shared_b:
            db_terms = Terms(matmul_flops(k, m * batch, n), 0, matmul_bytes(k, m * batch, n, s), 1)
        else:
            db_terms = Terms(matmul_flops(k, m, n, batch), 0, matmul_bytes(k, m, n, s, batch), 1)
        db = Vjp("matmul", db_terms, reads=(a,))
        return self._add_node(name, "matmul", fwd, (a, b), (*lead, m, n), (da, db))

    def add(self, name: str, a: Tensor, b: Tensor) -> Tensor:
        """a + b, b possibly broadcast (a bias). Gradient: identity, summed over b's broadcast."""
        n_out = a.numel
        fwd = Terms(elementwise_flops(n_out), 0, elementwise_bytes(n_out, (a.numel, b.numel), self.itemsize), 1)
        vjp_b = None
        if len(b.shape) < len(a.shape):
            vjp_b = Vjp("reduction",
                        Terms(reduction_flops(n_out, b.numel), 0,
                              reduction_bytes(n_out, b.numel, self.itemsize), 1))
        return self._add_node(name, "elementwise", fwd, (a, b), a.shape, (None, vjp_b))

    def scale(self, name: str, a: Tensor) -> Tensor:
        """c·a for a constant c: one multiply per element, forward and backward."""
        n = a.numel
        terms = Terms(elementwise_flops(n), 0, elementwise_bytes(n, (n,), self.itemsize), 1)
        return self._add_node(name, "elementwise", terms, (a,), a.shape,
                              (Vjp("elementwise", terms),))

    def mul(self, name: str, a: Tensor, b: Tensor) -> Tensor:
        """a ⊙ b, same shapes. VJPs: da = g ⊙ b, db = g ⊙ a."""
        n = a.numel
        terms = Terms(elementwise_flops(n), 0, elementwise_bytes(n, (n, n), self.itemsize), 1)
        return self._add_node(name, "elementwise", terms, (a, b), a.shape,
                              (Vjp("elementwise", terms, reads=(b,)),
                               Vjp("elementwise", terms, reads=(a,))))

    def causal_mask(self, name: str, a: Tensor) -> Tensor:
        """where(j <= i, a, -inf) with the mask built from iota: a compare and a select.

        VJP: select(mask, g, 0), one select per element; the mask is recomputed.
        """
        n = a.numel
        fwd = Terms(elementwise_flops(n, 2), 0, elementwise_bytes(n, (n,), self.itemsize), 1)
        bwd = Terms(elementwise_flops(n, 2), 0, elementwise_bytes(n, (n,), self.itemsize), 1)
        return self._add_node(name, "elementwise", fwd, (a,), a.shape,
                              (Vjp("elementwise", bwd),))

    def softmax(self, name: str, a: Tensor) -> Tensor:
        """Row softmax over the last axis of an (..., k) tensor, m rows.

        Forward, five passes: max (m(k−1)), x − max (mk), exp (mk transcendentals), sum
        (m(k−1)), divide (mk). VJP, dx = y ⊙ (g − Σ_row y ⊙ g): multiply (mk), row sum
        (m(k−1)), subtract (mk), multiply (mk); it reads the output y.
        """
        k = a.shape[-1]
        mk = a.numel
        m = mk // k
        s = self.itemsize
        red = reduction_flops(mk, m)
        fwd = Terms(
            flops=red + elementwise_flops(mk) + red + elementwise_flops(mk),
            transcendentals=mk,
            bytes_moved=(reduction_bytes(mk, m, s) + elementwise_bytes(mk, (mk, m), s)
                         + elementwise_bytes(mk, (mk,), s) + reduction_bytes(mk, m, s)
                         + elementwise_bytes(mk, (mk, m), s)),
            kernels=5,
        )
        bwd = Terms(
            flops=elementwise_flops(mk) + red + elementwise_flops(mk) + elementwise_flops(mk),
            bytes_moved=(elementwise_bytes(mk, (mk, mk), s) + reduction_bytes(mk, m, s)
                         + elementwise_bytes(mk, (mk, m), s) + elementwise_bytes(mk, (mk, mk), s)),
            kernels=4,
        )
        vjp = Vjp("softmax", bwd, reads_output=True)
        return self._add_node(name, "softmax", fwd, (a,), a.shape, (vjp,))

    def layernorm(self, name: str, a: Tensor, gamma: Tensor, beta: Tensor | None) -> Tensor:
        """LayerNorm over the last axis (d) of m rows, y = x̂·γ + β, x̂ = (x − μ)·rsqrt(σ² + ε).

        Forward: mean (m(d−1) + m), centre (md), square (md), variance (m(d−1) + m), + ε (m),
        rsqrt (m transcendentals), normalise (md), scale (md), shift (md, when β exists).
        VJPs: dβ = Σ_rows g; dγ = Σ_rows g ⊙ x̂; dx = r ⊙ (gγ − mean(gγ) − x̂ ⊙ mean(gγ ⊙ x̂)),
        which reads the saved x̂ and r.
        """
        return self._norm(name, a, gamma, beta, centred=True)

    def rmsnorm(self, name: str, a: Tensor, gamma: Tensor) -> Tensor:
        """RMSNorm (Zhang & Sennrich 2019): y = x·rsqrt(mean(x²) + ε)·γ; no centring, no β."""
        return self._norm(name, a, gamma, None, centred=False)

    def _norm(self, name, a, gamma, beta, centred: bool) -> Tensor:
        d = a.shape[-1]
        md = a.numel
        m = md // d
        s = self.itemsize
        red = reduction_flops(md, m)
        ew = elementwise_flops(md)
        # forward
        f_flops = (red + m) * (2 if centred else 1) + (ew if centred else 0) + ew + m + ew + ew
        n_passes = (6 if centred else 4) + (1 if beta is not None else 0)
        f_bytes = n_passes * elementwise_bytes(md, (md,), s)
        if beta is not None:
            f_flops = f_flops + ew
        fwd = Terms(f_flops, m, f_bytes, n_passes)
        # dx: g·γ, mean(g·γ)*, g·γ·x̂, mean(...), x̂·that, subtract(s), ·r   (*centred only)
        dx_flops = ew + ew + (red + m) + ew + ew + ew + (red + m + ew if centred else 0)
        dx_passes = 7 if centred else 5
        dx = Vjp("norm",
                 Terms(dx_flops, 0, dx_passes * elementwise_bytes(md, (md, md), s), dx_passes),
                 residuals=((f"{name}:xhat", md), (f"{name}:r", m)))
        dgamma = Vjp("norm",
                     Terms(ew + reduction_flops(md, d), 0,
                           elementwise_bytes(md, (md, md), s) + reduction_bytes(md, d, s), 2),
                     residuals=((f"{name}:xhat", md),))
        inputs: tuple[Tensor, ...] = (a, gamma)
        vjps: tuple[Vjp | None, ...] = (dx, dgamma)
        if beta is not None:
            dbeta = Vjp("reduction",
                        Terms(reduction_flops(md, d), 0, reduction_bytes(md, d, s), 1))
            inputs, vjps = inputs + (beta,), vjps + (dbeta,)
        return self._add_node(name, "norm", fwd, inputs, a.shape, vjps)

    def gelu(self, name: str, a: Tensor) -> Tensor:
        """GELU, tanh approximation (Hendrycks & Gimpel 2016; GPT-2's `gelu_new`):
        y = ½x(1 + t), t = tanh(c₀(x + c₁x³)).

        Forward: 8 FLOPs + 1 tanh per element. VJP: dy/dx = ½(1 + t) + ½x(1 − t²)c₀(1 + 3c₁x²),
        13 FLOPs per element, reading x and the saved t.
        """
        n = a.numel
        s = self.itemsize
        fwd = Terms(elementwise_flops(n, 8), n, elementwise_bytes(n, (n,), s), 1)
        vjp = Vjp("activation",
                  Terms(elementwise_flops(n, 13), 0, elementwise_bytes(n, (n, n, n), s), 1),
                  reads=(a,), residuals=((f"{name}:t", n),))
        return self._add_node(name, "activation", fwd, (a,), a.shape, (vjp,))

    def silu(self, name: str, a: Tensor) -> Tensor:
        """SiLU, y = x·σ(x) (Elfwing et al. 2018), the gate of SwiGLU.

        σ(x) = 1/(1 + exp(−x)) costs 3 FLOPs + 1 exp (negate, add, divide), the product 1 more.
        VJP: dy/dx = σ(1 + x(1 − σ)): 4 FLOPs, times g: 1 more; reads x and the saved σ.
        """
        n = a.numel
        s = self.itemsize
        fwd = Terms(elementwise_flops(n, 4), n, elementwise_bytes(n, (n,), s), 1)
        vjp = Vjp("activation",
                  Terms(elementwise_flops(n, 5), 0, elementwise_bytes(n, (n, n, n), s), 1),
                  reads=(a,), residuals=((f"{name}:sigma", n),))
        return self._add_node(name, "activation", fwd, (a,), a.shape, (vjp,))

    def sum_all(self, name: str, a: Tensor) -> Tensor:
        """loss = Σ a. VJP: broadcast the scalar seed, no arithmetic."""
        n = a.numel
        fwd = Terms(reduction_flops(n, 1), 0, reduction_bytes(n, 1, self.itemsize), 1)
        vjp = Vjp("broadcast", Terms(0, 0, n * self.itemsize, 1))
        return self._add_node(name, "reduction", fwd, (a,), (), (vjp,))

    def custom(self, name: str, kind: str, terms: Terms, inputs: Sequence[Tensor],
               out_shape: tuple[Size, ...], vjps: Sequence[Vjp | None],
               shared: Vjp | None = None) -> Tensor:
        """An op described by its caller (embedding gather, cross-entropy, ...).

        `shared` is backward work a fused op does once, whichever of its inputs need a
        gradient (FlashAttention's recomputation of the scores): it is added when at least
        one does, before their own VJPs.
        """
        if len(vjps) != len(inputs):
            raise ValueError("custom op needs one VJP entry per input")
        return self._add_node(name, kind, terms, tuple(inputs), out_shape, tuple(vjps), shared)

    # --------------------------------------------------------------- backward
    def cost(self, loss: Tensor) -> Cost:
        """Forward ops as recorded, then the backward ops needed to reach trainable tensors."""
        ops = [OpCost(n.name, "forward", n.kind, *_fields(n.terms)) for n in self.nodes]
        contributions: dict[int, int] = {}
        grad_tensors: dict[int, Tensor] = {}
        saved: dict[object, Size] = {}
        needs = {loss.uid} if loss.requires_grad else set()
        for node in reversed(self.nodes):
            if node.output.uid not in needs:
                continue
            if node.shared is not None and any(t.requires_grad for t in node.inputs):
                shared = node.shared
                ops.append(OpCost(f"shared backward of {node.name}", "backward", shared.kind,
                                  *_fields(shared.terms)))
                for t in shared.reads + ((node.output,) if shared.reads_output else ()):
                    if t.role != "param":
                        saved[t.uid] = t.numel
                for key, n in shared.residuals:
                    saved[key] = n
            for inp, vjp in zip(node.inputs, node.vjps):
                if not inp.requires_grad:
                    continue
                needs.add(inp.uid)
                contributions[inp.uid] = contributions.get(inp.uid, 0) + 1
                grad_tensors[inp.uid] = inp
                if vjp is None:
                    continue
                ops.append(OpCost(f"d{inp.name} of {node.name}", "backward", vjp.kind, *_fields(vjp.terms)))
                for t in vjp.reads + ((node.output,) if vjp.reads_output else ()):
                    if t.role != "param":
                        saved[t.uid] = t.numel
                for key, n in vjp.residuals:
                    saved[key] = n
        for uid, count in contributions.items():
            if count > 1:
                t = grad_tensors[uid]
                n = t.numel
                terms = Terms(elementwise_flops(n), 0, elementwise_bytes(n, (n, n), self.itemsize), 1) * (count - 1)
                ops.append(OpCost(f"accumulate d{t.name}", "backward", "elementwise", *_fields(terms)))
        trainable = sum((p.numel for p in self.params if p.requires_grad), 0)
        saved_bytes = sum(saved.values(), 0) * self.itemsize
        return Cost(tuple(ops), np.asarray(trainable), np.asarray(saved_bytes), self.dtype)


def _fields(t: Terms) -> tuple[Size, Size, Size, Size]:
    return t.flops, t.transcendentals, t.bytes_moved, t.kernels
