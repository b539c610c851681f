"""A transformer block's training step under data and tensor parallelism, in JAX.

The step is `measure.kernels`' block (pre-LayerNorm, multi-head attention, GELU MLP, no bias)
written once as a per-device program inside `jax.shard_map` over a ``("dp", "tp")``
`jax.sharding.Mesh`:

- data parallel (dp): the tokens are split by batch; parameters are replicated;
- tensor parallel (tp), Megatron-style (Shoeybi et al. 2019, "Megatron-LM", sec. 3 and
  fig. 3): Wq, Wk, Wv and the MLP's first matrix are split by columns (whole heads per
  device), Wo and the MLP's second matrix by rows, so each half of the block needs one
  all-reduce of its output (``psum`` over "tp") in the forward pass.

Gradients are `jax.grad` of the whole sharded loss: JAX's autodiff of `shard_map` inserts the
backward collectives itself (the data-parallel gradient all-reduce, the tensor-parallel
all-reduce of the activation gradients where a replicated activation fans out into split
weights). Nothing is hand-written about communication beyond the two forward ``psum`` of
Megatron's layout, so the compiled HLO is an independent record of what a layout really
communicates (see `hlo_collectives`).

LoRA under tp: for a column-split W the adapter's A (e×r) is replicated and B (r×h) split by
columns like W; for a row-split W, A is split by rows and B replicated. Frozen weights are
arguments too (never closed over) and get no gradient.

The same code runs on one process with N devices (``jax_num_cpu_devices`` on the CPU, or N
GPUs) and on N processes joined by `jax.distributed` (gloo on the CPU, NCCL on GPUs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Methods a sharded step supports (lora_merged would need the merged W' sharded too).
METHODS: tuple[str, ...] = ("full", "lora")
#: Adaptable matrices of the block and how Megatron splits them under tp.
COLUMN_SPLIT: tuple[str, ...] = ("q", "k", "v", "fc")
ROW_SPLIT: tuple[str, ...] = ("o", "proj")


@dataclass(frozen=True)
class Layout:
    """dp × tp devices: data-parallel replicas × tensor-parallel shards of each replica."""

    dp: int = 1
    tp: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "tp"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")

    @property
    def devices(self) -> int:
        return self.dp * self.tp

    def label(self) -> str:
        return f"dp={self.dp},tp={self.tp}"


def parse_layout(text: str) -> Layout:
    """ "dp=2,tp=1" (either part may be left out: it is 1) -> Layout; ValueError if malformed."""
    parts: dict[str, int] = {}
    for item in (s.strip() for s in text.split(",") if s.strip()):
        m = re.fullmatch(r"(dp|tp)=(\d+)", item)
        if not m or m.group(1) in parts:
            raise ValueError(f"layout {text!r}: expected dp=N,tp=M")
        parts[m.group(1)] = int(m.group(2))
    if not parts:
        raise ValueError(f"layout {text!r}: expected dp=N,tp=M")
    return Layout(**parts)


@dataclass(frozen=True)
class BlockShape:
    """The block measured: tokens = batch × seq, width embed, heads, MLP width hidden."""

    batch: int
    seq: int
    embed: int
    heads: int
    hidden: int
    rank: int = 4
    targets: tuple[str, ...] = ("q", "v")
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("batch", "seq", "embed", "heads", "hidden", "rank"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
        if self.embed % self.heads:
            raise ValueError("heads must divide embed")
        unknown = set(self.targets) - set(COLUMN_SPLIT + ROW_SPLIT + ("mlp",))
        if unknown:
            raise ValueError(f"unknown target {min(unknown)!r}")

    @property
    def head_dim(self) -> int:
        return self.embed // self.heads

    def check(self, layout: Layout) -> None:
        """ValueError unless `layout` divides this block (batch by dp, heads and hidden by tp)."""
        if self.batch % layout.dp:
            raise ValueError(f"dp={layout.dp} does not divide batch {self.batch}")
        if self.heads % layout.tp:
            raise ValueError(f"tp={layout.tp} does not divide heads {self.heads}")
        if self.hidden % layout.tp:
            raise ValueError(f"tp={layout.tp} does not divide the MLP width {self.hidden}")

    def adapted(self) -> tuple[str, ...]:
        """The weight names that carry LoRA adapters ('mlp' stands for fc and proj)."""
        names = []
        for t in self.targets:
            names.extend(("fc", "proj") if t == "mlp" else (t,))
        return tuple(sorted(set(names)))


def weight_shapes(shape: BlockShape) -> dict[str, tuple[int, int]]:
    e, h = shape.embed, shape.hidden
    return {"q": (e, e), "k": (e, e), "v": (e, e), "o": (e, e), "fc": (e, h), "proj": (h, e)}


def param_specs(shape: BlockShape, method: str, tp: bool = True) -> tuple[dict, dict]:
    """name -> PartitionSpec for the frozen and the trainable parameters under `method`.

    With ``tp=False`` every parameter is replicated (a layout without tensor parallelism
    names no "tp" axis, so XLA emits no one-device collectives for it).
    """
    from jax.sharding import PartitionSpec as P

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    frozen: dict[str, Any] = {}
    trainable: dict[str, Any] = {}
    full = method == "full"
    col_spec, row_spec = (P(None, "tp"), P("tp", None)) if tp else (P(), P())
    for ln in ("ln1", "ln2"):
        for p in ("γ", "β"):
            (trainable if full else frozen)[f"{p}{ln}"] = P()
    adapted = shape.adapted()
    for name in weight_shapes(shape):
        col = name in COLUMN_SPLIT
        (trainable if full else frozen)[f"W{name}"] = col_spec if col else row_spec
        if not full and name in adapted:
            trainable[f"A{name}"] = P() if col else row_spec
            trainable[f"B{name}"] = col_spec if col else P()
    return frozen, trainable


def init_params(shape: BlockShape, method: str, seed: int = 0) -> tuple[np.ndarray, dict, dict]:
    """X (tokens × embed), frozen and trainable parameters as host arrays (global shapes)."""
    rng = np.random.default_rng(seed)
    dt = np.float32
    x = rng.standard_normal((shape.batch * shape.seq, shape.embed)).astype(dt)
    frozen_spec, train_spec = param_specs(shape, method)
    ws = weight_shapes(shape)
    out: dict[str, np.ndarray] = {}
    for name in list(frozen_spec) + list(train_spec):
        if name.startswith("γ"):
            out[name] = np.ones(shape.embed, dt)
        elif name.startswith("β"):
            out[name] = np.zeros(shape.embed, dt)
        elif name.startswith("W"):
            din, dout = ws[name[1:]]
            out[name] = (rng.standard_normal((din, dout)) / math.sqrt(din)).astype(dt)
        elif name.startswith("A"):
            din = ws[name[1:]][0]
            out[name] = (rng.standard_normal((din, shape.rank)) / math.sqrt(din)).astype(dt)
        else:  # B: random, not LoRA's zeros, so that dA does not vanish (same cost)
            dout = ws[name[1:]][1]
            out[name] = (rng.standard_normal((shape.rank, dout)) / math.sqrt(shape.rank)).astype(dt)
    return x, {k: out[k] for k in frozen_spec}, {k: out[k] for k in train_spec}


def _local_block(x, p: Mapping[str, Any], shape: BlockShape, method: str, tp_axis: str | None):
    """One device's share of the block; `tp_axis` names the axis to all-reduce over (or None)."""
    import jax
    import jax.numpy as jnp

    from measure.kernels import LORA_ALPHA, gelu, layernorm, softmax

    hd = shape.head_dim
    tokens = x.shape[0]
    b, t = tokens // shape.seq, shape.seq
    adapted = shape.adapted() if method == "lora" else ()

    def proj(a, name):
        y = a @ p[f"W{name}"]
        if name in adapted:
            s = LORA_ALPHA / shape.rank
            y = y + s * ((a @ p[f"A{name}"]) @ p[f"B{name}"])
        return y

    def reduce(a):  # Megatron's g: all-reduce forward, identity backward
        return jax.lax.psum(a, tp_axis) if tp_axis is not None else a

    def fan_out(a):  # Megatron's f: identity forward, one all-reduce of its gradient backward
        return jax.lax.pcast(a, (tp_axis,), to="varying") if tp_axis is not None else a

    def heads(a):
        return a.reshape(b, t, a.shape[-1] // hd, hd).transpose(0, 2, 1, 3)

    h1 = fan_out(layernorm(x, p["γln1"], p["βln1"]))
    q, k, v = (heads(proj(h1, n)) for n in ("q", "k", "v"))
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k) * (1.0 / math.sqrt(hd))
    o = jnp.einsum("bhqk,bhkd->bhqd", softmax(s), v).transpose(0, 2, 1, 3).reshape(tokens, -1)
    x2 = x + reduce(proj(o, "o"))
    h2 = fan_out(layernorm(x2, p["γln2"], p["βln2"]))
    return x2 + reduce(proj(gelu(proj(h2, "fc")), "proj"))


