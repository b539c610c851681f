"""An all-or-nothing report: files are written into a temporary folder beside --out and moved
in as one set, so a failure part-way (a full disk, a signal) leaves the previous report as it
was, and a reader never sees new tables beside an old report.md.

    with publish.staged(out) as tmp:
        ...write every file of the report into tmp...
    # here out holds the new set; the previous report's files that the new one lacks are gone

The swap is renames within one file system (no data is written, so a full disk cannot stop
it half-way), with SIGINT and SIGTERM held back until it ends. If a rename still fails, the
renames done so far are undone and the previous files put back. ``.report-files`` in --out
lists the set last published, so the next swap also removes the files it no longer makes
(a figure that is not drawn any more). Files of --out outside the set (a dataset, a profile)
are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: In --out: the names of the files of the report published last (JSON list).
MANIFEST_NAME = ".report-files"


def _previous_set(out: str) -> list[str]:
    try:
        with open(os.path.join(out, MANIFEST_NAME), encoding="utf-8") as fh:
            names = json.load(fh)
    except (OSError, ValueError):
        return []
    if not isinstance(names, list):
        return []
    from measure import dataset

    keep = {dataset.JSONL_NAME, dataset.CSV_NAME, dataset.RUN_NAME, dataset.LOCK_NAME,
            dataset.REPORT_LOCK_NAME, *dataset.PROFILE_NAMES}
    # names only, never paths, never the dataset's files: a manifest cannot make the swap
    # touch anything but a previous report
    return [n for n in names if isinstance(n, str) and n and os.path.basename(n) == n
            and n not in (".", "..") and n not in keep]


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def swap_in(staging: str, out: str) -> list[str]:
    """Move every file of `staging` into `out` as one set, replacing the previous report's
    files (those named by out's manifest, and any of the same names); return the new names.

    On an OSError the previous files are put back and the error is raised.
    """
    new = sorted(n for n in os.listdir(staging) if os.path.isfile(os.path.join(staging, n)))
    with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as fh:
        json.dump([n for n in new if n != MANIFEST_NAME], fh)
        fh.flush()
        os.fsync(fh.fileno())
    new = sorted(set(new) | {MANIFEST_NAME})
    old = sorted((set(_previous_set(out)) | set(new) | {MANIFEST_NAME}) - {""})
    backup = tempfile.mkdtemp(prefix=".previous-", dir=staging)
    moved_out: list[str] = []  # previous files now in backup
    moved_in: list[str] = []  # new files now in out
    with _signals_held():
        try:
            for name in old:
                if os.path.isfile(os.path.join(out, name)):
                    os.replace(os.path.join(out, name), os.path.join(backup, name))
                    moved_out.append(name)
            for name in new:
                os.replace(os.path.join(staging, name), os.path.join(out, name))
                moved_in.append(name)
        except OSError:
            for name in reversed(moved_in):
                try:
                    os.replace(os.path.join(out, name), os.path.join(staging, name))
                except OSError:
                    pass
            for name in reversed(moved_out):
                try:
                    os.replace(os.path.join(backup, name), os.path.join(out, name))
                except OSError:
                    pass
            raise
    return [n for n in new if n != MANIFEST_NAME]


@contextmanager
def staged(out: str) -> Iterator[str]:
    """Yield an empty temporary folder beside `out` (its parent, so renames stay on one file
    system); on a normal exit its files replace the previous report in `out` (`swap_in`);
    on any exception nothing in `out` changes. The temporary folder is always removed."""
    os.makedirs(out, exist_ok=True)
    parent = os.path.dirname(os.path.abspath(out))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.report-", dir=parent)
    try:
        yield tmp
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["MANIFEST_NAME", "staged", "swap_in"]
