"""One (config, method) of a sweep: its key and cost-model columns, its kernel built and
compiled, its methods timed together, its schema row (the sweep loop is `measure.sweep`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from costmodel.cliutil import one_line
from measure import modelconfig
from measure.grids import Config
from measure.schema import ADDED_IN_3, COLUMNS, SCHEMA_VERSION

# ----------------------------------------------------------------------------- describing

def _layer_config(config: Config, method: str):
    """The cost model's LayerConfig for (config, method); ValueError on bad sizes."""
    from costmodel.layers import LayerConfig
    from measure import seed

    targets = seed.COSTMODEL_TARGETS if config.variant == "seed" else config.targets
    return LayerConfig(
        config.layer, method, batch=config.batch, embed=config.embed, hidden=config.hidden,
        rank=config.rank, targets=targets, input_requires_grad=config.input_requires_grad,
        dtype=config.dtype, seq=config.seq, heads=config.heads,
    )


def describe(config: Config, method: str) -> dict[str, Any]:
    """Key and cost-model columns of (config, method); ValueError for an invalid config.

    The cost model validates sizes, ranks and targets (one-line ValueError messages), so the
    sweep does not duplicate those checks.
    """
    if config.layer == "model":
        return describe_model(config, method)
    from costmodel.layers import build as cost_of

    cfg = _layer_config(config, method)
    cost = cost_of(cfg)
    return {
        **ADDED_IN_3,
        "layer": config.layer,
        "method": method,
        "variant": config.variant,
        "timing_mode": config.timing_mode,
        "batch": config.batch,
        "embed": config.embed,
        "hidden": config.hidden,
        "rank": config.rank,
        "seq": config.seq,
        "heads": config.heads,
        "targets": "" if method == "full" else ",".join(sorted(cfg.targets)),
        "input_requires_grad": config.input_requires_grad,
        "dtype": config.dtype,
        "model_flops": float(cost.flops),
        "model_bytes": float(cost.bytes_moved),
        "model_kernels": float(cost.kernels),
        "trainable_params": int(cost.trainable_params),
    }


def describe_model(config, method: str) -> dict[str, Any]:
    """Key and cost-model columns of a whole-model step (`measure.modelconfig.ModelConfig`):
    the cost model's `step_cost`, and the JAX model's base parameter count."""
    from measure import wholemodel

    step = config.step(method)
    m = step.shape
    counts = wholemodel.param_counts(step)
    cost = modelconfig.step_cost(step)
    return {
        "layer": "model", "method": method, "variant": "clean", "timing_mode": "aot",
        "batch": step.batch, "embed": m.d_model, "hidden": m.ffn, "rank": config.rank,
        "seq": step.seq, "heads": m.heads,
        "targets": "" if method == "full" else ",".join(sorted(step.targets)),
        "input_requires_grad": False, "dtype": step.compute_dtype,
        "model": m.name, "layers": m.layers, "kv_heads": m.kv_heads, "vocab": m.vocab,
        "mlp": m.mlp, "norm": m.norm, "head": step.head,
        "n_classes": step.n_classes if step.head == "classifier" else 0,
        "attention": step.attention, "optimizer": step.optimizer, "clip": step.clip,
        "precision": step.precision, "recompute": step.recompute, "grad_accum": step.grad_accum,
        "model_params": counts["total"],
        "model_flops": float(cost.flops), "model_bytes": float(cost.bytes_moved),
        "model_kernels": float(cost.kernels), "trainable_params": int(cost.trainable_params),
    }


def make_record(
    base: dict[str, Any], *, run_id: str, backend: str, device_kind: str,
    summary=None, prepared=None, error: str = "",
    paired: tuple[float, float, float, int] | None = None, refinement: bool = False,
) -> dict[str, Any]:
    """A complete schema row for one (config, method): timings NaN when it failed."""
    nan = float("nan")
    rec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "backend": backend,
        "device_kind": device_kind, **ADDED_IN_3, **base,
        "n_repeats": 0, "calls_per_repeat": 0, "time_median_s": nan, "time_iqr_s": nan,
        "time_min_s": nan, "time_ci_low_s": nan, "time_ci_high_s": nan, "time_cv": nan,
        "unstable": False, "compile_s": nan, "xla_flops": nan, "xla_bytes": nan,
        "paired_ratio": nan, "paired_ratio_ci_low": nan, "paired_ratio_ci_high": nan,
        "paired_blocks": 0, "refinement": bool(refinement), "error": error, "timestamp": _utc_now(),
    }
    if paired is not None and summary is not None:
        rec.update(paired_ratio=paired[0], paired_ratio_ci_low=paired[1],
                   paired_ratio_ci_high=paired[2], paired_blocks=int(paired[3]))
    if summary is not None:
        rec.update(summary.as_record())
    if prepared is not None:
        rec.update(
            compile_s=prepared.compile_s, xla_flops=prepared.xla_flops, xla_bytes=prepared.xla_bytes
        )
    return {k: rec[k] for k in COLUMNS}


