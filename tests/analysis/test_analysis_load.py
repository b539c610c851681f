"""Loading: our schema table, the blog's results file in both header forms, bad files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import costmodel
from analysis import data
from costmodel.errors import UserError

BLOG_ROWS = [
    # batch, embed, hidden, rank, vanilla (s), lora (s)
    (2, 256, 256, 1, 0.41, 0.45),
    (2, 256, 512, 3, 0.43, 0.48),
    (64, 512, 256, 5, 0.52, 0.60),
    (1024, 2048, 2048, 1, 1.90, 2.30),
]


def _blog_unnamed(path) -> None:
    """Exactly what the blog's `pd.DataFrame(results).to_csv('results.csv')` writes."""
    results = {"vanilla": {}, "lora": {}}
    for b, e, h, r, tv, tl in BLOG_ROWS:
        results["vanilla"][(b, e, h, r)] = tv
        results["lora"][(b, e, h, r)] = tl
    pd.DataFrame(results).to_csv(path)


def test_blog_unnamed_header_is_what_its_loop_writes(tmp_path):
    path = tmp_path / "results.csv"
    _blog_unnamed(path)
    assert path.read_text().splitlines()[0] == ",,,,vanilla,lora"
    ds = data.load(path)
    assert ds.kind == "blog"
    f = ds.frame
    assert len(f) == 2 * len(BLOG_ROWS)
    assert set(f["method"]) == {"full", "lora_merged"}
    assert set(f["variant"]) == {"seed"}
    assert set(f["device_kind"]) == {"unknown"} and set(f["backend"]) == {"unknown"}
    full = f[f["method"] == "full"].sort_values(["batch", "embed", "hidden", "rank"])
    assert full["time_median_s"].tolist() == [r[4] for r in sorted(BLOG_ROWS)]
    lora = f[(f["method"] == "lora_merged") & (f["batch"] == 1024)].iloc[0]
    assert lora["time_median_s"] == 2.30 and lora["targets"] == "k,q"
    # Cost-model columns come from costmodel itself.
    c = costmodel.layer_cost("attention", "lora_merged", batch=1024, embed=2048, hidden=2048,
                             rank=1, targets="k,q")
    assert lora["model_flops"] == pytest.approx(float(c.flops))
    assert lora["model_kernels"] == pytest.approx(float(c.kernels))


def test_blog_named_header(tmp_path):
    path = tmp_path / "results_gpu.csv"
    cols = ["batch_size", "embedding_dim", "hidden_dim", "low_rank", "vanilla", "lora"]
    pd.DataFrame(BLOG_ROWS, columns=cols).to_csv(path, index=False)
    ds = data.load(path)
    assert ds.kind == "blog"
    assert sorted(ds.frame["embed"].unique().tolist()) == [256, 512, 2048]
    assert np.all(ds.frame["model_flops"] > 0)


def test_our_fixture_validates(fixture_csv):
    ds = data.load(fixture_csv)
    assert ds.kind == "table"
    sl = data.select(ds, 8)
    assert sl.n_configs == 24 and sl.variant == "clean" and sl.timing_mode == "aot"


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("", "is empty"),
    ("a,b\n1,2\n", "neither a lora-crossover dataset nor the blog's"),
    ("\x00\x01garbage", "neither"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        data.load(path)


def test_mixed_devices_refused(fixture_csv):
    f = data.load(fixture_csv).frame.copy()
    f.loc[f.index[:3], "device_kind"] = "NVIDIA H100"
    with pytest.raises(UserError, match="mixes devices"):
        data.select(data.Dataset(f, "x", "table"), 8)


def test_too_few_configs_names_the_need(fixture_csv):
    f = data.load(fixture_csv).frame
    f = f[f["embed"] <= 64]
    with pytest.raises(UserError, match=r"4 with full and a LoRA method both timed, at least 8"):
        data.select(data.Dataset(f, "x", "table"), 8)
