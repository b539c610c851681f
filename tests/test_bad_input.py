"""Bad input across the four programs, table-driven (issue 12): every case exits 2 with one
line on stderr, no traceback, and leaves every file of --out as it was (checksums).

Run in-process through each program's `main(argv)` (the shared runner), so 60 cases cost
seconds, not 60 interpreter starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

FIXTURE = Path(__file__).parent / "data" / "quick_cpu.csv"
PROFILE = Path(__file__).parent / "data" / "quick_cpu_profile.json"


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Bad inputs on disk, made once."""
    d = tmp_path_factory.mktemp("bad")
    rows = pd.read_csv(FIXTURE)

    def csv(name: str, **change) -> str:
        f = rows.copy()
        for col, value in change.items():
            f[col] = f[col].astype(object)
            f.loc[3, col] = value
        f.to_csv(d / name, index=False)
        return str(d / name)

    out = {
        "rank": csv("rank.csv", rank=5000),
        "batch0": csv("batch0.csv", batch=0),
        "target": csv("target.csv", targets="w"),
        "inf": csv("inf.csv", time_median_s="inf"),
        "method": csv("method.csv", method="qlora"),
        "width": csv("width.csv", embed=20_000_000),
    }
    (d / "empty.csv").write_text("")
    out["empty"] = str(d / "empty.csv")
    (d / "foreign.csv").write_text("a,b\n1,2\n")
    out["foreign"] = str(d / "foreign.csv")
    (d / "binary.csv").write_bytes(b"\x00\xff\xfe garbage")
    out["binary"] = str(d / "binary.csv")
    few = rows[rows["embed"] <= 64]
    few.to_csv(d / "few.csv", index=False)
    out["few"] = str(d / "few.csv")
    both = pd.concat([rows, rows.assign(backend="gpu", device_kind="NVIDIA H100")])
    both.to_csv(d / "mixed.csv", index=False)
    out["mixed"] = str(d / "mixed.csv")
    recs = rows.to_dict("records")
    (d / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:5]) + "{not json\n"
                                 + json.dumps(recs[6]) + "\n")
    out["jsonl"] = str(d / "bad.jsonl")
    # a sweep folder stopped half-way: run.json "interrupted", 30 of 72 pairs
    from measure import dataset, grids

    part = d / "partial"
    part.mkdir()
    rows.iloc[:30].to_csv(part / "measurements.csv", index=False)
    (part / "run.json").write_text(json.dumps({
        "format": dataset.RUN_FORMAT, "format_version": dataset.RUN_FORMAT_VERSION,
        "fingerprint": {"backend": "cpu", "device_kind": "cpu"}, "sessions": [],
        "grid": grids.named_grid("quick").describe(), "status": "interrupted",
        "pairs_expected": 72, "pairs_present": 30}))
    out["partial"] = str(part)
    (d / "nodata").mkdir()
    out["nodata"] = str(d / "nodata")
    prof = json.loads(PROFILE.read_text())
    prof["peak_flops_per_s"]["float32"] = 0.0
    (d / "zero.json").write_text(json.dumps(prof))
    out["zero_profile"] = str(d / "zero.json")
    prof = json.loads(PROFILE.read_text())
    prof["fingerprint"] = {"backend": "gpu", "device_kind": "NVIDIA H100"}
    (d / "gpu.json").write_text(json.dumps(prof))
    out["gpu_profile"] = str(d / "gpu.json")
    (d / "afile").write_text("a file, not a folder")
    out["afile"] = str(d / "afile")
    (d / "foreign_run").mkdir()
    (d / "foreign_run" / "run.json").write_text('{"format": "something else"}')
    out["foreign_run"] = str(d / "foreign_run")
    (d / "corrupt_log").mkdir()
    (d / "corrupt_log" / "run.json").write_text(json.dumps({
        "format": dataset.RUN_FORMAT, "format_version": dataset.RUN_FORMAT_VERSION,
        "fingerprint": {}, "sessions": []}))
    (d / "corrupt_log" / "measurements.jsonl").write_text("not json\n{}\n")
    out["corrupt_log"] = str(d / "corrupt_log")
    return out


def _main(program: str):
    if program == "costmodel":
        from costmodel.__main__ import main
    elif program == "sweep":
        from measure.sweep import main
    elif program == "device":
        from measure.device import main
    else:
        from analysis.crossover import main
    return main


TINY = ["--variant", "seed", "--batch", "2", "--embed", "8", "--hidden", "8", "--rank", "1",
        "--budget-s", "0", "--min-repeats", "2"]

