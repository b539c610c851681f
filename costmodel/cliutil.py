"""What every command line of the project shares: one `UserError`, one-line errors, exit 2.

Bad input never ends in a traceback: argparse's own errors become `UserError`, and `run`
prints it (or a ValueError from the model) as one line, ``<prog>: error: <what is wrong>``,
and returns 2. `costmodel`, `measure` and `analysis` all use these; their output files are
written atomically by `costmodel.fileio`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def one_line(message: object, limit: int = 300) -> str:
    """First line of `message`, clipped: stderr and error records get one line each."""
    text = str(message).strip().splitlines()
    line = text[0] if text else type(message).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise `UserError` (one line, exit 2 through `run`), no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UserError(one_line(message))


def run(prog: str, body: Callable[[], int]) -> int:
    """Run a command body; print UserError and ValueError as one line on stderr and return 2."""
    try:
        return body()
    except (UserError, ValueError) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


def csv_list(choices: Sequence[str] | None = None, what: str = "value") -> Callable[[str], tuple[str, ...]]:
    """An argparse `type=` that splits "a,b" and checks each item against `choices`."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(s.strip() for s in text.split(",") if s.strip())
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


def positive_int_list(text: str) -> tuple[int, ...]:
    """An argparse `type=` for "2,64,256": whole numbers > 0."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list of sizes")
    return tuple(positive_int(s) for s in items)


def non_negative_float(text: str) -> float:
    """An argparse `type=` for a finite number ≥ 0 (a time budget, say)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


def positive_float(text: str) -> float:
    """An argparse `type=` for a finite number > 0."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value
