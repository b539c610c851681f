"""Layouts of many devices: dp × tp × pp, a ZeRO stage and the micro-batching of one step.

A layout is dp × tp × pp devices (`Layout`): tensor parallel (tp, Megatron's split of each
block; Shoeybi et al. 2019, arXiv:1909.08053, sec. 3), pipeline parallel (pp, 1F1B;
Narayanan et al. 2021, arXiv:2104.04473, sec. 2.2) and data parallel (dp) with ZeRO stage
0–3 (Rajbhandari et al. 2020, arXiv:1910.02054, sec. 5 and 7; stage 3 = FSDP). Devices
are numbered tp fastest, then dp, then pp (Megatron's order). `parse_layout` reads the
command line's form; `candidate_layouts` lists every layout of a device count as one array
`Layout`, which the rest of `costmodel.parallel` costs in one vectorised pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from costmodel.presets_models import ModelShape
from costmodel.primitives import whole

ZERO_STAGES = (0, 1, 2, 3)


@dataclass(frozen=True)
class Layout:
    """dp × tp × pp devices, ZeRO stage, and the micro-batching of one optimizer step.

    micro_batch: sequences per micro-batch per data-parallel replica; n_micro: micro-batches
    per step (gradient accumulation; the pipeline's m). Global batch = dp · micro_batch ·
    n_micro sequences. Fields may be numpy arrays of one shape (many layouts at once).
    """

    dp: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    zero: np.ndarray = 0
    micro_batch: np.ndarray = 1
    n_micro: np.ndarray = 1

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp", "micro_batch", "n_micro"):
            object.__setattr__(self, name, whole(name, getattr(self, name)))
        zero = whole("zero", self.zero, low=0)
        if np.any(zero > 3):
            raise ValueError(f"zero must be a ZeRO stage in 0..3, got {self.zero!r}")
        object.__setattr__(self, "zero", zero)

    @property
    def gpus(self) -> np.ndarray:
        return self.dp * self.tp * self.pp

    @property
    def global_batch(self) -> np.ndarray:
        return self.dp * self.micro_batch * self.n_micro

    @property
    def shape(self) -> tuple[int, ...]:
        return np.broadcast(self.dp, self.tp, self.pp, self.zero, self.micro_batch, self.n_micro).shape

    def check(self, model: ModelShape, gpus: int | None = None) -> None:
        """ValueError (one line) when the layout cannot run `model` on `gpus` devices."""
        if gpus is not None and np.any(self.gpus != gpus):
            raise ValueError(f"layout dp·tp·pp = {int(np.ravel(self.gpus)[0])} ≠ {gpus} devices")
        if np.any(model.heads % self.tp):
            raise ValueError(f"tp = {int(np.ravel(self.tp)[0])} does not divide the {model.heads} heads "
                             f"of {model.name}")
        if np.any(model.ffn % self.tp):
            raise ValueError(f"tp = {int(np.ravel(self.tp)[0])} does not divide the MLP width {model.ffn}")
        if np.any((model.kv_heads % self.tp != 0) & (self.tp % model.kv_heads != 0)):
            raise ValueError(f"tp must divide the {model.kv_heads} kv heads of {model.name} or be a multiple of them")
        if np.any(self.pp > model.layers):
            raise ValueError(f"pp = {int(np.max(self.pp))} exceeds the {model.layers} layers of {model.name}")

    def pick(self, index) -> Layout:
        """The layout at `index` of the broadcast arrays."""
        shape = self.shape
        return Layout(*(int(np.broadcast_to(getattr(self, f), shape)[index])
                        for f in ("dp", "tp", "pp", "zero", "micro_batch", "n_micro")))

    def as_dict(self) -> dict:
        return {f: int(np.asarray(getattr(self, f)).reshape(())) for f in
                ("dp", "tp", "pp", "zero", "micro_batch", "n_micro")} | {
            "global_batch": int(np.asarray(self.global_batch).reshape(()))}

    def label(self) -> str:
        d = self.as_dict()
        return (f"dp={d['dp']},tp={d['tp']},pp={d['pp']},zero={d['zero']},"
                f"micro_batch={d['micro_batch']},n_micro={d['n_micro']}")


def parse_layout(text: str, global_batch: int | None = None) -> Layout:
    """A layout from "dp=8,tp=4,pp=2,zero=1[,micro_batch=2]" (missing dims are 1, zero 0).

    n_micro follows from `global_batch` = dp · micro_batch · n_micro when given (ValueError
    if it does not divide), else 1. ValueError on an unknown key or a malformed value.
    """
    keys = ("dp", "tp", "pp", "zero", "micro_batch")
    values: dict[str, int] = {}
    for item in (s.strip() for s in text.split(",") if s.strip()):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in keys:
            raise ValueError(f"bad layout item {item!r}: use dp=…,tp=…,pp=…,zero=…[,micro_batch=…]")
        if key in values:
            raise ValueError(f"layout {key} given twice in {text!r}")
        try:
            values[key] = int(value)
        except ValueError:
            raise ValueError(f"layout {key} must be a whole number, got {value.strip()!r}") from None
    if not values:
        raise ValueError("empty layout: use dp=…,tp=…,pp=…,zero=…")
    dp, mb = values.get("dp", 1), values.get("micro_batch", 1)
    n_micro = 1
    if global_batch is not None:
        if dp < 1 or mb < 1 or global_batch % (dp * mb):
            raise ValueError(f"global batch {global_batch} is not a multiple of dp·micro_batch = {dp * mb}")
        n_micro = global_batch // (dp * mb)
    return Layout(dp=dp, tp=values.get("tp", 1), pp=values.get("pp", 1), zero=values.get("zero", 0),
                  micro_batch=mb, n_micro=n_micro)


def divisors(n: int) -> list[int]:
    """The divisors of `n` ≥ 1 in increasing order, found in √n steps."""
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return small + [n // k for k in reversed(small) if k * k != n]


def candidate_layouts(model: ModelShape, gpus: int, global_batch: int,
                      max_micro_batch: int = 64) -> Layout:
    """Every layout of `gpus` devices the model can take, as one array `Layout`.

    tp divides the heads and the MLP width (and the kv heads, or is a multiple of them),
    pp ≤ layers, dp = gpus/(tp·pp) divides the global batch; ZeRO stages 0–3 when dp > 1
    (0 only otherwise); micro-batches of powers of two up to `max_micro_batch` sequences
    that divide the replica's share. ValueError when none exists.
    """
    gpus, global_batch = int(whole("gpus", gpus)), int(whole("global_batch", global_batch))
    rows = []
    for tp in divisors(gpus):
        if model.heads % tp or model.ffn % tp or (model.kv_heads % tp and tp % model.kv_heads):
            continue
        for pp in divisors(gpus // tp):
            dp = gpus // (tp * pp)
            if pp > model.layers or global_batch % dp:
                continue
            share = global_batch // dp
            for zero in (ZERO_STAGES if dp > 1 else (0,)):
                mb = 1
                while mb <= min(share, max_micro_batch):
                    if share % mb == 0:
                        rows.append((dp, tp, pp, zero, mb, share // mb))
                    mb *= 2
    if not rows:
        raise ValueError(f"no layout of {gpus} devices fits {model.name} with a global batch of "
                         f"{global_batch} (tp must divide {model.heads} heads, dp the global batch)")
    cols = np.array(rows, dtype=np.int64).T
    return Layout(*cols)