# (program, argv with {out} and {files[...]} placeholders, a phrase the one line must hold)
CASES = [
    # ---- python -m costmodel
    ("costmodel", ["--batch", "0"], "must be > 0"),
    ("costmodel", ["--embed", "20000000"], "width 20,000,000 is above 1e+07"),
    ("costmodel", ["--batch", "2000000000"], "batch 2,000,000,000 is above 1e+09"),
    ("costmodel", ["--seq", "100000000", "--layer", "block"], "sequence length 100,000,000"),
    ("costmodel", ["--rank", "5000"], "rank 5000 exceeds min(e, h)"),
    ("costmodel", ["--layer", "conv"], "invalid choice: 'conv'"),
    ("costmodel", ["--method", "full,qlora"], "unknown method 'qlora'"),
    ("costmodel", ["--hardware", ""], "an empty string is not a path"),
    ("costmodel", ["--hardware", "{files[afile]}/nope.json"], "nope.json"),
    ("costmodel", ["--targets", "x"], "unknown target 'x'"),
    ("costmodel", ["--layer", "block", "--embed", "64", "--heads", "3"], "heads must divide"),
    ("costmodel", ["--model", "gpt5"], "unknown model 'gpt5'"),
    ("costmodel", ["--model", "gpt2-small", "--seq", "5000"], "seq 5,000 exceeds the 1024"),
    ("costmodel", ["--model", "gpt2-small", "--d-model", "0"], "must be > 0"),
    ("costmodel", ["--dtype", "float8"], "invalid choice: 'float8'"),
    ("costmodel", ["--crossover"], "--crossover needs --hardware"),
    ("costmodel", ["--batch", "abc"], "'abc' is not a whole number"),
    # ---- python -m measure.sweep
    ("sweep", ["--out", "", "--grid", "quick"], "an empty string is not a path"),
    ("sweep", ["--out", "{out}", "--grid", "nope"], "invalid choice: 'nope'"),
    ("sweep", ["--out", "{out}", "--batch", "0", "--embed", "8"], "must be > 0"),
    ("sweep", ["--out", "{out}", "--batch", "2", "--embed", "20000000"], "above 1e+07"),
    ("sweep", ["--out", "{out}", "--batch", "2000000000", "--embed", "8"], "above 1e+09"),
    ("sweep", ["--out", "{out}", "--batch", "2", "--embed", "8", "--hidden", "4", "--rank", "5"],
     "rank 5 exceeds min"),
    ("sweep", ["--out", "{out}", "--grid", "quick", "--methods", "full,qlora"], "unknown method"),
    ("sweep", ["--out", "{out}", "--grid", "quick", "--dtype", "float16"], "unknown dtype"),
    ("sweep", ["--out", "{out}", "--batch", "2", "--embed", "8", "--seq", "0"], "must be > 0"),
    ("sweep", ["--out", "{out}", "--batch", "2", "--embed", "8", "--timing", "as_written"],
     "seed variant only"),
    ("sweep", ["--out", "{out}", "--grid", "quick", "--min-repeats", "9", "--max-repeats", "5"],
     "--max-repeats 5 is below --min-repeats 9"),
    ("sweep", ["--out", "{out}", "--grid", "quick", "--target-ci", "-1"], "not a finite number"),
    ("sweep", ["--out", "{out}", "--grid", "quick", "--budget-s", "inf"], "not a finite number"),
    ("sweep", ["--out", "{out}", "--grid", "quick", "--limit", "0"], "must be > 0"),
    ("sweep", ["--out", "{out}", "--grid", "quick", "--batch", "2"], "not both"),
    ("sweep", ["--out", "{files[afile]}", *TINY], "exists and is not a directory"),
    ("sweep", ["--out", "{files[foreign_run]}", *TINY], "not written by this tool"),
    ("sweep", ["--out", "{files[corrupt_log]}", *TINY], "is corrupt"),
    # ---- python -m measure.device
    ("device", ["--out", ""], "an empty string is not a path"),
    ("device", ["--out", "{out}"], "is a directory"),
    ("device", ["--out", "{files[afile]}/p.json"], "afile is a file, not a folder"),
    ("device", ["--out", "{out}/p.json", "--max-n", "1"], "--max-n 1 is below 64"),
    ("device", ["--out", "{out}/p.json", "--max-n", "abc"], "'abc' is not a whole number"),
    ("device", ["--out", "{out}/p.json", "--dtypes", "float16"], "unknown dtype 'float16'"),
    ("device", ["--out", "{out}/p.json", "--repeats", "0"], "must be > 0"),
    ("device", ["--out", "{out}/p.json", "--copy-mib", "-1"], "not a finite number"),
    ("device", ["--out", "{out}/p.json", "--target-call-s", "0"], "must be > 0"),
    ("device", ["--out", "{out}/keep.txt"], "holds something else"),
    ("device", ["--out", "{out}/p.json", "--frobnicate"], "unrecognized arguments"),
    ("device", ["--out", "{out}/nope/p.json"], "does not exist"),
    # ---- python -m analysis.crossover
    ("analysis", ["--data", "", "--out", "{out}"], "an empty string is not a path"),
    ("analysis", ["--data", "{files[few]}", "--out", ""], "an empty string is not a path"),
    ("analysis", ["--data", "{files[afile]}/x.csv", "--out", "{out}"], "does not exist"),
    ("analysis", ["--data", "{files[empty]}", "--out", "{out}"], "is empty"),
    ("analysis", ["--data", "{files[foreign]}", "--out", "{out}"], "neither a lora-crossover"),
    ("analysis", ["--data", "{files[binary]}", "--out", "{out}"], "binary.csv"),
    ("analysis", ["--data", "{files[rank]}", "--out", "{out}"], "line 5: column 'rank' is 5000"),
    ("analysis", ["--data", "{files[batch0]}", "--out", "{out}"], "line 5: column 'batch' is 0"),
    ("analysis", ["--data", "{files[target]}", "--out", "{out}"], "column 'targets' is 'w'"),
    ("analysis", ["--data", "{files[inf]}", "--out", "{out}"], "column 'time_median_s' is inf"),
    ("analysis", ["--data", "{files[method]}", "--out", "{out}"], "column 'method' is 'qlora'"),
    ("analysis", ["--data", "{files[width]}", "--out", "{out}"], "column 'embed' is 20000000"),
    ("analysis", ["--data", "{files[jsonl]}", "--out", "{out}"], "line 6 is corrupt"),
    ("analysis", ["--data", "{files[few]}", "--out", "{out}"], "too few configs"),
    ("analysis", ["--data", "{files[mixed]}", "--out", "{out}"], "mixes devices"),
    ("analysis", ["--data", "{files[partial]}", "--out", "{out}"], "not a complete sweep"),
    ("analysis", ["--data", "{files[nodata]}", "--out", "{out}"], "holds no measurements"),
    ("analysis", ["--data", str(FIXTURE), "--out", "{out}", "--profile", "{files[zero_profile]}"],
     "peak FLOP/s for float32 must be > 0"),
    ("analysis", ["--data", str(FIXTURE), "--out", "{out}", "--profile", "{files[gpu_profile]}"],
     "does not match the data (backend: 'gpu' -> 'cpu'"),
    ("analysis", ["--data", str(FIXTURE), "--out", "{out}", "--bootstrap", "1000000000"],
     "above 100,000"),
    ("analysis", ["--data", str(FIXTURE), "--out", "{out}", "--bootstrap", "5"], "too few"),
    ("analysis", ["--data", str(FIXTURE), "--out", "{out}", "--widths", "0"], "must be >= 1"),
    ("analysis", ["--data", str(FIXTURE), "--out", "{out}", "--widths", "100000000"],
     "above 1e+07"),
    ("analysis", ["--data", str(FIXTURE), "--out", "{out}", "--model", "gpt5"], "unknown model"),
    ("analysis", ["--data", str(FIXTURE), "--out", "{out}/keep.txt"], "is not a directory"),
    ("analysis", ["--grid", "huge", "--out", "{out}"], "unknown grid 'huge'"),
    ("analysis", ["--data", str(FIXTURE), "--out", "{out}", "--layer-fit", "x.json"],
     "--layer-fit applies to a models dataset"),
]


@pytest.mark.parametrize("program, argv, phrase", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(program, argv, phrase, files, tmp_path,
                                                          capsys, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(Path(__file__).parent / "data", out)  # a folder with files to keep
    (out / "keep.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)  # nothing lands in the checkout either
    before = _checksums(out)
    args = [a.format(out=out, files=files) for a in argv]
    rc = _main(program)(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert phrase in err, err
    assert _checksums(out) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_at_least_fifty_cases_cover_the_four_programs():
    assert len(CASES) >= 50
    assert {c[0] for c in CASES} == {"costmodel", "sweep", "device", "analysis"}
