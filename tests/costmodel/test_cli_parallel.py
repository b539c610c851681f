"""`python -m costmodel --model … --gpus N`: layout search, explicit layouts, fitted links,
methods that do not fit, one-line errors."""

from __future__ import annotations

import json

import pytest

from costmodel.cli import main
from costmodel.comm import FIT_COMM_KEYS, Interconnect, collective_time
from costmodel.presets_hardware import HARDWARE
from costmodel.presets_models import MODELS, param_count


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_search_on_eight_devices(capsys):
    out = run_json(capsys, "--model", "gpt2-small", "--gpus", "8", "--seq", "512", "--method", "full,lora")
    assert out["parallel_config"]["global_batch"] == 8  # --batch 1 × 8 devices
    for rec in out["methods"].values():
        lay = rec["layout"]
        assert lay["dp"] * lay["tp"] * lay["pp"] == 8
        assert lay["dp"] * lay["micro_batch"] * lay["n_micro"] == 8
        assert rec["fits"] and rec["lacks_bytes"] == 0 and rec["layout_choice"] == "fastest_fitting"
        assert rec["tokens_per_s"] == pytest.approx(8 * 512 / rec["step_time_s"])
        assert rec["tokens_per_s_per_device"] == pytest.approx(rec["tokens_per_s"] / 8)
        assert rec["fewest_gpus"] == 1  # 124M parameters fit one 80 GB device
        assert 0 <= rec["comm_share"] < 1
    assert out["speedup"] == pytest.approx(
        out["methods"]["full"]["step_time_s"] / out["methods"]["lora"]["step_time_s"])
    assert out["does_not_fit"] == [] and out["capacity_bytes"] == 80e9  # A100 80 GB
    assert out["parallel_config"]["fewest_gpus_limit"] == 8192


def test_pure_data_parallel_work_per_device_is_the_one_device_step(capsys):
    """dp = 8, one sequence per replica, ZeRO 0: each device runs the one-device step of batch
    1 (forward, backward, the whole optimizer), so its FLOPs, bytes and kernels are those
    `python -m costmodel --batch 1` prints."""
    common = ["--model", "gpt2-small", "--seq", "512", "--method", "full,lora"]
    par = run_json(capsys, *common, "--layout", "dp=8", "--global-batch", "8", "--no-fewest")
    one = run_json(capsys, *common, "--batch", "1")
    for m in ("full", "lora"):
        p, o = par["methods"][m], one["methods"][m]
        assert (p["flops_per_device"], p["bytes_moved_per_device"], p["kernels_per_device"]) == \
            (o["flops"], o["bytes"], o["kernels"])


def test_explicit_layout_lists_its_collectives(capsys):
    out = run_json(capsys, "--model", "gpt2-small", "--layout", "dp=2,tp=2,pp=2,zero=1", "--seq", "256",
                   "--global-batch", "8", "--method", "full", "--no-fewest")
    rec = out["methods"]["full"]
    assert out["cluster"]["gpus"] == 8
    assert rec["layout"] == {"dp": 2, "tp": 2, "pp": 2, "zero": 1, "micro_batch": 1, "n_micro": 4,
                             "global_batch": 8}
    first = {c["purpose"]: c for c in rec["collectives"] if c["stage"] == "first"}
    assert first["tp_block_forward"]["count"] == 2 * 6  # two per block, six blocks per stage
    assert first["tp_block_forward"]["message_bytes"] == 256 * 768 * 2
    assert first["dp_grad_reduce_scatter"]["per"] == "step"
    assert first["pp_activation_send"]["kind"] == "p2p"
    assert "fewest_gpus" not in rec and rec["layout_choice"] == "given"
    assert rec["time"]["bubble_fraction"] == pytest.approx(1 / 5)  # (pp−1)/(m+pp−1), m = 4


