"""The project's error types, importable by library code (no argparse, no sys.exit).

- `UserError` is bad input from the user. It is a `ValueError`, so library code that raises
  it needs nothing else, and callers that catch ValueError catch it too. Only the command-line
  runner (`costmodel.cliutil.run`) turns it into ``prog: error: ...`` and exit status 2.
- `Interrupted` is SIGINT or SIGTERM arriving while a command runs (raised by the runner's
  signal handler). It is a `KeyboardInterrupt`, so code that keeps what is finished on Ctrl-C
  does the same on SIGTERM; `signum` says which signal it was.
"""

from __future__ import annotations

import signal


class UserError(ValueError):
    """Bad input from the user: printed as one line, exit status 2."""


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT or SIGTERM) arrived; `signum` is its number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


def one_line(message: object, limit: int = 300) -> str:
    """First line of `message`, clipped: stderr and error records get one line each."""
    text = str(message).strip().splitlines()
    line = text[0] if text else type(message).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
