"""Test-wide settings: the CPU backend and a non-interactive plot backend, before any import."""

import os
import signal

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

# A shell that starts a job in the background (CI runners, `cmd &`) hands it SIGINT ignored, and
# an ignored signal stays ignored in every child: the tests that Ctrl-C a real subprocess would
# then test nothing. A handled signal is reset to its default in a child, so handle it here.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
