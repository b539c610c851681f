"""The main job: measure (or load) timings, fit the overhead factors, validate, find the
LoRA/full crossover with bootstrap intervals, extrapolate to GPT-scale widths, report.

    python -m analysis.crossover                      # quick grid into ./crossover-results/
    python -m analysis.crossover --data results/      # a finished sweep directory
    python -m analysis.crossover --data results_gpu.csv --out blog-report   # the blog's file
    python -m analysis.crossover --json --no-plots    # one JSON object on stdout

Bad input (a missing, empty or foreign file; too few configs; mixed devices; an unknown
width or grid) prints one line and exits 2, before anything is written to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from analysis import data
from analysis.bootstrap import N_BOOT
from analysis.curves import GPT_WIDTHS
from costmodel import cliutil
from costmodel.cliutil import OneLineArgumentParser, UserError, add_debug_flag

PROG = "python -m analysis.crossover"
DEFAULT_RESULTS = "crossover-results"
GRIDS = ("quick", "seed", "square")  # measure.grids.GRIDS, listed here so --help needs no import


def width_list(text: str) -> tuple[int, ...]:
    """'768,1024' -> (768, 1024); each a whole number >= 1."""
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            w = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"unknown width {part!r}: widths are whole numbers") from None
        if w < 1:
            raise argparse.ArgumentTypeError(f"unknown width {w}: widths must be >= 1")
        out.append(w)
    if not out:
        raise argparse.ArgumentTypeError("--widths is empty")
    return tuple(sorted(set(out)))


def grid_name(text: str) -> str:
    if text not in GRIDS:
        raise argparse.ArgumentTypeError(f"unknown grid {text!r}; choose one of {', '.join(GRIDS)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="our sweep directory or CSV/JSONL, or the blog's results CSV "
                                  "(default: measure --grid into ./crossover-results/)")
    p.add_argument("--grid", type=grid_name, default="quick",
                   help="grid to measure when --data is not given (default quick)")
    p.add_argument("--out", default=None,
                   help="where the report, tables and figures go (default: the measured "
                        f"results directory, or ./{DEFAULT_RESULTS}/ with --data)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--widths", type=width_list, default=GPT_WIDTHS,
                   help="extrapolation widths, comma-separated (default "
                        + ",".join(map(str, GPT_WIDTHS)) + ")")
    p.add_argument("--profile", help="a device profile JSON (python -m measure.device); default: "
                                     "the dataset directory's profile.json, else measured now")
    p.add_argument("--bootstrap", type=int, default=N_BOOT,
                   help=f"bootstrap refits (default {N_BOOT})")
    p.add_argument("--model", help="add the predicted LoRA/full step time and memory of whole "
                                   "models across the presets, this one marked (a preset name, or 'all')")
    p.add_argument("--hardware", help="hardware for the whole-model table: a preset name or a profile JSON")
    p.add_argument("--layer-fit", default=None,
                   help="for a models dataset (python -m measure.sweep --grid models): the "
                        "fitted_profile.json of a layer-kernel analysis whose rates predict the whole "
                        "steps (default: ./crossover-results/fitted_profile.json, made by measuring "
                        "and analysing the quick grid when absent)")
    add_debug_flag(p)
    return p


def _check_out(out: str) -> None:
    """Fail before any work if --out cannot be a directory we can write; create nothing."""
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UserError(f"--out {out!r} exists and is not a directory")
        if not os.access(out, os.W_OK):
            raise UserError(f"--out {out!r} is not writable")
        return
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UserError(f"--out {out!r} cannot be created under {parent!r}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sweep_complete(path: str) -> bool:
    try:
        with open(os.path.join(path, "run.json"), encoding="utf-8") as fh:
            return json.load(fh).get("status") == "complete"
    except (OSError, json.JSONDecodeError):
        return False


def measure_grid(grid: str, path: str) -> None:
    """Run `python -m measure.sweep --grid GRID --out PATH` unless a finished one is there
    (an unfinished one resumes). The sweep's output goes to stderr, keeping stdout clean."""
    if _sweep_complete(path):
        _log(f"reusing the finished {grid} sweep in {path}")
        return
    _log(f"measuring the {grid} grid into {path} (python -m measure.sweep)")
    cmd = [sys.executable, "-m", "measure.sweep", "--grid", grid, "--out", path]
    rc = subprocess.call(cmd, stdout=sys.stderr)
    if rc != 0:
        raise UserError(f"the {grid} sweep failed (python -m measure.sweep exited {rc})")


def measure_profile(path: str) -> bool:
    """Run `python -m measure.device --out PATH`; False when it is unavailable or fails."""
    _log(f"measuring a device profile into {path} (python -m measure.device)")
    cmd = [sys.executable, "-m", "measure.device", "--out", path]
    try:
        rc = subprocess.call(cmd, stdout=sys.stderr)
    except OSError:
        return False
    return rc == 0 and os.path.isfile(path)


