"""python -m measure.sweep on whole models: the named grid, the custom form, bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from measure import grids, sweep
from measure.schema import validate


@pytest.mark.parametrize("argv, match", [
    (["--model", "gpt2-small", "--batch", "1", "--seq", "8", "--head", "pooler"], "invalid choice: 'pooler'"),
    (["--model", "gpt2-small", "--batch", "1", "--seq", "8", "--optimizer", "adam"], "invalid choice: 'adam'"),
    (["--model", "gpt2-small", "--batch", "1", "--seq", "8", "--targets", "q,up"], "unknown target 'up'"),
    (["--model", "gpt2-small", "--batch", "1", "--seq", "8", "--layers", "0"], "--layers: 0 must be > 0"),
    (["--model", "gpt2-small", "--batch", "1", "--seq", "8", "--d-model", "64", "--heads", "3"],
     "heads 3 do not divide d_model 64"),
    (["--model", "llama2-70b", "--batch", "1", "--seq", "8", "--d-model", "64", "--heads", "4",
      "--kv-heads", "3"], "kv_heads 3 do not divide heads 4"),
    (["--model", "gpt2-small", "--batch", "1", "--seq", "8", "--grad-accum", "0"], "--grad-accum: 0 must be > 0"),
    (["--model", "gpt-5", "--batch", "1", "--seq", "8"], "unknown model 'gpt-5'"),
    (["--model", "gpt2-small", "--batch", "1"], "needs --seq"),
    (["--grid", "models", "--precision", "bf16"], "drop --precision"),
    (["--batch", "2", "--embed", "8", "--head", "classifier"], "--head describes a whole model"),
    (["--model", "gpt2-small", "--batch", "1", "--seq", "8", "--layer", "block"], "for layer sweeps"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(sweep_refuses, argv, match):
    sweep_refuses(argv, match)


def test_models_grid_spans_the_sizes_heads_and_options_it_promises():
    grid = grids.models_grid()
    configs = grid.configs
    assert grid.methods == ("full", "lora", "lora_merged") and grid.whole_model
    assert {c.model.d_model for c in configs} >= {64, 1024}
    assert min(c.model.d_model for c in configs) == 64 and max(c.model.d_model for c in configs) == 1024
    assert {c.model.layers for c in configs} == {2, 4, 8}
    assert min(c.batch for c in configs) == 1 and max(c.batch for c in configs) == 32
    assert min(c.seq for c in configs) == 64 and max(c.seq for c in configs) == 256
    assert {c.head for c in configs} == {"lm", "lm-tied", "classifier"}
    assert {c.optimizer for c in configs} == {"sgd", "adamw"} and {c.clip for c in configs} == {True, False}
    assert {c.precision for c in configs} == {"fp32", "bf16-mixed"}
    assert {c.attention for c in configs} == {"naive", "fused"}
    assert any(c.recompute for c in configs) and {c.grad_accum for c in configs} == {1, 2}
    assert len(set(configs)) == len(configs) == 29


@pytest.mark.slow
def test_custom_model_sweep_writes_schema_rows_and_resumes(tmp_path, capsys):
    """The issue's custom form, at toy sizes: rows validate, describe the model, and a rerun
    measures nothing again."""
    out = tmp_path / "out"
    argv = ["--model", "llama2-70b", "--d-model", "32", "--layers", "2", "--vocab", "64",
            "--batch", "1,2", "--seq", "8", "--methods", "full,lora", "--targets", "q,v",
            "--optimizer", "sgd", "--head", "classifier", "--classes", "3", "--budget-s", "0",
            "--min-repeats", "2", "--out", str(out)]
    assert sweep.main(argv) == 0
    df = validate(pd.read_csv(out / "measurements.csv"))
    assert len(df) == 4 and (df["error"] == "").all() and (df["time_median_s"] > 0).all()
    row = df[(df["method"] == "lora") & (df["batch"] == 2)].iloc[0]
    assert (row["layer"], row["model"], row["layers"], row["embed"], row["vocab"]) == ("model", "llama2-70b", 2, 32, 64)
    assert (row["heads"], row["kv_heads"], row["head"], row["n_classes"]) == (1, 1, "classifier", 3)
    # A (32x8) and B (8x32) on q; on v, kv width 32 too: 2 blocks x 2 x 512, + the head 32x3 + 3
    assert row["trainable_params"] == 2 * 2 * (32 * 8 + 8 * 32) + 32 * 3 + 3
    capsys.readouterr()
    assert sweep.main(argv) == 0
    assert "0 configs to measure" in capsys.readouterr().err
