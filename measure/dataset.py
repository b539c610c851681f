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
from measure.lock import FolderLock
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

    def __init__(self, path: Path, run: dict[str, Any], records: list[dict[str, Any]],
                 lock: FolderLock | None = None):
        self.path = path
        self.run = run
        self.records = records
        self.done: set[tuple] = {record_key(r) for r in records}
        self.errored: set[tuple] = {record_key(r) for r in records if r.get("error")}
        self._session: dict[str, Any] = run["sessions"][-1]
        self.lock = lock
        self.finished = False  # finish() has written the final CSV and run.json
        self.grid_keys: set[tuple] | None = None  # the (config, method) keys of the grid swept

    def close(self) -> None:
        """Release the folder's lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()

    def counts(self) -> dict[str, int]:
        """Pairs of the swept grid: expected, present in the folder, recorded with an error."""
        keys = self.grid_keys if self.grid_keys is not None else self.done
        return {"pairs_expected": len(keys), "pairs_present": len(keys & self.done),
                "pairs_with_error": len(keys & self.errored)}

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
        """The consolidated CSV of the journal as it is on disk, written atomically.

        Rebuilt from ``measurements.jsonl``, not from memory: a signal raises between any two
        bytecodes, so it can land after a record's line is written but before `append` has
        noted it, and the CSV must still hold every record of the journal. We hold the lock:
        no one else appends meanwhile."""
        self._resync()
        df = consolidate(self.records)
        atomic_write_text(self.path / CSV_NAME, df.to_csv(index=False))
        return df

    def _resync(self) -> None:
        """Records, keys and this session's counters re-read from the journal on disk."""
        records, _cut = _read_jsonl(self.path)  # a torn tail (a failed write) was never a record
        self.records = records
        last = {record_key(r): r for r in records}  # the last record of a key wins
        self.done = set(last)
        self.errored = {k for k, r in last.items() if r.get("error")}
        mine = [r for r in records if r.get("run_id") == self.session_id]
        self._session["records_written"] = len(mine)
        self._session["errors"] = sum(1 for r in mine if r.get("error"))

    def finish(self, status: str, reason: str = "") -> pd.DataFrame:
        """Write the consolidated CSV, mark the session and folder `status` (and why), release
        the lock. "complete" becomes "partial" when a pair of the grid is missing."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        df = self.write_csv()
        counts = self.counts()
        if status == "complete" and counts["pairs_present"] < counts["pairs_expected"]:
            status = "partial"  # "complete" means the whole grid, nothing less
        self._session["status"] = status
        self._session["stop_reason"] = reason
        self._session["ended_utc"] = utc_now()
        self.run["status"] = status
        self.run["updated_utc"] = self._session["ended_utc"]
        self.run["n_records"] = int(len(df))
        self.run.update(counts)
        write_run(self.path, self.run)
        self.finished = True
        self.close()  # the session is over: the next writer may come in
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
    records: list[dict[str, Any]] = []
    where: list[str] = []
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
        where.append(f"line {i + 1}")
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
        counts = ("" if self.pairs_expected is None else
                  f", {self.pairs_present} of {self.pairs_expected} (config, method) pairs")
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


def _read_state(out: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int | None,
                                        list[dict[str, Any]]]:
    """run.json, the jsonl records, where to cut a torn tail, rows only the CSV holds."""
    if not out.is_dir():
        return None, [], None, []
    run = _read_run(out)
    records, cut = _read_jsonl(out)
    if run is None and ((out / JSONL_NAME).exists() or (out / CSV_NAME).exists()):
        raise UserError(f"{out} holds measurements without {RUN_NAME}; choose another --out")
    logged = {record_key(r) for r in records}
    # rows only the CSV holds (a committed CSV + run.json, a lost or shorter log)
    from_csv = [r for r in _read_csv_records(out) if record_key(r) not in logged]
    return run, records, cut, from_csv


def open_out_dir(
    path: str | os.PathLike,
    *,
    fp: Mapping[str, Any],
    session: Session,
    force_merge: bool = False,
    log=None,
) -> OutDir:
    """Check `path`, lock it (`measure.lock`) and open it for a new session, or raise
    UserError leaving it untouched.

    Every check runs before the first write, and again once the lock is held (another sweep
    may have written in between): a refused folder is never modified. The returned OutDir
    holds the lock until `OutDir.close`. `log(line)` hears a lock taken over from a dead
    sweep and a previous session that ended without finishing.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    _check_fingerprint(out, _read_state(out)[0], fp, force_merge)  # refuse before creating
    _check_writable(out)
    lock = FolderLock(out, LOCK_NAME, "another sweep").acquire()
    try:
        run, records, cut, from_csv = _read_state(out)
        merged = _check_fingerprint(out, run, fp, force_merge)
        # From here on we write.
        if cut is not None:
            with open(out / JSONL_NAME, "r+b") as fh:
                fh.truncate(cut)
        if from_csv:
            # into the log before anything else, so finish()'s CSV (rebuilt from the log) keeps them
            _append_lines(out / JSONL_NAME, from_csv)
            records = records + from_csv
    except BaseException:
        lock.release()
        raise
    if log is not None and lock.took_over is not None:
        log(lock.takeover_note())
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
    elif run.get("status") == "running" and run["sessions"]:
        # we hold the lock, so the session that said "running" is no longer alive
        dead = run["sessions"][-1]
        if dead.get("status") == "running":
            dead.update(status="interrupted", stop_reason="the process ended without finishing")
            if log is not None:
                log(f"the previous session in {out} ({dead.get('session_id')}) ended without "
                    "finishing; its finished records are kept")
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
    try:
        write_run(out, run)
    except BaseException:
        lock.release()
        raise
    return OutDir(out, run, records, lock)


def _check_fingerprint(out: Path, run: Mapping[str, Any] | None, fp: Mapping[str, Any],
                       force_merge: bool) -> dict[str, Any] | None:
    """The fingerprint merged into a folder of another device, or None; UserError if refused."""
    if run is None:
        return None
    diffs = fingerprint_differences(run["fingerprint"], fp)
    if diffs and not force_merge:
        raise UserError(
            f"{out} was measured on a different device or library versions "
            f"({'; '.join(diffs)}); use --force-merge to add to it anyway"
        )
    return dict(fp) if diffs else None


def new_session_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


__all__ = [
    "read_csv", "CSV_NAME", "JSONL_NAME", "LOCK_NAME", "PROFILE_NAME", "REPORT_LOCK_NAME",
    "PROFILE_NAMES", "RUN_NAME", "STATUSES", "FolderData", "OutDir", "Session", "consolidate",
    "new_session_id", "open_out_dir", "read_folder", "read_jsonl", "record_key", "utc_now",
    "write_run",
]
