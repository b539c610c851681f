"""`python -m costmodel --model … --gpus N`: one training step spread over N devices.

    python -m costmodel --model gpt3-175b --hardware v100 --gpus 96 --gpus-per-node 8 \\
        --interconnect nvlink2,ib-hdr --method full,lora --precision fp16-mixed --json
    python -m costmodel --model llama2-70b --gpus 64 --layout dp=4,tp=8,pp=2,zero=1

Without --layout, each method gets the fastest layout (`costmodel.parallel.search.search_layouts`)
that fits the device memory, searched with and without activation recomputation
(--recompute: only with). With --layout, that layout is costed as given. Either way it
reports per method: the layout, step time, tokens/s overall and per device, memory per
device against the capacity, the communication share of the step, the collectives, and the
fewest devices on which the method fits at all. A method that fits on no layout is
reported as not fitting, with how much memory it lacks per device; no speedup is printed
unless both full and lora fit.

The global batch (sequences per optimizer step) is --global-batch, by default --batch ×
--gpus (each device's share of sequences as on one device). Links: --interconnect
INTRA,INTER (one name: the same link for both). A hardware profile JSON that carries fitted
α and B (`costmodel.comm.FIT_COMM_KEYS`) replaces the presets' values.
"""

from __future__ import annotations

import argparse

import numpy as np

from costmodel.cliutil import UserError, csv_list, positive_int
from costmodel.comm import Cluster, Interconnect
from costmodel.hardware import HardwareProfile
from costmodel.optimizer import PRECISIONS
from costmodel.parallel.layouts import parse_layout
from costmodel.parallel.search import LayoutChoice, fewest_gpus, search_layouts
from costmodel.parallel.step import DEFAULT_OVERLAP, parallel_step
from costmodel.presets_interconnect import INTERCONNECTS, resolve_interconnect
from costmodel.presets_models import ModelShape, param_count

