"""The analysis refuses or labels data it cannot trust: partial sweeps, other grids, torn
files, mixed devices and strata, profiles of another machine (issue 12)."""

from __future__ import annotations

import json

import pytest

from analysis import crossover
from measure import grids


def _run_json(path, **fields) -> None:
    quick = grids.named_grid("quick")
    n = len(quick.configs) * len(quick.methods)
    run = {"status": "complete", "grid": quick.describe(), "pairs_expected": n, "pairs_present": n}
    run.update(fields)
    (path / "run.json").write_text(json.dumps(run))


@pytest.mark.parametrize("fields, why", [
    ({}, ""),
    ({"status": "partial", "pairs_present": 20}, "its sweep is partial"),  # --limit 10 (defect 3)
    ({"status": "interrupted"}, "its sweep is interrupted"),
    ({"pairs_present": 47}, "it holds 47 of 72 (config, method) pairs"),
    ({"grid": {**grids.named_grid("quick").describe(), "identity": "0" * 16}},
     "it holds another grid (quick)"),  # same name, other configs
    ({"grid": grids.named_grid("seed").describe()}, "it holds another grid (seed)"),
])
def test_the_main_job_reuses_only_the_whole_grid_finished(tmp_path, fields, why):
    _run_json(tmp_path, **fields)
    ok, reason = crossover.reusable("quick", str(tmp_path))
    assert ok == (why == "") and reason == why


def test_no_run_json_is_not_reused(tmp_path):
    assert crossover.reusable("quick", str(tmp_path)) == (False, "no sweep there yet")
    (tmp_path / "run.json").write_text("{torn")
    assert crossover.reusable("quick", str(tmp_path)) == (False, "its run.json is unreadable")


# ----------------------------------------------------------------------------- one truth

def _fixture_records(fixture_csv) -> list[dict]:
    from measure import dataset

    return dataset._csv_records(dataset.read_csv(fixture_csv))


def _folder(path, records_jsonl, records_csv, **run_fields):
    """A dataset folder as the sweep leaves it: journal, CSV and run.json."""
    import pandas as pd

    from measure import dataset

    path.mkdir(exist_ok=True)
    with open(path / "measurements.jsonl", "w") as fh:
        for r in records_jsonl:
            fh.write(json.dumps(r) + "\n")
    if records_csv is not None:
        pd.DataFrame(records_csv).to_csv(path / "measurements.csv", index=False)
    run = {"format": dataset.RUN_FORMAT, "format_version": dataset.RUN_FORMAT_VERSION,
           "fingerprint": {"backend": "cpu", "device_kind": "cpu"}, "sessions": [],
           "grid": {**grids.named_grid("quick").describe()}, "status": "complete",
           "pairs_expected": 72, "pairs_present": 72}
    run.update(run_fields)
    (path / "run.json").write_text(json.dumps(run))
    return path


def test_a_stale_csv_does_not_win_over_a_longer_journal(tmp_path, fixture_csv):
    """Defect 2: SIGINT, resume, kill -9 leave a CSV of 30 rows and a journal of 54, run.json
    'running'. The analysis reads their union, says the sweep died, refuses without --partial."""
    from analysis import data
    from costmodel.cliutil import UserError

    recs = _fixture_records(fixture_csv)
    stale = [dict(r) for r in recs[:30]]
    stale[0]["time_median_s"] *= 10  # the journal's later record of this pair wins
    d = _folder(tmp_path / "d", recs[:54], stale, status="running")
    with pytest.raises(UserError, match="not a complete sweep .sweep stopped without finishing "
                                        ".its process died.: quick grid, 54 of 72"):
        data.load(d)
    ds = data.load(d, partial=True)
    assert len(ds.frame) == 54 and not ds.complete
    assert ds.frame["time_median_s"].tolist().count(stale[0]["time_median_s"]) == 0
    assert any("18 of 72 (config, method) pairs of the grid, never measured: PARTIAL DATA"
               in n for n in ds.notes)
    assert any("PARTIAL DATA" in n for n in data.select(ds, 4).dropped)


