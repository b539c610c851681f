"""Sweep a grid of configurations, timing every method, into a resumable tidy dataset.

    python -m measure.sweep --grid quick --out results/
    python -m measure.sweep --batch 2,64 --embed 256,1024 --rank 1,4 --out results/
    python -m measure.sweep --grid seed --variant seed --timing as_written --out results/

Configs run in an order shuffled with ``--order-seed`` (the seed and the order are recorded
in run.json, ``sessions[-1].extra.config_order``; ``--bootstrap-seed`` seeds the timing loop's
bootstrap apart); the methods of one config
are compiled, warmed up and timed together, interleaved (see `measure.timing`). Each
finished (config, method) is appended to ``<out>/measurements.jsonl`` at once, so Ctrl-C
(exit 130) or a crash loses at most the config in progress, and rerunning with the same
``--out`` resumes (see `measure.dataset`). A config that fails (out of memory, say) is
recorded with its error and the sweep goes on.
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from costmodel.cliutil import (
    Interrupted,
    OneLineArgumentParser,
    UserError,
    add_debug_flag,
    bounded_int,
    bounded_int_list,
    csv_list,
    exit_status,
    non_negative_float,
    one_line,
    path_arg,
    positive_int,
    run,
)
from costmodel.layers import MAX_BATCH, MAX_SEQ, MAX_WIDTH
from measure import grids, modelconfig
from measure.grids import Config, Grid
from measure.schema import ADDED_IN_3, COLUMNS, CURVE_COLUMNS, SCHEMA_VERSION

PROG = "python -m measure.sweep"

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
    paired: tuple[float, float, float] | None = None, refinement: bool = False,
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
        "refinement": bool(refinement), "error": error, "timestamp": _utc_now(),
    }
    if paired is not None and summary is not None:
        rec.update(paired_ratio=paired[0], paired_ratio_ci_low=paired[1],
                   paired_ratio_ci_high=paired[2])
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
    error ("" if none) and the paired ratio to full in the same loop (median, low, high)."""

    summary: Any
    prepared: Any
    error: str
    paired: tuple[float, float, float] = (float("nan"),) * 3


def _paired(report, policy) -> dict[str, tuple[float, float, float]]:
    from measure import timing

    if "full" not in report.samples_s:
        return {}
    ref = report.samples_s["full"]
    return {m: timing.paired_ratio(s, ref, policy) for m, s in report.samples_s.items()}


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
        report = timing.time_interleaved(prepared, policy)
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


# ----------------------------------------------------------------------------- CLI