def resolve_profile(args, dataset: data.Dataset, out: str):
    """(profile or None, a note saying where it came from)."""
    from costmodel.hardware import HardwareProfile

    def load(path: str, how: str):
        try:
            return HardwareProfile.from_json(path), f"{how} {path}"
        except ValueError as exc:
            raise UserError(f"bad device profile: {exc}") from None

    if args.profile:
        return load(args.profile, "given")
    if dataset.profile_path:
        return load(dataset.profile_path, "the dataset's")
    if dataset.kind == "sweep":
        target = os.path.join(out, "profile.json")
        if os.path.isfile(target):
            profile, note = load(target, "measured earlier,")
        else:
            os.makedirs(out, exist_ok=True)
            if not measure_profile(target):
                return None, ("none (measure.device unavailable): roofline baseline and "
                              "log-link forms skipped")
            profile, note = load(target, "measured now on this machine,")
        # measure.device names its profile "measured <backend> <device kind>": a profile of
        # this machine says nothing about a dataset measured on another device.
        want = f"measured {_device_of(dataset).replace('/', ' ')}"
        if profile.name != want:
            return None, (f"none: {target} is of '{profile.name[9:]}', the data come from "
                          f"'{want[9:]}' (give --profile); roofline baseline and log-link "
                          "forms skipped")
        return profile, note
    return None, (f"none for a {dataset.kind} table of device {_device_of(dataset)}: "
                  "roofline baseline and log-link form skipped (give --profile)")


def _device_of(dataset: data.Dataset) -> str:
    f = dataset.frame
    return ", ".join(sorted(set(f["backend"].astype(str) + "/" + f["device_kind"].astype(str))))


def run(args) -> int:
    t0 = time.perf_counter()
    if args.bootstrap < 20:
        raise UserError(f"--bootstrap {args.bootstrap} is too few; use at least 20")
    if args.data:
        out = args.out or DEFAULT_RESULTS
        _check_out(out)
        dataset = data.load(args.data)
    else:
        path = DEFAULT_RESULTS if args.grid == "quick" else f"{DEFAULT_RESULTS}-{args.grid}"
        out = args.out or path
        _check_out(out)
        _check_out(path)
        measure_grid(args.grid, path)
        dataset = data.load(path)
    from analysis import wholemodel_report

    if wholemodel_report.is_models(dataset.frame):
        # whole training steps: the three-route validation instead of the layer fit
        profile, note = resolve_profile(args, dataset, out)
        return wholemodel_report.run(args, dataset, out, profile, note)
    if args.layer_fit:
        raise UserError("--layer-fit applies to a models dataset (python -m measure.sweep --grid models)")
    # Fail on the data before writing anything (a profile measurement writes into --out).
    data.select(dataset, _min_configs())
    extras_fn = None
    if args.model or args.hardware:
        from analysis import presets
        extras_fn = presets.prepare(args.model, args.hardware)
    profile, note = resolve_profile(args, dataset, out)

    from analysis import pipeline, report

    t_fit = time.perf_counter()
    result = pipeline.run(dataset, profile, note, widths=args.widths, n_boot=args.bootstrap)
    if extras_fn is not None:
        result.extras.update(extras_fn(result))
    os.makedirs(out, exist_ok=True)
    figures: list[str] = []
    if not args.no_plots:
        from analysis import plots

        figures = plots.all_figures(result, out)
        if extras_fn is not None:
            figures += plots.model_figures(result, out)
    files = report.write_files(result, out, figures)
    from analysis import (
        comm,  # collectives and sharded steps, when the folder holds them
    )

    comm_result = comm.from_folder(args.data or path)
    if comm_result is not None:
        files += comm.write(comm_result, out)
    elapsed = time.perf_counter() - t0
    _log(f"analysis took {time.perf_counter() - t_fit:.1f} s ({elapsed:.1f} s in all)")
    if args.json:
        payload = report.to_json(result)
        if comm_result is not None:
            payload["communication"] = comm.to_json(comm_result)
        print(json.dumps(payload, indent=1, allow_nan=False))
    else:
        print(report.stdout_report(result, files, out))
        if comm_result is not None:
            print("\n" + comm.text_report(comm_result))
    return 0


def _min_configs() -> int:
    from analysis.fit import MIN_CONFIGS

    return MIN_CONFIGS


def main(argv: Sequence[str] | None = None) -> int:
    """The analysis under the shared runner: one-line errors (exit 2), 130/143 on a signal."""
    return cliutil.run(PROG, lambda args: run(build_parser().parse_args(args)), argv)


if __name__ == "__main__":
    raise SystemExit(main())