def test_rows_only_in_the_csv_are_kept(tmp_path, fixture_csv):
    from analysis import data

    recs = _fixture_records(fixture_csv)
    d = _folder(tmp_path / "d", recs[:10], recs)  # a lost journal: the CSV has them all
    ds = data.load(d)
    assert len(ds.frame) == 72 and ds.complete
    assert ds.status == "sweep complete: quick grid, 72 of 72 (config, method) pairs"


def test_a_run_json_without_a_grid_size_says_completeness_is_unknown(tmp_path, fixture_csv):
    """A run.json from before grid identities says 'complete' but not how big its grid is: the
    status says that completeness is unknown, instead of 'sweep complete' beside a refusal."""
    from analysis import data
    from costmodel.cliutil import UserError

    recs = _fixture_records(fixture_csv)
    d = _folder(tmp_path / "d", recs, recs, grid={"name": "quick"}, pairs_expected=None, pairs_present=None)
    unknown = "sweep complete: quick grid, 72 rows; its run.json records no grid size, so completeness is unknown"
    with pytest.raises(UserError, match=f"not a complete sweep .{unknown}.: rerun"):
        data.load(d)
    ds = data.load(d, partial=True)
    assert ds.status == unknown and not ds.complete


def test_a_torn_journal_tail_is_said_and_ignored(tmp_path, fixture_csv):
    """Defect 11: a torn jsonl tail is not 'not a CSV or JSON-lines table'."""
    from analysis import data

    recs = _fixture_records(fixture_csv)
    f = tmp_path / "m.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"schema_version": 1, "ru')
    ds = data.load(f)
    assert len(ds.frame) == 72
    assert ds.notes == (f"the torn last line of {f} (a crash mid-write; never a finished record)",)


def test_one_grid_from_two_devices_is_mixed_devices_not_a_duplicate(tmp_path, fixture_csv):
    """Defect 11: the same keys on two devices are two devices' data, refused as such."""
    from analysis import data
    from costmodel.cliutil import UserError

    recs = _fixture_records(fixture_csv)
    gpu = [{**r, "backend": "gpu", "device_kind": "NVIDIA H100"} for r in recs]
    f = tmp_path / "m.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs + gpu))
    ds = data.load(f)
    assert len(ds.frame) == 144
    with pytest.raises(UserError, match=r"mixes devices \(cpu/cpu, gpu/NVIDIA H100\)"):
        data.select(ds, 4)


# ----------------------------------------------------------------------------- every row checked

@pytest.mark.parametrize("column, value, message", [
    ("rank", 2000, "column 'rank' is 2000: must be 1 to min(embed, hidden)"),
    ("batch", 0, "column 'batch' is 0: must be 1 to 1e+09"),
    ("embed", 20_000_000, "column 'embed' is 20000000: must be 1 to 1e+07"),
    ("targets", "w", "column 'targets' is 'w': not valid for the layer and method"),
    ("method", "qlora", "column 'method' is 'qlora': not a method"),
    ("time_median_s", float("inf"), "column 'time_median_s' is inf: must be a finite time > 0"),
    ("time_median_s", -1.0, "column 'time_median_s' is -1.0: must be a finite time > 0"),
    ("time_iqr_s", float("inf"), "column 'time_iqr_s' is inf: must be finite and >= 0"),
])
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_bad_row_is_named_with_its_column(tmp_path, fixture_csv, column, value, message, kind):
    """Defect 6: invalid rows were a traceback with exit 1; now the first bad row and column."""
    import pandas as pd

    from analysis import data
    from costmodel.cliutil import UserError

    recs = _fixture_records(fixture_csv)
    recs[5] = {**recs[5], column: value}
    recs[9] = {**recs[9], "rank": 10**6}  # a later bad row is not the one named
    if kind == "csv":
        f = tmp_path / "m.csv"
        pd.DataFrame(recs).to_csv(f, index=False)
        where = "line 7"  # header, then rows 0..5
    else:
        f = tmp_path / "m.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in recs))
        where = "line 6"
    with pytest.raises(UserError) as exc:
        data.load(f)
    assert f"does not follow the schema: {where}: {message}" in str(exc.value)


def test_an_empty_data_path_is_refused(tmp_path):
    from analysis import data
    from costmodel.cliutil import UserError

    with pytest.raises(UserError, match="--data is an empty string"):
        data.load("")


# ----------------------------------------------------------------------------- profiles

