"""What every command line of the project shares: one runner, one-line errors, exit codes.

`run(prog, body, argv)` is the only place that maps exceptions to exit statuses:

- `UserError` or any other ValueError (bad input; library code raises them, see
  `costmodel.errors`) prints ``<prog>: error: <what is wrong>`` on one line and returns 2;
- SIGINT (Ctrl-C) and SIGTERM both stop the body the same way: the runner's handler raises
  `Interrupted` (a KeyboardInterrupt carrying the signal number), the body keeps what is
  finished, and the runner returns 130 (SIGINT) or 143 (SIGTERM); a second signal during that
  shutdown is noted and ignored, so no traceback interrupts the cleanup. Where Python swallows
  the handler's exception (it arrived inside a `__del__` or a garbage-collector callback, such
  as JAX's: "Exception ignored in ..."), the runner keeps it, and `check_stop()` (called by
  long loops between their steps, and by the runner when the body returns) raises it again;
- any other exception prints one line and returns 1.

No traceback is printed unless ``--debug`` is on the command line (`add_debug_flag` adds the
flag to a parser so that ``--help`` lists it). `costmodel`, `measure` and `analysis` all use
these; their output files are written atomically by `costmodel.fileio`.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from costmodel.errors import Interrupted, UserError, one_line

__all__ = [
    "DefaultsHelpFormatter", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_USAGE", "Interrupted",
    "OneLineArgumentParser", "UserError", "add_debug_flag", "bounded_int", "bounded_int_list",
    "count", "csv_list", "eng", "exit_status", "non_negative_float", "one_line", "path_arg",
    "check_stop", "positive_float", "positive_int", "positive_int_list", "run", "stop_signals",
]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's convention; SIGTERM gives 143
DEBUG_FLAG = "--debug"


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise `UserError` (one line, exit 2 through `run`), no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UserError(one_line(message))


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each flag's default, unless its help already says it or there is none
    to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action) or text


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """The global ``--debug`` flag: `run` reads it from argv; this makes the parser accept it."""
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="on an error, also print the Python traceback (for bug reports)")


def exit_status(exc: BaseException) -> int:
    """The exit status for a stop: 128 + the signal number (130 for a plain Ctrl-C)."""
    return exc.exit_status if isinstance(exc, Interrupted) else EXIT_INTERRUPTED


# the stop signals Python swallowed (see `stop_signals`), innermost block last
_SWALLOWED: list[list[Interrupted]] = []


def check_stop() -> None:
    """Raise the `Interrupted` of a stop signal that Python swallowed: its handler ran inside a
    `__del__` or a garbage-collector callback, where an exception is only printed as "Exception
    ignored in ..." and the program goes on. Long loops call this between steps."""
    if _SWALLOWED and _SWALLOWED[-1]:
        raise _SWALLOWED[-1].pop()


@contextmanager
def stop_signals(ignore_after: bool = False) -> Iterator[Callable[[], None]]:
    """SIGINT and SIGTERM raise `Interrupted(signum)` inside the block; yields `shutting_down`,
    which makes any later signal a no-op (noted, not raised) until the block ends. Outside the
    main thread, or where a signal is already ignored (a background job), nothing changes.
    On leaving, the previous handlers come back, or with `ignore_after` both signals are
    ignored from then on (a program about to exit: no window with the default handlers).

    An `Interrupted` that Python swallows (`sys.unraisablehook`, Python docs "sys") is kept,
    not printed, for `check_stop()` to raise where the program can act on it."""
    state = {"stopping": False}
    swallowed: list[Interrupted] = []

    def handle(signum: int, frame: object) -> None:
        if state["stopping"]:
            return  # a second signal while the first one's cleanup runs: let it finish
        state["stopping"] = True
        raise Interrupted(signum)

    def shutting_down() -> None:
        state["stopping"] = True

    def unraisable(info: sys.UnraisableHookArgs) -> None:
        if isinstance(info.exc_value, Interrupted):
            swallowed[:] = [info.exc_value]
        else:
            previous_hook(info)

    previous = {}
    previous_hook = sys.unraisablehook
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handle)
        sys.unraisablehook = unraisable
    _SWALLOWED.append(swallowed)
    try:
        yield shutting_down
    finally:
        _SWALLOWED.pop()
        if sys.unraisablehook is unraisable:
            sys.unraisablehook = previous_hook
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_IGN if ignore_after else old)


