"""Fixtures of the measure tests."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def x64():
    """float64 inside the test only (finite-difference checks), restored after it whatever the
    test does: `jax.enable_x64` as a context, never a global toggle at import."""
    with jax.enable_x64(True):
        yield
