"""A dataset folder's files, read and written (`measure.dataset` opens a folder for a sweep
session): the names, the record key, the journal (measurements.jsonl), the CSV, run.json, and
`read_folder` -- what a folder holds, read without writing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from costmodel.errors import UserError, one_line
from costmodel.fileio import atomic_write_text
from measure.schema import COLUMNS, KEY, SCHEMA_VERSION, SchemaError, upgrade_record, validate

RUN_FORMAT = "lora-crossover-run"
#: run.json format history: 1 -- first version (fingerprint, sessions, status).
RUN_FORMAT_VERSION = 1
# The file names of a dataset folder, defined here only.
JSONL_NAME = "measurements.jsonl"
CSV_NAME = "measurements.csv"
RUN_NAME = "run.json"
LOCK_NAME = "sweep.lock"  # measure.lock: held by the sweep writing the folder
REPORT_LOCK_NAME = "report.lock"  # held by the analysis writing its report into a folder
PROFILE_NAME = "profile.json"  # python -m measure.device's profile of the folder's device
#: Profile names an analysis looks for in a dataset folder, first found wins.
PROFILE_NAMES = (PROFILE_NAME, "device.json")

#: run.json ``status`` values. complete: every (config, method) of the recorded grid is in the
#: folder; partial: --limit stopped it early; interrupted: a signal or --time-limit-s stopped
#: it; running: a sweep holds the folder (or died holding it: see `measure.lock`).
STATUSES = ("running", "complete", "partial", "interrupted")

def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- records

def record_key(rec: Mapping[str, Any]) -> tuple:
    """The schema KEY of a record, normalised so JSON round trips compare equal."""
    out = []
    for k in KEY:
        v = rec[k]
        kind = COLUMNS[k]
        out.append(int(v) if kind == "int64" else bool(v) if kind == "bool" else str(v))
    return tuple(out)


def _check_record(rec: Any, where: str) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise UserError(f"{where}: not a JSON object; not a measurements file of this tool")
    rec = upgrade_record(rec)  # an older log: read with its version's meaning
    missing = [c for c in COLUMNS if c not in rec]
    if missing:
        raise UserError(f"{where}: lacks column {missing[0]!r}; not a measurements file of this tool")
    if rec["schema_version"] != SCHEMA_VERSION:
        raise UserError(
            f"{where}: schema version {rec['schema_version']!r}, this tool writes {SCHEMA_VERSION}"
        )
    return rec


def consolidate(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The validated table of `records`, keeping the last record of each (config, method) of
    each device (two devices' rows are kept apart, for the analysis to refuse to pool)."""
    df = pd.DataFrame(list(records), columns=list(COLUMNS))
    if df.empty:
        from measure.schema import empty_frame

        return empty_frame()
    keys = [(r["backend"], r["device_kind"], record_key(r)) for r in df.to_dict("records")]
    df = df.assign(_key=keys).drop_duplicates("_key", keep="last").drop(columns="_key")
    return validate(df)