def run(prog: str, body: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run `body(argv)` (argv defaults to sys.argv[1:]) and map what it raises to one line on
    stderr and an exit status: 2 for bad input (ValueError, UserError), 130/143 for
    SIGINT/SIGTERM, 1 for anything else; the traceback too only with ``--debug``."""
    exiting = argv is None and threading.current_thread() is threading.main_thread()
    try:
        return _run(prog, body, argv, exiting)
    finally:
        if exiting:
            # the program itself, which only exits from here: a signal now would interrupt
            # the interpreter's exit (JAX's atexit clean-up) with a traceback
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)


def _run(prog: str, body: Callable[[list[str]], int], argv: Sequence[str] | None,
         exiting: bool) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in (args[: args.index("--")] if "--" in args else args)
    with stop_signals(ignore_after=exiting) as shutting_down:
        try:
            status = body(args)
            check_stop()  # a signal Python swallowed and the body never looked at
            shutting_down()
            return status
        except BrokenPipeError:  # `... | head`: the reader left; nothing more to say
            shutting_down()
            sys.stdout = open(os.devnull, "w")  # the recipe of Python's docs for SIGPIPE
            return 128 + signal.SIGPIPE
        except KeyboardInterrupt as exc:
            shutting_down()
            _traceback(debug)
            name = signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"
            print(f"{prog}: interrupted ({name})", file=sys.stderr)
            return exit_status(exc)
        except ValueError as exc:  # UserError included
            shutting_down()
            _traceback(debug)
            print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as exc:
            shutting_down()
            _traceback(debug)
            hint = "" if debug else f" (rerun with {DEBUG_FLAG} for the traceback)"
            print(f"{prog}: error: {type(exc).__name__}: {one_line(exc)}{hint}", file=sys.stderr)
            return EXIT_ERROR


def _traceback(debug: bool) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)


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


def eng(x: float, digits: int = 3) -> str:
    """`x` in engineering notation, exponent a multiple of 3: 6.50e15, 40.0e18, 512e-6."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    exp = 3 * math.floor(math.log10(abs(x)) / 3)
    mant = x / 10.0**exp
    decimals = max(digits - 1 - math.floor(math.log10(abs(mant))), 0)
    if abs(round(mant, decimals)) >= 1000:  # 999.96e3 rounds up to the next exponent
        mant, exp = mant / 1000, exp + 3
        decimals = digits - 1
    return f"{mant:.{decimals}f}e{exp}"


def count(x: float) -> str:
    """A count for people: the exact integer with separators below 10^15 (1,234,567), beyond in
    engineering notation (3.00e18): never a float's artifact digits (2,999,...,949,668,352)."""
    x = float(x)
    if math.isfinite(x) and abs(x) < 1e15:
        return f"{int(round(x)):,}"
    return eng(x)


def bounded_int(high: int, what: str) -> Callable[[str], int]:
    """An argparse `type=` for a size with a physical upper bound (`costmodel.layers.MAX_WIDTH`,
    `MAX_BATCH`, ...): a whole number from 1 to `high`."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > high:
            raise argparse.ArgumentTypeError(
                f"{what} {value:,} is above {high:.0e}, beyond any real {what}")
        return value

    return parse


def bounded_int_list(high: int, what: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse `type=` for "2,64,256": whole numbers from 1 to `high`."""
    one = bounded_int(high, what)

    def parse(text: str) -> tuple[int, ...]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list of sizes")
        return tuple(one(s) for s in items)

    return parse


def path_arg(text: str) -> str:
    """An argparse `type=` for a file or folder: an empty string is not "here"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty string is not a path")
    return text


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
