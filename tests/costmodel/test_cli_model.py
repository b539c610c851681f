"""`python -m costmodel --model ...`: JSON, table, --list, custom shapes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from costmodel.cli import main
from costmodel.presets_hardware import HARDWARE
from costmodel.presets_models import MODELS, param_count

ISSUE_EXAMPLE = ["--model", "gpt3-175b", "--hardware", "v100", "--method", "full,lora", "--rank", "4",
                 "--targets", "q,v", "--batch", "1", "--seq", "2048", "--precision", "fp16-mixed",
                 "--optimizer", "adamw"]


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_issue_example_json(capsys):
    out = run_json(capsys, *ISSUE_EXAMPLE)
    full, lora = out["methods"]["full"], out["methods"]["lora"]
    for rec in (full, lora):
        for key in ("step_time_s", "tokens_per_s", "flops", "trainable_params", "adapter_checkpoint_bytes"):
            assert rec[key] > 0
        mem = rec["memory"]
        parts = ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes", "transient_bytes")
        assert mem["total_bytes"] == pytest.approx(sum(mem[k] for k in parts))
        assert rec["tokens_per_s"] == pytest.approx(2048 / rec["step_time_s"])
    # neither step fits one 32 GB V100: no speedup (issue 10 §8), the step times stay
    assert out["speedup"] is None and out["speedup_note"] == "no speedup: full does not fit, lora does not fit"
    assert full["step_time_s"] > lora["step_time_s"]
    assert out["memory_ratio"] == pytest.approx(full["memory"]["total_bytes"] / lora["memory"]["total_bytes"])
    assert out["memory_ratio"] > 1
    assert lora["trainable_params"] == 2 * 2 * 96 * 12288 * 4
    assert full["trainable_params"] == param_count(MODELS["gpt3-175b"])
    assert out["time_basis"]["label"] == "unfitted"
    assert full["fits_in_memory"] is False  # 175B on one 32 GB V100


def test_table_output(capsys):
    assert main(ISSUE_EXAMPLE) == 0
    text = capsys.readouterr().out
    assert text.startswith("DOES NOT FIT on one v100 (32.00 GB): full needs ")
    for needle in ("step time", "memory total", "no speedup: full does not fit", "unfitted", "trainable params"):
        assert needle in text
    assert "speedup (full / lora step time)" not in text


def test_list_prints_every_preset(capsys):
    assert main(["--list"]) == 0
    text = capsys.readouterr().out
    for name in [*MODELS, *HARDWARE]:
        assert f" {name} " in text


def test_custom_shape_matches_the_preset_it_spells(capsys):
    custom = run_json(capsys, "--d-model", "4096", "--layers", "32", "--heads", "32", "--ffn", "11008",
                      "--vocab", "32000", "--seq", "4096", "--mlp", "swiglu", "--method", "lora")
    preset = run_json(capsys, "--model", "llama2-7b", "--method", "lora")
    assert custom["model"]["params"] == preset["model"]["params"] == 6_738_415_616
    assert custom["methods"]["lora"]["flops"] == pytest.approx(preset["methods"]["lora"]["flops"])
    gqa = run_json(capsys, "--model", "llama2-7b", "--kv-heads", "8", "--method", "full")
    assert gqa["model"]["kv_heads"] == 8 and gqa["model"]["params"] < 6_738_415_616


def test_measured_profile_path(capsys, tmp_path):
    path = tmp_path / "gpu.json"
    HARDWARE["a100-40gb"].to_json(path)
    out = run_json(capsys, "--model", "gpt2-small", "--hardware", str(path), "--batch", "4", "--seq", "512")
    assert out["hardware"]["name"] == "a100-40gb"


def test_fitted_profile_path_uses_the_fitted_rates(capsys, tmp_path):
    """A profile carrying analysis's fitted rates (as fitted_profile.json does): the CLI's step
    time is the additive form with those rates, labelled fitted, by hand for SGD in fp32."""
    from costmodel.hardware import HardwareProfile
    from costmodel.step import step_cost

    rates = {"fit_flops_per_s": 2e11, "fit_bytes_per_s": 2e10, "fit_kernel_overhead_s": 1e-6,
             "fit_dispatch_s": 1e-5}
    path = tmp_path / "fitted.json"
    HardwareProfile("measured cpu cpu", {"float32": 2.1e11}, 5e10, 5e-7, measured=True,
                    extra=rates).to_json(path)
    out = run_json(capsys, "--model", "gpt2-small", "--hardware", str(path), "--method", "full",
                   "--batch", "2", "--seq", "128", "--precision", "fp32", "--optimizer", "sgd")
    assert out["time_basis"]["label"] == "fitted"
    total = step_cost(MODELS["gpt2-small"], "full", batch=2, seq=128, precision="fp32",
                      optimizer="sgd").total
    expected = (1e-5 + float(total.flops) / 2e11 + float(total.bytes_moved) / 2e10
                + float(total.kernels) * 1e-6)
    assert out["methods"]["full"]["step_time_s"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("argv,needle", [
    (["--model", "gpt5"], "unknown model 'gpt5'"),
    (["--model", "gpt2-small", "--hardware", "tpu9"], "unknown hardware"),
    (["--model", "gpt2-small", "--rank", "1000"], "rank 1000 exceeds"),
    (["--model", "gpt2-small", "--targets", ","], "empty"),
    (["--model", "gpt2-small", "--targets", ""], "empty"),
    (["--model", "gpt2-small", "--targets", "q,z"], "unknown target 'z'"),
    (["--model", "gpt2-small", "--method", "lora,qlora"], "qlora"),
    (["--model", "gpt2-small", "--precision", "fp8"], "--precision"),
    (["--model", "gpt2-small", "--seq", "4096"], "learned positions"),
    (["--model", "gpt2-small", "--frozen-prefix", "12"], "frozen_prefix"),
    (["--model", "gpt2-small", "--frozen-prefix", "-1"], "frozen-prefix"),
    (["--model", "gpt2-small", "--batch", "0"], "--batch"),
    (["--d-model", "512"], "--layers"),
    (["--d-model", "500", "--layers", "2", "--heads", "3"], "not a multiple"),
])
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_module_entry_point_exit_code():
    ok = subprocess.run([sys.executable, "-m", "costmodel", *ISSUE_EXAMPLE, "--json"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "speedup" in json.loads(ok.stdout)
    bad = subprocess.run([sys.executable, "-m", "costmodel", "--model", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