def test_a_method_that_fits_nowhere_gets_no_speedup(capsys):
    argv = ["--model", "gpt3-175b", "--hardware", "v100", "--gpus", "8", "--interconnect", "nvlink2,ib-hdr",
            "--precision", "fp16-mixed", "--no-fewest"]
    out = run_json(capsys, *argv)
    full, lora = out["methods"]["full"], out["methods"]["lora"]
    assert not full["fits"] and not lora["fits"]
    # 16 bytes per parameter of model state sharded over 8 devices at best exceeds 32 GB
    assert full["memory"]["total_bytes"] >= 16 * param_count(MODELS["gpt3-175b"]) / 8
    assert full["lacks_bytes"] == pytest.approx(full["memory"]["total_bytes"] - 32e9)
    assert out["speedup"] is None and "does not fit" in out["speedup_note"]
    assert out["does_not_fit"] == ["full", "lora"] and out["capacity_bytes"] == 32e9
    assert full["layout_choice"] == lora["layout_choice"] == "least_memory"
    assert out["parallel_config"]["fewest_gpus_limit"] is None  # --no-fewest
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "no speedup" in text and "speedup (full" not in text and "lacks" in text


def test_fitted_alpha_beta_replace_the_preset(tmp_path, capsys):
    data = HARDWARE["a100-80gb"].to_dict()
    a_key, b_key = FIT_COMM_KEYS["intra"]
    # as analysis.comm writes it: the link's scalars beside a nested table of per-group fits
    data["extra"] |= {a_key: 2e-5, b_key: 5e9, "comm": {"source": "analysis.comm", "alpha_beta": []}}
    path = tmp_path / "fitted_profile.json"
    path.write_text(json.dumps(data))
    out = run_json(capsys, "--model", "gpt2-small", "--hardware", str(path), "--layout", "dp=4",
                   "--seq", "256", "--method", "lora", "--no-fewest", "--overlap", "0")
    intra = out["cluster"]["intra"]
    assert intra["measured"] and intra["latency_s"] == 2e-5 and intra["bandwidth_bytes_per_s"] == 5e9
    rec = out["methods"]["lora"]
    (ar,) = [c for c in rec["collectives"] if c["purpose"] == "dp_grad_allreduce"]
    assert ar["link"] == "intra"
    # with no overlap the all-reduce is wholly exposed: its α-β time is in the step
    t_ar = float(collective_time("all-reduce", ar["message_bytes"], 4, Interconnect("fit", 5e9, 2e-5)))
    assert rec["time"]["dp_comm_s"] == pytest.approx(t_ar)


@pytest.mark.parametrize("argv,needle", [
    (["--gpus", "8", "--layout", "dp=2,tp=2,pp=1"], "≠ 8"),
    (["--gpus", "4", "--layout", "tp=8"], "≠ 4"),
    (["--layout", "tp=5"], "does not divide the 12 heads"),
    (["--layout", "pp=13"], "exceeds the 12 layers"),
    (["--gpus", "8", "--interconnect", "nvlink9,ib-hdr"], "unknown interconnect"),
    (["--gpus", "0"], "--gpus"),
    (["--gpus", "8", "--overlap", "1.5"], "--overlap"),
    (["--gpus", "8", "--layout", "dp=8,zero=4"], "ZeRO stage"),
    (["--gpus", "8", "--layout", "dp=x"], "whole number"),
    (["--gpus", "8", "--layout", "dp=2,tp=2,dp=4"], "dp given twice"),
    (["--gpus", "8", "--layout", ""], "empty layout"),
    (["--gpus", "8", "--layout", "dp=-8"], ">= 1"),
    (["--gpus", "-8"], "--gpus"),
    (["--gpus", "8", "--gpus-per-node", "0"], "--gpus-per-node"),
    (["--gpus", "8", "--interconnect", ""], "--interconnect"),
    (["--gpus", "8", "--global-batch", "7", "--layout", "dp=2,tp=4"], "not a multiple"),
    (["--gpus", "8", "--interconnect", "nvlink3,ib-hdr,pcie4"], "INTRA,INTER"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    assert main(["--model", "gpt2-small", "--no-fewest", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and err.count("\n") == 0
    assert err.startswith("python -m costmodel: error:") and needle in err
