"""The report is all or nothing: a failure part-way leaves the previous report intact
(issue 12, defect 8), by fault injection."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from analysis import crossover, publish


def _checksums(folder) -> dict[str, str]:
    return {n: hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, n))}


def _no_staging_left(tmp_path) -> bool:
    return not [n for n in os.listdir(tmp_path) if ".report-" in n]


@pytest.mark.slow
def test_a_full_disk_mid_report_leaves_the_previous_report_intact(tmp_path, capsys, monkeypatch,
                                                                  fixture_csv, fixture_profile):
    out = tmp_path / "out"
    argv = ["--data", fixture_csv, "--profile", fixture_profile, "--out", str(out),
            "--no-plots", "--bootstrap", "20"]
    assert crossover.main(argv) == 0
    before = _checksums(out)
    assert {"report.md", "crossover.csv", "extrapolation.csv", publish.MANIFEST_NAME} <= set(before)
    capsys.readouterr()

    from analysis import export

    real, calls = export.atomic_write_text, []

    def disk_full_on_the_third_file(path, text):
        calls.append(os.path.basename(path))
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, text)

    monkeypatch.setattr(export, "atomic_write_text", disk_full_on_the_third_file)
    assert crossover.main([*argv, "--widths", "4096"]) == 2  # another report would differ
    err = capsys.readouterr().err
    assert err.endswith(f"error: cannot write the report into {out}: No space left on device; "
                        "the previous report there is intact\n")
    assert len(calls) == 3 and "Traceback" not in err
    assert _checksums(out) == before  # not one file of the new report got in
    assert _no_staging_left(tmp_path)


def _report(folder, files: dict[str, str]) -> None:
    with publish.staged(str(folder)) as tmp:
        for name, text in files.items():
            with open(os.path.join(tmp, name), "w") as fh:
                fh.write(text)


def test_the_swap_is_undone_when_a_rename_fails(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "measurements.jsonl").write_text("the dataset\n")
    _report(out, {"report.md": "old", "a.csv": "old a", "old-only.png": "old png"})
    before = _checksums(out)
    real, n = os.replace, []

    def fails_on_the_fifth(src, dst):
        n.append(src)
        if len(n) == 5:
            raise OSError(errno.EIO, "I/O error")
        real(src, dst)

    monkeypatch.setattr(publish.os, "replace", fails_on_the_fifth)
    with pytest.raises(OSError, match="I/O error"):
        _report(out, {"report.md": "new", "a.csv": "new a"})
    monkeypatch.setattr(publish.os, "replace", real)
    assert _checksums(out) == before and _no_staging_left(tmp_path)
    # and when nothing fails, the new set replaces the old one, stale files included
    _report(out, {"report.md": "new", "a.csv": "new a"})
    assert sorted(os.listdir(out)) == [publish.MANIFEST_NAME, "a.csv", "measurements.jsonl",
                                       "report.md"]
    assert (out / "report.md").read_text() == "new"
    assert (out / "measurements.jsonl").read_text() == "the dataset\n"


def test_a_signal_while_writing_changes_nothing(tmp_path):
    out = tmp_path / "out"
    _report(out, {"report.md": "old"})
    before = _checksums(out)
    with pytest.raises(KeyboardInterrupt):
        with publish.staged(str(out)) as tmp:
            with open(os.path.join(tmp, "report.md"), "w") as fh:
                fh.write("half")
            raise KeyboardInterrupt
    assert _checksums(out) == before and _no_staging_left(tmp_path)
