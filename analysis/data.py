"""Load a timing table -- ours (a sweep directory, its CSV or JSON lines) or the blog's results
file -- validate it against `measure.schema`, and pick the slice one fit can explain.

The blog's loop writes ``pd.DataFrame(results).to_csv('results.csv')`` with
``results = {'vanilla': {(batch, embed, hidden, rank): t}, 'lora': {...}}``: a header
``,,,,vanilla,lora``, four unnamed index columns, then mean seconds of ten calls. Its notebook
renames the columns to ``batch_size, embedding_dim, hidden_dim, low_rank, vanilla, lora``; both
forms load. ``vanilla`` maps to method ``full`` (Wk, Wq, Wv trained), ``lora`` to
``lora_merged`` on targets k, q (the blog merges A·B into the weights before the product), the
variant to ``seed``, the timing mode to ``as_written`` (each timed call re-jits) and the device
to ``unknown``. The cost-model columns are filled from `costmodel`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.costs import fill_model_columns
from costmodel.errors import UserError
from measure import schema

BLOG_FACTORS = ("batch_size", "embedding_dim", "hidden_dim", "low_rank")
BLOG_OUTCOMES = ("vanilla", "lora")
#: The blog's attention: LoRA on Wk and Wq (its `lora_self_attention`); full trains all three.
BLOG_TARGETS = "k,q"
SIZE_COLUMNS = ("batch", "embed", "hidden", "rank")
#: Columns that, with the sizes, identify a config: every KEY column but method and targets.
CONTEXT_COLUMNS = tuple(
    c for c in schema.KEY if c not in ("method", "targets") and c not in SIZE_COLUMNS
)
PROFILE_NAMES = ("profile.json", "device.json")


@dataclass(frozen=True)
class Dataset:
    """A validated timing table and where it came from."""

    frame: pd.DataFrame
    source: str
    kind: str  # "sweep" (our directory), "table" (our CSV/JSONL), "blog"
    run: dict = field(default_factory=dict)
    profile_path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("sweep", "table", "blog"):
            raise ValueError(f"unknown dataset kind {self.kind!r}")


def load(path: str | os.PathLike) -> Dataset:
    """Load our sweep directory, our CSV/JSONL table, or the blog's results CSV.

    Raises UserError naming the problem: missing, empty or foreign file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"data path {path!r} does not exist")
    run: dict = {}
    profile = None
    kind = "table"
    if os.path.isdir(path):
        table = None
        for name in ("measurements.csv", "measurements.jsonl"):
            if os.path.isfile(os.path.join(path, name)):
                table = os.path.join(path, name)
                break
        if table is None:
            raise UserError(f"{path!r} holds no measurements.csv or measurements.jsonl")
        run_path = os.path.join(path, "run.json")
        if os.path.isfile(run_path):
            try:
                with open(run_path, encoding="utf-8") as fh:
                    run = json.load(fh)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise UserError(f"{run_path!r} is not JSON") from None
        for name in PROFILE_NAMES:
            if os.path.isfile(os.path.join(path, name)):
                profile = os.path.join(path, name)
                break
        kind = "sweep"
        path_table = table
    else:
        path_table = path
    if os.path.getsize(path_table) == 0:
        raise UserError(f"data file {path_table!r} is empty")
    raw = _read_table(path_table)
    if raw is None or raw.empty:
        raise UserError(f"data file {path_table!r} holds no rows: neither a lora-crossover "
                        "dataset nor the blog's results file")
    if _is_blog(raw):
        return Dataset(from_blog(raw, path_table), path, "blog")
    for name, dtype in schema.COLUMNS.items():
        # An all-empty string column reads back as float NaN; give it object dtype first.
        if dtype == "string" and name in raw and raw[name].dtype != object:
            raw[name] = raw[name].astype(object)
    try:
        frame = schema.validate(raw)
    except schema.SchemaError as exc:
        raise UserError(
            f"{path_table!r} is neither a lora-crossover dataset nor the blog's results file "
            f"({exc})"
        ) from None
    return Dataset(frame, path, kind, run, profile)


def _read_table(path: str) -> pd.DataFrame | None:
    try:
        if path.endswith(".jsonl") or path.endswith(".json"):
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_csv(path, keep_default_na=True)
    except (pd.errors.EmptyDataError,):
        raise UserError(f"data file {path!r} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"data file {path!r} is not a CSV or JSON-lines table: "
                        f"{str(exc).splitlines()[0]}") from None


def _is_blog(raw: pd.DataFrame) -> bool:
    cols = [str(c) for c in raw.columns]
    if len(cols) != 6 or cols[4:] != list(BLOG_OUTCOMES):
        return False
    return cols[:4] == list(BLOG_FACTORS) or all(c.startswith("Unnamed:") for c in cols[:4])


