"""One writer per folder: an OS file lock, held while a sweep (or a report) writes there.

The lock is ``fcntl.flock`` on a small file in the folder (``sweep.lock`` for a dataset,
``report.lock`` for a report). The OS releases it when the holder's process ends, however it
ends (kill -9 included), so a lock can never outlive its holder. The file also holds one line
of JSON naming the holder (PID, host, start time, command), written after the lock is taken
and emptied on a clean release. So:

- a second writer finds the lock taken and refuses with one line naming the holder;
- a writer that finds the lock free but the file still naming a holder knows that holder died
  without releasing it, takes the lock over and says so.

Why not the ``filelock`` package: its Unix lock opens the file with ``O_TRUNC`` on every
attempt, which would erase the holder's name that a refused writer must print. ``flock`` is
the same system call it uses underneath.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from costmodel.cliutil import UserError, one_line


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock, as written into the lock file."""

    pid: int | None
    host: str
    started_utc: str
    command: str

    def describe(self) -> str:
        pid = "an unknown PID" if self.pid is None else f"PID {self.pid}"
        host = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        when = f", started {self.started_utc}" if self.started_utc else ""
        return f"{pid}{host}{when}"


def _parse_holder(text: str) -> Holder | None:
    text = text.strip()
    if not text:
        return None
    try:
        d = json.loads(text)
        pid = d.get("pid")
        return Holder(int(pid) if pid is not None else None, str(d.get("host", "")),
                      str(d.get("started_utc", "")), str(d.get("command", "")))
    except (ValueError, TypeError, AttributeError):
        return Holder(None, "", "", "")


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 4096)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks).decode("utf-8", errors="replace")


class FolderLock:
    """An exclusive lock on `folder`, file `name` inside it. Use `acquire` / `release`,
    or as a context manager.

    `acquire` raises UserError naming the live holder; after it, `took_over` names a holder
    that had died without releasing the lock (None if there was none).
    """

    def __init__(self, folder: str | os.PathLike, name: str, what: str = "a sweep"):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what
        self.took_over: Holder | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot lock {self.folder}: {one_line(exc.strerror or exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _parse_holder(_read_fd(fd)) if exc.errno in (errno.EAGAIN, errno.EACCES) else None
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(f"cannot lock {self.folder}: {one_line(exc.strerror or exc)}") from None
            who = holder.describe() if holder else "a process that is still starting"
            raise UserError(
                f"{self.folder} is in use by {self.what} ({who}); wait for it to finish or "
                "choose another folder"
            ) from None
        try:
            self.took_over = _parse_holder(_read_fd(fd))
            me = json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(),
                "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join([os.path.basename(sys.executable), *sys.argv])[:500],
            })
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (me + "\n").encode("utf-8"))
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)  # closing releases the flock
            raise UserError(f"cannot lock {self.folder}: {one_line(exc.strerror or exc)}") from None
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the holder line (a clean release) and drop the lock."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # the lock still goes with the descriptor; the next holder says "took over"
        finally:
            os.close(fd)

    def takeover_note(self) -> str:
        """A sentence for the log when the lock was taken over from a dead holder, else ''."""
        if self.took_over is None:
            return ""
        return (f"took over the lock of {self.path.parent}: its holder "
                f"({self.took_over.describe()}) ended without releasing it")

    def __del__(self) -> None:
        # an abandoned lock goes as if its process had died: the holder line stays, and
        # the next holder says it took over
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def live_holder(folder: str | os.PathLike, name: str) -> Holder | None:
    """The holder of `folder`'s lock if a live process holds it now, else None.

    Probes with a shared, non-blocking flock, so it never waits and never writes.
    """
    path = Path(folder) / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _parse_holder(_read_fd(fd)) or Holder(None, "", "", "")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


__all__ = ["FolderLock", "Holder", "live_holder"]