def _utc_now() -> str:
    from measure.dataset import utc_now

    return utc_now()


# ----------------------------------------------------------------------------- running

def prepare(config: Config, method: str, param_seed: int):
    """Build, place and compile one (config, method) kernel for timing."""
    from measure import timing

    if config.variant == "seed":
        from measure import seed

        return seed.build(
            method, batch=config.batch, embed=config.embed, hidden=config.hidden,
            rank=config.rank, timing_mode=config.timing_mode,
        )
    if config.layer == "model":
        from measure import wholemodel

        step = wholemodel.build(config.step(method), seed=param_seed)  # type: ignore[attr-defined]
        return timing.prepare(f"{step.name} {config.label()}", step.fn, step.args)
    from measure import kernels

    kernel = kernels.build(
        config.layer, method, batch=config.batch, embed=config.embed, hidden=config.hidden,
        rank=config.rank, targets=config.targets, input_requires_grad=config.input_requires_grad,
        dtype=config.dtype, seq=config.seq, heads=config.heads, seed=param_seed,
    )
    return timing.prepare(kernel.name, kernel.fn, kernel.args)


class Measured(NamedTuple):
    """One (config, method) as timed: summary and prepared kernel (None if it failed), the
    error ("" if none) and the paired ratio to full in the same loops (ratio, low, high,
    independent blocks behind the interval; `_paired`)."""

    summary: Any
    prepared: Any
    error: str
    paired: tuple[float, float, float, int] = (float("nan"),) * 3 + (0,)


def _paired(report, policy) -> dict[str, tuple[float, float, float, int]]:
    """Method -> its ratio to full, round by round: with several blocks, the t interval over
    the blocks' median round ratios (`timing_stats.block_ratio`); with one, the bootstrap
    over its rounds (`timing_stats.paired_ratio`)."""
    from measure import timing

    if "full" not in report.samples_s:
        return {}
    if len(report.blocks) >= 2:
        out = {}
        for m in report.samples_s:
            per_block = [timing.median_round_ratio(b[m], b["full"]) for b in report.blocks]
            out[m] = (*timing.block_ratio(per_block, policy.confidence), len(report.blocks))
        return out
    ref = report.samples_s["full"]
    return {m: (*timing.paired_ratio(s, ref, policy), 1) for m, s in report.samples_s.items()}


def run_config(
    config: Config, methods: Sequence[str], policy, param_seed: int
) -> dict[str, Measured]:
    """Time `methods` of `config`: method -> `Measured`.

    Exceptions other than KeyboardInterrupt become error strings. If the interleaved loop
    fails, each method is retried alone, so one method's out-of-memory does not cost the
    others their measurement (they then carry no paired ratio).
    """
    from measure import timing

    results: dict[str, Measured] = {}
    prepared: dict[str, Any] = {}
    for method in methods:
        try:
            prepared[method] = prepare(config, method, param_seed)
        except Exception as exc:  # noqa: BLE001 -- recorded, the sweep goes on
            results[method] = Measured(None, None, f"{type(exc).__name__}: {one_line(exc)}")
    if not prepared:
        return results
    try:
        report = timing.time_blocks(prepared, policy)
        paired = _paired(report, policy)
        for method, prep in prepared.items():
            results[method] = Measured(report.summaries[method], prep, "",
                                       paired.get(method, Measured._field_defaults["paired"]))
    except Exception:  # noqa: BLE001
        for method, prep in prepared.items():
            try:
                alone = timing.time_interleaved({method: prep}, policy)
                results[method] = Measured(alone.summaries[method], prep, "")
            except Exception as exc:  # noqa: BLE001
                results[method] = Measured(None, prep, f"{type(exc).__name__}: {one_line(exc)}")
    return {m: results[m] for m in methods if m in results}
