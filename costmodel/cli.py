"""Command line of the cost model: two subcommands, each with its own defaults.

    python -m costmodel layer --layer attention --batch 64 --embed 1024 --hidden 1024 --rank 4 --methods lora
    python -m costmodel layer ... --methods full,lora --hardware a100-80gb --json
    python -m costmodel layer --layer attention --batch 64 --rank 4 --crossover --hardware v100
    python -m costmodel model --model gpt2-small        (a whole training step: `costmodel.cli_model`)

Shorthand: without a subcommand, flags alone pick one: any flag only `model` knows (--model,
--list, --precision, --d-model, ...) means `model`, otherwise `layer`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

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
from costmodel.crossover import crossover
from costmodel.graph import Cost
from costmodel.hardware import DTYPE_BYTES, HardwareProfile
from costmodel.layers import MAX_BATCH, MAX_SEQ, MAX_WIDTH, LayerConfig, build
from costmodel.roofline import RooflineTime, roofline
from costmodel.vocab import LAYERS, METHODS, MLPS, NORMS

PROG = "python -m costmodel"
SUBCOMMANDS = ("layer", "model")


def _parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(prog=f"{PROG} layer", formatter_class=DefaultsHelpFormatter,
                              description="FLOPs, bytes, kernels and roofline time of "
                              "one training step of a layer under full training or LoRA.",
                              epilog="Whole models: python -m costmodel model --help.")
    p.add_argument("--layer", choices=LAYERS, default="attention", help="which layer")
    p.add_argument("--methods", "--method", dest="method", metavar="METHODS",
                   type=csv_list(METHODS, "method"),
                   default=",".join(METHODS[:2]), help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--batch", type=bounded_int(MAX_BATCH, "batch"), default=64, help="rows n of X")
    p.add_argument("--embed", type=bounded_int(MAX_WIDTH, "width"), default=1024, help="input width e / d_model")
    p.add_argument("--hidden", type=bounded_int(MAX_WIDTH, "width"), default=None,
                   help="output width h (default e); for block, the MLP width (default 4e)")
    p.add_argument("--rank", type=bounded_int(MAX_WIDTH, "rank"), default=4, help="LoRA rank r")
    p.add_argument("--targets", default=None,
                   help="adapted matrices, e.g. q,k (attention default q,k; block default q,v)")
    p.add_argument("--dtype", choices=tuple(DTYPE_BYTES), default="float32", help="tensor dtype")
    p.add_argument("--input-grad", action="store_true",
                   help="the layer input needs a gradient (a layer deep in a network)")
    p.add_argument("--seq", type=bounded_int(MAX_SEQ, "sequence length"), default=None,
                   help="block: tokens per sequence")
    p.add_argument("--heads", type=positive_int, default=None, help="block: attention heads")
    p.add_argument("--kv-heads", type=positive_int, default=None, help="block: kv heads (GQA)")
    p.add_argument("--mlp", choices=MLPS, default="gelu", help="block: MLP kind")
    p.add_argument("--norm", choices=NORMS, default="layernorm", help="block: normalisation")
    p.add_argument("--bias", action="store_true", help="block/linear: projections have biases")
    p.add_argument("--causal", action="store_true", help="block: causal attention mask")
    p.add_argument("--hardware", type=path_arg, default=None,
                   help="preset name or measured profile JSON: adds roofline times")
    p.add_argument("--crossover", action="store_true",
                   help="solve the width d* (e = h = d) where LoRA becomes faster (needs --hardware)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_debug_flag(p)
    return p


def _top_parser() -> OneLineArgumentParser:
    """Only for ``python -m costmodel --help``: the subcommands and the shorthand."""
    p = OneLineArgumentParser(
        prog=PROG, description="Analytical cost of LoRA vs full training: one layer or a whole model.",
        epilog="Shorthand: flags without a subcommand pick one (any flag only `model` knows, such as "
               "--model, --list or --precision, means `model`; otherwise `layer`).")
    sub = p.add_subparsers(dest="command", metavar="{layer,model}")
    sub.add_parser("layer", help="per-op FLOPs, bytes, kernels and roofline time of one layer "
                                 "(python -m costmodel layer --help)")
    sub.add_parser("model", help="time and memory of a whole model's training step "
                                 "(python -m costmodel model --help)")
    add_debug_flag(p)
    return p


def _option_names(parser: OneLineArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _pick(argv: list[str]) -> tuple[str, list[str]]:
    """(subcommand, its argv): the first word, or for flags alone, `model` when any flag is one
    only the model parser knows."""
    if argv and argv[0] in SUBCOMMANDS:
        return argv[0], argv[1:]
    from costmodel import cli_model

    model_only = _option_names(cli_model._parser()) - _option_names(_parser())
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return ("model" if flags & model_only else "layer"), argv


def _config(args, method: str) -> LayerConfig:
    shape = dict(batch=args.batch, embed=args.embed, hidden=args.hidden,
                 rank=args.rank, targets=args.targets, input_requires_grad=args.input_grad,
                 dtype=args.dtype, mlp=args.mlp, norm=args.norm, bias=args.bias,
                 causal=args.causal)
    if args.hidden is None and args.layer != "block":
        shape["hidden"] = args.embed
    for name in ("seq", "heads", "kv_heads"):
        if getattr(args, name) is not None:
            if args.layer != "block":
                raise UserError(f"--{name.replace('_', '-')} applies to --layer block only")
            shape[name] = getattr(args, name)
    return LayerConfig(args.layer, method, **shape)


def resolve_profile(name: str) -> HardwareProfile:
    """A hardware preset by name, or a measured profile JSON by path."""
    from costmodel.presets_hardware import resolve_hardware

    return resolve_hardware(name)


def method_record(cfg: LayerConfig, cost: Cost, rt: RooflineTime | None) -> dict:
    """One method's numbers as plain JSON-ready values."""
    rec: dict[str, Any] = {
        "method": cfg.method,
        "flops": float(cost.flops),
        "bytes": float(cost.bytes_moved),
        "kernels": int(cost.kernels),
        "transcendentals": float(cost.transcendentals),
        "trainable_params": int(cost.trainable_params),
        "saved_activation_bytes": float(cost.saved_bytes),
        "forward_flops": float(cost.phase_total("flops", "forward")),
        "backward_flops": float(cost.phase_total("flops", "backward")),
        "ops": cost.table(),
    }
    if rt is not None:
        rec["time"] = {k: float(getattr(rt, k)) for k in
                       ("time_s", "lower_bound_s", "upper_bound_s", "t_math_s", "t_mem_s", "t_overhead_s")}
        for row, t in zip(rec["ops"], rt.op_time_s):
            row["time_s"] = float(t)
    return rec


