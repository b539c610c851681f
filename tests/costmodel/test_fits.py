"""Issue 10 §8: a whole-model step that does not fit one device says so first, with how much
it lacks, and no speedup is printed for it (CLI text and JSON); one default sequence length."""

from __future__ import annotations

import json

import pytest

from costmodel.cli import main
from costmodel.memory import memory_fit
from costmodel.presets_hardware import HARDWARE


def _run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_memory_fit_by_hand():
    assert memory_fit(100.0, 80.0).fits is False and memory_fit(100.0, 80.0).lacks_bytes == 20.0
    assert memory_fit(80.0, 80.0).fits is True and memory_fit(80.0, 80.0).lacks_bytes == 0.0
    unknown = memory_fit(1e15, None)
    assert unknown.fits is None and unknown.lacks_bytes == 0.0


def test_a_step_that_does_not_fit_has_no_speedup_json(capsys):
    out = json.loads(_run(capsys, "--model", "llama2-7b", "--hardware", "a100-80gb", "--json"))
    cap = HARDWARE["a100-80gb"].extra["memory_bytes"]
    assert out["capacity_bytes"] == cap == 80e9
    full, lora = out["methods"]["full"], out["methods"]["lora"]
    assert full["fits"] is False and full["lacks_bytes"] == pytest.approx(full["memory"]["total_bytes"] - cap)
    assert lora["fits"] is True and lora["lacks_bytes"] == 0
    assert out["does_not_fit"] == ["full"]
    assert out["speedup"] is None and out["speedup_note"] == "no speedup: full does not fit"
    assert out["memory_ratio"] == pytest.approx(full["memory"]["total_bytes"] / lora["memory"]["total_bytes"])


def test_a_step_that_does_not_fit_is_said_first_in_text(capsys):
    text = _run(capsys, "--model", "llama2-7b", "--hardware", "a100-80gb")
    out = json.loads(_run(capsys, "--model", "llama2-7b", "--hardware", "a100-80gb", "--json"))
    full = out["methods"]["full"]
    first = text.splitlines()[0]
    assert first == (f"DOES NOT FIT on one a100-80gb (80.00 GB): full needs "
                     f"{full['memory']['total_bytes'] / 1e9:,.2f} GB, lacks {full['lacks_bytes'] / 1e9:,.2f} GB")
    assert "speedup (full / lora" not in text and "no speedup: full does not fit" in text


def test_a_step_that_fits_keeps_its_speedup(capsys):
    out = json.loads(_run(capsys, "--model", "gpt2-small", "--json"))
    m = out["methods"]
    assert m["full"]["fits"] is True and m["lora"]["fits"] is True and out["does_not_fit"] == []
    assert out["speedup"] == pytest.approx(m["full"]["step_time_s"] / m["lora"]["step_time_s"])
    text = _run(capsys, "--model", "gpt2-small")
    assert not text.startswith("DOES NOT FIT") and "speedup (full / lora step time)" in text
