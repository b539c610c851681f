"""The presets table (`analysis.presets`) and `python -m costmodel --model` share one default
sequence length (`costmodel.step.default_seq`) and agree on the step they cost."""

from __future__ import annotations

import json

import pytest

from analysis.presets import speedup_table
from costmodel.cli import main
from costmodel.presets_hardware import HARDWARE
from costmodel.presets_models import MODELS
from costmodel.step import DEFAULT_MAX_SEQ, default_seq


def test_one_default_sequence_length_for_the_cli_and_the_presets_table(capsys):
    """The CLI and analysis.presets both take `default_seq`: the context, capped at 4096."""
    assert DEFAULT_MAX_SEQ == 4096
    assert default_seq(MODELS["llama2-7b"]) == 4096 and default_seq(MODELS["gpt2-small"]) == 1024
    assert default_seq(MODELS["llama3.2-1b"]) == 4096  # a 131072 context, capped
    out = _run_json(capsys, "--model", "llama3.2-1b", "--json")
    table = speedup_table(HARDWARE["a100-80gb"]).set_index("model")
    assert out["config"]["seq"] == table.loc["llama3.2-1b", "seq"] == 4096
    assert table.loc["llama3.2-1b", "full_step_s"] == pytest.approx(out["methods"]["full"]["step_time_s"])


def _run_json(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)