def _config_record(cfg: LayerConfig) -> dict:
    out: dict[str, Any] = {"layer": cfg.layer, "targets": list(cfg.targets or ()),
           "input_requires_grad": cfg.input_requires_grad, "dtype": cfg.dtype}
    for name in ("batch", "embed", "hidden", "seq", "heads", "kv_heads"):
        out[name] = int(getattr(cfg, name))
    if cfg.layer == "block":
        out.update(mlp=cfg.mlp, norm=cfg.norm, bias=cfg.bias, causal=cfg.causal)
    return out


def _format_table(rec: dict) -> str:
    has_time = "time" in rec
    def num(x: float) -> str:  # fixed point while it fits a column, engineering beyond
        return f"{x:.3f}" if abs(x) < 1e7 else eng(x, 4)

    cols = [(num(r["flops"] / 1e6), num(r["bytes"] / 1e6), f"{int(r['kernels'])}",
             num(r["time_s"] * 1e6) if has_time else "") for r in rec["ops"]]
    wf, wb, wk, wt = (max([len(title), *(len(c[i]) for c in cols)])
                      for i, title in enumerate(("MFLOP", "MB", "kern", "time µs")))
    head = f"{'op':34s} {'phase':8s} {'kind':11s} {'MFLOP':>{wf}s} {'MB':>{wb}s} {'kern':>{wk}s}"
    head += f" {'time µs':>{wt}s}" if has_time else ""
    lines = [head, "-" * len(head)]
    for r, (f, b, k, t) in zip(rec["ops"], cols):
        line = f"{r['op'][:34]:34s} {r['phase']:8s} {r['kind']:11s} {f:>{wf}s} {b:>{wb}s} {k:>{wk}s}"
        lines.append(line + (f" {t:>{wt}s}" if has_time else ""))
    lines.append(f"total: {count(rec['flops'])} FLOPs, {count(rec['bytes'])} bytes, "
                 f"{count(rec['kernels'])} kernels, {count(rec['trainable_params'])} trainable params, "
                 f"{count(rec['saved_activation_bytes'])} bytes of saved activations")
    if has_time:
        t = rec["time"]
        lines.append(f"roofline: {t['time_s'] * 1e6:.2f} µs (bounds {t['lower_bound_s'] * 1e6:.2f} – "
                     f"{t['upper_bound_s'] * 1e6:.2f} µs; math {t['t_math_s'] * 1e6:.2f}, "
                     f"memory {t['t_mem_s'] * 1e6:.2f}, overhead {t['t_overhead_s'] * 1e6:.2f})")
    return "\n".join(lines)