def append_lines(file: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Append `records` as JSON lines in one ``os.write``, fsynced before returning."""
    data = "".join(
        json.dumps(dict(rec), allow_nan=True, separators=(",", ":")) + "\n" for rec in records
    ).encode("utf-8")
    if not data:
        return
    fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # regular files do not short-write; be loud if they do
            raise OSError(f"short write to {file.name}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


_append_lines = append_lines  # the name measure.dataset imports


def write_run(path: Path, run: Mapping[str, Any]) -> None:
    atomic_write_text(path / RUN_NAME, json.dumps(run, indent=2, allow_nan=True) + "\n")


def _read_run(path: Path) -> dict[str, Any] | None:
    file = path / RUN_NAME
    if not file.exists():
        return None
    try:
        run = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file} is corrupt ({one_line(exc)}); move it away or choose another --out")
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT:
        raise UserError(f"{file} was not written by this tool; choose another --out")
    if run.get("format_version") != RUN_FORMAT_VERSION or not isinstance(run.get("sessions"), list) \
            or not isinstance(run.get("fingerprint"), dict):
        raise UserError(f"{file} has an unknown run format; choose another --out")
    return run


def parse_journal(file: Path, raw: bytes) -> tuple[list[tuple[int, Any]], int | None]:
    """(line number, parsed JSON) of every non-empty line of a JSON-lines journal's bytes, and
    the byte offset of a torn last line (no newline after it and does not parse: a crash
    mid-append, never a finished record), or None. UserError for a corrupt line elsewhere."""
    parsed: list[tuple[int, Any]] = []
    offset = 0
    lines = raw.split(b"\n")
    for i, line in enumerate(lines):
        start = offset
        offset += len(line) + 1
        if not line.strip():
            continue
        try:
            parsed.append((i + 1, json.loads(line.decode("utf-8"))))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if i == len(lines) - 1:
                return parsed, start
            raise UserError(f"{file} line {i + 1} is corrupt; move the file away or choose another --out") from None
    return parsed, None


def read_jsonl(file: str | os.PathLike) -> tuple[list[dict[str, Any]], int | None]:
    """Records of a measurements.jsonl, each checked by the schema (the first bad line and
    column named), and the byte offset of a torn last line (a crash mid-append: it has no
    newline and does not parse; it was never a finished record), or None.

    UserError for a missing, unreadable or corrupt file, a line that is not a record of
    this schema, or a bad value.
    """
    file = Path(file)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {file}: {one_line(exc.strerror or exc)}") from None
    lines, cut = parse_journal(file, raw)
    records = [_check_record(rec, f"{file} line {n}") for n, rec in lines]
    where = [f"line {n}" for n, _ in lines]
    if records:
        try:
            validate(pd.DataFrame(records, columns=list(COLUMNS)), row_names=where, unique=False)
        except SchemaError as exc:
            raise UserError(f"{file} does not follow the schema: {one_line(exc)}") from None
    return records, cut


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    file = path / JSONL_NAME
    if not file.exists():
        return [], None
    return read_jsonl(file)


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a measurements.csv back with the schema's dtypes (empty strings stay strings);
    SchemaError naming the first bad row ("line N" of the file) and column."""
    strings = {name: "string" for name, kind in COLUMNS.items() if kind == "string"}
    df = pd.read_csv(path, dtype=strings, keep_default_na=False, na_values={
        name: [""] for name, kind in COLUMNS.items() if kind != "string"
    })
    return validate(df, row_names=[f"line {i + 2}" for i in range(len(df))])


def _csv_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    cast = {"int64": int, "bool": bool, "float64": float, "string": str}
    return [
        {name: cast[COLUMNS[name]](row[name]) for name in COLUMNS}
        for row in df.to_dict("records")
    ]


def _read_csv_records(path: Path) -> list[dict[str, Any]]:
    """Rows of an existing measurements.csv as JSON-ready records; UserError if foreign."""
    file = path / CSV_NAME
    if not file.exists():
        return []
    try:
        df = read_csv(file)
    except (SchemaError, ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{file} is foreign or corrupt ({one_line(exc)}); choose another --out")
    return _csv_records(df)


@dataclass(frozen=True)
class FolderData:
    """What a dataset folder holds, read without writing: the one truth of its files.

    frame: the union of measurements.jsonl (the journal: its last record per key wins) and
    measurements.csv (rows the journal lacks), validated. status: run.json's, "unknown"
    without one. holder: a live sweep writing the folder now (`measure.lock`), or None.
    torn_tail: the journal's last line was torn by a crash (ignored). only_in_csv /
    only_in_jsonl: rows one file lacks (a stale CSV after a kill, a lost journal).
    pairs_expected / pairs_present: of the grid run.json names (None if it does not say).
    """

    frame: pd.DataFrame
    run: dict[str, Any]
    status: str
    holder: Any
    torn_tail: bool
    only_in_csv: int
    only_in_jsonl: int
    pairs_expected: int | None
    pairs_present: int | None

    @property
    def complete(self) -> bool:
        return (self.status == "complete" and self.holder is None
                and self.pairs_expected is not None and self.pairs_present == self.pairs_expected)

    def describe(self) -> str:
        """One line: the sweep's status and how much of its grid is there."""
        grid = self.run.get("grid") if isinstance(self.run.get("grid"), dict) else {}
        name = grid.get("name", "unknown")
        if not self.run:
            return f"no {RUN_NAME}: completeness unknown, {len(self.frame)} rows"
        if self.holder is not None:
            state = f"being written now by a sweep ({self.holder.describe()})"
        elif self.status == "running":
            state = "stopped without finishing (its process died)"
        else:
            state = self.status
        counts = (f", {self.pairs_present} of {self.pairs_expected} (config, method) pairs"
                  if self.pairs_expected is not None else
                  f", {len(self.frame)} rows; its {RUN_NAME} records no grid size, so completeness is unknown")
        return f"sweep {state}: {name} grid{counts}"


def read_folder(path: str | os.PathLike) -> FolderData:
    """Read a dataset folder for analysis, writing nothing; UserError if its files are
    corrupt, foreign or disagree on a value."""
    from measure.lock import live_holder

    path = Path(path)
    run = _read_run(path) or {}
    records, cut = _read_jsonl(path)
    csv_rows = _read_csv_records(path)
    logged = {(r["backend"], r["device_kind"], record_key(r)) for r in records}
    in_csv = {(r["backend"], r["device_kind"], record_key(r)) for r in csv_rows}
    extra = [r for r in csv_rows if (r["backend"], r["device_kind"], record_key(r)) not in logged]
    try:
        frame = consolidate(records + extra)
    except SchemaError as exc:
        raise UserError(f"{path}: {one_line(exc)}") from None
    keys = {record_key(r) for r in records + extra}
    grid = run.get("grid") if isinstance(run.get("grid"), dict) else {}
    expected = run.get("pairs_expected", grid.get("n_pairs"))
    present = run.get("pairs_present") if run.get("status") != "running" else None
    if expected is not None and present is None:
        present = min(len(keys), int(expected))  # the grid's keys are not recorded: an upper bound
    return FolderData(
        frame=frame, run=run, status=str(run.get("status", "unknown")),
        holder=live_holder(path, LOCK_NAME), torn_tail=cut is not None,
        only_in_csv=len(extra), only_in_jsonl=len(logged - in_csv) if csv_rows else 0,
        pairs_expected=None if expected is None else int(expected),
        pairs_present=None if present is None else int(present),
    )