#: A DGX A100 node: 8 A100s on NVLink 3 (NVSwitch), 8 single-port 200 Gb/s HDR InfiniBand
#: ConnectX-6 adapters for the cluster network, one per GPU (NVIDIA DGX A100 datasheet,
#: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/nvidia-dgx-a100-datasheet.pdf).
DEFAULT_GPUS_PER_NODE = 8
DEFAULT_INTERCONNECT = ("nvlink3", "ib-hdr")
#: `fewest_gpus` tries device counts up to this many.
FEWEST_LIMIT = 8192


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The many-device flags of the whole-model command."""
    g = p.add_argument_group("many devices (costmodel.parallel)")
    g.add_argument("--gpus", type=positive_int, default=None,
                   help="spread the step over N devices: search the fastest layout that fits (or cost --layout)")
    g.add_argument("--gpus-per-node", type=positive_int, default=DEFAULT_GPUS_PER_NODE,
                   help=f"devices per node (default {DEFAULT_GPUS_PER_NODE})")
    g.add_argument("--nics-per-node", type=positive_int, default=None,
                   help="network ports per node (default one per device)")
    g.add_argument("--interconnect", type=csv_list(tuple(INTERCONNECTS), "interconnect"),
                   default=DEFAULT_INTERCONNECT,
                   help=f"INTRA,INTER links, from {', '.join(INTERCONNECTS)} "
                        f"(default {','.join(DEFAULT_INTERCONNECT)})")
    g.add_argument("--layout", default=None,
                   help="cost this layout instead of searching: dp=…,tp=…,pp=…,zero=…[,micro_batch=…] "
                        "(a missing dimension is 1, zero 0; --gpus defaults to dp·tp·pp)")
    g.add_argument("--global-batch", type=positive_int, default=None,
                   help="sequences per optimizer step (default --batch × --gpus)")
    g.add_argument("--overlap", type=_fraction, default=DEFAULT_OVERLAP,
                   help=f"fraction of data-parallel gradient traffic hidden behind the backward pass "
                        f"(default {DEFAULT_OVERLAP})")
    g.add_argument("--no-fewest", action="store_true",
                   help="skip the search for the fewest devices each method fits on")


def cluster_from_args(args, profile: HardwareProfile) -> Cluster:
    names = list(args.interconnect)
    if len(names) == 1:
        names = names * 2
    if len(names) != 2:
        raise UserError(f"--interconnect takes INTRA,INTER (two names), got {len(names)}")
    intra, inter = (resolve_interconnect(n) for n in names)
    cluster = Cluster(args.gpus_per_node, intra, inter, args.nics_per_node)
    return cluster.with_fitted(profile.extra)


def _options(args, seq: int) -> dict:
    """`StepSpec` options from the whole-model flags (batch and frozen prefix excluded)."""
    opts = {"seq": seq, "rank": args.rank, "targets": args.targets, "dropout": args.dropout,
            "precision": args.precision, "optimizer": args.optimizer, "clip_grad": not args.no_clip}
    # whole-model options; parallel_step refuses those it does not model across devices
    for name in ("attention", "optimizer_impl", "head", "grad_accum", "optimizer_in_backward"):
        if getattr(args, name, None) is not None:
            opts[name] = getattr(args, name)
    return opts


def _f(x) -> float:
    return float(np.asarray(x, dtype=float).reshape(()))


def _link(link: Interconnect) -> dict:
    return {"name": link.name, "bandwidth_bytes_per_s": link.bandwidth_bytes_per_s,
            "latency_s": link.latency_s, "measured": link.measured, "source": link.source}


def _record(choice: LayoutChoice, fewest: int | None, skip_fewest: bool) -> dict:
    s = choice.step
    rec = {
        "fits": choice.fits,
        "layout_choice": choice.chosen_as,
        "lacks_bytes": choice.lacks_bytes,
        "layout": s.layout.as_dict(),
        "recompute": choice.recompute,
        "step_time_s": _f(s.step_time_s),
        "tokens_per_s": _f(s.tokens_per_s),
        "tokens_per_s_per_device": _f(s.tokens_per_s_per_device),
        "comm_share": _f(s.comm_share),
        "time": {k: _f(getattr(s, k)) for k in ("pipeline_s", "bubble_fraction", "optimizer_s", "tp_comm_s",
                                                 "pp_comm_s", "dp_comm_s", "dp_hidden_s", "other_comm_s")},
        "memory": s.memory.as_dict(),
        "capacity_bytes": s.capacity_bytes,
        "flops_per_device": _f(s.flops),
        "bytes_moved_per_device": _f(s.bytes_moved),
        "kernels_per_device": _f(s.kernels),
        "collectives": [c.as_dict() for c in s.collectives
                        if _f(c.count) > 0 and _f(c.group_size) > 1],
        "candidates": choice.candidates,
    }
    if not skip_fewest:
        rec["fewest_gpus"] = fewest
    return rec


def evaluate(args, shape: ModelShape, profile: HardwareProfile, seq: int) -> dict:
    """Everything the many-device report prints (render apart). Without --gpus the device
    count is --layout's product."""
    cluster = cluster_from_args(args, profile)
    opts = _options(args, seq)
    if args.frozen_prefix:
        raise UserError("--frozen-prefix is not modelled with --gpus")
    layout = None
    gpus = args.gpus
    if args.layout is not None:
        probe = parse_layout(args.layout)
        gpus = gpus or int(probe.gpus)
        probe.check(shape, gpus)
        global_batch = args.global_batch or args.batch * gpus
        layout = parse_layout(args.layout, global_batch)
        layout.check(shape, gpus)
    global_batch = args.global_batch or args.batch * gpus
    out: dict = {
        "model": {"name": shape.name, "params": param_count(shape),
                  **{f: getattr(shape, f) for f in ("d_model", "layers", "heads", "kv_heads", "ffn", "vocab")}},
        "hardware": {"name": profile.name, "source": profile.source, "measured": profile.measured},
        "config": {"precision": args.precision, "optimizer": args.optimizer, "rank": args.rank,
                   "targets": args.targets, "dropout": args.dropout, "clip_grad": not args.no_clip},
        "cluster": {"gpus": gpus, "gpus_per_node": cluster.gpus_per_node,
                    "nics_per_node": cluster.nics_per_node or cluster.gpus_per_node,
                    "intra": _link(cluster.intra), "inter": _link(cluster.inter), "overlap": args.overlap},
        "parallel_config": {"global_batch": global_batch, "seq": seq, "tokens_per_step": global_batch * seq,
                            "layout": "given" if layout is not None else "searched",
                            "recompute": "on" if args.recompute else ("searched" if layout is None else "off"),
                            "fewest_gpus_limit": None if args.no_fewest else FEWEST_LIMIT},
        "methods": {},
    }
    for method in args.method:
        if layout is not None:
            step = parallel_step(shape, method, layout, cluster, profile, args.overlap,
                                 recompute=args.recompute, **opts)
            choice = LayoutChoice(method, gpus, step, args.recompute, "given", 1)
        else:
            choice = search_layouts(shape, method, gpus, cluster, profile, global_batch, args.overlap,
                                    recompute=(True,) if args.recompute else (False, True), **opts)
        fewest = None
        if not args.no_fewest:
            fewest = fewest_gpus(shape, method, cluster, profile, global_batch, FEWEST_LIMIT, **opts)
        out["methods"][method] = _record(choice, fewest, args.no_fewest)
        out["time_basis"] = choice.step.time_basis
    add_peak_note(out, profile, PRECISIONS[args.precision].compute_dtype)
    if "memory_bytes" not in profile.extra:
        out.setdefault("notes", []).append(f"{profile.name} gives no memory capacity: every layout counts as fitting")
    compare_methods(out, profile)
    return out


