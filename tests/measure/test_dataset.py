"""measure.schema / measure.dataset: validation errors, consolidation, refusing foreign folders."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from costmodel.errors import UserError
from measure import dataset, fingerprint
from measure.schema import ADDED_IN_3, COLUMNS, KEY, SCHEMA_VERSION, SchemaError, validate


def _record(**over):
    rec = {
        "schema_version": SCHEMA_VERSION, "run_id": "r", "backend": "cpu", "device_kind": "cpu",
        "layer": "attention", "method": "full", "variant": "clean", "timing_mode": "aot",
        "batch": 2, "embed": 8, "hidden": 8, "rank": 1, "seq": 1, "heads": 1, "targets": "",
        "input_requires_grad": False, "dtype": "float32", "n_repeats": 5, "calls_per_repeat": 1,
        "time_median_s": 1e-3, "time_iqr_s": 1e-5, "time_min_s": 9e-4, "time_ci_low_s": 9.9e-4,
        "time_ci_high_s": 1.01e-3, "time_cv": 0.01, "unstable": False, "compile_s": 0.1,
        "model_flops": 1e6, "model_bytes": 1e4, "model_kernels": 10.0, "trainable_params": 192,
        "xla_flops": float("nan"), "xla_bytes": float("nan"), "error": "",
        "paired_ratio": 1.0, "paired_ratio_ci_low": 1.0, "paired_ratio_ci_high": 1.0,
        "refinement": False, "timestamp": "2026-01-01T00:00:00+00:00", **ADDED_IN_3,
        "paired_blocks": 3,
    }
    rec.update(over)
    return rec


def test_validate_names_the_first_bad_column():
    df = pd.DataFrame([_record()])
    assert list(validate(df).columns) == list(COLUMNS)
    with pytest.raises(SchemaError, match="missing column 'batch'"):
        validate(df.drop(columns=["batch", "rank"]))
    with pytest.raises(SchemaError, match="column 'embed' is not int64"):
        validate(df.assign(embed="wide"))
    with pytest.raises(SchemaError, match="column 'unstable'"):
        validate(df.assign(unstable="maybe"))
    with pytest.raises(SchemaError, match="schema_version"):
        validate(df.assign(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(SchemaError, match="duplicated"):
        validate(pd.concat([df, df]))


def test_a_version_1_table_reads_as_grid_rows_without_paired_ratios():
    v1 = pd.DataFrame([_record(schema_version=1)]).drop(
        columns=["paired_ratio", "paired_ratio_ci_low", "paired_ratio_ci_high", "refinement"])
    out = validate(v1)
    assert out["schema_version"].tolist() == [SCHEMA_VERSION]
    assert out["refinement"].tolist() == [False] and out["paired_ratio"].isna().all()


def test_consolidate_keeps_the_last_record_per_key():
    a = _record(error="OOM", time_median_s=float("nan"))
    b = _record(time_median_s=2e-3)
    c = _record(method="lora", targets="k,q", time_median_s=1e-3)
    df = dataset.consolidate([a, c, b])
    assert len(df) == 2
    assert df.set_index("method").loc["full", "time_median_s"] == 2e-3
    assert dataset.consolidate([]).empty


def test_record_key_survives_a_json_round_trip():
    rec = _record()
    assert dataset.record_key(json.loads(json.dumps(rec))) == dataset.record_key(rec)
    assert len(dataset.record_key(rec)) == len(KEY)


FP = {"backend": "cpu", "device_kind": "cpu", "jax": "0.10.2", "cpu_model": "test"}


def _session():
    return dataset.Session(
        session_id="s1", started_utc="t", argv=[], grid={"name": "custom"}, seeds={}, policy={}
    )


def _snapshot(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_out_dir_round_trip_and_resume(tmp_path):
    out = dataset.open_out_dir(tmp_path / "o", fp=FP, session=_session())
    out.append(_record())
    out.finish("complete")
    again = dataset.open_out_dir(tmp_path / "o", fp=FP, session=_session())
    assert again.is_done(dataset.record_key(_record()))
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["status"] == "running" and len(run["sessions"]) == 2
    assert run["sessions"][0]["status"] == "complete"
    assert len(dataset.read_csv(tmp_path / "o" / "measurements.csv")) == 1


def test_torn_last_line_is_cut_and_finished_records_kept(tmp_path):
    out = dataset.open_out_dir(tmp_path, fp=FP, session=_session())
    out.append(_record())
    with open(tmp_path / "measurements.jsonl", "a") as fh:
        fh.write('{"schema_version": 1, "run_id": "r", "backe')  # a crash mid-write
    del out  # the crashed process's lock goes with it
    again = dataset.open_out_dir(tmp_path, fp=FP, session=_session())
    assert len(again.records) == 1
    assert (tmp_path / "measurements.jsonl").read_text().count("\n") == 1


def test_a_signal_just_after_a_record_is_written_still_leaves_it_in_the_csv(tmp_path, monkeypatch):
    """The race behind a flaky SIGTERM test: the handler raises between the journal's write and
    `append`'s bookkeeping (here: in fsync, after the line is on disk). The interrupted
    session's CSV, counts and run.json must still hold every record of the journal."""
    import signal

    from costmodel.errors import Interrupted

    out = dataset.open_out_dir(tmp_path, fp=FP, session=_session())
    out.append(_record(run_id="s1"))
    real_fsync = dataset.os.fsync

    def fsync_then_signal(fd):
        real_fsync(fd)
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(dataset.os, "fsync", fsync_then_signal)
    with pytest.raises(KeyboardInterrupt):
        out.append(_record(run_id="s1", embed=16, hidden=16))
    monkeypatch.undo()
    assert len(dataset.read_jsonl(tmp_path / "measurements.jsonl")[0]) == 2  # the journal has it
    df = out.finish("interrupted", reason="SIGTERM")
    csv = dataset.read_csv(tmp_path / "measurements.csv")
    assert len(df) == len(csv) == 2 and sorted(csv["embed"]) == [8, 16]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["n_records"] == 2 and run["sessions"][-1]["records_written"] == 2
    assert out.is_done(dataset.record_key(_record(embed=16, hidden=16)))


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("run.json", "{not json", "corrupt"),
        ("run.json", json.dumps({"format": "pyperf"}), "not written by this tool"),
        ("measurements.jsonl", "hello\nworld\n", "line 1 is corrupt"),
        ("measurements.csv", "a,b\n1,2\n", "without run.json"),
    ],
)
def test_foreign_or_corrupt_files_are_refused_and_left_alone(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    before = _snapshot(tmp_path)
    with pytest.raises(UserError, match=match):
        dataset.open_out_dir(tmp_path, fp=FP, session=_session())
    assert _snapshot(tmp_path) == before


def test_a_record_of_another_schema_is_refused(tmp_path):
    dataset.open_out_dir(tmp_path, fp=FP, session=_session()).append(_record())
    with open(tmp_path / "measurements.jsonl", "a") as fh:
        fh.write(json.dumps(_record(schema_version=99, method="lora")) + "\n")
    before = _snapshot(tmp_path)
    with pytest.raises(UserError, match="schema version 99"):
        dataset.open_out_dir(tmp_path, fp=FP, session=_session())
    assert _snapshot(tmp_path) == before


def test_fingerprint_mismatch_needs_force_merge(tmp_path):
    dataset.open_out_dir(tmp_path, fp=FP, session=_session()).finish("complete")
    other = {**FP, "jax": "0.4.30"}
    before = _snapshot(tmp_path)
    with pytest.raises(UserError, match="jax: '0.10.2' -> '0.4.30'"):
        dataset.open_out_dir(tmp_path, fp=other, session=_session())
    assert _snapshot(tmp_path) == before
    merged = dataset.open_out_dir(tmp_path, fp=other, session=_session(), force_merge=True)
    assert merged.run["sessions"][-1]["merged_fingerprint"]["jax"] == "0.4.30"
    assert merged.run["fingerprint"]["jax"] == "0.10.2"  # the folder keeps its first fingerprint


def test_unchecked_fingerprint_entries_do_not_block_a_resume(tmp_path):
    dataset.open_out_dir(tmp_path, fp={**FP, "git_commit": "a"}, session=_session())
    dataset.open_out_dir(tmp_path, fp={**FP, "git_commit": "b"}, session=_session())


def test_fingerprint_describes_the_machine():
    fp = fingerprint.fingerprint()
    for key in fingerprint.CHECKED_FINGERPRINT:
        assert key in fp
    assert fp["backend"] == "cpu" and fp["cpu_count"] >= 1
    assert "jax_enable_x64" in fp["jax_config"]


def test_out_that_is_a_file_or_unwritable_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    with pytest.raises(UserError, match="not a directory"):
        dataset.open_out_dir(f, fp=FP, session=_session())
    with pytest.raises(UserError, match="not writable"):
        dataset.open_out_dir(f / "sub", fp=FP, session=_session())
    assert f.read_text() == "keep me"


def test_nan_survives_the_csv(tmp_path):
    out = dataset.open_out_dir(tmp_path, fp=FP, session=_session())
    out.append(_record(error="XlaRuntimeError: out of memory", time_median_s=float("nan")))
    out.finish("complete")
    df = dataset.read_csv(tmp_path / "measurements.csv")
    assert np.isnan(df.loc[0, "time_median_s"]) and df.loc[0, "error"].startswith("Xla")


def test_a_run_on_fewer_usable_cores_is_another_machine(tmp_path):
    two = {**FP, "cpu_threads_usable": 2}
    dataset.open_out_dir(tmp_path, fp=two, session=_session()).finish("complete")
    before = _snapshot(tmp_path)
    with pytest.raises(UserError, match="cpu_threads_usable: 2 -> 1"):  # taskset -c 0
        dataset.open_out_dir(tmp_path, fp={**two, "cpu_threads_usable": 1}, session=_session())
    assert _snapshot(tmp_path) == before
    dataset.open_out_dir(tmp_path, fp={**two, "cpu_threads_usable": 1}, session=_session(),
                         force_merge=True)
    assert "cpu_threads_usable" in fingerprint.CHECKED_FINGERPRINT


def _csv_only_folder(path, records):
    """A reference dataset as committed: run.json + measurements.csv, no jsonl."""
    out = dataset.open_out_dir(path, fp=FP, session=_session())
    for rec in records:
        out.append(rec)
    out.finish("complete")
    (path / "measurements.jsonl").unlink()


def test_rows_only_in_the_csv_are_kept_and_skipped_on_resume(tmp_path):
    old = [_record(embed=8, hidden=8), _record(embed=16, hidden=16, error="OOM",
                                                 time_median_s=float("nan"))]
    _csv_only_folder(tmp_path, old)
    csv_before = dataset.read_csv(tmp_path / "measurements.csv")
    out = dataset.open_out_dir(tmp_path, fp=FP, session=_session())
    assert all(out.is_done(dataset.record_key(r)) for r in old)
    # into the log first, so a crash from here on loses nothing either
    logged = [json.loads(x) for x in (tmp_path / "measurements.jsonl").read_text().splitlines()]
    assert [dataset.record_key(r) for r in logged] == [dataset.record_key(r) for r in old]
    out.append(_record(embed=32, hidden=32))
    df = out.finish("complete")
    assert len(df) == 3 and df["embed"].tolist() == [8, 16, 32]
    pd.testing.assert_frame_equal(dataset.read_csv(tmp_path / "measurements.csv").iloc[:2],
                                  csv_before)
    # reopened again: nothing imported twice
    again = dataset.open_out_dir(tmp_path, fp=FP, session=_session())
    assert len(again.records) == 3
    assert (tmp_path / "measurements.jsonl").read_text().count("\n") == 3
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["sessions"][1]["extra"]["records_from_csv"] == 2
    assert "records_from_csv" not in run["sessions"][2]["extra"]


def test_a_log_shorter_than_the_csv_is_completed_from_it(tmp_path):
    out = dataset.open_out_dir(tmp_path, fp=FP, session=_session())
    out.append(_record(embed=8, hidden=8))
    out.append(_record(embed=16, hidden=16, time_median_s=5e-3))
    out.finish("complete")
    jsonl = tmp_path / "measurements.jsonl"
    first = jsonl.read_text().splitlines()[0] + "\n"
    jsonl.write_text(first)  # a log that lost its second line
    again = dataset.open_out_dir(tmp_path, fp=FP, session=_session())
    assert len(again.records) == 2 and jsonl.read_text().startswith(first)
    df = again.finish("complete")
    assert df.set_index("embed").loc[16, "time_median_s"] == 5e-3
