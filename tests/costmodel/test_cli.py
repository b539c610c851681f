"""`python -m costmodel`: tables, JSON, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest

from costmodel.cli import main


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_single_method_json_top_level(capsys):
    out = run_json(capsys, "--layer", "attention", "--batch", "64", "--embed", "512",
                   "--hidden", "512", "--rank", "3", "--method", "lora")
    for key in ("flops", "bytes", "kernels", "trainable_params"):
        assert isinstance(out[key], (int, float))
    assert out["trainable_params"] == 2 * 3 * (512 + 512)
    matmul = sum(r["flops"] for r in out["ops"] if r["kind"] == "matmul")
    assert matmul == 123_600_896


def test_methods_and_speedup(capsys):
    out = run_json(capsys, "--method", "full,lora", "--hardware", "a100-80gb", "--crossover")
    assert set(out["methods"]) == {"full", "lora"}
    full, lora = out["methods"]["full"], out["methods"]["lora"]
    assert out["speedup"] == pytest.approx(full["time"]["time_s"] / lora["time"]["time_s"])
    assert out["crossover"]["limit_speedup"] == pytest.approx(2.0, rel=1e-3)


def test_table_output(capsys):
    assert main(["--method", "lora_merged", "--batch", "2", "--embed", "256", "--rank", "1"]) == 0
    text = capsys.readouterr().out
    assert "ΔWq=Aq·Bq" in text and "dWq' of Q=X·Wq'" in text and "total:" in text


@pytest.mark.parametrize("argv,needle", [
    (["--batch", "0"], "--batch"),
    (["--embed", "-4"], "--embed"),
    (["--rank", "600", "--embed", "512"], "rank 600 exceeds"),
    (["--layer", "conv"], "--layer"),
    (["--method", "lora,qlora"], "qlora"),
    (["--targets", "q,x"], "unknown target 'x'"),
    (["--targets", ","], "empty"),
    (["--dtype", "int8"], "--dtype"),
    (["--hardware", "tpu9"], "unknown hardware"),
    (["--crossover"], "--crossover needs --hardware"),
    (["--seq", "4"], "block only"),
])
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == ""
    assert len(lines) == 1 and needle in lines[0]


@pytest.mark.parametrize("argv,needle", [
    (["--batch", "0"], "--batch"),
    (["--rank", "600", "--embed", "512"], "rank 600 exceeds"),
    (["--method", "lora,qlora"], "qlora"),
    (["--targets", "q,x"], "unknown target 'x'"),
    (["--hardware", "tpu9"], "unknown hardware"),
])
def test_bad_input_subprocess(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "costmodel", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_import_does_not_load_jax():
    code = "import costmodel, costmodel.cli, sys; assert 'jax' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_atomic_output_keeps_the_old_file_on_failure(tmp_path):
    from costmodel.fileio import atomic_output, atomic_write_text

    path = tmp_path / "result.csv"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_output(path) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.csv"]
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n" and len(list(tmp_path.iterdir())) == 1