def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(
        prog=PROG,
        description="Time full fine-tuning against LoRA over a grid of layer sizes.",
    )
    p.add_argument("--out", required=True, type=path_arg, help="output folder (created; resumed if it exists)")
    p.add_argument("--grid", choices=grids.GRIDS, help="a named grid (else give sizes)")
    p.add_argument("--batch", type=bounded_int_list(MAX_BATCH, "batch"), help="custom grid: batch sizes, e.g. 2,64")
    p.add_argument("--embed", type=bounded_int_list(MAX_WIDTH, "width"), help="custom grid: input widths e")
    p.add_argument("--hidden", type=bounded_int_list(MAX_WIDTH, "width"),
                   help="custom grid: output widths h (default: = e)")
    p.add_argument("--rank", type=bounded_int_list(MAX_WIDTH, "rank"), help="custom grid: LoRA ranks (default 1)")
    p.add_argument("--layer", choices=grids.LAYERS, help="layer (default attention)")
    p.add_argument("--methods", type=csv_list(grids.METHODS, "method"),
                   help="comma-separated subset of full,lora,lora_merged")
    p.add_argument("--dtypes", "--dtype", dest="dtypes", type=csv_list(grids.DTYPES, "dtype"),
                   default=("float32",),
                   help="float32 or bfloat16 (default float32), one per sweep: the analysis fits one "
                        "time per FLOP and per byte to a dataset, so each dtype gets its own --out")
    p.add_argument("--targets", type=csv_list(what="target"),
                   help="adapted matrices, e.g. q,v (default: the layer's)")
    p.add_argument("--input-grad", action="store_true", help="also differentiate the layer input")
    p.add_argument("--seq", type=bounded_int(MAX_SEQ, "sequence length"),
                   help="tokens per sequence: block layer (default 1) or whole model (required)")
    p.add_argument("--heads", type=positive_int,
                   help="attention heads: block layer (default 1) or whole model (default: the "
                        "preset's head width, d_model / head_dim)")
    p.add_argument("--variant", choices=grids.VARIANTS, default="clean",
                   help="clean (ours) or seed (the blog's code, bugs included)")
    p.add_argument("--timing", choices=grids.TIMING_MODES, default="aot",
                   help="aot (compile once) or as_written (the blog's re-jit per call; seed only)")
    p.add_argument("--budget-s", type=non_negative_float,
                   help="timing-loop seconds per config (default: the grid's, see measure.grids)")
    p.add_argument("--min-repeats", type=positive_int, default=5)
    p.add_argument("--max-repeats", type=positive_int, default=500)
    p.add_argument("--target-ci", type=non_negative_float, default=0.02,
                   help="stop once the median's 95%% CI is within this fraction (default 0.02)")
    p.add_argument("--order-seed", type=int, default=0, help="seed of the shuffled config order")
    p.add_argument("--bootstrap-seed", type=int, default=0,
                   help="seed of the timing loop's bootstrap CI of each median (default 0)")
    p.add_argument("--param-seed", type=int, default=0, help="seed of the parameter init")
    p.add_argument("--force-merge", action="store_true",
                   help="add to an --out measured on another device or library versions")
    p.add_argument("--retry-errors", action="store_true",
                   help="rerun (config, method) pairs recorded with an error")
    p.add_argument("--limit", type=positive_int, help="measure at most this many configs now")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="skip the crossover refinement after the grid (see measure.refine; "
                        "on by default for the clean variant)")
    p.add_argument("--shard", type=shard_spec, metavar="K/N",
                   help="measure only share K of N (1 <= K <= N) of the shuffled configs: "
                        "every N-th config of the --order-seed order, from the K-th; merge the "
                        "shards' folders with python -m measure.merge")
    w = p.add_argument_group(
        "whole-model steps",
        "time whole training steps (embeddings, blocks, head, loss, optimizer) of a published "
        "shape scaled down, e.g. --model gpt2-small --d-model 256 --layers 4 --batch 1,8 "
        "--seq 128 --methods full,lora --targets q,v --optimizer adamw (see measure.wholemodel); "
        "--grid models is the named grid of them",
    )
    w.add_argument("--model", type=_model_name,
                   help="preset to scale down (the cost model's names: gpt2-small, llama2-7b, "
                        "bert-base, ...; python -m costmodel --list-models)")
    w.add_argument("--d-model", type=bounded_int_list(MAX_WIDTH, "width"),
                   help="residual widths, e.g. 128,256 (default: the preset's)")
    w.add_argument("--layers", type=bounded_int_list(MAX_BATCH, "layers"), help="numbers of blocks, e.g. 2,4")
    w.add_argument("--kv-heads", type=positive_int,
                   help="key/value heads (grouped-query attention; must divide --heads; "
                        "default: the preset's grouping)")
    w.add_argument("--ffn", type=positive_int, help="MLP width (default: the preset's ratio to d_model)")
    w.add_argument("--vocab", type=positive_int, help="vocabulary rows (default: the preset's)")
    w.add_argument("--head", choices=modelconfig.HEADS, default="lm",
                   help="lm (untied vocabulary projection), lm-tied, or classifier (first token "
                        "-> --classes logits, trained under every method); default lm")
    w.add_argument("--classes", type=positive_int, default=2, help="classifier outputs (default 2)")
    w.add_argument("--optimizer", choices=modelconfig.OPTIMIZERS, default="adamw",
                   help="optax sgd or adamw (default adamw)")
    w.add_argument("--no-clip", dest="clip", action="store_false",
                   help="no global-norm gradient clipping (default: clip at 1.0)")
    w.add_argument("--precision", choices=modelconfig.PRECISIONS, default="fp32",
                   help="fp32, bf16 or bf16-mixed (fp32 master weights); default fp32")
    w.add_argument("--recompute", action="store_true",
                   help="recompute each block's activations in the backward (jax.checkpoint)")
    w.add_argument("--grad-accum", type=positive_int, default=1,
                   help="micro-batches of --batch sequences per optimizer update (default 1)")
    w.add_argument("--attention", choices=modelconfig.ATTENTIONS, default="naive",
                   help="naive (materialised seq x seq scores) or fused "
                        "(jax.nn.dot_product_attention); default naive")
    p.add_argument("--time-limit-s", type=non_negative_float,
                   help="start no new config after this many seconds; the run is marked "
                        "interrupted (exit 0) and the same command resumes it")
    add_debug_flag(p)
    return p


