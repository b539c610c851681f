"""Fit and validate communication: α-β per collective, then predict sharded training steps.

    python -m analysis.comm --data results/            # collectives.csv and sharded.csv
    python -m analysis.comm --data results/ --json

The fits live in `analysis.comm_fit` (α-β per collective and group size, across group sizes,
one link for all), the held-out validation and the sharded-step prediction in
`analysis.comm_predict`. This module turns their results into the text report, the JSON, the
comm_*.csv tables and the fitted profile, and is the command line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from analysis.comm_fit import usable
from analysis.comm_predict import TARGET_REL_ERROR, CommAnalysis, analyse
from costmodel.cliutil import OneLineArgumentParser, UserError, add_debug_flag, one_line, run
from costmodel.fileio import atomic_write_text


def profile_entries(a: CommAnalysis) -> dict[str, Any]:
    """The fitted α, β for `fitted_profile.json`: the link (FIT_COMM_KEYS), per collective and group size."""
    if a.fit is None:
        return {}
    out: dict[str, Any] = {}
    if a.fit.link is not None and math.isfinite(a.fit.link.bandwidth_bytes_per_s) and a.fit.link.alpha_s >= 0:
        from costmodel.comm import FIT_COMM_KEYS

        # the host devices of this machine are one node's devices: its intra-node link
        a_key, b_key = FIT_COMM_KEYS["intra"]
        out[a_key] = a.fit.link.alpha_s
        out[b_key] = a.fit.link.bandwidth_bytes_per_s
    return {**out,
        "source": "analysis.comm: WLS of measure.collectives timings on this machine",
        "alpha_beta": [
            {"collective": ab.collective, "devices": ab.devices, "alpha_s": ab.alpha_s,
             "beta_s_per_byte": ab.beta_s_per_byte,
             "bus_bandwidth_bytes_per_s": ab.bus_bandwidth_bytes_per_s}
            for ab in a.fit.per_group.values()
        ],
        "cross_group": [
            {"collective": cg.collective, "t0_s": cg.t0_s, "step_s": cg.step_s,
             "b_s_per_byte": cg.b_s_per_byte, "devices": list(cg.devices)}
            for cg in a.fit.cross.values()
        ],
    }


def to_json(a: CommAnalysis) -> dict[str, Any]:
    def records(df: pd.DataFrame) -> list[dict[str, Any]]:
        return json.loads(df.to_json(orient="records")) if len(df) else []

    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in a.summary.items()}
    return {"summary": summary, "alpha_beta": records(a.fit.table()) if a.fit else [],
            "validation": records(a.validation), "sharded": records(a.sharded),
            "ratios": records(a.ratios)}


def text_report(a: CommAnalysis) -> str:
    lines = ["Communication (analysis.comm)"]
    if a.fit is not None:
        t = a.fit.table()
        if a.fit.dtype is not None:
            left = f"; left out, never pooled: {', '.join(a.fit.dtypes_left_out)}" if a.fit.dtypes_left_out else ""
            lines.append(f"  collectives fitted on {a.fit.dtype}{left}")
        for _, r in t.sort_values(["collective", "devices"]).iterrows():
            lines.append(
                f"  {r['collective']:<15} p={r['devices']}: α = {r['alpha_s'] * 1e6:.1f} µs "
                f"[{r['alpha_ci_low_s'] * 1e6:.1f}, {r['alpha_ci_high_s'] * 1e6:.1f}], "
                f"bus bandwidth {r['bus_bandwidth_gb_per_s']:.2f} GB/s")
    if a.fit is not None and a.fit.link is not None:
        lk = a.fit.link
        lines.append(f"  one link for all (costmodel.comm's form t = α·s(p) + f(p)·V/B): α = "
                     f"{lk.alpha_s * 1e6:.1f} µs per step, B = {lk.bandwidth_bytes_per_s / 1e9:.2f} GB/s "
                     f"(median |error| {100 * lk.median_rel_error:.1f}% over {lk.n} points)")
    s = a.summary
    if "collective_heldout_size_median_rel_error" in s:
        lines.append(f"  held-out message sizes: median |error| "
                     f"{100 * s['collective_heldout_size_median_rel_error']:.1f}%")
    if "collective_heldout_devices_median_rel_error" in s:
        lines.append(f"  held-out device counts: median |error| "
                     f"{100 * s['collective_heldout_devices_median_rel_error']:.1f}%")
    if len(a.sharded):
        for _, r in a.sharded.sort_values(["dp", "tp", "method"]).iterrows():
            lines.append(
                f"  {r['method']:<5} dp={r['dp']},tp={r['tp']} ({r['processes']} proc): measured "
                f"{r['time_s'] * 1e3:.2f} ms, predicted {r['predicted_s'] * 1e3:.2f} ms "
                f"(compute {r['compute_only_s'] * 1e3:.2f} + comm {r['comm_predicted_s'] * 1e3:.2f})")
        lines.append(
            f"  sharded steps ({', '.join(s['sharded_layouts'])}): median |error| "
            f"{100 * s['sharded_step_median_rel_error']:.1f}% "
            f"(compute-only {100 * s['sharded_step_compute_only_median_rel_error']:.1f}%)")
        if math.isfinite(s.get("sharded_step_concurrent_median_rel_error", math.nan)):
            lines.append(
                f"  diagnostic, compute measured with all devices busy (concurrent) + comm: "
                f"{100 * s['sharded_step_concurrent_median_rel_error']:.1f}% "
                f"(concurrent alone {100 * s['sharded_step_concurrent_only_median_rel_error']:.1f}%)")
        if "lora_full_ratio_median_rel_error" in s:
            lines.append(
                f"  LoRA/full ratio: median |error| {100 * s['lora_full_ratio_median_rel_error']:.1f}% "
                f"(compute-only {100 * s['lora_full_ratio_compute_only_median_rel_error']:.1f}%)")
        lines.append(f"  target (both <= {100 * TARGET_REL_ERROR:.0f}% and better than compute-only): "
                     + ("met" if s.get("meets_target") else "NOT met"))
    return "\n".join(lines)


def load(folder: str | os.PathLike) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    from measure import comm_store

    return comm_store.read_table(folder, "collectives"), comm_store.read_table(folder, "sharded")


def has_comm(folder: str | os.PathLike) -> bool:
    from measure import comm_store

    return os.path.isdir(folder) and any(
        comm_store.files(folder, t)[1].exists() for t in ("collectives", "sharded"))


def from_folder(folder: str | os.PathLike | None) -> CommAnalysis | None:
    """The analysis of a folder's communication tables, None if it holds no collectives.csv
    (the hook `analysis.crossover` calls: a new section when the dataset has them)."""
    if folder is None or not has_comm(folder):
        return None
    coll, sharded = load(folder)
    if coll is None or not len(usable(coll)):
        return None
    return analyse(coll, sharded)


def _with_comm(prof: dict[str, Any], entries: dict[str, Any]) -> dict[str, Any]:
    """`prof` (a device profile dict) with the link's α, B under FIT_COMM_KEYS in ``extra``
    (numbers only: `HardwareProfile` reads them) and the per-collective fits under the
    top-level ``comm_fits`` (which `HardwareProfile` ignores)."""
    from costmodel.comm import FIT_COMM_KEYS

    entries = dict(entries)
    extra = prof.setdefault("extra", {})
    for keys in FIT_COMM_KEYS.values():  # scalars beside the rates, as costmodel reads them
        for k in keys:
            if k in entries:
                extra[k] = entries.pop(k)
    prof["comm_fits"] = entries
    return prof


def write(a: CommAnalysis, out: str, profile: str | None = None) -> list[str]:
    """comm_alpha_beta.csv, comm_validation.csv, comm_sharded.csv, comm_ratios.csv, and the
    fitted α, B: added to ``<out>/fitted_profile.json`` when the kernel analysis wrote one,
    else to a copy of the device profile `profile` written there, else ``comm_profile.json``."""
    os.makedirs(out, exist_ok=True)
    written = []
    tables = {"comm_alpha_beta.csv": a.fit.table() if a.fit else pd.DataFrame(),
              "comm_validation.csv": a.validation, "comm_sharded.csv": a.sharded,
              "comm_ratios.csv": a.ratios}
    for name, df in tables.items():
        if len(df):
            atomic_write_text(os.path.join(out, name), df.to_csv(index=False))
            written.append(name)
    entries = profile_entries(a)
    if not entries:
        return written
    path = os.path.join(out, "fitted_profile.json")
    source = path if os.path.isfile(path) else profile
    if source is not None:
        with open(source, encoding="utf-8") as fh:
            prof = json.load(fh)
        atomic_write_text(path, json.dumps(_with_comm(prof, entries), indent=2) + "\n")
        written.append("fitted_profile.json")
    else:
        atomic_write_text(os.path.join(out, "comm_profile.json"),
                          json.dumps(_with_comm({}, entries), indent=2) + "\n")
        written.append("comm_profile.json")
    return written


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(prog="python -m analysis.comm", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True,
                   help="folder with collectives.csv (python -m measure.collectives) and/or "
                        "sharded.csv (python -m measure.sharded)")
    p.add_argument("--out", help="write the comm_*.csv tables here (default: print only)")
    p.add_argument("--profile",
                   help="a device profile JSON (python -m measure.device): with --out, written "
                        "there as fitted_profile.json with the fitted link α, B, usable as "
                        "python -m costmodel --hardware")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_debug_flag(p)
    return p


PROG = "python -m analysis.comm"


def main(argv: Sequence[str] | None = None) -> int:
    return run(PROG, _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.data):
        raise UserError(f"--data {args.data} is not a folder")
    coll, sharded = load(args.data)
    if coll is None:
        raise UserError(f"{args.data} holds no collectives.csv (python -m measure.collectives --out {args.data})")
    if not len(usable(coll)):
        raise UserError(f"{args.data}/collectives.csv holds no successful measurement")
    if args.profile:
        from costmodel.hardware import HardwareProfile

        try:
            HardwareProfile.from_json(args.profile)
        except (OSError, ValueError) as exc:
            raise UserError(f"--profile {args.profile}: {one_line(exc)}") from None
        if not args.out:
            raise UserError("--profile needs --out (where fitted_profile.json goes)")
    a = analyse(coll, sharded)
    if args.out:
        write(a, args.out, args.profile)
    if args.json:
        print(json.dumps(to_json(a), indent=1))
    else:
        print(text_report(a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
