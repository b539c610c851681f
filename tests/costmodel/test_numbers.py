"""Numbers for people: integers or engineering notation, never a float's artifact digits, and
tables whose columns hold their widest value (issue 12, defect 11)."""

from __future__ import annotations

import re

import pytest

from costmodel import cli
from costmodel.cliutil import count, eng


@pytest.mark.parametrize("x, text", [
    (0, "0"), (1, "1.00e0"), (512e-6, "512e-6"), (999.96e3, "1.00e6"), (6.5e15, "6.50e15"),
    (4e19, "40.0e18"), (2.9999999999999999e27, "3.00e27"), (123456789, "123e6"),
])
def test_engineering_notation_by_hand(x, text):
    assert eng(x) == text


@pytest.mark.parametrize("x, text", [
    (0, "0"), (49_408, "49,408"), (999_999_999_999_999, "999,999,999,999,999"), (1e15, "1.00e15"), (3e18, "3.00e18"),
    (2999999999999999949668352.0, "3.00e24"),  # was printed as 2,999,999,999,999,999,949,668,352
])
def test_counts_are_exact_integers_or_engineering(x, text):
    assert count(x) == text


def test_a_huge_model_prints_no_artifact_digits(capsys):
    assert cli.main(["--model", "gpt2-small", "--d-model", "10000000", "--layers", "100000000",
                     "--heads", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\d{1,3}(,\d{3}){4,}", out) is None  # no integer of 13+ digits
    params = re.search(r"gpt2-small \(modified\): (\S+) params", out).group(1)
    assert re.fullmatch(r"\d{1,3}\.?\d*e\d+", params)  # 12·L·d² ≈ 1.2e23: engineering


def test_layer_table_columns_hold_their_widest_value(capsys):
    assert cli.main(["--layer", "block", "--seq", "10000000", "--embed", "64", "--heads", "1",
                     "--batch", "1000", "--rank", "1", "--hardware", "h100-sxm",
                     "--method", "full"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("op "))
    rows = lines[head + 2: next(i for i in range(head, len(lines)) if lines[i].startswith("total"))]
    assert rows and all(len(r) == len(lines[head]) for r in rows)  # nothing pushed a column out
    assert all(len(cell) <= 12 for r in rows for cell in r[47:].split())
