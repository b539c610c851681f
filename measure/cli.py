"""Shared command-line plumbing: the one `UserError` and argparse `type=` validators."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


class UserError(Exception):
    """Bad input from the user: `main` prints the message on one line and returns 2."""


def one_line(message: object, limit: int = 300) -> str:
    """First line of `message`, clipped: error records and stderr get one line each."""
    text = str(message).strip().splitlines()
    line = text[0] if text else type(message).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not > 0")
    return value


def positive_int_list(text: str) -> tuple[int, ...]:
    """'2,64,256' -> (2, 64, 256); every item an integer > 0."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of integers")
    return tuple(positive_int(t) for t in items)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def choice_list(choices: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """A validator for 'a,b' lists drawn from `choices`."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}s")
        for item in items:
            if item not in choices:
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {item!r}; choose from {', '.join(choices)}"
                )
        return items

    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as one line on stderr and exit status 2 (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {one_line(message)}")
