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


@pytest.fixture
def sweep_refuses(tmp_path, capsys):
    """check(argv, match): `python -m measure.sweep argv --out DIR` exits 2 with one line
    holding `match`, and writes nothing."""
    from measure import sweep

    def check(argv, match):
        out = tmp_path / "out"
        assert sweep.main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
        assert not out.exists()

    return check
