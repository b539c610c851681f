"""Data that defeats the model: the blog's results file timed as the blog timed (a jit inside
every call, so each time is mostly compilation), fed to the main job. The report diagnoses it
in its header with the figure behind it, withholds the crossover and the extrapolation,
prints no negative number, and lets no numpy/pandas/statsmodels warning through."""

from __future__ import annotations

import itertools
import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from analysis import crossover

pytestmark = pytest.mark.slow  # three full analyses, ~20 s each on 2 shared cores


@pytest.fixture(scope="module")
def blog_as_written(tmp_path_factory):
    """The blog's wide format (header ``,,,,vanilla,lora``), 108 configs: a fixed 0.27 s of
    compilation per call plus a work term that adds at most ~0.06 s at batch 1024, e = h =
    1024, and 1% noise -- the shape the issue describes (0.27-0.49 s over a FLOP range of
    four orders of magnitude)."""
    rng = np.random.default_rng(0)
    rows = []
    for b, e, h, r in itertools.product((2, 64, 256, 1024), (256, 512, 1024),
                                        (256, 512, 1024), (1, 3, 5)):
        work = 0.06 * b * e * h / 1024**3
        rows.append((b, e, h, r, 0.27 + work + rng.normal(0, 0.003),
                     0.28 + work + rng.normal(0, 0.003)))
    df = pd.DataFrame(rows).set_index([0, 1, 2, 3])
    df.columns = ["vanilla", "lora"]
    df.index.names = [None] * 4
    path = tmp_path_factory.mktemp("blog") / "results.csv"
    df.to_csv(path)
    return str(path)


def _run(argv, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = crossover.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err, caught


def test_the_report_diagnoses_and_withholds(blog_as_written, tmp_path, capsys):
    rc, out, err, caught = _run(["--data", blog_as_written, "--out", str(tmp_path / "o"),
                                 "--no-plots", "--bootstrap", "40"], capsys)
    assert rc == 0
    first = out.splitlines()[0]
    assert first.startswith("TIMES DO NOT SCALE WITH THE WORK: time ∝ FLOPs^0.0")
    prose = " ".join(out.split())  # the header is wrapped at 100 columns
    assert "Likely cause: per-call compilation or dispatch" in prose
    assert "Crossover and extrapolation withheld." in prose
    assert "Crossover along" not in out and "Extrapolation at" not in out
    # no negative number anywhere: a minus sign not inside a word or a range (16-65536)
    assert not re.search(r"(?<![\w.\d])-\d", out), out
    assert max(len(line) for line in out.splitlines()) <= 100
    # no numerical warning reached the terminal or escaped the call
    assert not [w for w in caught if w.category is not DeprecationWarning], \
        [str(w.message) for w in caught]
    assert "Warning" not in err and err.strip().startswith("analysis took")
    assert not (tmp_path / "o" / "crossover.csv").exists()
    assert not (tmp_path / "o" / "extrapolation.csv").exists()


def test_the_json_says_why_and_holds_no_negative_number(blog_as_written, tmp_path, capsys):
    rc, out, _, _ = _run(["--data", blog_as_written, "--out", str(tmp_path / "o"), "--no-plots",
                          "--bootstrap", "40", "--json"], capsys)
    assert rc == 0
    obj = json.loads(out)
    assert obj["withheld"] and obj["crossover"] == [] and obj["extrapolation"] == []
    sc = obj["scaling"]
    assert not sc["scales_with_work"] and sc["cause"] == "per_call_compilation_or_dispatch"
    assert sc["elasticity"] < 0.25 and sc["flop_span"] > 1000 and sc["fixed_share"] > 0.5
    for f in obj["factors"]:
        for k in ("estimate", "ci_low", "ci_high"):
            assert f[k] is None or f[k] >= 0, f


def test_our_own_quick_data_scales(fixture_csv, fixture_profile, tmp_path, capsys):
    """The same check passes data that does follow the work (the recorded quick grid)."""
    rc, out, _, _ = _run(["--data", fixture_csv, "--profile", fixture_profile, "--out",
                          str(tmp_path / "o"), "--no-plots", "--bootstrap", "40", "--json"],
                         capsys)
    obj = json.loads(out)
    assert rc == 0 and not obj["withheld"] and obj["scaling"]["elasticity"] > 0.25
    assert obj["crossover"]
