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

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.costs import fill_model_columns
from costmodel.errors import UserError
from measure import dataset as ds
from measure import schema
from measure.schema import CONTEXT_COLUMNS, SIZE_COLUMNS

BLOG_FACTORS = ("batch_size", "embedding_dim", "hidden_dim", "low_rank")
BLOG_OUTCOMES = ("vanilla", "lora")
#: The blog's attention: LoRA on Wk and Wq (its `lora_self_attention`); full trains all three.
BLOG_TARGETS = "k,q"


@dataclass(frozen=True)
class Dataset:
    """A validated timing table and where it came from.

    status: one line on the sweep's state and how much of its grid is there (a folder), or
    "". notes: what the analysis must say it left out or worked around (a torn journal line,
    a partial sweep analysed with --partial); `select` adds them to the slice's `dropped`.
    """

    frame: pd.DataFrame
    source: str
    kind: str  # "sweep" (our directory), "table" (our CSV/JSONL), "blog"
    run: dict = field(default_factory=dict)
    profile_path: str | None = None
    status: str = ""
    complete: bool = True
    live_writer: str = ""  # a sweep writing the folder now: who
    notes: tuple[str, ...] = ()
    stratum: tuple[tuple[str, str], ...] = ()  # --stratum: (column, value) pairs to fit

    def __post_init__(self) -> None:
        if self.kind not in ("sweep", "table", "blog"):
            raise ValueError(f"unknown dataset kind {self.kind!r}")


def load(path: str | os.PathLike, partial: bool = False) -> Dataset:
    """Load our sweep directory, our CSV/JSONL table, or the blog's results CSV.

    A directory is read by `measure.dataset.read_folder` (the union of its journal and CSV,
    every row validated). A sweep that is not complete (interrupted, partial, killed) is
    refused unless `partial`, and then labelled; one being written now is always refused.
    Raises UserError naming the problem: missing, empty, foreign or corrupt file, bad row.
    """
    path = os.fspath(path)
    if not path.strip():
        raise UserError("--data is an empty string: give a sweep folder or a table file")
    if not os.path.exists(path):
        raise UserError(f"data path {path!r} does not exist")
    if os.path.isdir(path):
        return _load_folder(path, partial)
    if os.path.getsize(path) == 0:
        raise UserError(f"data file {path!r} is empty")
    if path.endswith((".jsonl", ".json")):
        records, cut = ds.read_jsonl(path)
        if not records:
            raise UserError(f"data file {path!r} holds no rows")
        notes = (f"the torn last line of {path} (a crash mid-write; never a finished record)",
                 ) if cut is not None else ()
        return Dataset(_consolidate(records, path), path, "table", notes=notes)
    raw = _read_table(path)
    if raw is None or raw.empty:
        raise UserError(f"data file {path!r} holds no rows: neither a lora-crossover "
                        "dataset nor the blog's results file")
    if _is_blog(raw):
        return Dataset(from_blog(raw, path), path, "blog")
    have = {str(c) for c in schema.upgrade(raw).columns}
    if not set(schema.COLUMNS) <= have:
        missing = next(c for c in schema.COLUMNS if c not in have)
        raise UserError(f"{path!r} is neither a lora-crossover dataset nor the blog's results "
                        f"file (missing column {missing!r})")
    try:
        frame = ds.read_csv(path)
    except (schema.SchemaError, ValueError) as exc:
        raise UserError(f"{path!r} does not follow the schema: {exc}") from None
    return Dataset(frame, path, "table")


def _consolidate(records: list, source: str) -> pd.DataFrame:
    try:
        return ds.consolidate(records)
    except schema.SchemaError as exc:
        raise UserError(f"{source!r} does not follow the schema: {exc}") from None


def _load_folder(path: str, partial: bool) -> Dataset:
    if not any(os.path.isfile(os.path.join(path, n)) for n in (ds.CSV_NAME, ds.JSONL_NAME)):
        raise UserError(f"{path!r} holds no {ds.CSV_NAME} or {ds.JSONL_NAME}")
    folder = ds.read_folder(path)
    if folder.frame.empty:
        raise UserError(f"{path!r} holds no measurements yet")
    status = folder.describe()
    if folder.holder is not None:
        raise UserError(f"{path!r} is being written now by a sweep ({folder.holder.describe()}); "
                        "analyse it once the sweep has finished")
    notes = []
    if folder.torn_tail:
        notes.append(f"the torn last line of {os.path.join(path, ds.JSONL_NAME)} "
                     "(a crash mid-write; never a finished record)")
    complete = folder.complete or not folder.run  # no run.json: a table, labelled as such
    if not complete:
        if not partial:
            raise UserError(
                f"{path!r} is not a complete sweep ({status}): rerun its sweep to finish it "
                "(python -m measure.sweep, same arguments; it resumes) or pass --partial to "
                "analyse what is there")
        missing = ("" if folder.pairs_expected is None else
                   f"{folder.pairs_expected - (folder.pairs_present or 0)} of "
                   f"{folder.pairs_expected} (config, method) pairs of the grid, never measured: ")
        notes.append(f"{missing}PARTIAL DATA, {status}")
    elif not folder.run:
        notes.append(f"{path}: {status}")
    profile = next((os.path.join(path, n) for n in ds.PROFILE_NAMES
                    if os.path.isfile(os.path.join(path, n))), None)
    return Dataset(folder.frame, path, "sweep", folder.run, profile, status=status,
                   complete=complete, notes=tuple(notes))