def from_blog(raw: pd.DataFrame, source: str = "blog") -> pd.DataFrame:
    """Map the blog's wide table (either header form) to schema rows, costs filled in."""
    df = raw.copy()
    df.columns = list(BLOG_FACTORS) + list(BLOG_OUTCOMES)
    for c in BLOG_FACTORS:
        vals = pd.to_numeric(df[c], errors="coerce")
        if vals.isna().any() or (vals <= 0).any() or (vals != np.round(vals)).any():
            raise UserError(f"{source!r}: column {c} of the blog's file must hold positive integers")
        df[c] = vals.astype("int64")
    for c in BLOG_OUTCOMES:
        vals = pd.to_numeric(df[c], errors="coerce")
        if vals.isna().all():
            raise UserError(f"{source!r}: column {c} of the blog's file holds no times")
        df[c] = vals
    rows = []
    for method, col, targets in (("full", "vanilla", ""), ("lora_merged", "lora", BLOG_TARGETS)):
        part = pd.DataFrame({
            "batch": df["batch_size"], "embed": df["embedding_dim"],
            "hidden": df["hidden_dim"], "rank": df["low_rank"],
        })
        t = df[col].to_numpy(dtype=float)
        ok = np.isfinite(t) & (t > 0)
        part = part.assign(
            schema_version=schema.SCHEMA_VERSION, run_id="blog", backend="unknown",
            device_kind="unknown", layer="attention", method=method, variant="seed",
            timing_mode="as_written", seq=1, heads=1, targets=targets,
            input_requires_grad=False, dtype="float32", n_repeats=10, calls_per_repeat=1,
            # The blog records the mean of ten calls, not a median; no spread is kept.
            time_median_s=np.where(ok, t, np.nan), time_iqr_s=np.nan, time_min_s=np.nan,
            time_ci_low_s=np.nan, time_ci_high_s=np.nan, time_cv=np.nan, unstable=False,
            compile_s=np.nan, model_flops=np.nan, model_bytes=np.nan, model_kernels=np.nan,
            trainable_params=0, xla_flops=np.nan, xla_bytes=np.nan,
            error=np.where(ok, "", "no time recorded"), timestamp="",
            **schema.ADDED_IN_2,  # not paired, not refined
        )
        rows.append(part)
    out = pd.concat(rows, ignore_index=True)
    bad = out["rank"] > np.minimum(out["embed"], out["hidden"])
    if bad.any():
        raise UserError(f"{source!r}: a rank above min(embed, hidden) in the blog's file")
    out = fill_model_columns(out, overwrite=True)
    try:
        return schema.validate(out)
    except schema.SchemaError as exc:
        raise UserError(f"{source!r}: the blog's file does not map to the schema ({exc})") from None


@dataclass(frozen=True)
class Slice:
    """The rows one fit explains: one device, one variant and timing mode, runnable rows."""

    frame: pd.DataFrame  # with a `config_id` column
    device: str
    variant: str
    timing_mode: str
    n_configs: int
    dropped: tuple[str, ...]  # what was left out, said in the report


def select(dataset: Dataset, min_configs: int) -> Slice:
    """Keep the rows that ran, refuse mixed devices, pick one (variant, timing mode).

    Preference: our clean kernels timed ahead-of-time, then the blog's kernels timed
    ahead-of-time, then whatever slice has the most configs. Raises UserError for mixed
    devices, fewer than `min_configs` configs with full and a LoRA method both timed, or a
    single embed·hidden size (nothing to fit the width terms on or to test out of scale)."""
    df = dataset.frame
    devices = sorted(set(zip(df["backend"].astype(str), df["device_kind"].astype(str))))
    if len(devices) > 1:
        names = ", ".join(f"{b}/{k}" for b, k in devices)
        raise UserError(
            f"the dataset mixes devices ({names}); analyse one device at a time")
    device = "/".join(devices[0]) if devices else "unknown"
    dropped: list[str] = []
    ok = schema.is_ok(df)
    if (~ok).any():
        dropped.append(f"{int((~ok).sum())} rows that failed or have no time")
    df = df.loc[ok].copy()
    if df.empty:
        raise UserError(f"{dataset.source!r} holds no row that ran")
    slices = df.groupby(["variant", "timing_mode"]).size()
    order = sorted(
        slices.index,
        key=lambda vt: (vt != ("clean", "aot"), vt != ("seed", "aot"), -slices[vt]),
    )
    variant, timing_mode = order[0]
    for vt in order[1:]:
        dropped.append(f"{slices[vt]} rows of variant {vt[0]}, timing {vt[1]} (not fitted)")
    df = df[(df["variant"] == variant) & (df["timing_mode"] == timing_mode)].copy()
    df["config_id"] = config_ids(df)
    per_config = df.groupby("config_id")["method"].agg(lambda m: set(m))
    if df.duplicated(["config_id", "method"]).any():
        raise UserError("the dataset holds several LoRA target sets per config; filter to one")
    usable = per_config[per_config.map(lambda m: "full" in m and len(m) >= 2)].index
    n = len(usable)
    if n < min_configs:
        raise UserError(
            f"too few configs to fit: {n} with full and a LoRA method both timed, "
            f"at least {min_configs} needed"
        )
    df = df[df["config_id"].isin(usable)].reset_index(drop=True)
    sizes = sorted(set(zip(df["embed"], df["hidden"])), key=lambda eh: eh[0] * eh[1])
    if len({e * h for e, h in sizes}) < 2:
        e, h = sizes[0]
        raise UserError(
            f"every config has the same width (embed x hidden = {e} x {h}): at least 2 "
            "distinct embed*hidden sizes are needed to fit the width terms and to test "
            "out of scale")
    return Slice(df, device, variant, timing_mode, n, tuple(dropped))


def config_ids(df: pd.DataFrame) -> np.ndarray:
    """An integer id per config (all key columns but method and targets)."""
    cols = list(CONTEXT_COLUMNS) + list(SIZE_COLUMNS)
    return df.groupby(cols, sort=True).ngroup().to_numpy()