def make_mesh(layout: Layout, devices: list | None = None):
    """A ("dp", "tp") mesh over the first dp·tp devices (all processes' devices in order)."""
    import jax

    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < layout.devices:
        raise ValueError(f"layout {layout.label()} needs {layout.devices} devices, {len(devices)} available")
    grid = np.array(devices[: layout.devices], dtype=object).reshape(layout.dp, layout.tp)
    from jax.sharding import Mesh

    return Mesh(grid, ("dp", "tp"))


def _axes(mesh) -> tuple[str | None, str | None]:
    """The mesh's ("dp", "tp") axis names, None for an axis of size 1 (it communicates nothing)."""
    return ("dp" if mesh.shape["dp"] > 1 else None), ("tp" if mesh.shape["tp"] > 1 else None)


def step_fn(shape: BlockShape, method: str, mesh) -> Callable:
    """fn(x, frozen, trainable) -> (loss, grads of trainable) of the sharded block step."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    dp_axis, tp_axis = _axes(mesh)
    frozen_spec, train_spec = param_specs(shape, method, tp=tp_axis is not None)

    def local_loss(x, frozen, trainable):
        params = {**frozen, **trainable}
        if dp_axis is not None:
            # replicated parameters meet batch-split activations: mark them varying over dp
            # (pcast); its transpose is the all-reduce of their gradients over dp
            params = {k: jax.lax.pcast(v, (dp_axis,), to="varying") for k, v in params.items()}
        y = _local_block(x, params, shape, method, tp_axis)
        loss = jnp.sum(y)
        return jax.lax.psum(loss, dp_axis) if dp_axis is not None else loss

    sharded = jax.shard_map(
        local_loss, mesh=mesh, in_specs=(P(dp_axis, None), frozen_spec, train_spec), out_specs=P(),
    )
    return jax.value_and_grad(sharded, argnums=2)


def concurrent_fn(shape: BlockShape, method: str, mesh) -> Callable:
    """Every device runs its share of the step at once, with no collective at all.

    The same per-device program as `step_fn` (its rows of x, its slices of the weights) minus
    the communication: each device's loss and gradients stay its own. On a machine whose
    devices share compute (host devices on one CPU) it measures what sharing costs; the
    sharded step minus this is what communication and synchronisation cost.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    dp_axis, tp_axis = _axes(mesh)
    frozen_spec, train_spec = param_specs(shape, method, tp=tp_axis is not None)
    axes = tuple(a for a in (dp_axis, tp_axis) if a is not None)

    def local(x, frozen, trainable):
        def loss(tr):
            return jnp.sum(_local_block(x, {**frozen, **tr}, shape, method, None))

        value, grads = jax.value_and_grad(loss)(trainable)
        return value[None], jax.tree.map(lambda g: g[None], grads)  # one row per device

    out = P(axes if axes else None)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(dp_axis, None), frozen_spec, train_spec),
                         out_specs=(out, {k: out for k in train_spec}), check_vma=False)


