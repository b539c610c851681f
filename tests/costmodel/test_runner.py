"""The shared command-line runner (`costmodel.cliutil.run`): exit statuses, one-line errors,
SIGINT/SIGTERM as clean stops (real subprocesses and real signals), --debug tracebacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from costmodel.cliutil import check_stop, run
from costmodel.errors import Interrupted, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: a command that says "ready", waits for a signal, and on the stop says "stopping" and cleans
#: up (printing "cleaned"), as a sweep does when it marks its run interrupted; with "wait" the
#: cleanup lasts until a line arrives on stdin, so a test can signal it again mid-cleanup
#: without guessing how long the machine takes to get there.
PROGRAM = textwrap.dedent("""
    import sys, time
    from costmodel.cliutil import exit_status, run

    def body(argv):
        wait, handle = argv[0] == "wait", argv[1] == "handle"
        try:
            print("ready", flush=True)
            time.sleep(30)
            return 0
        except KeyboardInterrupt as exc:
            print("stopping", flush=True)
            if wait:
                sys.stdin.readline()
            print("cleaned", flush=True)
            if handle:
                return exit_status(exc)
            raise

    sys.exit(run("prog", body, sys.argv[1:]))
""")


def _start(wait: bool, handle: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT}
    argv = [sys.executable, "-c", PROGRAM, "wait" if wait else "go", "handle" if handle else "raise"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    # "ready" is printed inside the runner's handler: a signal from now on is the runner's
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("handle", [True, False], ids=["body-returns", "runner-reports"])
@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_ends_cleanly_with_128_plus_its_number(sig, status, handle):
    proc = _start(wait=False, handle=handle)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == status
    assert out.split() == ["stopping", "cleaned"]
    # a body that handles the stop says what it kept itself; otherwise the runner says one line
    assert err.strip() == ("" if handle else f"prog: interrupted ({signal.Signals(sig).name})")


def test_a_second_signal_during_the_cleanup_is_ignored_no_traceback():
    proc = _start(wait=True, handle=False)
    proc.send_signal(signal.SIGTERM)
    # inside the cleanup now (a fixed sleep here raced on a loaded machine: both signals could
    # be pending at once, and Python runs the lower-numbered SIGINT's handler first)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "stopping"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate("\n", timeout=30)  # the signal is sent before the line: it lands mid-cleanup
    assert proc.returncode == 143  # the first signal decides
    assert out.strip() == "cleaned"
    assert "Traceback" not in err and err.strip() == "prog: interrupted (SIGTERM)"


def test_bad_input_is_one_line_and_exit_2(capsys):
    def body(argv):
        raise UserError("--batch must be > 0\nsecond line dropped")

    assert run("prog", body, []) == 2
    assert capsys.readouterr().err == "prog: error: --batch must be > 0\n"


def test_a_library_value_error_is_bad_input_too(capsys):
    assert issubclass(UserError, ValueError)
    assert run("prog", lambda argv: int("x"), []) == 2
    assert capsys.readouterr().err.startswith("prog: error: invalid literal")


def test_an_unexpected_error_is_one_line_and_exit_1_unless_debug(capsys):
    def body(argv):
        raise RuntimeError("boom")

    assert run("prog", body, ["--x"]) == 1
    err = capsys.readouterr().err
    assert err == "prog: error: RuntimeError: boom (rerun with --debug for the traceback)\n"
    assert run("prog", body, ["--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("prog: error: RuntimeError: boom\n")


def test_interrupted_carries_its_signal():
    assert Interrupted(signal.SIGTERM).exit_status == 143 and isinstance(Interrupted(), KeyboardInterrupt)
    assert str(Interrupted(signal.SIGTERM)) == "SIGTERM"


def test_the_runner_restores_the_signal_handlers():
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    run("prog", lambda argv: 0, [])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


class _SignalledInDel:
    """Raises `sig` at its own finalisation: the handler's exception is born inside `__del__`,
    where Python swallows it ("Exception ignored in ..."), as it did in JAX's gc callback."""

    def __init__(self, sig: int):
        self.sig = sig

    def __del__(self):
        signal.raise_signal(self.sig)


@pytest.mark.parametrize("at_the_end", [False, True], ids=["loop-checks", "runner-checks"])
def test_a_stop_signal_python_swallows_still_stops_the_program(capsys, at_the_end):
    seen = []
    hook = sys.unraisablehook

    def body(argv):
        _SignalledInDel(signal.SIGTERM)  # finalised at once: the signal arrives, is swallowed
        seen.append("went on")  # what Python does after swallowing it
        if not at_the_end:
            check_stop()  # a loop's check between steps
            seen.append("next step")
        return 0

    assert run("prog", body, []) == 143
    assert seen == ["went on"]
    err = capsys.readouterr().err
    assert err.strip() == "prog: interrupted (SIGTERM)"  # and no "Exception ignored in" traceback
    check_stop()  # outside the runner nothing is pending: a no-op
    assert sys.unraisablehook is hook  # the runner's hook is gone with it
