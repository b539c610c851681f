"""python -m measure.collectives and measure.sharded: bad input, and a 2-process run over
jax.distributed on localhost (gloo) whose collectives match their known answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from measure import collective_ops, collectives, comm_store, sharded

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text, expected", [
    ("4096", 4096), ("1K", 1024), ("64k", 65536), ("1M", 1 << 20), ("256MiB", 256 << 20), ("2G", 2 << 30),
])
def test_parse_bytes(text, expected):
    assert collectives.parse_bytes(text) == expected


def test_known_answers_by_hand():
    x = collective_ops.known_input("all_reduce", 3, 2)  # blocks c = 1, 2, 3 and 2c
    assert x.tolist() == [1, 2, 3, 2, 4, 6]
    assert collective_ops.known_answer("all_reduce", x, 2).tolist() == [3, 6, 9, 3, 6, 9]
    assert collective_ops.known_answer("reduce_scatter", x, 2).tolist() == [3, 6, 9]
    assert collective_ops.known_answer("ppermute", x, 2).tolist() == [2, 4, 6, 1, 2, 3]
    g = collective_ops.known_input("all_gather", 4, 2)  # message of 4: blocks of 2
    assert g.tolist() == [1, 2, 2, 4]
    assert collective_ops.known_answer("all_gather", g, 2).tolist() == [1, 2, 2, 4] * 2


def test_message_rounded_to_whole_elements_per_device():
    assert collective_ops.elements(1024, 8, 4) == 256
    assert collective_ops.elements(100, 8, 4) == 32  # 25 floats -> 32, a multiple of 8
    assert collective_ops.elements(1, 2, 4) == 2


def test_dtype_is_an_alias_of_dtypes_and_each_dtype_is_a_config():
    for flag in ("--dtypes", "--dtype"):
        args = collectives.build_parser().parse_args(["--out", "o", flag, "bfloat16"])
        assert tuple(args.dtypes) == ("bfloat16",)
    args = collectives.build_parser().parse_args(
        ["--out", "o", "--devices", "2", "--bytes", "1K", "--dtypes", "float32,bfloat16"])
    assert [c.dtype for c in collectives._configs(args)] == ["float32", "bfloat16"]
    assert collectives.build_parser().parse_args(["--out", "o"]).dtypes == ("float32",)


@pytest.mark.parametrize("argv, match", [
    (["--devices", "1"], "at least 2 devices"),
    (["--bytes", "12X"], "not a size"),
    (["--bytes", "0"], "must be > 0"),
    (["--collectives", "broadcast"], "unknown collective 'broadcast'"),
    (["--full", "--bytes", "1K"], "not both"),
    (["--processes", "2", "--devices", "3"], "not a multiple of --processes"),
    (["--dtype", "float16"], "unknown dtype 'float16'"),
])
def test_collectives_bad_input(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    assert collectives.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m measure.collectives: error: ") and err.count("\n") == 1, err
    assert match in err
    assert not out.exists()


@pytest.mark.parametrize("argv, match", [
    (["--layouts", "dp=3"], "dp=3 does not divide batch 8"),
    (["--layouts", "tp=3"], "tp=3 does not divide heads 8"),
    (["--layouts", "pp=2"], "expected dp=N,tp=M"),
    (["--layouts", "dp=0"], "dp must be"),
    (["--heads", "3"], "heads must divide embed"),
    (["--methods", "lora_merged"], "unknown method"),
])
def test_sharded_bad_input(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    assert sharded.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m measure.sharded: error: ") and err.count("\n") == 1, err
    assert match in err
    assert not out.exists()


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *argv], check=False, capture_output=True, text=True, env=env, timeout=240)


@pytest.mark.slow
def test_two_processes_over_jax_distributed_give_correct_collectives(tmp_path):
    """2 processes joined by jax.distributed on localhost (gloo): every collective is checked
    against its known answer inside each process before it is timed; a mismatch would be
    recorded as an error. Then a rerun resumes: nothing left to do."""
    out = tmp_path / "out"
    proc = _run(["-m", "measure.collectives", "--out", str(out), "--processes", "2",
                 "--devices", "2", "--bytes", "1K"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = comm_store.read_table(out, "collectives")
    assert sorted(df["collective"]) == sorted(collectives.COLLECTIVES)
    assert (df["error"] == "").all() and (df["processes"] == 2).all() and (df["devices"] == 2).all()
    assert (df["time_median_s"] > 0).all() and (df["n_repeats"] == collectives.MULTIPROCESS_REPEATS).all()
    assert np.all(df["message_bytes"] == 1024)
    again = _run(["-m", "measure.collectives", "--out", str(out), "--processes", "2",
                  "--devices", "2", "--bytes", "1K"])
    assert again.returncode == 0 and "0 configs to measure" in again.stderr


@pytest.mark.slow
def test_one_process_run_resumes_and_refuses_another_machine(tmp_path):
    out = tmp_path / "out"
    argv = ["-m", "measure.collectives", "--out", str(out), "--devices", "2", "--bytes", "1K,4K",
            "--collectives", "all_reduce,ppermute", "--budget-s", "0", "--min-repeats", "3"]
    proc = _run(argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = comm_store.read_table(out, "collectives")
    assert len(df) == 4 and (df["error"] == "").all() and (df["processes"] == 1).all()
    run = comm_store.read_run(out, "collectives")
    run["fingerprint"]["device_kind"] = "another"
    (out / "collectives.run.json").write_text(__import__("json").dumps(run))
    again = _run(argv)
    assert again.returncode == 2 and "different device" in again.stderr