def place(shape: BlockShape, method: str, mesh, seed: int = 0) -> tuple:
    """(x, frozen, trainable) as global arrays sharded on `mesh` (works across processes)."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    dp_axis, tp_axis = _axes(mesh)
    x, frozen, trainable = init_params(shape, method, seed)
    frozen_spec, train_spec = param_specs(shape, method, tp=tp_axis is not None)

    def put(a: np.ndarray, spec) -> Any:
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return (
        put(x, P(dp_axis, None)),
        {k: put(v, frozen_spec[k]) for k, v in frozen.items()},
        {k: put(v, train_spec[k]) for k, v in trainable.items()},
    )


def reference_step(shape: BlockShape, method: str, x, frozen, trainable):
    """The same step on one device with no sharding (host arrays in, host arrays out)."""
    import jax
    import jax.numpy as jnp

    def loss(x, frozen, trainable):
        return jnp.sum(_local_block(x, {**frozen, **trainable}, shape, method, None))

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=2))(x, frozen, trainable)
    return float(value), {k: np.asarray(v) for k, v in grads.items()}


# ------------------------------------------------------------------------ what XLA emits

#: HLO op name -> the project's collective name (`measure.collectives.COLLECTIVES`).
HLO_COLLECTIVES: dict[str, str] = {
    "all-reduce": "all_reduce",
    "all-gather": "all_gather",
    "reduce-scatter": "reduce_scatter",
    "collective-permute": "ppermute",
    "all-to-all": "all_to_all",
}
_HLO_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}
_HLO_LINE = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.-]+\s*=\s*(?P<types>.*?)\s(?P<op>all-reduce|all-gather|reduce-scatter|"
    r"collective-permute|all-to-all)(?:-start)?\("
)
_HLO_COMMENT = re.compile(r"/\*.*?\*/")
_HLO_ARRAY = re.compile(r"([a-z0-9]+)\[([0-9,]*)\]")
_HLO_GROUPS = re.compile(r"replica_groups=\{\{([0-9,]+)\}")
_HLO_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]")


@dataclass(frozen=True)
class HloCollective:
    """One collective of a compiled program: its kind, result bytes and group size."""

    collective: str
    result_bytes: int
    group_size: int
    first_group: tuple[int, ...] = ()  # device ids of the first replica group, when listed


def hlo_collectives(hlo_text: str) -> list[HloCollective]:
    """The collectives of an optimised HLO module (``compiled.as_text()``), in program order.

    result_bytes is the size of the op's result on one device (a tuple's parts summed):
    for an all-reduce that is the reduced buffer, for an all-gather the gathered one.
    Collectives over groups of one device (no data moves) are left out.
    """
    out = []
    for line in hlo_text.splitlines():
        m = _HLO_LINE.search(line)
        if not m:
            continue
        types = _HLO_COMMENT.sub("", m.group("types"))
        nbytes = 0
        for dt, dims in _HLO_ARRAY.findall(types):
            n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            nbytes += n * _HLO_BYTES.get(dt, 4)
        g = _HLO_GROUPS.search(line)
        first: tuple[int, ...] = ()
        if g:
            first = tuple(int(i) for i in g.group(1).split(","))
            size = len(first)
        else:
            gi = _HLO_GROUPS_IOTA.search(line)
            size = int(gi.group(2)) if gi else 1
        if size > 1:  # a one-device group moves nothing
            out.append(HloCollective(HLO_COLLECTIVES[m.group("op")], nbytes, size, first))
    return out


def compiled_collectives(shape: BlockShape, method: str, layout: Layout) -> list[HloCollective]:
    """Lower and compile the sharded step of (shape, method, layout); its HLO collectives."""
    import jax

    mesh = make_mesh(layout)
    args = place(shape, method, mesh)
    compiled = jax.jit(step_fn(shape, method, mesh)).lower(*args).compile()
    return hlo_collectives(compiled.as_text())
