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

import os
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from costmodel.errors import UserError, one_line
from costmodel.fileio import atomic_write_text
from measure.dataset_files import (  # noqa: F401 -- re-exported: callers use measure.dataset.X
    CSV_NAME,
    JSONL_NAME,
    LOCK_NAME,
    PROFILE_NAME,
    PROFILE_NAMES,
    REPORT_LOCK_NAME,
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    RUN_NAME,
    STATUSES,
    FolderData,
    _append_lines,
    _csv_records,
    _read_csv_records,
    _read_jsonl,
    _read_run,
    consolidate,
    read_csv,
    read_folder,
    read_jsonl,
    record_key,
    utc_now,
    write_run,
)
from measure.fingerprint import fingerprint_differences
from measure.lock import FolderLock
from measure.schema import SCHEMA_VERSION

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