def add_peak_note(out: dict, profile: HardwareProfile, compute_dtype: str) -> None:
    """A note in ``out["notes"]`` when the profile lists no peak for `compute_dtype` (its other
    16-bit type's peak is used)."""
    if compute_dtype not in profile.peak_flops_per_s:
        out.setdefault("notes", []).append(
            f"{profile.name} lists no {compute_dtype} peak; {profile.peak(compute_dtype) / 1e12:g} TFLOP/s of "
            f"its other 16-bit type is used")


def compare_methods(out: dict, profile: HardwareProfile) -> None:
    """The verdict fields of a whole-model JSON whose ``methods`` carry ``fits`` and
    ``step_time_s``: ``capacity_bytes``, ``does_not_fit`` (methods whose ``fits`` is False;
    None, an unknown capacity, counts as fitting), and with full and lora ``speedup`` =
    t_full / t_lora, or None with a ``speedup_note`` when either does not fit (a step that does
    not fit the device does not run)."""
    methods = out["methods"]
    out["capacity_bytes"] = profile.extra.get("memory_bytes")
    out["does_not_fit"] = [m for m, r in methods.items() if r["fits"] is False]
    if "full" in methods and "lora" in methods:
        missing = [m for m in ("full", "lora") if methods[m]["fits"] is False]
        if missing:
            out["speedup"] = None
            out["speedup_note"] = "no speedup: " + ", ".join(f"{m} does not fit" for m in missing)
        else:
            out["speedup"] = methods["full"]["step_time_s"] / methods["lora"]["step_time_s"]


#: `LayoutChoice.chosen_as` for people.
_CHOSEN_AS_TEXT = {"given": "given", "fastest_fitting": "fastest that fits", "least_memory": "least memory (none fits)"}


def _gb(x: float) -> str:
    return f"{x / 1e9:,.2f} GB"