def shard_spec(text: str) -> tuple[int, int]:
    """An argparse `type=` for "K/N": share K (1-based) of N."""
    import argparse

    k, sep, n = text.partition("/")
    try:
        ki, ni = int(k), int(n)
    except ValueError:
        ki = ni = 0
    if not sep or ni < 1 or not 1 <= ki <= ni:
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N with 1 <= K <= N, e.g. 2/4")
    return ki, ni


def shard_of(order: list[int], shard: tuple[int, int] | None) -> list[int]:
    """Share K of N of a shuffled order: positions K-1, K-1+N, ... (disjoint, covering)."""
    if shard is None:
        return order
    k, n = shard
    return order[k - 1 :: n]
def _model_name(value: str) -> str:
    from costmodel.presets_models import resolve_model

    try:
        return resolve_model(value).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(one_line(exc)) from None


#: Flags that only a whole-model sweep takes, and their defaults.
_MODEL_FLAGS = {"d_model": None, "layers": None, "kv_heads": None, "ffn": None, "vocab": None,
                "head": "lm", "classes": 2, "optimizer": "adamw", "clip": True,
                "precision": "fp32", "recompute": False, "grad_accum": 1, "attention": "naive"}


def _model_grid_from_args(args) -> Grid:
    """--grid models, or a custom whole-model grid from --model and its flags."""
    if args.layer is not None or args.embed is not None or args.hidden is not None:
        raise UserError("--layer, --embed and --hidden are for layer sweeps; a whole model takes "
                        "--d-model (and --ffn)")
    if args.variant != "clean" or args.timing != "aot":
        raise UserError("whole-model steps exist in the clean variant, timed aot, only")
    if args.grid == "models":
        given = [f"--{k.replace('_', '-')}" for k, v in _MODEL_FLAGS.items() if getattr(args, k) != v]
        given += ["--model"] * (args.model is not None)
        given += [f"--{k}" for k in ("batch", "rank", "targets") if getattr(args, k) is not None]
        if given:
            raise UserError(f"--grid models fixes its own shapes and options; drop {given[0]}")
        return grids.models_grid(methods=args.methods)
    if args.batch is None:
        raise UserError("a whole-model sweep needs --batch, e.g. --model gpt2-small --batch 1,8 --seq 128")
    if args.seq is None:
        raise UserError("a whole-model sweep needs --seq (tokens per sequence), e.g. --seq 128")
    return grids.custom_model_grid(
        model=args.model, batch=args.batch, seq=args.seq, rank=args.rank or (8,),
        d_model=args.d_model or (None,), layers=args.layers or (None,),
        heads=args.heads,
        kv_heads=args.kv_heads, ffn=args.ffn, vocab=args.vocab, methods=args.methods,
        targets=args.targets or ("q", "v"), head=args.head, n_classes=args.classes,
        optimizer=args.optimizer, clip=args.clip, precision=args.precision,
        recompute=args.recompute, grad_accum=args.grad_accum, attention=args.attention,
    )


