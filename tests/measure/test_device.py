"""python -m measure.device writes a file that loads as a costmodel HardwareProfile."""

from __future__ import annotations

import pytest

from costmodel.hardware import HardwareProfile
from measure import device

TINY = ["--max-n", "64", "--copy-mib", "1", "--repeats", "2", "--target-call-s", "0.005"]


@pytest.mark.slow
def test_profile_loads_as_hardware_profile(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert device.main([*TINY, "--out", str(out)]) == 0
    profile = HardwareProfile.from_json(out)
    assert profile.measured and "measured by measure.device" in profile.source
    assert set(profile.peak_flops_per_s) == {"float32", "bfloat16"}
    assert all(rate > 0 for rate in profile.peak_flops_per_s.values())
    assert profile.mem_bandwidth_bytes_per_s > 0
    # kernel vs dispatch overhead is a timing: benchmarks/bench_device.py prints it
    assert profile.kernel_overhead_s >= 0 and profile.extra["dispatch_overhead_s"] > 0
    assert profile.extra["copy_bytes"] == 2 * 2**20
    # whether a call reached --target-call-s is a timing (a loaded machine can stall a 64²
    # matmul past 5 ms): only the recorded form here; test_matmul_search_* pins the logic
    assert profile.extra["matmul_saturated_float32"] in (0.0, 1.0)
    assert profile.extra["matmul_calls_per_sample_float32"] >= 1
    assert profile.extra["copy_calls_per_sample"] >= 1
    assert "GFLOP/s" in capsys.readouterr().err
    # an existing profile is replaced
    assert device.main([*TINY, "--dtypes", "float32", "--out", str(out)]) == 0
    assert set(HardwareProfile.from_json(out).peak_flops_per_s) == {"float32"}


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--dtypes", "float16"], "unknown dtype 'float16'"),
        (["--max-n", "0"], "0 must be > 0"),
        (["--copy-mib", "-1"], "-1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, match):
    assert device.main([*argv, "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert not (tmp_path / "p.json").exists()


def test_foreign_out_is_not_overwritten(tmp_path, capsys):
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"my": "notes"}')
    assert device.main([*TINY, "--out", str(foreign)]) == 2
    assert "holds something else" in capsys.readouterr().err
    assert foreign.read_text() == '{"my": "notes"}'
    assert device.main([*TINY, "--out", str(tmp_path)]) == 2
    assert device.main([*TINY, "--out", str(tmp_path / "missing" / "p.json")]) == 2


def test_matmul_search_stops_once_a_call_reaches_the_target(monkeypatch):
    # any call takes >= 1 ns: saturated at the first size, timed one call per sample
    hit = device.matmul_flops_per_s("float32", max_n=4096, target_call_s=1e-9, repeats=1)
    assert hit.saturated and hit.n == 256 and hit.calls_per_sample == 1 and hit.flops_per_s > 0
    # stopped by max_n instead: the flag says so, and k batches the fast calls. The probe call
    # is faked at 1 ms (a real one is a timing: a loaded machine can stall it past any target),
    # so k = ceil(50 ms / 1 ms) = 50 exactly
    monkeypatch.setattr(device, "_blocked_call_s", lambda call, args: 1e-3)
    capped = device.matmul_flops_per_s("float32", max_n=128, target_call_s=0.05, repeats=1)
    assert not capped.saturated and capped.n == 128 and capped.calls_per_sample == 50
    assert capped.flops_per_s > 0


def test_calls_per_sample_reaches_the_target_within_the_cap():
    assert device.calls_per_sample(0.1, 0.05, 10_000) == 1
    assert device.calls_per_sample(1e-3, 0.05, 10_000) == 50
    assert device.calls_per_sample(1e-9, 0.05, cap=7) == 7


def test_dtype_is_an_alias_of_dtypes():
    for flag in ("--dtypes", "--dtype"):
        args = device.build_parser().parse_args(["--out", "p.json", flag, "bfloat16"])
        assert tuple(args.dtypes) == ("bfloat16",)


def test_gpu_sized_defaults():
    args = device.build_parser().parse_args(["--out", "p.json"])
    assert args.max_n == 16384