def render(out: dict) -> str:
    c, pc, m, cf = out["cluster"], out["parallel_config"], out["model"], out["config"]
    adapters = f", rank {cf['rank']} on {cf['targets']}" if set(out["methods"]) - {"full"} else ""
    lines = [(f"{m['name']}: {m['params']:,} params, d {m['d_model']}, {m['layers']} layers, {m['heads']} heads "
              f"({m['kv_heads']} kv), ffn {m['ffn']}, vocab {m['vocab']}"),
             f"{cf['precision']}, {cf['optimizer']}{adapters}; hardware {out['hardware']['name']}"]
    lines.append(f"devices: {c['gpus']} ({c['gpus_per_node']} per node, {c['nics_per_node']} NICs per node); "
                 f"intra-node {c['intra']['name']} {c['intra']['bandwidth_bytes_per_s'] / 1e9:g} GB/s "
                 f"α {c['intra']['latency_s'] * 1e6:g} µs, inter-node {c['inter']['name']} "
                 f"{c['inter']['bandwidth_bytes_per_s'] / 1e9:g} GB/s α {c['inter']['latency_s'] * 1e6:g} µs; "
                 f"dp overlap {c['overlap']:g}")
    lines.append(f"global batch {pc['global_batch']} × seq {pc['seq']} = {pc['tokens_per_step']:,} tokens per step; "
                 f"layout {pc['layout']}, recompute {pc['recompute']}")
    lines.append(f"times: {out['time_basis']}")
    lines += [f"note: {n}" for n in out.get("notes", [])]
    lines.append("")
    names = list(out["methods"])

    def lay(r):
        d = r["layout"]
        return f"dp{d['dp']}·tp{d['tp']}·pp{d['pp']} z{d['zero']}"

    rows = [
        ("fits", lambda r: "yes" if r["fits"] else f"no (lacks {_gb(r['lacks_bytes'])})"),
        ("layout", lay),
        ("  chosen as", lambda r: _CHOSEN_AS_TEXT[r["layout_choice"]]),
        ("micro-batch × count", lambda r: f"{r['layout']['micro_batch']} × {r['layout']['n_micro']}"),
        ("recompute", lambda r: "yes" if r["recompute"] else "no"),
        ("step time", lambda r: f"{r['step_time_s']:,.3f} s"),
        ("tokens/s", lambda r: f"{r['tokens_per_s']:,.0f}"),
        ("tokens/s per device", lambda r: f"{r['tokens_per_s_per_device']:,.1f}"),
        ("memory per device", lambda r: _gb(r["memory"]["total_bytes"])),
        ("  model states", lambda r: _gb(r["memory"]["model_state_bytes"])),
        ("  activations", lambda r: _gb(r["memory"]["activations_bytes"])),
        ("capacity", lambda r: _gb(r["capacity_bytes"]) if r["capacity_bytes"] else "unknown"),
        ("TFLOP per device per step", lambda r: f"{r['flops_per_device'] / 1e12:,.1f}"),
        ("kernels per device", lambda r: f"{r['kernels_per_device']:,.0f}"),
        ("communication share", lambda r: f"{100 * r['comm_share']:.1f}%"),
        ("pipeline bubble", lambda r: f"{100 * r['time']['bubble_fraction']:.1f}%"),
    ]
    if all("fewest_gpus" in out["methods"][n] for n in names):
        rows.append(("fewest devices that fit",
                     lambda r: str(r["fewest_gpus"]) if r["fewest_gpus"] else f"> {FEWEST_LIMIT}"))
    width = max(28, *(len(n) + 2 for n in names))
    lines.append(f"{'':26s}" + "".join(f"{n:>{width}s}" for n in names))
    for label, fmt in rows:
        lines.append(f"{label:26s}" + "".join(f"{fmt(out['methods'][n]):>{width}s}" for n in names))
    if out.get("speedup"):
        lines += ["", f"speedup (full / lora step time): {out['speedup']:.3f}×"]
    elif "speedup_note" in out:
        lines += ["", out["speedup_note"]]
    return "\n".join(lines)