def _body(args) -> int:
    profile = resolve_profile(args.hardware) if args.hardware else None
    if args.crossover and profile is None:
        raise UserError("--crossover needs --hardware (a preset name or a measured profile JSON)")
    records: dict[str, dict[str, Any]] = {}
    for method in args.method:
        cfg = _config(args, method)
        cost = build(cfg)
        rt = roofline(cost, profile, args.dtype) if profile else None
        records[method] = method_record(cfg, cost, rt)
    out: dict = {"config": _config_record(cfg)}
    if profile is not None:
        out["hardware"] = profile.name
        if "full" in records and "lora" in records:
            out["speedup"] = records["full"]["time"]["time_s"] / records["lora"]["time"]["time_s"]
    if args.crossover:
        assert profile is not None  # checked above
        extra: dict[str, Any] = {}
        if args.layer == "block":
            extra = {k: getattr(cfg, k) for k in ("seq", "heads", "kv_heads")}
        extra.update(targets=cfg.targets, input_requires_grad=cfg.input_requires_grad)
        c = crossover(args.layer, profile, batch=args.batch, rank=args.rank, dtype=args.dtype, **extra)
        out["crossover"] = {"d_star": c.d_star, "d_min": c.d_min, "d_max": c.d_max,
                            "lora_faster_everywhere": c.lora_faster_everywhere,
                            "limit_speedup": c.limit_speedup, "summary": c.describe()}
    if args.json:
        if len(records) == 1:
            out.update(next(iter(records.values())))
        else:
            out["methods"] = records
        print(json.dumps(out, indent=2, default=_json_default))
        return 0
    c = out["config"]
    print(f"{args.layer}: batch {c['batch']}, e {c['embed']}, h {c['hidden']}, rank {args.rank}, "
          f"targets {','.join(c['targets'])}, {args.dtype}, input grad {'yes' if args.input_grad else 'no'}"
          + (f", hardware {profile.name}" if profile else ""))
    for method, rec in records.items():
        print(f"\n== {method}")
        print(_format_table(rec))
    if "speedup" in out:
        print(f"\nfull/lora roofline time: {out['speedup']:.3f}×")
    if "crossover" in out:
        print(f"crossover along e = h = d: {out['crossover']['summary']}")
    return 0


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0
    command, rest = _pick(argv)
    if command == "model":
        from costmodel import cli_model

        return cli_model.body(rest)
    return _body(_parser().parse_args(rest))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m costmodel [layer|model] ...``; returns the exit status."""
    return run(PROG, _dispatch, argv)


if __name__ == "__main__":
    raise SystemExit(main())
