"""python -m measure.sweep end to end: bad input, resume, errors, Ctrl-C and kill -9 mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from measure import dataset, sweep, sweep_config

REPO = Path(__file__).resolve().parents[2]
#: tiny, fast sweeps: the blog's code at toy sizes, two methods, minimal repeats
TINY = ["--variant", "seed", "--batch", "2", "--hidden", "8", "--rank", "1",
        "--budget-s", "0", "--min-repeats", "2"]


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())} if path.exists() else {}


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "measurements.jsonl").read_text().splitlines() if x]


def _keys(out: Path) -> list[tuple]:
    return [dataset.record_key(r) for r in _lines(out)]


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--grid", "nope"], "invalid choice: 'nope'"),
        (["--grid", "quick", "--methods", "full,qlora"], "unknown method 'qlora'"),
        (["--grid", "quick", "--dtype", "float16"], "unknown dtype 'float16'"),
        (["--grid", "quick", "--dtypes", "float32,bfloat16"], "one dtype per sweep"),
        (["--batch", "0", "--embed", "8"], "0 must be > 0"),
        (["--batch", "2", "--embed", "8", "--hidden", "-4"], "-4"),
        (["--batch", "2", "--embed", "8", "--hidden", "4", "--rank", "5"], "rank 5 exceeds min"),
        (["--batch", "2", "--embed", "8", "--variant", "seed", "--methods", "lora"], "seed variant"),
        (["--batch", "2", "--embed", "8", "--timing", "as_written"], "seed variant only"),
        (["--grid", "quick", "--batch", "2"], "not both"),
        (["--embed", "8"], "at least --batch and --embed"),
        (["--batch", "2", "--embed", "8", "--layer", "block", "--heads", "3"], "heads must divide"),
        (["--batch", "2", "--embed", "8", "--min-repeats", "10", "--max-repeats", "5"],
         "--max-repeats 5 is below --min-repeats 10"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(sweep_refuses, argv, match):
    sweep_refuses(argv, match)


def _prepare_out(tmp_path: Path, name: str, content: str) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(content)
    return out


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("run.json", '{"format": "something else"}', "not written by this tool"),
        ("run.json", "\x00\x01garbage", "corrupt"),
        ("measurements.jsonl", "not json\n{}\n", "corrupt"),
    ],
)
def test_foreign_or_corrupt_out_is_refused_untouched(tmp_path, capsys, name, content, match):
    out = _prepare_out(tmp_path, name, content)
    before = _snapshot(out)
    assert sweep.main([*TINY, "--embed", "8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert _snapshot(out) == before


def test_unwritable_out_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    assert sweep.main([*TINY, "--embed", "8", "--out", str(blocker / "out")]) == 2
    assert "not writable" in capsys.readouterr().err
    assert sweep.main([*TINY, "--embed", "8", "--out", str(blocker)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "keep"


@pytest.mark.slow
def test_resume_skips_done_pairs_without_duplicates(tmp_path, capsys):
    out = tmp_path / "out"
    assert sweep.main([*TINY, "--embed", "8,12,16", "--limit", "1", "--out", str(out)]) == 0
    assert len(_keys(out)) == 2  # one config x two methods
    first = (out / "measurements.jsonl").read_bytes()
    assert sweep.main([*TINY, "--embed", "8,12,16", "--out", str(out)]) == 0
    keys = _keys(out)
    assert len(keys) == 6 and len(set(keys)) == 6
    assert (out / "measurements.jsonl").read_bytes().startswith(first)
    assert sweep.main([*TINY, "--embed", "8,12,16", "--out", str(out)]) == 0
    assert len(_keys(out)) == 6
    assert "6 (config, method) pairs already" in capsys.readouterr().err
    df = dataset.read_csv(out / "measurements.csv")
    assert len(df) == 6 and (df["error"] == "").all()
    assert set(df["method"]) == {"full", "lora_merged"}
    assert (df["time_median_s"] > 0).all() and (df["n_repeats"] >= 2).all()
    assert (df["model_flops"] > 0).all() and (df["xla_flops"] > 0).all()
    run = _run_json(out)
    assert run["status"] == "complete" and len(run["sessions"]) == 3
    assert run["fingerprint"]["backend"] == "cpu"
    assert run["seeds"]["order_seed"] == 0


@pytest.mark.slow
def test_a_csv_only_reference_folder_loses_nothing_on_resume(tmp_path, capsys):
    out = tmp_path / "out"
    assert sweep.main([*TINY, "--embed", "8,12", "--out", str(out)]) == 0
    (out / "measurements.jsonl").unlink()  # as committed under data/: run.json + CSV
    old = dataset.read_csv(out / "measurements.csv")
    assert len(old) == 4
    capsys.readouterr()
    assert sweep.main([*TINY, "--embed", "8,12,16", "--out", str(out)]) == 0
    assert "4 (config, method) pairs already" in capsys.readouterr().err
    keys = _keys(out)
    assert len(keys) == 6 and len(set(keys)) == 6
    df = dataset.read_csv(out / "measurements.csv")
    assert len(df) == 6 and sorted(df["embed"].unique()) == [8, 12, 16]
    # the old rows are there, unchanged (not re-measured)
    pd.testing.assert_frame_equal(df[df["embed"] != 16].reset_index(drop=True), old)


def test_dtypes_is_the_flag_and_dtype_its_alias():
    for flag in ("--dtypes", "--dtype"):
        assert tuple(sweep.build_parser().parse_args(["--out", "o", flag, "bfloat16"]).dtypes) == (
            "bfloat16",)


def test_order_seed_and_bootstrap_seed_are_separate(tmp_path):
    def seeds(name: str, *extra: str) -> tuple[dict, list[str]]:
        out = tmp_path / name
        argv = [*TINY, "--embed", "8,12,16,20,24", "--time-limit-s", "0", *extra]
        assert sweep.main([*argv, "--out", str(out)]) == 0
        run = _run_json(out)
        return run["seeds"], run["sessions"][-1]["extra"]["config_order"]

    s1, order1 = seeds("a", "--order-seed", "1")
    s2, order2 = seeds("b", "--order-seed", "1", "--bootstrap-seed", "5")
    assert (s1["order_seed"], s1["bootstrap_seed"]) == (1, 0)
    assert (s2["order_seed"], s2["bootstrap_seed"]) == (1, 5)
    assert order1 == order2  # the bootstrap seed does not move the config order


@pytest.mark.slow
def test_config_order_is_shuffled_by_the_seed_and_recorded(tmp_path):
    def order(seed: int, name: str, *extra: str) -> list[str]:
        out = tmp_path / name
        argv = [*TINY, "--embed", "8,12,16,20,24", "--order-seed", str(seed), *extra]
        assert sweep.main([*argv, "--out", str(out)]) == 0
        run = _run_json(out)
        assert run["seeds"]["order_seed"] == seed
        return run["sessions"][-1]["extra"]["config_order"]

    # --time-limit-s 0: the order is decided and recorded before any config runs
    a, b, a2 = (order(1, "a", "--time-limit-s", "0"), order(2, "b", "--time-limit-s", "0"),
                order(1, "a2", "--time-limit-s", "0"))
    assert a == a2 and a != b and sorted(a) == sorted(b)
    assert a != sorted(a, key=lambda label: int(label.split(" e=")[1].split()[0]))
    # and the sweep measures in that order
    ran = order(1, "ran", "--limit", "3")
    assert ran == a
    measured = [r["embed"] for r in _lines(tmp_path / "ran") if r["method"] == "full"]
    assert measured == [int(label.split(" e=")[1].split()[0]) for label in a[:3]]


def test_time_limit_stops_cleanly_and_resumes(tmp_path, capsys):
    out = tmp_path / "out"
    assert sweep.main([*TINY, "--embed", "8,12", "--time-limit-s", "0", "--out", str(out)]) == 0
    assert "time limit reached" in capsys.readouterr().err
    run = _run_json(out)
    assert run["status"] == "interrupted" and "time-limit" in run["sessions"][-1]["stop_reason"]
    assert not (out / "measurements.jsonl").exists()
    assert sweep.main([*TINY, "--embed", "8,12", "--out", str(out)]) == 0
    assert len(_keys(out)) == 4 and _run_json(out)["status"] == "complete"


@pytest.mark.slow
def test_seed_as_written_through_the_cli(tmp_path, capsys):
    out = tmp_path / "out"
    assert sweep.main([*TINY, "--embed", "8", "--timing", "as_written", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "[1/1] attention b=2 e=8 h=8 r=1 float32 [seed/as_written]: full" in err
    df = dataset.read_csv(out / "measurements.csv")
    assert set(df["timing_mode"]) == {"as_written"} and (df["error"] == "").all()
    # every as-written call traces and compiles a new loss: far slower than the kernel
    assert (df["time_median_s"] > 1e-3).all()
    assert set(df["targets"]) == {"", "k,q"}


def test_clean_kernels_sweep(tmp_path):
    out = tmp_path / "out"
    argv = ["--layer", "linear", "--batch", "2", "--embed", "8", "--rank", "1,2",
            "--budget-s", "0", "--min-repeats", "2", "--no-refine", "--out", str(out)]
    assert sweep.main(argv) == 0
    df = dataset.read_csv(out / "measurements.csv")
    assert len(df) == 6 and (df["error"] == "").all()
    assert set(df.loc[df["method"] != "full", "targets"]) == {"w"}
    assert (df["variant"] == "clean").all() and (df["timing_mode"] == "aot").all()


def test_a_failing_config_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = sweep_config.prepare

    def flaky(config, method, param_seed):
        if config.embed == 12 and method == "lora_merged":
            raise MemoryError("RESOURCE_EXHAUSTED: out of memory\nsecond line")
        return real(config, method, param_seed)

    monkeypatch.setattr(sweep_config, "prepare", flaky)
    out = tmp_path / "out"
    assert sweep.main([*TINY, "--embed", "8,12", "--out", str(out)]) == 0
    df = dataset.read_csv(out / "measurements.csv")
    bad = df[df["error"] != ""]
    assert len(df) == 4 and len(bad) == 1
    assert bad.iloc[0]["error"] == "MemoryError: RESOURCE_EXHAUSTED: out of memory"
    assert bad.iloc[0]["embed"] == 12 and bad.iloc[0]["method"] == "lora_merged"
    monkeypatch.setattr(sweep_config, "prepare", real)
    assert sweep.main([*TINY, "--embed", "8,12", "--out", str(out)]) == 0
    assert len(_keys(out)) == 4  # errors count as done ...
    assert sweep.main([*TINY, "--embed", "8,12", "--retry-errors", "--out", str(out)]) == 0
    df = dataset.read_csv(out / "measurements.csv")
    assert len(df) == 4 and (df["error"] == "").all()  # ... until retried; the last one wins


def test_fingerprint_mismatch_refused_then_force_merged(tmp_path, capsys):
    out = tmp_path / "out"
    assert sweep.main([*TINY, "--embed", "8", "--out", str(out)]) == 0
    run = _run_json(out)
    run["fingerprint"]["device_kind"] = "NVIDIA H100 80GB HBM3"
    (out / "run.json").write_text(json.dumps(run))
    before = _snapshot(out)
    capsys.readouterr()
    assert sweep.main([*TINY, "--embed", "8,12", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different device" in err and "--force-merge" in err and err.count("\n") == 1
    assert _snapshot(out) == before
    assert sweep.main([*TINY, "--embed", "8,12", "--force-merge", "--out", str(out)]) == 0
    assert len(_keys(out)) == 4
    assert _run_json(out)["sessions"][-1]["merged_fingerprint"]["device_kind"] == "cpu"


# ----------------------------------------------------------------------------- real kills

def _spawn(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "measure.sweep", *TINY, "--budget-s", "0.15",
            "--embed", "8,12,16,20,24,28,32,36", "--out", str(out), *extra]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_records(proc: subprocess.Popen, out: Path, n: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    jsonl = out / "measurements.jsonl"
    while time.monotonic() < deadline:
        if jsonl.exists() and jsonl.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"sweep ended early: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("sweep wrote no records in time")


def _resume_and_check(out: Path, kept: list[tuple], prefix: bytes) -> str:
    proc = _spawn(out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    keys = _keys(out)
    assert len(keys) == 16 and len(set(keys)) == 16  # 8 configs x 2 methods, once each
    assert set(kept) <= set(keys)
    assert (out / "measurements.jsonl").read_bytes().startswith(prefix)
    assert len(dataset.read_csv(out / "measurements.csv")) == 16
    run = _run_json(out)
    assert run["status"] == "complete"
    assert run["pairs_expected"] == run["pairs_present"] == 16
    return err


@pytest.mark.slow
@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_keeps_records_marks_interrupted_exits_130_and_resumes(tmp_path, sig, status):
    """Ctrl-C and SIGTERM alike (the shared runner's clean stop): 130 and 143."""
    out = tmp_path / "out"
    proc = _spawn(out)
    _wait_for_records(proc, out, 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "interrupted" in err and "Traceback" not in err
    run = _run_json(out)
    assert run["status"] == "interrupted" and run["sessions"][-1]["status"] == "interrupted"
    assert run["sessions"][-1]["stop_reason"] == signal.Signals(sig).name
    kept = _keys(out)
    assert 2 <= len(kept) < 16 and len(set(kept)) == len(kept)
    # the CSV is the journal consolidated, whenever the signal landed (even just after a
    # record's line was written: dataset.test_a_signal_just_after_a_record_is_written...)
    csv = dataset.read_csv(out / "measurements.csv")
    assert sorted(dataset.record_key(r) for r in csv.to_dict("records")) == sorted(kept)
    assert run["n_records"] == run["pairs_present"] == len(kept)
    _resume_and_check(out, kept, (out / "measurements.jsonl").read_bytes())


@pytest.mark.slow
def test_kill_9_mid_sweep_loses_nothing_finished(tmp_path):
    out = tmp_path / "out"
    proc = _spawn(out)
    _wait_for_records(proc, out, 4)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _run_json(out)["status"] == "running"  # it died saying so
    raw = (out / "measurements.jsonl").read_bytes()
    prefix = raw[: raw.rfind(b"\n") + 1]  # everything up to the last complete line
    kept = _keys(out)
    assert len(kept) >= 4
    err = _resume_and_check(out, kept, prefix)
    # the dead holder's lock is taken over, and that is said, naming it
    assert f"took over the lock of {out}: its holder (PID {proc.pid}," in err
    assert "ended without finishing" in err
    assert _run_json(out)["sessions"][0]["status"] == "interrupted"


@pytest.mark.slow
def test_two_sweeps_into_one_folder_one_runs_the_other_exits_2(tmp_path):
    out = tmp_path / "out"
    # 2 s per config (the later flag wins): the first is still measuring while the second
    # starts up and is refused, however fast the machine (it is stopped by SIGINT below)
    first = _spawn(out, "--budget-s", "2")
    _wait_for_records(first, out, 2)
    second = _spawn(out)
    _, err2 = second.communicate(timeout=120)
    assert first.poll() is None, "the first sweep should still be running"
    assert second.returncode == 2
    assert err2.count("\n") == 1 and "Traceback" not in err2
    assert f"{out} is in use by another sweep (PID {first.pid}, started " in err2
    first.send_signal(signal.SIGINT)  # no need to wait for the whole grid
    _, err1 = first.communicate(timeout=120)
    assert first.returncode == 130, err1
    keys = _keys(out)
    assert len(keys) >= 2 and len(set(keys)) == len(keys)  # no duplicate: only the first measured
    run = _run_json(out)
    assert len(run["sessions"]) == 1 and run["status"] == "interrupted"
    assert {r["run_id"] for r in _lines(out)} == {run["sessions"][0]["session_id"]}


def test_limit_writes_partial_and_the_rest_completes(tmp_path, capsys):
    out = tmp_path / "out"
    assert sweep.main([*TINY, "--embed", "8,12", "--limit", "1", "--out", str(out)]) == 0
    run = _run_json(out)
    assert run["status"] == "partial"
    assert (run["pairs_present"], run["pairs_expected"]) == (2, 4)
    assert "partial: 2 of 4 (config, method) pairs" in capsys.readouterr().err
    assert sweep.main([*TINY, "--embed", "8,12", "--out", str(out)]) == 0
    run = _run_json(out)
    assert run["status"] == "complete" and run["pairs_present"] == run["pairs_expected"] == 4
    assert not (out / "sweep.lock").read_text()  # released cleanly: no holder named


def test_refinement_bisects_the_crossover_marks_its_rows_and_resumes(tmp_path, monkeypatch):
    """A fake timing whose LoRA/full ratio crosses 1 at d = 100 exactly: the refinement
    measures sqrt(a·b) widths until the bracket is within ±10%, and a run stopped half-way
    resumes its refinement from the recorded rows."""
    from measure.timing import TimingSummary

    def fake(config, methods, policy, param_seed):
        d = (config.embed * config.hidden) ** 0.5
        out = {}
        for m in methods:
            r = 1.0 if m == "full" else (100.0 / d) ** 0.5
            t = 1e-3 * r
            s = TimingSummary(9, 1, t, 0.0, t, t, t, 0.0, False)
            out[m] = sweep.Measured(s, None, "", (r, r * 0.99, r * 1.01, 3))
        return out

    calls = []

    def interrupted_after_two(config, methods, policy, param_seed):
        calls.append(config.embed)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return fake(config, methods, policy, param_seed)

    out = tmp_path / "out"
    argv = ["--layer", "linear", "--batch", "2", "--embed", "32,512", "--methods", "full,lora",
            "--out", str(out)]
    monkeypatch.setattr(sweep, "run_config", fake)
    assert sweep.main([*argv, "--no-refine"]) == 0  # the grid alone
    monkeypatch.setattr(sweep, "run_config", interrupted_after_two)
    assert sweep.main(argv) == 130  # Ctrl-C on the third refinement width
    assert calls == [128, 64, 91] and _run_json(out)["status"] == "interrupted"
    monkeypatch.setattr(sweep, "run_config", fake)
    assert sweep.main(argv) == 0  # resumes the refinement where it stopped
    df = dataset.read_csv(out / "measurements.csv")
    assert sorted(df.loc[~df["refinement"], "embed"].unique()) == [32, 512]
    # bisection in log d: sqrt(32·512) = 128, sqrt(32·128) = 64, sqrt(64·128) ≈ 91,
    # sqrt(91·128) ≈ 108; [91, 108] is within ±10% (108 / 91 = 1.19)
    assert sorted(df.loc[df["refinement"], "embed"].unique()) == [64, 91, 108, 128]
    assert len(df) == 12 and not df.duplicated(["embed", "method"]).any()
    from measure import refine

    a = refine.assess_rows(df, "lora")
    (c,) = a.crossings
    assert c.low <= 100 <= c.high and c.high / c.low <= refine.BRACKET_RATIO
    assert a.next_width is None and _run_json(out)["status"] == "complete"


@pytest.mark.slow
def test_sigterm_then_a_second_signal_exits_143_keeps_records_no_traceback(tmp_path):
    """Defects 7 and 11: a second signal during the shutdown gave tracebacks and other exit
    codes, and SIGTERM exited 130."""
    out = tmp_path / "out"
    proc = _spawn(out)
    _wait_for_records(proc, out, 2)
    proc.send_signal(signal.SIGTERM)
    # wait until the sweep is in its shutdown: a fixed sleep raced on a loaded machine (two
    # signals pending at once are handled in number order, SIGINT first)
    assert proc.stderr is not None
    head = []
    while not head or not head[-1].startswith("SIGTERM: stopping"):
        head.append(proc.stderr.readline())
        assert head[-1], "".join(head)  # EOF: the sweep ended without saying it stops
    proc.send_signal(signal.SIGINT)  # during the first one's shutdown: held back
    _, err = proc.communicate(timeout=60)
    err = "".join(head) + err
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "interrupted before measuring anything" not in err
    assert err.splitlines()[-1].startswith("interrupted: ")
    run = _run_json(out)
    assert run["status"] == "interrupted" and run["sessions"][-1]["stop_reason"] == "SIGTERM"
    kept = _keys(out)
    assert len(kept) >= 2 and len(dataset.read_csv(out / "measurements.csv")) == len(kept)


def test_a_stop_in_the_final_write_still_marks_the_run_interrupted(tmp_path, capsys, monkeypatch):
    """Defect 7: whatever the phase. A SIGTERM while the last CSV is written left run.json at
    'running'; now the sweep marks it interrupted and exits 143."""
    from costmodel.errors import Interrupted

    out = tmp_path / "out"
    real, calls = dataset.OutDir.write_csv, []

    def stopped_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise Interrupted(signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(dataset.OutDir, "write_csv", stopped_once)
    assert sweep.main([*TINY, "--embed", "8", "--no-refine", "--out", str(out)]) == 143
    run = _run_json(out)
    assert run["status"] == "interrupted" and run["sessions"][-1]["stop_reason"] == "SIGTERM"
    assert len(_keys(out)) == 2 and len(dataset.read_csv(out / "measurements.csv")) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "python -m measure.sweep: interrupted (SIGTERM)"
