"""The on-disk dataset of a sweep: crash-safe, resumable, refusing to mix machines.

An output folder holds three files, and nothing else is touched:

``measurements.jsonl``
    one JSON object per finished (config, method), in `measure.schema` columns, appended and
    flushed (and fsynced) as soon as it is finished. A record is one ``os.write`` of one line,
    so a crash can at worst leave a torn last line without its newline: it was never a
    finished record, and reopening the folder cuts it off.
``measurements.csv``
    the consolidated table (last record per key wins, validated against the schema), written
    to a temporary name and ``os.replace``-d: readers never see half a file.
``run.json``
    the device fingerprint, the sessions that wrote here (argv, grid, seeds, policy,
    timestamps, status) and the folder's status: ``running``, ``complete`` or
    ``interrupted``. Written atomically too.

Reopening a folder skips the (config, method) pairs already recorded, in either file: rows
of ``measurements.csv`` missing from ``measurements.jsonl`` (a reference dataset committed
as CSV + run.json, or a log that was truncated) are appended to the jsonl before anything
else is written, so the log stays complete and the rewritten CSV loses nothing. A folder whose
fingerprint (`measure.fingerprint`: device, library versions, XLA flags, jax config) differs
from this process's is refused unless ``force_merge``; cf. pyperf's ``_CHECKED_METADATA``. A folder holding files
that are not ours, or that are corrupt, is refused and left as it is.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from costmodel.errors import UserError, one_line
from costmodel.fileio import atomic_write_text
from measure.fingerprint import fingerprint_differences
from measure.schema import ADDED_IN_2, COLUMNS, KEY, SCHEMA_VERSION, SchemaError, validate

RUN_FORMAT = "lora-crossover-run"
#: run.json format history: 1 -- first version (fingerprint, sessions, status).
RUN_FORMAT_VERSION = 1
JSONL_NAME = "measurements.jsonl"
CSV_NAME = "measurements.csv"
RUN_NAME = "run.json"

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
    if rec.get("schema_version") == 1:  # an older log: read with the version-1 meaning
        rec = {**rec, **ADDED_IN_2, "schema_version": SCHEMA_VERSION}
    missing = [c for c in COLUMNS if c not in rec]
    if missing:
        raise UserError(f"{where}: lacks column {missing[0]!r}; not a measurements file of this tool")
    if rec["schema_version"] != SCHEMA_VERSION:
        raise UserError(
            f"{where}: schema version {rec['schema_version']!r}, this tool writes {SCHEMA_VERSION}"
        )
    return rec


def consolidate(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The validated table of `records`, keeping the last record of each (config, method)."""
    df = pd.DataFrame(list(records), columns=list(COLUMNS))
    if df.empty:
        from measure.schema import empty_frame

        return empty_frame()
    keys = [record_key(r) for r in df.to_dict("records")]
    df = df.assign(_key=keys).drop_duplicates("_key", keep="last").drop(columns="_key")
    return validate(df)


# ----------------------------------------------------------------------------- the folder

@dataclass
class Session:
    session_id: str
    started_utc: str
    argv: list[str]
    grid: dict[str, Any]
    seeds: dict[str, int]
    policy: dict[str, Any]
    ended_utc: str = ""
    status: str = "running"
    records_written: int = 0
    errors: int = 0
    merged_fingerprint: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class OutDir:
    """An output folder opened for one sweep session. Use `open_out_dir` to make one."""

    def __init__(self, path: Path, run: dict[str, Any], records: list[dict[str, Any]]):
        self.path = path
        self.run = run
        self.records = records
        self.done: set[tuple] = {record_key(r) for r in records}
        self.errored: set[tuple] = {record_key(r) for r in records if r.get("error")}
        self._session: dict[str, Any] = run["sessions"][-1]

    @property
    def session_id(self) -> str:
        return self._session["session_id"]

    def is_done(self, key: tuple, retry_errors: bool = False) -> bool:
        return key in self.done and not (retry_errors and key in self.errored)

    def append(self, rec: Mapping[str, Any]) -> None:
        """Append one finished record as one line, flushed and fsynced before returning."""
        _append_lines(self.path / JSONL_NAME, [rec])
        self.records.append(dict(rec))
        key = record_key(rec)
        self.done.add(key)
        if rec.get("error"):
            self.errored.add(key)
            self._session["errors"] += 1
        else:
            self.errored.discard(key)
        self._session["records_written"] += 1

    def write_csv(self) -> pd.DataFrame:
        df = consolidate(self.records)
        atomic_write_text(self.path / CSV_NAME, df.to_csv(index=False))
        return df

    def finish(self, status: str, reason: str = "") -> pd.DataFrame:
        """Write the consolidated CSV and mark the session and folder `status` (and why)."""
        df = self.write_csv()
        self._session["status"] = status
        self._session["stop_reason"] = reason
        self._session["ended_utc"] = utc_now()
        self.run["status"] = status
        self.run["updated_utc"] = self._session["ended_utc"]
        self.run["n_records"] = int(len(df))
        write_run(self.path, self.run)
        return df


