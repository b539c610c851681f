"""Merge the output folders of a sharded sweep into one dataset.

    python -m measure.sweep --grid seed --shard 1/2 --out part1    # on one worker
    python -m measure.sweep --grid seed --shard 2/2 --out part2    # on another
    python -m measure.merge part1 part2 --out merged

Each input folder must be a dataset of this tool (``run.json`` + measurements, see
`measure.dataset`); the communication tables of `measure.collectives` and `measure.sharded`
(``collectives.*``, ``sharded.*``) are merged too when present. Before anything is written:

- every folder's fingerprint must equal the first's (device, library versions, XLA flags:
  `measure.fingerprint.CHECKED_FINGERPRINT`), else the merge is refused — shards measured on
  different devices are not one dataset (cf. pyperf's ``_CHECKED_METADATA``);
- no (config, method) key may appear in two folders, else it is refused — two shards of one
  sweep never overlap, so an overlap means the wrong folders.

``--force`` merges anyway (a later folder's row replaces an earlier one's; the fingerprints
are kept in ``run.json`` under ``merged_from``). The merged folder is built in a temporary
folder beside ``--out`` and renamed into place, so a refused or failed merge leaves nothing.
``--out`` must not exist yet.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from costmodel import cliutil
from costmodel.cliutil import OneLineArgumentParser, UserError, add_debug_flag
from costmodel.fileio import atomic_write_text


def _load_main(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(run.json, records) of a sweep folder, or None if it holds no sweep."""
    from measure import dataset

    run = dataset._read_run(path)
    if run is None:
        return None
    records, _cut = dataset._read_jsonl(path)
    logged = {dataset.record_key(r) for r in records}
    records += [r for r in dataset._read_csv_records(path) if dataset.record_key(r) not in logged]
    return run, records


def _load_table(path: Path, table: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    from measure import comm_store

    run = comm_store.read_run(path, table)
    if run is None:
        return None
    jsonl, _csv, _run = comm_store.files(path, table)
    records, _cut = comm_store._read_jsonl(jsonl, table)
    return run, records


def _check(
    name: str, parts: list[tuple[Path, dict[str, Any], list[dict[str, Any]]]], key_of, force: bool
) -> list[dict[str, Any]]:
    """All records of `parts` after the fingerprint and duplicate checks (UserError if refused)."""
    from measure.fingerprint import fingerprint_differences

    first_path, first_run, _ = parts[0]
    for path, run, _recs in parts[1:]:
        diffs = fingerprint_differences(first_run["fingerprint"], run["fingerprint"])
        if diffs and not force:
            raise UserError(
                f"{path} ({name}) was measured on a different device or library versions than "
                f"{first_path} ({diffs[0]}); use --force to merge anyway"
            )
    seen: dict[tuple, Path] = {}
    merged: list[dict[str, Any]] = []
    for path, _run, recs in parts:
        for rec in recs:
            key = key_of(rec)
            if key in seen and seen[key] != path and not force:
                raise UserError(
                    f"{path} and {seen[key]} both hold {name} row {key}; "
                    "shards of one sweep never overlap (use --force to keep the later one)"
                )
            seen[key] = path
            merged.append(rec)
    return merged


def _run_json(parts, merged_n: int) -> dict[str, Any]:
    from measure.dataset import utc_now

    first = dict(parts[0][1])
    first["sessions"] = [s for _p, run, _r in parts for s in run.get("sessions", [])]
    first["merged_from"] = [
        {"path": str(p), "fingerprint": run["fingerprint"], "status": run.get("status", "")}
        for p, run, _r in parts
    ]
    first["status"] = "complete" if all(r.get("status") == "complete" for _p, r, _x in parts) else "interrupted"
    first["updated_utc"] = utc_now()
    first["n_records"] = merged_n
    return first


def merge(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, force: bool = False) -> dict[str, int]:
    """Merge `inputs` into the new folder `out`; rows per table. UserError if refused."""
    from measure import comm_store, dataset
    from measure.comm_schema import TABLES

    out = Path(out)
    if out.exists():
        raise UserError(f"--out {out} exists; merge into a new folder")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_dir():
            raise UserError(f"{p} is not a folder")
    if len(set(map(os.path.realpath, paths))) != len(paths):
        raise UserError("a folder is given twice")
    main_parts = [(p, *loaded) for p in paths if (loaded := _load_main(p)) is not None]
    table_parts = {t: [(p, *loaded) for p in paths if (loaded := _load_table(p, t)) is not None]
                   for t in TABLES}
    if not main_parts and not any(table_parts.values()):
        raise UserError("none of the folders holds measurements of this tool")
    for p in paths:
        if not any(p == q for q, *_ in main_parts) and not any(
                p == q for parts in table_parts.values() for q, *_ in parts):
            raise UserError(f"{p} holds no measurements of this tool")

    plans = []
    if main_parts:
        recs = _check("measurements", main_parts, dataset.record_key, force)
        df = dataset.consolidate(recs)
        plans.append(("main", main_parts, recs, df))
    for t, parts in table_parts.items():
        if parts:
            recs = _check(t, parts, lambda r, t=t: comm_store.key_of(r, t), force)
            plans.append((t, parts, recs, comm_store.consolidate(recs, t)))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    counts: dict[str, int] = {}
    try:
        for t, parts, recs, df in plans:
            if t == "main":
                dataset._append_lines(tmp / dataset.JSONL_NAME, recs)
                atomic_write_text(tmp / dataset.CSV_NAME, df.to_csv(index=False))
                dataset.write_run(tmp, _run_json(parts, len(df)))
                counts["measurements"] = len(df)
            else:
                jsonl, csv, run_file = comm_store.files(tmp, t)
                for rec in recs:
                    comm_store.append_line(jsonl, rec)
                atomic_write_text(csv, df.to_csv(index=False))
                atomic_write_text(run_file, json.dumps(_run_json(parts, len(df)), indent=2, allow_nan=True) + "\n")
                counts[t] = len(df)
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(
        prog=PROG,
        description="Merge the output folders of sharded sweeps (and of measure.collectives / "
                    "measure.sharded) into one dataset, refusing mixed devices and duplicates.",
    )
    p.add_argument("inputs", nargs="+", help="output folders of the shards")
    p.add_argument("--out", required=True, help="the merged folder (must not exist)")
    p.add_argument("--force", action="store_true",
                   help="merge folders measured on different devices or library versions, and "
                        "keep the later folder's row where two hold the same key")
    add_debug_flag(p)
    return p


PROG = "python -m measure.merge"


def main(argv: Sequence[str] | None = None) -> int:
    return cliutil.run(PROG, _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    counts = merge(args.inputs, args.out, force=args.force)
    print(f"merged {len(args.inputs)} folders into {args.out}: "
          + ", ".join(f"{n} {t} rows" for t, n in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