def _read_table(path: str) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, keep_default_na=True)
    except (pd.errors.EmptyDataError,):
        raise UserError(f"data file {path!r} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"data file {path!r} is not a CSV or JSON-lines table: "
                        f"{str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise UserError(f"cannot read data file {path!r}: {exc.strerror or exc}") from None


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
            **schema.ADDED_IN_3,  # layer rows
            paired_blocks=0,  # no paired ratio
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
    stratum: tuple[tuple[str, object], ...] = ()  # the STRATUM_COLUMNS values of every row

    def stratum_text(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.stratum)


#: Columns that change the physics of a kernel: rows that differ in one are never pooled into
#: one fit (one FLOP rate fitted to float32 and bfloat16 together describes neither; an input
#: gradient adds a product, seq and heads change the attention's shapes). One fit is one value
#: of each; the others are left out, said, and analysed with --stratum.
STRATUM_COLUMNS: tuple[str, ...] = ("dtype", "input_requires_grad", "seq", "heads")
#: The stratum preferred when none is asked for: the blog's (and the quick grid's) layer.
DEFAULT_STRATUM = {"dtype": "float32", "input_requires_grad": "False", "seq": "1", "heads": "1"}


def parse_stratum(text: str) -> tuple[tuple[str, str], ...]:
    """'dtype=bfloat16,seq=128' -> (("dtype", "bfloat16"), ("seq", "128")); ValueError if a
    name is not a stratum column."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in STRATUM_COLUMNS or not value.strip():
            raise ValueError(f"{part!r} is not NAME=VALUE with NAME one of {', '.join(STRATUM_COLUMNS)}")
        out.append((name.strip(), value.strip()))
    if not out:
        raise ValueError("empty --stratum")
    return tuple(out)


def _cell(v) -> str:
    return str(bool(v)) if isinstance(v, (bool, np.bool_)) else str(v)


def _pick_stratum(df: pd.DataFrame, asked: tuple[tuple[str, str], ...], dropped: list[str]):
    """The rows of one stratum and its values; the other strata's rows said in `dropped`."""
    cols = list(STRATUM_COLUMNS)
    keys = [tuple(_cell(v) for v in row) for row in df[cols].itertuples(index=False)]
    counts: dict[tuple, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1

    def describe(k) -> str:
        return ",".join(f"{c}={v}" for c, v in zip(cols, k))

    if asked:
        want = dict(asked)
        match = [k for k in counts if all(want.get(c, v) == v for c, v in zip(cols, k))]
        if not match:
            raise UserError(f"no rows of --stratum {','.join(f'{c}={v}' for c, v in asked)}; "
                            f"the data hold {'; '.join(describe(k) for k in counts)}")
        if len(match) > 1:
            raise UserError(f"--stratum {','.join(f'{c}={v}' for c, v in asked)} matches "
                            f"{len(match)} strata ({'; '.join(describe(k) for k in match)}); "
                            "name one")
        chosen = match[0]
    else:
        default = tuple(DEFAULT_STRATUM[c] for c in cols)
        chosen = max(counts, key=lambda k: (k == default, counts[k]))
    for k, n in counts.items():
        if k != chosen:
            dropped.append(f"{n} rows of stratum {describe(k)} (not pooled into this fit; "
                           f"analyse them with --stratum {describe(k)})")
    mask = np.array([k == chosen for k in keys], dtype=bool)
    first = df.loc[mask].iloc[0]
    return df.loc[mask].copy(), tuple((c, first[c].item() if hasattr(first[c], "item") else first[c])
                                      for c in cols)


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
    dropped: list[str] = list(dataset.notes)
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
    df, stratum = _pick_stratum(df, dataset.stratum, dropped)
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
    return Slice(df, device, variant, timing_mode, n, tuple(dropped), stratum)


def config_ids(df: pd.DataFrame) -> np.ndarray:
    """An integer id per config (all key columns but method and targets)."""
    cols = list(CONTEXT_COLUMNS) + list(SIZE_COLUMNS)
    return df.groupby(cols, sort=True).ngroup().to_numpy()
