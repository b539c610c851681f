"""A resumable, crash-safe table of communication measurements in an output folder.

The same discipline as `measure.dataset` (which holds the kernel sweep's table), for the
tables of `measure.comm_schema`: in ``<out>/`` a table ``T`` is three files,

- ``T.jsonl``: one finished record per line, appended and fsynced at once;
- ``T.csv``: the consolidated table (last record per key), replaced atomically;
- ``T.run.json``: the fingerprint of the machine and library versions, and the sessions.

So a folder may hold a kernel sweep, ``collectives`` and ``sharded`` side by side. Reopening
skips keys already recorded; a torn last line (a crash mid-write) is cut off; a folder
measured on another device or library versions is refused unless ``force``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from costmodel.cliutil import UserError, one_line
from costmodel.fileio import atomic_write_text
from measure.comm_schema import TABLE_VERSION, TABLES, empty_table, validate_table
from measure.dataset_files import append_lines, parse_journal
from measure.schema import SchemaError

RUN_FORMAT = "lora-crossover-comm-run"


def files(out: str | os.PathLike, table: str) -> tuple[Path, Path, Path]:
    """(jsonl, csv, run.json) of `table` in folder `out`."""
    p = Path(out)
    return p / f"{table}.jsonl", p / f"{table}.csv", p / f"{table}.run.json"


def key_of(rec: Mapping[str, Any], table: str) -> tuple:
    columns, key = TABLES[table]
    out = []
    for k in key:
        v, kind = rec[k], columns[k]
        out.append(int(v) if kind == "int64" else bool(v) if kind == "bool" else str(v))
    return tuple(out)


def consolidate(records: list[Mapping[str, Any]], table: str) -> pd.DataFrame:
    columns, _ = TABLES[table]
    if not records:
        return empty_table(table)
    df = pd.DataFrame(list(records), columns=list(columns))
    keys = [key_of(r, table) for r in records]
    df = df.assign(_key=keys).drop_duplicates("_key", keep="last").drop(columns="_key")
    return validate_table(df, table)


def read_table(out: str | os.PathLike, table: str) -> pd.DataFrame | None:
    """The consolidated table `table` of folder `out`, or None if it holds none."""
    _jsonl, csv, _run = files(out, table)
    if not csv.exists():
        return None
    columns, _ = TABLES[table]
    strings = {n: "string" for n, kind in columns.items() if kind == "string"}
    try:
        df = pd.read_csv(csv, dtype=strings, keep_default_na=False,
                         na_values={n: [""] for n, k in columns.items() if k != "string"})
        return validate_table(df, table)
    except (SchemaError, ValueError, pd.errors.ParserError, OSError) as exc:
        raise UserError(f"{csv} is foreign or corrupt ({one_line(exc)})") from None


def read_run(out: str | os.PathLike, table: str) -> dict[str, Any] | None:
    _jsonl, _csv, run_file = files(out, table)
    if not run_file.exists():
        return None
    try:
        run = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{run_file} is corrupt ({one_line(exc)})") from None
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT or not isinstance(run.get("fingerprint"), dict):
        raise UserError(f"{run_file} was not written by this tool")
    return run


def _read_jsonl(file: Path, table: str) -> tuple[list[dict[str, Any]], int | None]:
    if not file.exists():
        return [], None
    lines, cut = parse_journal(file, file.read_bytes())
    for n, rec in lines:
        if not isinstance(rec, dict) or rec.get("table_version") != TABLE_VERSION:
            raise UserError(f"{file} line {n} is not a {table} record of this tool")
    records = [rec for _, rec in lines]
    try:
        consolidate(records, table)
    except (SchemaError, KeyError) as exc:
        raise UserError(f"{file} does not follow the {table} table: {one_line(exc)}") from None
    return records, cut


def append_line(file: Path, rec: Mapping[str, Any]) -> None:
    """Append one record as one line in one write, fsynced before returning."""
    append_lines(file, [rec])


class Table:
    """One table of one folder, opened for a session. `open_table` makes one."""

    def __init__(self, out: Path, table: str, run: dict[str, Any], records: list[dict[str, Any]]):
        self.out, self.table, self.run, self.records = out, table, run, records
        self.done = {key_of(r, table): bool(r.get("error")) for r in records}

    def is_done(self, key: tuple, retry_errors: bool = False) -> bool:
        return key in self.done and not (retry_errors and self.done[key])

    def append(self, rec: Mapping[str, Any]) -> None:
        jsonl, _csv, _run = files(self.out, self.table)
        append_line(jsonl, rec)
        self.records.append(dict(rec))
        self.done[key_of(rec, self.table)] = bool(rec.get("error"))

    def finish(self, status: str) -> pd.DataFrame:
        from measure.dataset import utc_now

        _jsonl, csv, run_file = files(self.out, self.table)
        df = consolidate(self.records, self.table)
        atomic_write_text(csv, df.to_csv(index=False))
        self.run["status"] = status
        self.run["updated_utc"] = utc_now()
        self.run["sessions"][-1]["status"] = status
        self.run["n_records"] = len(df)
        atomic_write_text(run_file, json.dumps(self.run, indent=2, allow_nan=True) + "\n")
        return df


def open_table(
    out: str | os.PathLike, table: str, *, fp: Mapping[str, Any], session: Mapping[str, Any],
    force: bool = False,
) -> Table:
    """Open `table` in folder `out` for a new session; UserError (folder untouched) if refused."""
    from measure.dataset import utc_now
    from measure.fingerprint import fingerprint_differences

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory")
    jsonl, _csv, run_file = files(path, table)
    run = read_run(path, table) if path.is_dir() else None
    records, cut = _read_jsonl(jsonl, table) if path.is_dir() else ([], None)
    if run is None and records:
        raise UserError(f"{jsonl} has no {run_file.name}; choose another --out")
    if run is not None:
        diffs = fingerprint_differences(run["fingerprint"], fp)
        if diffs and not force:
            raise UserError(
                f"{path} was measured on a different device or library versions "
                f"({'; '.join(diffs)}); use --force-merge to add to it anyway"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        if cut is not None:
            with open(jsonl, "r+b") as fh:
                fh.truncate(cut)
        if run is None:
            run = {"format": RUN_FORMAT, "table": table, "table_version": TABLE_VERSION,
                   "created_utc": utc_now(), "fingerprint": dict(fp), "sessions": []}
        run["sessions"].append({**session, "started_utc": utc_now(), "status": "running"})
        run["status"] = "running"
        atomic_write_text(run_file, json.dumps(run, indent=2, allow_nan=True) + "\n")
    except OSError as exc:
        raise UserError(f"--out {path} is not writable: {one_line(exc.strerror or exc)}") from None
    return Table(path, table, run, records)
