"""What every command line of the project shares: one-line errors and exit status 2.

Bad input never ends in a traceback: argparse's own errors and `UserError` (or ValueError
from the model) print one line, ``<prog>: error: <what is wrong>``, and the command returns 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are a single line (no usage block) and exit with status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message.splitlines()[0]}\n")


def run(prog: str, body: Callable[[], int]) -> int:
    """Run a command body; turn UserError and ValueError into one line on stderr and 2."""
    try:
        return body()
    except (UserError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


def csv_list(choices: Sequence[str] | None = None, what: str = "value") -> Callable[[str], list[str]]:
    """An argparse `type=` that splits "a,b" and checks each item against `choices`."""

    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {what} list")
        if choices is not None:
            for item in items:
                if item not in choices:
                    raise argparse.ArgumentTypeError(
                        f"unknown {what} {item!r}; choose from {', '.join(choices)}")
        return items

    return parse


def positive_int(text: str) -> int:
    """An argparse `type=` for a size: a whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def positive_int_list(text: str) -> list[int]:
    """An argparse `type=` for "2,64,256": whole numbers > 0."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list of sizes")
    return [positive_int(s) for s in items]