def _profile(fixture_profile, path, **fingerprint):
    prof = json.loads(open(fixture_profile).read())
    if fingerprint:
        prof["fingerprint"] = fingerprint
    path.write_text(json.dumps(prof))
    return path


MACHINE = {"backend": "cpu", "device_kind": "cpu", "cpu_model": "AMD EPYC 7B13", "cpu_count": 2,
           "jax": "0.10.2"}


def test_a_profile_of_another_cpu_is_refused_unless_forced(tmp_path, fixture_csv, fixture_profile,
                                                           capsys):
    """Defect 5: the dataset folder's profile.json was used whatever device the rows name, and
    'cpu cpu' was all that was compared. Now the CPU model, cores and versions are too."""
    import argparse

    from analysis import data

    recs = _fixture_records(fixture_csv)
    d = _folder(tmp_path / "d", recs, None,
                fingerprint={**MACHINE, "cpu_model": "Intel Xeon 8480", "cpu_count": 112})
    _profile(fixture_profile, d / "profile.json", **MACHINE)
    out = tmp_path / "out"
    assert crossover.main(["--data", str(d), "--out", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err == (f"python -m analysis.crossover: error: the dataset's profile {d}/profile.json "
                   "does not match the data "
                   "(cpu_model: 'AMD EPYC 7B13' -> 'Intel Xeon 8480'; cpu_count: 2 -> 112); "
                   "move it away, or give --force to use it anyway\n")
    assert not out.exists()
    ds = data.load(d)
    args = argparse.Namespace(profile=None, force=True)
    profile, note = crossover.given_profile(args, ds)
    assert profile.fingerprint["cpu_model"] == "AMD EPYC 7B13"
    assert note.endswith("(used with --force although cpu_model: 'AMD EPYC 7B13' -> "
                         "'Intel Xeon 8480'; cpu_count: 2 -> 112)")
    # the same profile given on the command line: refused the same way, without "move it"
    other = _profile(fixture_profile, tmp_path / "p.json", **{**MACHINE, "jax": "0.4.1"})
    with pytest.raises(Exception, match=r"--profile .*p.json does not match the data \(cpu_model"
                                        r".*; jax: '0.4.1' -> '0.10.2'\); give --force"):
        crossover.given_profile(argparse.Namespace(profile=str(other), force=False), ds)


def test_a_matching_profile_is_used(tmp_path, fixture_csv, fixture_profile):
    import argparse

    from analysis import data

    d = _folder(tmp_path / "d", _fixture_records(fixture_csv), None, fingerprint=MACHINE)
    _profile(fixture_profile, d / "profile.json", **MACHINE)
    profile, note = crossover.given_profile(argparse.Namespace(profile=None, force=False),
                                            data.load(d))
    assert note == f"the dataset's {d}/profile.json"


@pytest.mark.parametrize("rate", [0.0, float("nan"), float("inf"), -1.0])
def test_a_profile_with_a_zero_or_non_finite_rate_is_refused_on_read(tmp_path, fixture_csv,
                                                                     fixture_profile, capsys,
                                                                     rate):
    prof = json.loads(open(fixture_profile).read())
    prof["peak_flops_per_s"]["float32"] = rate
    p = tmp_path / "p.json"
    p.write_text(json.dumps(prof))
    assert crossover.main(["--data", fixture_csv, "--profile", str(p), "--out",
                           str(tmp_path / "o"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m analysis.crossover: error: bad device profile: ")
    assert "float32 must be > 0" in err
    assert err.count("\n") == 1


def test_device_max_n_below_the_first_matmul_is_refused(tmp_path, capsys):
    """Defect 11: `measure.device --max-n 1` wrote a 0.0 GFLOP/s profile that loaded."""
    from measure import device

    out = tmp_path / "p.json"
    assert device.main(["--out", str(out), "--max-n", "1"]) == 2
    err = capsys.readouterr().err
    assert "--max-n 1 is below 64" in err and err.count("\n") == 1
    assert not out.exists()


# ----------------------------------------------------------------------------- signals

@pytest.mark.slow
def test_the_main_job_forwards_sigterm_to_its_sweep_and_exits_143(tmp_path):
    """Defect 8: a stopped main job printed a traceback. Now it hands the signal to its child
    sweep, which keeps its records and marks the folder interrupted, and exits the same way."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "analysis.crossover", "--no-plots"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "crossover-results"
    deadline = time.monotonic() + 180
    while not ((folder / "measurements.jsonl").exists()
               and (folder / "measurements.jsonl").read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the main job only: the sweep is its child
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and out == ""
    assert err.splitlines()[-1] == "python -m analysis.crossover: interrupted (SIGTERM)"
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "interrupted" and run["sessions"][-1]["stop_reason"] == "SIGTERM"
    assert not (folder / "sweep.lock").read_text() and not (folder / "report.lock").read_text()


# ----------------------------------------------------------------------------- strata

def _two_dtypes(fixture_csv):
    """The quick grid at float32 and the same keys at bfloat16, 1.7x faster: the same
    (layer, batch, rank, method) twice, which one pooled fit printed as two alike rows."""
    from measure import dataset

    recs = _fixture_records(fixture_csv)
    bf16 = [{**r, "dtype": "bfloat16", "time_median_s": r["time_median_s"] / 1.7} for r in recs]
    return recs, bf16, dataset


def test_dtypes_are_never_pooled_into_one_fit(tmp_path, fixture_csv):
    """Defect 4: one FLOP/s was fitted to float32 and bfloat16 together."""
    from analysis import data

    recs, bf16, _ = _two_dtypes(fixture_csv)
    f = tmp_path / "m.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs + bf16))
    ds = data.load(f)
    sl = data.select(ds, 4)
    assert set(sl.frame["dtype"]) == {"float32"} and len(sl.frame) == 72
    assert dict(sl.stratum) == {"dtype": "float32", "input_requires_grad": False, "seq": 1, "heads": 1}
    assert ("72 rows of stratum dtype=bfloat16,input_requires_grad=False,seq=1,heads=1 (not pooled "
            "into this fit; analyse them with --stratum dtype=bfloat16,input_requires_grad=False,"
            "seq=1,heads=1)") in sl.dropped
    import dataclasses

    other = data.select(dataclasses.replace(ds, stratum=data.parse_stratum("dtype=bfloat16")), 4)
    assert set(other.frame["dtype"]) == {"bfloat16"} and len(other.frame) == 72
    with pytest.raises(Exception, match="no rows of --stratum dtype=float16"):
        data.select(dataclasses.replace(ds, stratum=data.parse_stratum("dtype=float16")), 4)


@pytest.mark.slow
def test_every_table_carries_the_stratum_and_no_two_crossover_rows_look_alike(
        tmp_path, fixture_csv, fixture_profile, capsys):
    import pandas as pd

    recs, bf16, _ = _two_dtypes(fixture_csv)
    f = tmp_path / "m.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs + bf16))
    out = tmp_path / "out"
    assert crossover.main(["--data", str(f), "--profile", fixture_profile, "--out", str(out),
                           "--no-plots", "--bootstrap", "20", "--stratum", "dtype=bfloat16"]) == 0
    text = capsys.readouterr().out
    assert "dtype bfloat16, input_requires_grad False, seq 1, heads 1" in " ".join(text.split())
    for name in ("crossover.csv", "extrapolation.csv", "factors.csv", "validation.csv"):
        t = pd.read_csv(out / name)
        assert set(t["dtype"]) == {"bfloat16"} and set(t["seq"]) == {1}, name
    xo = pd.read_csv(out / "crossover.csv")
    assert not xo.duplicated([c for c in ("layer", "batch", "rank", "method") if c in xo]).any()


def test_a_second_analysis_into_one_folder_is_refused(tmp_path, fixture_csv, capsys):
    """Defect 1, the main job's side: two analyses writing one report folder."""
    import os

    from measure.dataset import REPORT_LOCK_NAME
    from measure.lock import FolderLock

    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, REPORT_LOCK_NAME, "another analysis"):
        assert crossover.main(["--data", fixture_csv, "--out", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err == (f"python -m analysis.crossover: error: {out} is in use by another analysis "
                   f"(PID {os.getpid()}, started {err.split('started ')[1].split(')')[0]}); "
                   "wait for it to finish or choose another folder\n")
    assert sorted(os.listdir(out)) == [REPORT_LOCK_NAME]
