"""Sweeps spread over workers: --shard K/N, measure.merge, measure.cluster (submitit, local)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from measure import dataset, merge, sweep
from measure.fingerprint import CHECKED_FINGERPRINT

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "tests" / "data" / "quick_cpu.csv"
FP = {k: f"fake-{k}" for k in CHECKED_FINGERPRINT}


@given(st.integers(0, 60), st.integers(1, 9), st.integers(0, 10**6))
def test_shards_are_disjoint_and_cover_the_shuffled_order(n_configs, n_shards, seed):
    import random

    order = list(range(n_configs))
    random.Random(seed).shuffle(order)
    parts = [sweep.shard_of(order, (k, n_shards)) for k in range(1, n_shards + 1)]
    assert sorted(i for p in parts for i in p) == list(range(n_configs))
    assert all(abs(len(p) - n_configs / n_shards) < 1 for p in parts)  # balanced
    assert parts[0] == order[::n_shards]


@pytest.mark.parametrize("text", ["0/2", "3/2", "2", "a/b", "1/0", "1/2/3", "-1/2", ""])
def test_malformed_shard_is_one_line_exit_2(tmp_path, capsys, text):
    out = tmp_path / "out"
    assert sweep.main(["--batch", "2", "--embed", "8", f"--shard={text}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--shard" in err and "K/N" in err and err.count("\n") == 1, err
    assert not out.exists()


def _records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records"))


def _shard(tmp_path: Path, name: str, rows: pd.DataFrame, fp=FP) -> Path:
    out = tmp_path / name
    session = dataset.Session(session_id=name, started_utc="t", argv=[], grid={}, seeds={}, policy={})
    od = dataset.open_out_dir(out, fp=fp, session=session)
    for rec in _records(rows):
        od.append(rec)
    od.finish("complete")
    return out


@pytest.fixture(scope="module")
def quick() -> pd.DataFrame:
    return dataset.read_csv(QUICK)


def test_merge_unions_disjoint_shards(tmp_path, quick, capsys):
    a = _shard(tmp_path, "a", quick.iloc[::2])
    b = _shard(tmp_path, "b", quick.iloc[1::2])
    assert merge.main([str(a), str(b), "--out", str(tmp_path / "m")]) == 0
    got = dataset.read_csv(tmp_path / "m" / dataset.CSV_NAME)
    assert len(got) == len(quick)
    from measure.schema import KEY

    key = list(KEY)
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True)[["time_median_s", *key]],
        quick.sort_values(key).reset_index(drop=True)[["time_median_s", *key]],
    )
    run = json.loads((tmp_path / "m" / dataset.RUN_NAME).read_text())
    assert [m["path"] for m in run["merged_from"]] == [str(a), str(b)]
    assert len(run["sessions"]) == 2 and run["status"] == "complete"
    # the merged folder is a dataset the sweep can resume
    assert len((tmp_path / "m" / dataset.JSONL_NAME).read_text().splitlines()) == len(quick)


def test_merge_refuses_shards_of_different_devices(tmp_path, quick, capsys):
    a = _shard(tmp_path, "a", quick.iloc[:4])
    b = _shard(tmp_path, "b", quick.iloc[4:8], fp={**FP, "device_kind": "NVIDIA H100"})
    out = tmp_path / "m"
    assert merge.main([str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m measure.merge: error: ") and err.count("\n") == 1
    assert "different device" in err and "device_kind" in err and "--force" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".m")]
    assert merge.main([str(a), str(b), "--out", str(out), "--force"]) == 0
    assert len(dataset.read_csv(out / dataset.CSV_NAME)) == 8


def test_merge_refuses_overlapping_shards(tmp_path, quick, capsys):
    a = _shard(tmp_path, "a", quick.iloc[:6])
    b = _shard(tmp_path, "b", quick.iloc[4:10])
    out = tmp_path / "m"
    assert merge.main([str(a), str(b), "--out", str(out)]) == 2
    assert "both hold" in capsys.readouterr().err
    assert not out.exists()
    assert merge.main([str(a), str(b), "--out", str(out), "--force"]) == 0
    assert len(dataset.read_csv(out / dataset.CSV_NAME)) == 10


@pytest.mark.parametrize("case, match", [
    ("exists", "exists"), ("missing", "not a folder"), ("empty", "no measurements"),
    ("twice", "given twice"),
])
def test_merge_bad_input(tmp_path, quick, capsys, case, match):
    a = _shard(tmp_path, "a", quick.iloc[:2])
    out = tmp_path / "m"
    args = [str(a), str(tmp_path / "b")]
    if case == "exists":
        out.mkdir()
        args = [str(a)]
    elif case == "empty":
        (tmp_path / "b").mkdir()
    elif case == "twice":
        args = [str(a), str(a)]
    assert merge.main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_cluster_runs_shards_with_submitits_local_executor_and_merges(tmp_path):
    """Two shards as a submitit job array on the local executor, merged: every config once."""
    pytest.importorskip("submitit")
    out = tmp_path / "c"
    tiny = ["--variant", "seed", "--batch", "2", "--embed", "8,12,16", "--hidden", "8", "--rank", "1",
            "--methods", "full", "--budget-s", "0", "--min-repeats", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "measure.cluster", "--shards", "2", "--executor", "local",
         "--out", str(out), "--", *tiny], check=False, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = [dataset.read_csv(out / f"shard-{k}-of-2" / dataset.CSV_NAME) for k in (1, 2)]
    assert sorted(len(p) for p in parts) == [1, 2]
    merged = dataset.read_csv(out / "merged" / dataset.CSV_NAME)
    assert sorted(merged["embed"]) == [8, 12, 16]
    assert (merged["error"] == "").all()


def test_cluster_bad_input_is_one_line(tmp_path, capsys):
    from measure import cluster

    assert cluster.main(["--shards", "2", "--out", str(tmp_path / "c"), "--", "--grid", "nope"]) == 2
    assert "sweep arguments" in capsys.readouterr().err
    assert cluster.main(["--shards", "2", "--out", str(tmp_path / "c"), "--", "--grid", "quick",
                         "--shard", "1/2"]) == 2
    assert "set per task" in capsys.readouterr().err
    assert cluster.main(["--shards", "0", "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()