def grid_from_args(args) -> Grid:
    if args.grid == "models" or args.model is not None:
        try:
            return _model_grid_from_args(args)
        except ValueError as exc:
            raise UserError(one_line(exc)) from None
    model_only = [f"--{k.replace('_', '-')}" for k, v in _MODEL_FLAGS.items() if getattr(args, k) != v]
    if model_only:
        raise UserError(f"{model_only[0]} describes a whole model: give --model PRESET or --grid models")
    sizes = (args.batch, args.embed, args.hidden, args.rank)
    if len(args.dtypes) != 1:
        raise UserError(f"give one dtype per sweep, not {','.join(args.dtypes)}: the analysis fits one "
                        "time per FLOP and per byte to a dataset, so measure each dtype into its own --out")
    common = dict(
        layer=args.layer, methods=args.methods, variant=args.variant, timing_mode=args.timing,
        dtype=args.dtypes[0], input_requires_grad=args.input_grad, seq=args.seq or 1, heads=args.heads or 1,
        targets=args.targets,
    )
    try:
        if args.grid:
            if any(s is not None for s in sizes):
                raise UserError("give --grid or sizes (--batch/--embed/--hidden/--rank), not both")
            return grids.named_grid(args.grid, **common)
        if args.batch is None or args.embed is None:
            raise UserError("give --grid NAME, or at least --batch and --embed for a custom grid")
        return grids.custom_grid(
            batch=args.batch, embed=args.embed, hidden=args.hidden, rank=args.rank or (1,), **common
        )
    except ValueError as exc:
        raise UserError(one_line(exc)) from None


def _log(bar, line: str) -> None:
    if bar is not None and not bar.disable:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def _fmt_s(t: float) -> str:
    if t != t:  # NaN
        return "n/a"
    return f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s"


def _summary_line(i: int, n: int, config: Config, results, elapsed_s: float) -> str:
    parts = []
    base = None
    for method, (summary, _prep, error, _paired) in results.items():
        if error:
            parts.append(f"{method} FAILED ({error[:60]})")
            continue
        t = summary.time_median_s
        ratio = f" ({t / base:.2f}x)" if base else ""
        if method == "full":
            base = t
        flag = " unstable" if summary.unstable else ""
        parts.append(f"{method} {_fmt_s(t)}{ratio} n={summary.n_repeats}{flag}")
    return f"[{i}/{n}] {config.label()}: " + ", ".join(parts) + f" [{elapsed_s:.1f} s]"


