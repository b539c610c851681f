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
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from analysis import data
from analysis.bootstrap import MAX_BOOT, N_BOOT
from analysis.curves import GPT_WIDTHS
from costmodel import cliutil
from costmodel.cliutil import OneLineArgumentParser, UserError, add_debug_flag
from costmodel.errors import Interrupted
from costmodel.layers import MAX_WIDTH
from measure.vocab import GRIDS

PROG = "python -m analysis.crossover"
DEFAULT_RESULTS = "crossover-results"


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
        if w > MAX_WIDTH:
            raise argparse.ArgumentTypeError(
                f"width {w:,} is above {MAX_WIDTH:.0e}, beyond any real layer")
        out.append(w)
    if not out:
        raise argparse.ArgumentTypeError("--widths is empty")
    return tuple(sorted(set(out)))


def bootstrap_count(text: str) -> int:
    """An argparse `type=` for --bootstrap: a whole number from 20 to MAX_BOOT."""
    n = cliutil.positive_int(text)
    if n < 20:
        raise argparse.ArgumentTypeError(f"{n} is too few; use at least 20")
    if n > MAX_BOOT:
        raise argparse.ArgumentTypeError(
            f"{n:,} is above {MAX_BOOT:,}, past where the interval stops moving")
    return n


def stratum_arg(text: str) -> tuple[tuple[str, str], ...]:
    try:
        return data.parse_stratum(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def grid_name(text: str) -> str:
    if text not in GRIDS:
        raise argparse.ArgumentTypeError(f"unknown grid {text!r}; choose one of {', '.join(GRIDS)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=cliutil.path_arg, help="our sweep directory or CSV/JSONL, or the blog's results CSV "
                                  "(default: measure --grid into ./crossover-results/)")
    p.add_argument("--grid", type=grid_name, default="quick",
                   help="grid to measure when --data is not given (default quick)")
    p.add_argument("--out", type=cliutil.path_arg, default=None,
                   help="where the report, tables and figures go (default: the measured "
                        f"results directory, or ./{DEFAULT_RESULTS}/ with --data; "
                        f"./{DEFAULT_RESULTS}-models/ for a models dataset)")
    p.add_argument("--stratum", type=stratum_arg, default=(),
                   help="the rows to fit when the data hold several strata, e.g. "
                        "dtype=bfloat16,input_requires_grad=True (columns: "
                        + ", ".join(data.STRATUM_COLUMNS) + "); default float32, no input "
                        "gradient, seq 1, heads 1 if present, else the largest; the others are "
                        "never pooled in, and the report says what was left out")
    p.add_argument("--partial", action="store_true",
                   help="analyse a sweep folder that is not complete (interrupted, partial, "
                        "killed), labelled as such in the report; refused otherwise")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--widths", type=width_list, default=GPT_WIDTHS,
                   help="extrapolation widths, comma-separated (default "
                        + ",".join(map(str, GPT_WIDTHS)) + ")")
    p.add_argument("--profile", type=cliutil.path_arg,
                   help="a device profile JSON (python -m measure.device); default: "
                                     "the dataset directory's profile.json, else measured now")
    p.add_argument("--force", action="store_true",
                   help="use a --profile (or the dataset's profile.json) measured on another "
                        "device, CPU or library versions than the data")
    p.add_argument("--bootstrap", type=bootstrap_count, default=N_BOOT,
                   help=f"bootstrap refits, 20 to {MAX_BOOT:,} (default {N_BOOT}; a progress "
                        "bar on a terminal past a few seconds)")
    p.add_argument("--model", help="add the predicted LoRA/full step time and memory of whole "
                                   "models across the presets, this one marked (a preset name, or 'all')")
    p.add_argument("--hardware", type=cliutil.path_arg,
                   help="hardware for the whole-model table: a preset name or a profile JSON")
    p.add_argument("--layer-fit", type=cliutil.path_arg, default=None,
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


def reusable(grid: str, path: str) -> tuple[bool, str]:
    """Whether `path` holds the whole `grid`, finished: (yes/no, why not).

    The folder's run.json must say "complete", name this grid with the identity (hash of the
    config list, `measure.grids.Grid.identity`) it has now, and count every (config, method)
    pair of it as present. Anything else (a --limit run, another grid, an interrupted or
    running sweep) is resumed by the sweep instead.
    """
    from measure import dataset, grids

    try:
        with open(os.path.join(path, dataset.RUN_NAME), encoding="utf-8") as fh:
            run = json.load(fh)
    except FileNotFoundError:
        return False, "no sweep there yet"
    except (OSError, ValueError):
        return False, f"its {dataset.RUN_NAME} is unreadable"
    if not isinstance(run, dict):
        return False, f"its {dataset.RUN_NAME} is not a run record"
    want = grids.named_grid(grid)
    recorded = run.get("grid") if isinstance(run.get("grid"), dict) else {}
    if recorded.get("name") != grid or recorded.get("identity") != want.identity():
        return False, f"it holds another grid ({recorded.get('name', 'unknown')})"
    if run.get("status") != "complete":
        return False, f"its sweep is {run.get('status', 'of unknown status')}"
    n_pairs = len(want.configs) * len(want.methods)
    if run.get("pairs_present") != n_pairs or run.get("pairs_expected") != n_pairs:
        return False, (f"it holds {run.get('pairs_present', '?')} of {n_pairs} "
                       "(config, method) pairs")
    return True, ""


#: How long a child given our stop signal may take to save its work before it is killed.
CHILD_STOP_GRACE_S = 120.0


def run_child(cmd: list[str]) -> int:
    """Run `cmd` (its stdout to our stderr, keeping stdout clean) and return its exit status.

    A stop signal that reaches us (SIGINT, SIGTERM: the runner's `Interrupted`) is forwarded
    to the child, which keeps what it finished and marks its folder interrupted; we wait for
    it (further signals are held back by the runner meanwhile), then stop the same way. A
    child that does not end within CHILD_STOP_GRACE_S is killed."""
    proc = subprocess.Popen(cmd, stdout=sys.stderr)
    try:
        return proc.wait()
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        if proc.poll() is None:
            proc.send_signal(signum)  # a terminal's Ctrl-C reached it already: it ignores this one
        try:
            proc.wait(timeout=CHILD_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def measure_grid(grid: str, path: str) -> None:
    """Run `python -m measure.sweep --grid GRID --out PATH` unless the whole grid, finished,
    is there (`reusable`); an unfinished one resumes. The sweep's output goes to stderr,
    keeping stdout clean."""
    ok, why = reusable(grid, path)
    if ok:
        _log(f"reusing the finished {grid} sweep in {path}")
        return
    _log(f"measuring the {grid} grid into {path} ({why}; python -m measure.sweep)")
    cmd = [sys.executable, "-m", "measure.sweep", "--grid", grid, "--out", path]
    rc = run_child(cmd)
    if rc in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # the sweep was stopped: so are we
        raise Interrupted(rc - 128)
    if rc != 0:
        raise UserError(f"the {grid} sweep failed (python -m measure.sweep exited {rc})")


def measure_profile(path: str) -> bool:
    """Run `python -m measure.device --out PATH`; False when it is unavailable or fails."""
    _log(f"measuring a device profile into {path} (python -m measure.device)")
    cmd = [sys.executable, "-m", "measure.device", "--out", path]
    try:
        rc = run_child(cmd)
    except OSError:
        return False
    return rc == 0 and os.path.isfile(path)


def _load_profile(path: str):
    from costmodel.hardware import HardwareProfile

    try:
        return HardwareProfile.from_json(path)
    except ValueError as exc:
        raise UserError(f"bad device profile: {exc}") from None


def data_fingerprint(dataset: data.Dataset) -> dict:
    """Where the data were measured: run.json's fingerprint, else the rows' one device."""
    fp = dataset.run.get("fingerprint")
    if isinstance(fp, dict) and fp:
        return fp
    f = dataset.frame
    devices = set(zip(f["backend"].astype(str), f["device_kind"].astype(str)))
    if len(devices) == 1 and "unknown" not in next(iter(devices)):
        backend, kind = next(iter(devices))
        return {"backend": backend, "device_kind": kind}
    return {}


def profile_fingerprint(profile) -> dict:
    """Where a profile was measured: its fingerprint, else what its name says
    ("measured <backend> <device kind>", profiles older than the fingerprint); {} for a
    datasheet profile."""
    if profile.fingerprint:
        return dict(profile.fingerprint)
    if profile.measured and profile.name.startswith("measured "):
        backend, _, kind = profile.name[len("measured "):].partition(" ")
        return {"backend": backend, "device_kind": kind}
    return {}


def profile_mismatch(profile, dataset: data.Dataset) -> str:
    """Why `profile` cannot serve as the data's prior ('' when it matches): the entries of
    `measure.fingerprint.PROFILE_CHECKED` that differ, or that nothing can be checked."""
    from measure.fingerprint import profile_differences

    pf, df = profile_fingerprint(profile), data_fingerprint(dataset)
    if not pf:
        return "the profile records no device it was measured on"
    if not df:
        return "the data name no device"
    return "; ".join(profile_differences(pf, df))


def given_profile(args, dataset: data.Dataset):
    """(profile, note) from --profile or the dataset folder's profile.json, checked against the
    data's fingerprint (refused unless --force); None when neither is there. Writes nothing."""
    if args.profile:
        path, how = args.profile, "--profile"
    elif dataset.profile_path:
        path, how = dataset.profile_path, "the dataset's profile"
    else:
        return None
    profile = _load_profile(path)
    why = profile_mismatch(profile, dataset)
    if why and not args.force:
        hint = ("" if args.profile else "move it away, or ") + "give --force to use it anyway"
        raise UserError(f"{how} {path} does not match the data ({why}); {hint}")
    note = f"{'given' if args.profile else 'the dataset' + chr(39) + 's'} {path}"
    return profile, note + (f" (used with --force although {why})" if why else "")


def resolve_profile(args, dataset: data.Dataset, out: str):
    """(profile or None, a note saying where it came from): `given_profile`, else for a sweep
    folder a profile of this machine in --out (measured now if absent), used only when it
    matches the data's fingerprint."""
    given = given_profile(args, dataset)
    if given is not None:
        return given
    if dataset.kind == "sweep":
        from measure.dataset import PROFILE_NAME

        target = os.path.join(out, PROFILE_NAME)
        if os.path.isfile(target):
            profile, note = _load_profile(target), f"measured earlier, {target}"
        else:
            os.makedirs(out, exist_ok=True)
            if not measure_profile(target):
                return None, ("none (measure.device unavailable): roofline baseline and "
                              "log-link forms skipped")
            profile, note = _load_profile(target), f"measured now on this machine, {target}"
        why = profile_mismatch(profile, dataset)
        if why:
            return None, (f"none: {target} does not match the data ({why}; give --profile); "
                          "roofline baseline and log-link forms skipped")
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
    from measure.dataset import REPORT_LOCK_NAME
    from measure.lock import FolderLock

    extras_fn = None
    if args.model or args.hardware:
        from analysis import presets
        extras_fn = presets.prepare(args.model, args.hardware)
    if args.data:
        out = args.out or DEFAULT_RESULTS
        _check_out(out)
        dataset = dataclasses.replace(data.load(args.data, partial=args.partial),
                                      stratum=args.stratum)
        # Fail on the data before writing anything (a profile measurement writes into --out).
        models = _check_data(args, dataset)
        if models and not args.out:
            # apart from ./crossover-results/, where the layer fit it uses lives
            out = f"{DEFAULT_RESULTS}-models"
            _check_out(out)
        given_profile(args, dataset)
        _say_status(dataset)  # after every refusal: bad input gets one line, nothing else
        os.makedirs(out, exist_ok=True)
        lock = FolderLock(out, REPORT_LOCK_NAME, "another analysis").acquire()
    else:
        path = DEFAULT_RESULTS if args.grid == "quick" else f"{DEFAULT_RESULTS}-{args.grid}"
        out = args.out or path
        _check_out(out)
        _check_out(path)
        os.makedirs(out, exist_ok=True)
        lock = FolderLock(out, REPORT_LOCK_NAME, "another analysis").acquire()
    try:
        if not args.data:
            measure_grid(args.grid, path)
            dataset = dataclasses.replace(data.load(path, partial=args.partial),
                                          stratum=args.stratum)
            models = _check_data(args, dataset)
            given_profile(args, dataset)
            _say_status(dataset)
        if models:
            from analysis import wholemodel_report

            # whole training steps: the three-route validation instead of the layer fit
            profile, note = resolve_profile(args, dataset, out)
            return wholemodel_report.run(args, dataset, out, profile, note)
        return _analyse(args, dataset, out, t0, extras_fn)
    finally:
        lock.release()


def _check_data(args, dataset: data.Dataset) -> bool:
    """Refuse data the analysis cannot use before anything is written; True for a models
    dataset (whole training steps, `analysis.wholemodel_report`)."""
    from analysis import wholemodel_report

    if wholemodel_report.is_models(dataset.frame):
        return True
    if args.layer_fit:
        raise UserError("--layer-fit applies to a models dataset (python -m measure.sweep --grid models)")
    data.select(dataset, _min_configs())
    return False


def _analyse(args, dataset: data.Dataset, out: str, t0: float, extras_fn) -> int:
    profile, note = resolve_profile(args, dataset, out)

    from analysis import export, pipeline, report

    t_fit = time.perf_counter()
    result = pipeline.run(dataset, profile, note, widths=args.widths, n_boot=args.bootstrap)
    if extras_fn is not None:
        result.extras.update(extras_fn(result))
    from analysis import (
        comm,  # collectives and sharded steps, when the folder holds them
        publish,
    )

    comm_result = comm.from_folder(dataset.source)
    try:
        # every file into a folder beside --out, then swapped in as one set: a failure part-way
        # leaves the previous report as it was
        with publish.staged(out) as staging:
            figures: list[str] = []
            if not args.no_plots:
                from analysis import plots

                figures = plots.all_figures(result, staging)
                if extras_fn is not None:
                    figures += plots.model_figures(result, staging)
            files = export.write_files(result, staging, figures)
            if comm_result is not None:
                files += comm.write(comm_result, staging)
    except OSError as exc:
        raise UserError(f"cannot write the report into {out}: {exc.strerror or exc}; the "
                        "previous report there is intact") from None
    elapsed = time.perf_counter() - t0
    analysis_s = time.perf_counter() - t_fit
    _log(f"analysis took {analysis_s:.1f} s ({elapsed:.1f} s in all)")
    if args.json:
        payload = export.to_json(result)
        payload["timing"] = {"analysis_s": analysis_s, "total_s": elapsed}
        if comm_result is not None:
            payload["communication"] = comm.to_json(comm_result)
        print(json.dumps(payload, indent=1, allow_nan=False))
    else:
        print(report.stdout_report(result, files, out))
        if comm_result is not None:
            print("\n" + comm.text_report(comm_result))
    return 0


def _say_status(dataset: data.Dataset) -> None:
    if dataset.status:
        _log(f"data: {dataset.source}: {dataset.status}")
    for note in dataset.notes:
        _log(f"data: left out: {note}")


def _min_configs() -> int:
    from analysis.fit import MIN_CONFIGS

    return MIN_CONFIGS


def main(argv: Sequence[str] | None = None) -> int:
    """The analysis under the shared runner: one-line errors (exit 2), 130/143 on a signal."""
    return cliutil.run(PROG, lambda args: run(build_parser().parse_args(args)), argv)


if __name__ == "__main__":
    raise SystemExit(main())
