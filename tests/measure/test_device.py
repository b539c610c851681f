"""python -m measure.device writes a file that loads as a costmodel HardwareProfile."""

from __future__ import annotations

import pytest

from costmodel.hardware import HardwareProfile
from measure import device

TINY = ["--max-n", "64", "--copy-mib", "1", "--repeats", "2"]


def test_profile_loads_as_hardware_profile(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert device.main([*TINY, "--out", str(out)]) == 0
    profile = HardwareProfile.from_json(out)
    assert profile.measured and "measured by measure.device" in profile.source
    assert set(profile.peak_flops_per_s) == {"float32", "bfloat16"}
    assert all(rate > 0 for rate in profile.peak_flops_per_s.values())
    assert profile.mem_bandwidth_bytes_per_s > 0 and profile.kernel_overhead_s >= 0
    assert profile.extra["dispatch_overhead_s"] > 0 and profile.extra["copy_bytes"] == 2 * 2**20
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