def main(argv: Sequence[str] | None = None) -> int:
    """The sweep under the shared runner: one-line errors (exit 2), SIGINT/SIGTERM kept as
    an interrupted run (exit 130/143; before the output folder opens there is nothing to keep)."""
    return run(PROG, _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    grid = grid_from_args(args)
    todo_pairs: list[tuple[Config, list[dict[str, Any]]]] = []
    for config in grid.configs:
        try:
            bases = [describe(config, m) for m in grid.methods]
        except ValueError as exc:
            raise UserError(f"{config.label()}: {one_line(exc)}") from None
        todo_pairs.append((config, bases))

    from measure import dataset, fingerprint, timing

    budget = args.budget_s if args.budget_s is not None else grids.DEFAULT_BUDGET_S[grid.name]
    if args.max_repeats < args.min_repeats:
        raise UserError(f"--max-repeats {args.max_repeats} is below --min-repeats {args.min_repeats}")
    try:
        policy = timing.TimingPolicy(
            min_repeats=args.min_repeats, max_repeats=args.max_repeats,
            target_rel_ci=args.target_ci or 1e-9, budget_s=budget, seed=args.bootstrap_seed,
        )
    except ValueError as exc:
        raise UserError(one_line(exc)) from None

    # configs in a shuffled order, recorded: a drift over the sweep is not a trend in size
    order = list(range(len(todo_pairs)))
    random.Random(args.order_seed).shuffle(order)
    order = shard_of(order, args.shard)
    fp = fingerprint.fingerprint()
    session = dataset.Session(
        session_id=dataset.new_session_id(), started_utc=dataset.utc_now(), argv=argv,
        grid={**grid.describe(), "layer": grid.configs[0].layer if grid.configs else None,
              "variant": args.variant, "timing_mode": args.timing, "dtype": args.dtypes[0]},
        seeds={"order_seed": args.order_seed, "param_seed": args.param_seed,
               "bootstrap_seed": policy.seed},
        policy={k: getattr(policy, k) for k in policy.__dataclass_fields__},
        extra={"config_order": [todo_pairs[i][0].label() for i in order],
               "shard": list(args.shard) if args.shard else None},
    )
    out = dataset.open_out_dir(args.out, fp=fp, session=session, force_merge=args.force_merge,
                               log=lambda line: _log(None, line))
    try:
        return _sweep(args, grid, todo_pairs, order, out, fp, policy, budget)
    except KeyboardInterrupt as exc:
        # a stop in any phase past the loop's own handler (the final write, say): what is
        # appended stays, and run.json says interrupted, not "running" (the runner holds back
        # a second signal while this runs)
        if not out.finished:
            out.finish("interrupted", reason=str(exc) if isinstance(exc, Interrupted) else "SIGINT")
        raise
    finally:
        out.close()


def _sweep(args, grid: Grid, todo_pairs, order, out, fp, policy, budget) -> int:
    from measure import dataset

    out.grid_keys = {dataset.record_key(b) for _config, bases in todo_pairs for b in bases}
    work = []
    for idx in order:
        config, bases = todo_pairs[idx]
        methods = [
            b["method"] for b in bases
            if not out.is_done(dataset.record_key(b), retry_errors=args.retry_errors)
        ]
        if methods:
            work.append((config, bases, methods))
    grid_left_after = 0
    if args.limit is not None:
        grid_left_after = max(0, len(work) - args.limit)
        work = work[: args.limit]
    skipped = len(order) * len(grid.methods) - sum(len(w[2]) for w in work)

    from tqdm import tqdm

    bar = tqdm(total=len(work), file=sys.stderr, unit="config", disable=not sys.stderr.isatty())
    _log(bar, f"{grid.name}: {len(work)} configs to measure x {len(grid.methods)} methods "
              f"({skipped} (config, method) pairs already in {args.out}); budget {budget:g} s/config")
    t_start = time.perf_counter()
    clock = _Clock(t_start, args.time_limit_s)
    # the refinement bisects our kernels' crossover once the whole grid is in (one shard
    # holds only part of it: run the refinement on the merged folder)
    refine_on = args.refine and args.variant == "clean" and grid_left_after == 0 and not args.shard
    refine_on = refine_on and not grid.whole_model
    try:
        stopped = _measure(out, work, fp, policy, args, bar, clock, refinement=False)
        bar.close()
        if not stopped and refine_on:
            stopped = _refine(out, grid, fp, policy, args, clock)
        if stopped:
            out.finish("interrupted", reason=f"--time-limit-s {args.time_limit_s:g} reached")
            _log(None, f"time limit reached after {clock.elapsed():.1f} s; rerun the same "
                       "command to resume")
            return 0
    except OSError as exc:  # the folder vanished, the disk filled: what was appended stays
        bar.close()
        raise UserError(f"cannot write to --out {args.out}: {one_line(exc)}") from None
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM (the runner's `Interrupted`)
        bar.close()
        name = signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"
        _log(None, f"{name}: stopping; writing what is finished (a second signal is ignored)")
        out.finish("interrupted", reason=str(exc) if isinstance(exc, Interrupted) else "SIGINT")
        _log(None, f"interrupted: {len(out.records)} records kept in {args.out}; "
                   "rerun the same command to resume")
        return exit_status(exc)
    if grid_left_after and args.refine and args.variant == "clean" and not grid.whole_model:
        _log(None, "--limit left configs of the grid: the crossover refinement waits for them")
    df = out.finish("complete")  # "partial" unless every pair of the grid is there
    n_err = int((df["error"] != "").sum())
    counts = out.counts()
    state = (f"{grid.name} grid complete" if out.run["status"] == "complete" else
             f"partial: {counts['pairs_present']} of {counts['pairs_expected']} (config, method) "
             f"pairs of the {grid.name} grid; rerun without --limit to finish it")
    _log(None, f"done in {clock.elapsed():.1f} s: {len(df)} records in "
               f"{Path(args.out) / dataset.CSV_NAME}" + (f" ({n_err} with errors)" if n_err else "")
               + f"; {state}")
    return 0


class _Clock:
    """Seconds since the sweep started, against its --time-limit-s."""

    def __init__(self, t_start: float, limit_s: float | None):
        self.t_start, self.limit_s = t_start, limit_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def over(self) -> bool:
        return self.limit_s is not None and self.elapsed() >= self.limit_s


def _measure(out, work, fp, policy, args, bar, clock: _Clock, refinement: bool) -> bool:
    """Measure `work` [(config, bases, methods)], appending each record; True if the time
    limit stopped it first."""
    for i, (config, bases, methods) in enumerate(work, 1):
        if clock.over():
            return True
        t0 = time.perf_counter()
        results = run_config(config, methods, policy, args.param_seed)
        by_method = {b["method"]: b for b in bases}
        for method, res in results.items():
            out.append(make_record(
                by_method[method], run_id=out.session_id, backend=fp["backend"],
                device_kind=fp["device_kind"], summary=res.summary, prepared=res.prepared,
                error=res.error, paired=res.paired, refinement=refinement,
            ))
        tag = "refine " if refinement else ""
        _log(bar, tag + _summary_line(i, len(work), config, results, time.perf_counter() - t0))
        if bar is not None:
            bar.update(1)
    return False


def refinement_work(grid: Grid, records: Sequence[dict[str, Any]], tried: set[Config]
                    ) -> list[tuple[Config, list[dict[str, Any]]]]:
    """The widths `measure.refine.assess` proposes next for every curve of `grid`, as
    (config, bases) pairs, each config measured with all the grid's methods; configs in
    `tried` (or that the cost model rejects) are skipped."""
    import dataclasses

    import pandas as pd

    from measure import dataset, refine

    if not records:
        return []
    df = dataset.consolidate(records)
    loras = [m for m in grid.methods if m != "full"]
    if "full" not in grid.methods or not loras:
        return []
    groups: dict[Config, list[Config]] = {}
    for c in grid.configs:
        groups.setdefault(dataclasses.replace(c, embed=1, hidden=1), []).append(c)
    top = max(math.sqrt(c.embed * c.hidden) for c in grid.configs) * refine.MAX_EXPAND_UP
    todo: list[tuple[Config, list[dict[str, Any]]]] = []
    for key, members in groups.items():
        ratios = {c.hidden / c.embed for c in members}
        h_over_e = ratios.pop() if len(ratios) == 1 else 1.0
        sel = pd.Series(True, index=df.index)
        for col in CURVE_COLUMNS:
            sel &= df[col] == getattr(key, col)
        rows = df[sel]
        widths = set()
        for m in loras:
            nxt = refine.assess_rows(rows, m, max_width=top).next_width
            if nxt is not None:
                widths.add(nxt)
        for w in sorted(widths):
            config = dataclasses.replace(key, embed=w, hidden=max(1, round(h_over_e * w)))
            if config in tried:
                continue
            tried.add(config)
            try:
                bases = [{**describe(config, m), "refinement": True} for m in grid.methods]
            except ValueError:
                continue
            todo.append((config, bases))
    return todo


def _refine(out, grid: Grid, fp, policy, args, clock: _Clock) -> bool:
    """Bisect every curve's crossover (`measure.refine`) until nothing is proposed; True if
    the time limit stopped it first. Pairs already recorded are not measured again."""
    from measure import dataset

    tried: set[Config] = set()
    n_done = 0
    while True:
        todo = refinement_work(grid, out.records, tried)
        work = []
        for config, bases in todo:
            methods = [b["method"] for b in bases
                       if not out.is_done(dataset.record_key(b), retry_errors=args.retry_errors)]
            if methods:
                work.append((config, bases, methods))
        if not todo:
            break
        if not work:
            continue
        if clock.over():
            return True
        if n_done == 0:
            _log(None, "crossover refinement (bisection in log width, python -m measure.refine)")
        if _measure(out, work, fp, policy, args, None, clock, refinement=True):
            return True
        n_done += len(work)
    out.run.setdefault("refinement", {})
    out.run["refinement"] = {"configs_measured_this_session": n_done,
                             "configs": int(sum(bool(r.get("refinement")) for r in out.records)
                                            // max(len(grid.methods), 1))}
    return False


if __name__ == "__main__":
    raise SystemExit(main())
