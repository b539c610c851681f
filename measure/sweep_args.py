"""The command line of `measure.sweep`: its parser, and the grid its arguments describe
(checked: one-line `UserError`s)."""

from __future__ import annotations

import argparse

from costmodel.cliutil import (
    OneLineArgumentParser,
    UserError,
    add_debug_flag,
    bounded_int,
    bounded_int_list,
    csv_list,
    non_negative_float,
    one_line,
    path_arg,
    positive_int,
)
from costmodel.layers import MAX_BATCH, MAX_SEQ, MAX_WIDTH
from measure import grids, modelconfig
from measure.grids import Grid

PROG = "python -m measure.sweep"


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