def _append_lines(file: Path, records: Iterable[Mapping[str, Any]]) -> None:
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


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    """Records of measurements.jsonl and, if its last line is torn, the byte offset to cut at."""
    file = path / JSONL_NAME
    if not file.exists():
        return [], None
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {file}: {one_line(exc)}")
    records: list[dict[str, Any]] = []
    cut: int | None = None
    offset = 0
    lines = raw.split(b"\n")
    for i, line in enumerate(lines):
        start = offset
        offset += len(line) + 1
        if not line.strip():
            continue
        last = i == len(lines) - 1  # no newline after it: possibly torn by a crash
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if last:
                cut = start
                break
            raise UserError(f"{file} line {i + 1} is corrupt; move the file away or choose another --out")
        records.append(_check_record(rec, f"{file} line {i + 1}"))
    try:
        consolidate(records)
    except SchemaError as exc:
        raise UserError(f"{file} does not follow the schema: {one_line(exc)}")
    return records, cut


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a measurements.csv back with the schema's dtypes (empty strings stay strings)."""
    strings = {name: "string" for name, kind in COLUMNS.items() if kind == "string"}
    df = pd.read_csv(path, dtype=strings, keep_default_na=False, na_values={
        name: [""] for name, kind in COLUMNS.items() if kind != "string"
    })
    return validate(df)


def _read_csv_records(path: Path) -> list[dict[str, Any]]:
    """Rows of an existing measurements.csv as JSON-ready records; UserError if foreign."""
    file = path / CSV_NAME
    if not file.exists():
        return []
    try:
        df = read_csv(file)
    except (SchemaError, ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{file} is foreign or corrupt ({one_line(exc)}); choose another --out")
    cast = {"int64": int, "bool": bool, "float64": float, "string": str}
    return [
        {name: cast[COLUMNS[name]](row[name]) for name in COLUMNS}
        for row in df.to_dict("records")
    ]


def _check_writable(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--out {path} is not writable: {one_line(exc.strerror or exc)}")


def open_out_dir(
    path: str | os.PathLike,
    *,
    fp: Mapping[str, Any],
    session: Session,
    force_merge: bool = False,
) -> OutDir:
    """Check `path` and open it for a new session, or raise UserError leaving it untouched.

    Every check runs before the first write: a refused folder is never modified.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir():
        run = _read_run(out)
        records, cut = _read_jsonl(out)
        if run is None and ((out / JSONL_NAME).exists() or (out / CSV_NAME).exists()):
            raise UserError(f"{out} holds measurements without {RUN_NAME}; choose another --out")
        logged = {record_key(r) for r in records}
        # rows only the CSV holds (a committed CSV + run.json, a lost or shorter log)
        from_csv = [r for r in _read_csv_records(out) if record_key(r) not in logged]
    else:
        run, records, cut, from_csv = None, [], None, []
    merged = None
    if run is not None:
        diffs = fingerprint_differences(run["fingerprint"], fp)
        if diffs and not force_merge:
            raise UserError(
                f"{out} was measured on a different device or library versions "
                f"({'; '.join(diffs)}); use --force-merge to add to it anyway"
            )
        merged = dict(fp) if diffs else None
    _check_writable(out)
    # From here on we write.
    if cut is not None:
        with open(out / JSONL_NAME, "r+b") as fh:
            fh.truncate(cut)
    if from_csv:
        # into the log before anything else, so finish()'s CSV (rebuilt from the log) keeps them
        _append_lines(out / JSONL_NAME, from_csv)
        records = records + from_csv
    now = utc_now()
    if run is None:
        run = {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "schema_version": SCHEMA_VERSION,
            "created_utc": now,
            "fingerprint": dict(fp),
            "sessions": [],
        }
    sess = asdict(session)
    sess["merged_fingerprint"] = merged
    if from_csv:
        sess["extra"] = {**sess.get("extra", {}), "records_from_csv": len(from_csv)}
    run["sessions"].append(sess)
    run.update(
        status="running",
        updated_utc=now,
        grid=session.grid,
        seeds=session.seeds,
        last_session=session.session_id,
    )
    write_run(out, run)
    return OutDir(out, run, records)


def new_session_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


__all__ = [
    "read_csv", "CSV_NAME", "JSONL_NAME", "RUN_NAME", "OutDir", "Session", "consolidate",
    "new_session_id", "open_out_dir", "record_key", "utc_now", "write_run",
]
