"""`python -m costmodel --model ...`: one whole-model training step, full vs LoRA.

    python -m costmodel --model gpt3-175b --hardware v100 --method full,lora --rank 4 \\
        --targets q,v --batch 1 --seq 2048 --precision fp16-mixed --optimizer adamw --json
    python -m costmodel --list
    python -m costmodel --d-model 4096 --layers 32 --heads 32 --ffn 11008 --vocab 32000 \\
        --seq 4096 --mlp swiglu --hardware a100-80gb

Defaults: --hardware a100-80gb, --method full,lora, --rank 4, --targets q,v (Hu et al. 2021,
sec. 7.1), --batch 1, --seq the model's context capped at 4096 (Llama 3.2's 131072 would
materialise 131072² attention scores per head), --precision bf16-mixed, --optimizer adamw,
gradient clipping on, no activation recomputation, no LoRA dropout, no frozen prefix.

Per method it reports the step time (roofline + overhead; with "unfitted" default
efficiencies unless the profile carries fitted factors), tokens/s, FLOPs, bytes, kernels, the
memory breakdown and its total, trainable_params and the checkpoint bytes of what was
trained (the adapter, for LoRA); at the top level `speedup` = full / lora step time and
`memory_ratio` = full / lora peak memory. Bad input prints one line and exits with 2.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from costmodel import cli_parallel
from costmodel.cliutil import (
    DefaultsHelpFormatter,
    OneLineArgumentParser,
    UserError,
    add_debug_flag,
    bounded_int,
    count,
    csv_list,
    eng,
    path_arg,
    positive_int,
    run,
)
from costmodel.hardware import HardwareProfile
from costmodel.layers import MAX_BATCH, MAX_SEQ, MAX_WIDTH
from costmodel.memory import MemoryBreakdown, memory_breakdown, memory_fit
from costmodel.optimizer import PRECISIONS
from costmodel.presets_hardware import HARDWARE, resolve_hardware
from costmodel.presets_models import MODELS, ModelShape, param_count, resolve_model
from costmodel.step import DEFAULT_MAX_SEQ, StepCost, default_seq, step_cost, step_param_count
from costmodel.steptime import StepTime, step_time
from costmodel.vocab import ATTENTIONS, HEADS, METHODS, MLPS, NORMS, OPTIMIZER_IMPLS, OPTIMIZERS

PROG = "python -m costmodel"
DEFAULT_HARDWARE = "a100-80gb"
#: A custom shape without --model: GPT-2 style (gelu), or LLaMA style with --mlp swiglu.
_CUSTOM_STYLE = {
    "gelu": dict(norm="layernorm", bias=True, tied_embeddings=True, positional="learned"),
    "swiglu": dict(norm="rmsnorm", bias=False, tied_embeddings=False, positional="rope"),
}
_SHAPE_FLAGS = ("d_model", "layers", "heads", "kv_heads", "ffn", "vocab")


def _parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(prog=f"{PROG} model", formatter_class=DefaultsHelpFormatter,
                              description="Time and memory of one training step of a "
                              "whole transformer under full fine-tuning and LoRA.")
    p.add_argument("--model", default=None, help="preset name (see --list)")
    p.add_argument("--list", action="store_true", help="print the model and hardware presets")
    shape = p.add_argument_group("custom shape (alone, or overriding a --model preset)")
    shape.add_argument("--d-model", type=bounded_int(MAX_WIDTH, "width"), help="model width")
    shape.add_argument("--layers", type=positive_int, help="transformer blocks")
    shape.add_argument("--heads", type=positive_int, help="default d_model / 64")
    shape.add_argument("--kv-heads", type=positive_int, help="grouped-query kv heads (default heads)")
    shape.add_argument("--ffn", type=bounded_int(MAX_WIDTH, "width"), help="MLP width (default 4·d_model)")
    shape.add_argument("--vocab", type=positive_int, help="default 50257")
    shape.add_argument("--mlp", choices=MLPS, default=None,
                       help="custom shape: gelu (GPT-2 style, default) or swiglu (LLaMA style)")
    shape.add_argument("--norm", choices=NORMS, default=None, help="custom shape: normalisation")
    p.add_argument("--seq", type=bounded_int(MAX_SEQ, "sequence length"), default=None,
                   help=f"tokens per sequence (default: the model's context, at most {DEFAULT_MAX_SEQ}; "
                        "for a custom shape also its context, default 2048)")
    p.add_argument("--batch", type=bounded_int(MAX_BATCH, "batch"), default=1, help="sequences per step (default 1)")
    p.add_argument("--hardware", type=path_arg, default=DEFAULT_HARDWARE,
                   help=f"preset name or measured profile JSON (default {DEFAULT_HARDWARE})")
    p.add_argument("--methods", "--method", dest="method", metavar="METHODS",
                   type=csv_list(METHODS, "method"),
                   default=",".join(METHODS[:2]), help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--rank", type=positive_int, default=4, help="LoRA rank r")
    p.add_argument("--targets", default="q,v", help="adapted matrices of each block: q,k,v,o,mlp (default q,v)")
    p.add_argument("--dropout", action="store_true", help="LoRA input dropout on")
    p.add_argument("--frozen-prefix", type=int, default=0,
                   help="freeze the first k blocks and the embedding lookup (default 0)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="bf16-mixed",
                   help="fp32 | bf16 | fp16-mixed | bf16-mixed (default; fp32 master weights)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                   help="sgd | adamw (default) | adamw-8bit (m and v as block-wise quantized 8-bit "
                        "codes: 2 bytes of state per parameter instead of 8; Dettmers et al. 2022)")
    p.add_argument("--optimizer-impl", choices=OPTIMIZER_IMPLS, default="xla",
                   help="how the update is launched: xla (default; one fused loop per tensor, as jit "
                        "compiles optax), fused (one multi-tensor pass over all parameters, PyTorch "
                        "fused=True), foreach (PyTorch's _foreach_ kernels, each step over all "
                        "tensors), per-tensor (PyTorch's loop: 8 kernels per tensor for AdamW)")
    p.add_argument("--optimizer-in-backward", action="store_true",
                   help="apply each tensor's update inside the backward pass as soon as its gradient "
                        "exists: only one tensor's gradient is held (needs --no-clip, --grad-accum 1)")
    p.add_argument("--head", choices=HEADS, default=None,
                   help="task head: lm (untied vocabulary projection), lm-tied (the token table "
                        "reused), classifier (first token -> --classes logits, trained under every "
                        "method), none (loss = sum of the final hidden state); default: the "
                        "model's own LM head")
    p.add_argument("--classes", type=positive_int, default=2, help="classifier head: classes (default 2)")
    p.add_argument("--attention", choices=ATTENTIONS, default="naive",
                   help="naive (default; seq x seq scores materialised and saved) or fused "
                        "(FlashAttention: no seq x seq activations, the scores recomputed in the backward)")
    p.add_argument("--grad-accum", type=positive_int, default=1, metavar="K",
                   help="gradient accumulation: K micro-batches of --batch sequences, one optimizer "
                        "update and clipping per step (default 1)")
    p.add_argument("--recompute", action="store_true", help="activation recomputation per block")
    p.add_argument("--no-clip", action="store_true", help="no gradient-norm clipping")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    cli_parallel.add_arguments(p)
    add_debug_flag(p)
    return p


def model_from_args(args) -> ModelShape:
    """The preset, or a custom shape from the flags (which override a preset's fields)."""
    given = {f: getattr(args, f) for f in _SHAPE_FLAGS if getattr(args, f) is not None}
    if args.model is not None:
        shape = resolve_model(args.model)
        overrides = dict(given)
        if args.mlp is not None:
            overrides["mlp"] = args.mlp
        if args.norm is not None:
            overrides["norm"] = args.norm
        if args.seq is not None and shape.positional == "rope" and args.seq > shape.seq:
            overrides["seq"] = args.seq
        if not overrides:
            return shape
        if "heads" in overrides and "kv_heads" not in overrides and shape.kv_heads == shape.heads:
            overrides["kv_heads"] = overrides["heads"]
        return dataclasses.replace(shape, name=f"{shape.name} (modified)",
                                   source=f"{shape.source}; modified by flags", **overrides)
    missing = [f"--{f.replace('_', '-')}" for f in ("d_model", "layers") if f not in given]
    if missing:
        raise UserError(f"a custom shape needs {' and '.join(missing)} (or give --model; see --list)")
    d = given["d_model"]
    mlp = args.mlp or "gelu"
    heads = given.get("heads", max(1, d // 64))
    style: dict[str, Any] = dict(_CUSTOM_STYLE[mlp])
    if args.norm is not None:
        style["norm"] = args.norm
    return ModelShape(
        name="custom", d_model=d, layers=given["layers"], heads=heads,
        kv_heads=given.get("kv_heads", heads), ffn=given.get("ffn", 4 * d),
        vocab=given.get("vocab", 50257), seq=args.seq or 2048, mlp=mlp, type_vocab=0,
        causal=True, source="custom shape from command-line flags", **style,
    )


def _f(x) -> float:
    return float(np.asarray(x, dtype=float).reshape(()))


def method_record(cost: StepCost, t: StepTime, mem: MemoryBreakdown, profile: HardwareProfile) -> dict:
    """One method's numbers as JSON-ready values (a single configuration)."""
    rec: dict[str, Any] = {
        "method": cost.spec.method,
        "step_time_s": _f(t.time_s),
        "tokens_per_s": _f(t.tokens_per_s),
        "flops": _f(cost.flops),
        "bytes": _f(cost.bytes_moved),
        "kernels": int(_f(cost.kernels)),
        "time": {k: _f(getattr(t, k)) for k in
                 ("t_math_s", "t_mem_s", "t_overhead_s", "lower_bound_s", "upper_bound_s")},
        "part_time_s": {k: _f(v) for k, v in t.part_time_s.items()},
        "part_flops": {k: _f(c.flops) for k, c in cost.parts.items()},
        "memory": {k: _f(v) for k, v in mem.as_dict().items()},
        "activation_bytes_by_layer": {k: _f(v) for k, v in mem.per_layer_activation_bytes.items()},
        "trainable_params": int(_f(mem.trainable_params)),
        "total_params": int(_f(mem.total_params)),
        "adapter_checkpoint_bytes": _f(mem.checkpoint_bytes),
    }
    fit = memory_fit(rec["memory"]["total_bytes"], profile.extra.get("memory_bytes"))
    rec["fits"] = fit.fits  # None: the profile states no memory capacity
    rec["lacks_bytes"] = fit.lacks_bytes
    if fit.fits is not None:
        rec["fits_in_memory"] = fit.fits
    return rec


def evaluate(args) -> dict:
    """Compute everything the command prints (render apart)."""
    shape = model_from_args(args)
    profile = resolve_hardware(args.hardware)
    seq = args.seq if args.seq is not None else default_seq(shape)
    out: dict = {
        "model": {"name": shape.name, "params": param_count(shape),
                  **{f: getattr(shape, f) for f in ("d_model", "layers", "heads", "kv_heads", "ffn", "vocab",
                                                    "seq", "mlp", "norm", "tied_embeddings", "causal")},
                  "source": shape.source},
        "hardware": {"name": profile.name, "source": profile.source, "measured": profile.measured},
        "config": {"batch": args.batch, "seq": seq, "tokens": args.grad_accum * args.batch * seq,
                   "precision": args.precision,
                   "optimizer": args.optimizer, "rank": args.rank, "targets": args.targets,
                   "dropout": args.dropout, "frozen_prefix": args.frozen_prefix,
                   "recompute": args.recompute, "clip_grad": not args.no_clip,
                   "head": args.head or ("lm-tied" if shape.tied_embeddings else "lm"),
                   "n_classes": args.classes, "attention": args.attention, "grad_accum": args.grad_accum,
                   "optimizer_impl": args.optimizer_impl, "optimizer_in_backward": args.optimizer_in_backward},
        "methods": {},
    }
    for method in args.method:
        cost = step_cost(shape, method, batch=args.batch, seq=seq, rank=args.rank, targets=args.targets,
                         dropout=args.dropout, frozen_prefix=args.frozen_prefix, precision=args.precision,
                         optimizer=args.optimizer, recompute=args.recompute, clip_grad=not args.no_clip,
                         head=args.head, n_classes=args.classes, attention=args.attention,
                         grad_accum=args.grad_accum, optimizer_impl=args.optimizer_impl,
                         optimizer_in_backward=args.optimizer_in_backward)
        out["model"]["params"] = step_param_count(cost.spec)
        t = step_time(cost, profile)
        out["methods"][method] = method_record(cost, t, memory_breakdown(cost), profile)
        basis: dict[str, Any] = {"label": t.basis, "note": t.note}
        if t.efficiency is not None:
            basis.update(flops_efficiency=t.efficiency.flops, bandwidth_efficiency=t.efficiency.bandwidth,
                         overhead_scale=t.efficiency.overhead)
        if t.fitted is not None:
            basis.update({f.name: getattr(t.fitted, f.name) for f in dataclasses.fields(t.fitted)
                          if f.name != "note"})
        out["time_basis"] = basis
    if t.fitted is None:
        cli_parallel.add_peak_note(out, profile, PRECISIONS[args.precision].compute_dtype)
    cli_parallel.compare_methods(out, profile)
    methods = out["methods"]
    if "full" in methods and "lora" in methods:
        out["memory_ratio"] = methods["full"]["memory"]["total_bytes"] / methods["lora"]["memory"]["total_bytes"]
    return out


def fit_header(out: dict) -> str | None:
    """The line that comes first when a method does not fit one device, with what it lacks."""
    if not out.get("does_not_fit"):
        return None
    methods = out["methods"]
    parts = [f"{m} needs {_gb(methods[m]['memory']['total_bytes'])}, lacks {_gb(methods[m]['lacks_bytes'])}"
             for m in out["does_not_fit"]]
    return (f"DOES NOT FIT on one {out['hardware']['name']} ({_gb(out['capacity_bytes'])}): "
            + "; ".join(parts))


def _fixed(x: float, decimals: int) -> str:
    """Fixed point while the digits mean something (below 10^9), engineering beyond."""
    return f"{x:,.{decimals}f}" if abs(x) < 1e9 else eng(x)


def _gb(x: float) -> str:
    gb = x / 1e9
    return f"{gb:,.2f} GB" if abs(gb) < 1e9 else f"{eng(gb)} GB"  # no float-artifact digits


def render(out: dict) -> str:
    m, c, tb = out["model"], out["config"], out["time_basis"]
    header = fit_header(out)
    lines = [
        *([header] if header else []),
        f"{m['name']}: {count(m['params'])} params, d {m['d_model']}, {m['layers']} layers, "
        f"{m['heads']} heads ({m['kv_heads']} kv), ffn {m['ffn']}, vocab {m['vocab']}",
        "step: "
        + (f"{c['grad_accum']} micro-batches × " if c["grad_accum"] > 1 else "")
        + f"batch {c['batch']} × seq {c['seq']} = {count(c['tokens'])} tokens, {c['precision']}, "
        f"{c['optimizer']}"
        + (f" ({c['optimizer_impl']})" if c["optimizer_impl"] != "xla" else "")
        + (" inside the backward" if c["optimizer_in_backward"] else "")
        + (f", {c['head']} head" + (f" ({c['n_classes']} classes)" if c["head"] == "classifier" else "")
           if c["head"] != ("lm-tied" if m["tied_embeddings"] else "lm") else "")
        + (f", {c['attention']} attention" if c["attention"] != "naive" else "")
        + (f", rank {c['rank']} on {c['targets']}" if set(out["methods"]) - {"full"} else "")
        + (", LoRA dropout" if c["dropout"] else "") + (", recompute" if c["recompute"] else "")
        + (f", first {c['frozen_prefix']} blocks frozen" if c["frozen_prefix"] else ""),
        f"hardware: {out['hardware']['name']} — times are {tb['label']} ({tb['note']})",
        *(f"note: {n}" for n in out.get("notes", [])),
        "",
    ]
    names = list(out["methods"])
    rows = [
        ("step time", lambda r: _fixed(r["step_time_s"] * 1e3, 1) + " ms"),
        ("tokens/s", lambda r: count(r["tokens_per_s"])),
        ("TFLOP per step", lambda r: _fixed(r["flops"] / 1e12, 2)),
        ("kernels", lambda r: count(r["kernels"])),
        ("trainable params", lambda r: count(r["trainable_params"])),
        ("weights", lambda r: _gb(r["memory"]["weights_bytes"])),
        ("gradients", lambda r: _gb(r["memory"]["gradients_bytes"])),
        ("optimizer (master + states)", lambda r: _gb(r["memory"]["optimizer_bytes"])),
        ("activations", lambda r: _gb(r["memory"]["activations_bytes"])),
        ("transient", lambda r: _gb(r["memory"]["transient_bytes"])),
        ("memory total", lambda r: _gb(r["memory"]["total_bytes"])),
        ("checkpoint", lambda r: _gb(r["adapter_checkpoint_bytes"])),
    ]
    if all(out["methods"][n]["fits"] is not None for n in names):
        rows.append(("fits on one device",
                     lambda r: "yes" if r["fits"] else f"no (lacks {_gb(r['lacks_bytes'])})"))
    cells = [(label, [fmt(out["methods"][n]) for n in names]) for label, fmt in rows]
    width = max(16, *(len(n) for n in names), *(len(v) for _, vs in cells for v in vs))
    lines.append(f"{'':28s}" + "".join(f"{n:>{width + 2}s}" for n in names))
    for label, values in cells:
        lines.append(f"{label:28s}" + "".join(f"{v:>{width + 2}s}" for v in values))
    if out.get("speedup") is not None:
        lines += ["", f"speedup (full / lora step time): {out['speedup']:.3f}×"]
    elif "speedup_note" in out:
        lines += ["", out["speedup_note"]]
    if "memory_ratio" in out:
        lines.append(f"memory ratio (full / lora peak): {out['memory_ratio']:.3f}×")
    return "\n".join(lines)


def render_list() -> str:
    lines = ["models:"]
    for name, s in MODELS.items():
        lines.append(f"  {name:14s} {param_count(s) / 1e9:8.3f}B  d {s.d_model:5d}  L {s.layers:3d}  "
                     f"heads {s.heads:3d}/{s.kv_heads:<3d} ffn {s.ffn:6d}  vocab {s.vocab:6d}  seq {s.seq}")
    lines.append("hardware:")
    for name, h in HARDWARE.items():
        half = h.peak("bfloat16")
        lines.append(f"  {name:10s} fp32 {h.peak('float32') / 1e12:6.1f}  16-bit {half / 1e12:6.1f} TFLOP/s  "
                     f"{h.mem_bandwidth_bytes_per_s / 1e9:6.0f} GB/s  {h.extra.get('memory_bytes', 0) / 1e9:4.0f} GB")
    lines.append("  (or the path of a profile JSON written by python -m measure.device)")
    return "\n".join(lines)


def _body(args) -> int:
    if args.list:
        print(render_list())
        return 0
    if args.frozen_prefix < 0:
        raise UserError(f"--frozen-prefix must be >= 0, got {args.frozen_prefix}")
    if args.gpus is not None or args.layout is not None:
        shape = model_from_args(args)
        seq = args.seq if args.seq is not None else default_seq(shape)
        out = cli_parallel.evaluate(args, shape, resolve_hardware(args.hardware), seq)
        print(json.dumps(out, indent=2) if args.json else cli_parallel.render(out))
        return 0
    out = evaluate(args)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(render(out))
    return 0


def body(argv: list[str]) -> int:
    """The ``model`` subcommand on its own argv (the runner is `costmodel.cli.main`'s)."""
    return _body(_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m costmodel model ...``; returns the exit status."""
    return run(PROG, body, argv)
