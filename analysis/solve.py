"""Crossover widths with bootstrap intervals, and extrapolation with prediction intervals.

Everything downstream of the chosen fit is computed here, once, as data: `Bootstrap` (the
refitted parameters), `CrossoverTable`, `Curves` (time vs width with bands) and
`Extrapolation`. Rendering never recomputes.

Crossover. Along e = h = d with batch and rank fixed (the configs in the quick and square
grids are square; for non-square grids the measured crossover is read along
d = sqrt(e·h)), d* is where the fitted model predicts t_lora(d) = t_full(d): the point
estimate comes from `costmodel.solve_crossover` (grid scan + Brent) over the fitted time, the
95% interval from a case bootstrap over configs (all methods of a resampled config travel
together), refitting each replicate with the fit's sign check redone (a term that fits
negative there is fixed at its prior or dropped; the prior value is taken as exact); replicate
d* are read off a fine log grid, vectorised over replicates. A replicate with no crossover in range counts as d* = +inf, one where LoRA
is already faster at the range's start as d* = d_min, and the percentile interval is taken
over those extended values (an interval end at +inf says "the data cannot rule out no
crossover in range"; a lower end at d_min is censored, flagged `ci_low_censored`). Where the
fit fixed or dropped a term, each row's note says what d* rests on and what the unconstrained
fit finds (`prior_note`). The asymptotic speedup lim t_full/t_lora is the cost model's
`asymptotic_speedup` of the fitted times.

Prediction intervals. The predicted mean of each bootstrap replicate times a multiplicative
residual drawn from the chosen fit's relative residuals (measured / fitted): parameter and
run-to-run uncertainty together, without assuming a residual law. The full/LoRA ratios
carry the bootstrap CI of the mean ratio only (no residual draws): a confidence interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import costmodel
from analysis import costs
from analysis import fit as fitmod
from analysis.data import CONTEXT_COLUMNS
from costmodel.hardware import HardwareProfile

#: Search range for d* (widths), and the extrapolation widths of GPT-scale models.
D_MIN, D_MAX = 16.0, 65536.0
N_GRID = 300
GPT_WIDTHS = (768, 1024, 1600, 2048, 4096, 5120, 8192, 12288)
N_BOOT = 200
RESID_DRAWS = 10
LORA_METHODS = ("lora", "lora_merged")
ALPHA = 0.05


@dataclass(frozen=True)
class Bootstrap:
    """Case-bootstrap replicates of the chosen form's parameters over all design columns.

    constrained: the share of replicates in which each physical term was fixed at its prior
    or dropped by the sign check, which every replicate redoes."""

    params: np.ndarray  # (B, p)
    n_failed: int
    seed: int
    constrained: dict[str, float] = field(default_factory=dict)


def bootstrap(result: fitmod.FitResult, rows: pd.DataFrame, n_boot: int = N_BOOT,
              seed: int = 0) -> Bootstrap:
    """Resample configs with replacement, refit `result.form` on each replicate with the same
    sign check as the fit (a term that fits negative is fixed at its prior or dropped), so the
    interval carries the uncertainty of that choice; a prior value itself is taken as exact."""
    X, off, cols = fitmod.design_matrix(result.form, rows)
    priors = dict(result.priors)
    start = full_params(result)
    y = rows["time_ms"].to_numpy()
    cid = rows["config_id"].to_numpy()
    ids = np.unique(cid)
    members = [np.flatnonzero(cid == i) for i in ids]
    rng = np.random.default_rng(seed)
    out, failed = [], 0
    counts: dict[str, int] = {}
    for _ in range(n_boot):
        pick = rng.integers(0, len(ids), len(ids))
        idx = np.concatenate([members[i] for i in pick])
        try:
            p, fixed, dropped = fitmod.fit_full(result.form, X[idx], off[idx], y[idx], cols,
                                                priors, start)
        except (np.linalg.LinAlgError, ValueError):
            failed += 1
            continue
        if not np.all(np.isfinite(p)):
            failed += 1
            continue
        out.append(p)
        for c in fixed + dropped:
            counts[c] = counts.get(c, 0) + 1
    params = np.array(out).reshape(-1, len(cols))
    share = {c: k / max(len(out), 1) for c, k in counts.items()}
    return Bootstrap(params, failed, seed, share)


def full_params(result: fitmod.FitResult) -> np.ndarray:
    return fitmod.expand_params(result, result.params[None, :])[0]


# ---------------------------------------------------------------- groups and time functions


def crossover_groups(rows: pd.DataFrame) -> pd.DataFrame:
    """One template row per (context, batch, rank) holding full and a LoRA method, with the
    LoRA methods present and their targets."""
    keys = list(CONTEXT_COLUMNS) + ["batch", "rank"]
    out = []
    for _, g in rows.groupby(keys, sort=True):
        methods = set(g["method"])
        loras = [m for m in LORA_METHODS if m in methods]
        if "full" not in methods or not loras:
            continue
        tmpl = g.iloc[0].copy()
        targets = {m: str(g.loc[g["method"] == m, "targets"].iloc[0]) for m in methods}
        out.append({"template": tmpl, "loras": loras, "targets": targets})
    return pd.DataFrame(out)


def _terms_square(tmpl: pd.Series, widths: np.ndarray, methods: list[str],
                  targets: dict[str, str], profile: HardwareProfile | None) -> pd.DataFrame:
    """Terms at e = h = widths, methods stacked in order (len(methods) * len(widths) rows)."""
    parts = [costs.square_counts(tmpl, m, targets.get(m, ""), widths, profile) for m in methods]
    n = len(widths)
    return fitmod.terms_frame(
        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]), np.repeat(methods, n),
        np.concatenate([p[3] for p in parts]), None, np.concatenate([p[4] for p in parts]))


def _design(form: str, terms: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    X, off, _ = fitmod.design_matrix(form, terms)
    return X, off


def time_fn(result: fitmod.FitResult, tmpl: pd.Series, targets: dict[str, str],
            profile: HardwareProfile | None):
    """(method, d) -> fitted seconds along e = h = d: what `costmodel.solve_crossover` takes."""
    params = full_params(result)

    def fn(method: str, d: np.ndarray) -> np.ndarray:
        d = np.atleast_1d(np.asarray(d, dtype=float))
        terms = _terms_square(tmpl, d, [method], targets, profile)
        X, off = _design(result.form, terms)
        return fitmod.predict_many(result.form, X, off, params) / 1e3

    return fn


# ---------------------------------------------------------------- crossover


@dataclass(frozen=True)
class CrossoverTable:
    """One row per (context, batch, rank, LoRA method)."""

    table: pd.DataFrame  # see `crossover_table` for the columns
    d_min: float
    d_max: float
    max_measured_width: float


def _first_crossing(widths: np.ndarray, gap: np.ndarray, faster_above: bool) -> np.ndarray:
    """Per column of gap = log t_lora − log t_full (n, B): the first d where LoRA becomes
    faster (gap turns negative; faster_above) or stops being faster (gap turns >= 0),
    log-linear interpolation between grid points; d_min when already so at the first point,
    +inf when never."""
    hit = gap < 0 if faster_above else gap >= 0
    out = np.full(gap.shape[1], np.inf)
    first = np.argmax(hit, axis=0)
    logd = np.log(widths)
    for j in np.flatnonzero(hit.any(axis=0)):
        i = first[j]
        if i == 0:
            out[j] = widths[0]
            continue
        g0, g1 = gap[i - 1, j], gap[i, j]
        frac = g0 / (g0 - g1) if g0 != g1 else 0.0
        out[j] = np.exp(logd[i - 1] + frac * (logd[i] - logd[i - 1]))
    return out


def _measured_ratio(rows: pd.DataFrame, tmpl: pd.Series, method: str) -> pd.Series | None:
    """Mean measured log(t_method / t_full) per d = sqrt(e·h), sorted by d; None if absent."""
    keys = list(CONTEXT_COLUMNS) + ["batch", "rank"]
    sel = np.ones(len(rows), dtype=bool)
    for k in keys:
        sel &= (rows[k] == tmpl[k]).to_numpy()
    g = rows[sel]
    wide = g.pivot_table(index=["embed", "hidden"], columns="method", values="time_ms")
    if method not in wide or "full" not in wide:
        return None
    log_ratio = np.log(wide[method] / wide["full"]).dropna()
    if log_ratio.empty:
        return None
    d = np.sqrt(np.array([e * h for e, h in log_ratio.index], dtype=float))
    return pd.Series(log_ratio.to_numpy(), index=d).groupby(level=0).mean().sort_index()


def measured_crossings(rows: pd.DataFrame, tmpl: pd.Series, method: str) -> np.ndarray:
    """Every width where the measured lora/full ratio changes sign along d = sqrt(e·h)
    (geometric interpolation between the bracketing widths), in increasing order."""
    by_d = _measured_ratio(rows, tmpl, method)
    if by_d is None:
        return np.array([])
    lr, dd = by_d.to_numpy(), by_d.index.to_numpy()
    faster = lr < 0
    out = []
    for i in np.flatnonzero(faster[1:] != faster[:-1]) + 1:
        frac = lr[i - 1] / (lr[i - 1] - lr[i])
        out.append(float(np.exp(np.log(dd[i - 1]) + frac * (np.log(dd[i]) - np.log(dd[i - 1])))))
    return np.asarray(out)


def measured_crossover(rows: pd.DataFrame, tmpl: pd.Series, method: str) -> tuple[float, str]:
    """The first width where the measured lora/full ratio changes sign along d = sqrt(e·h)
    (geometric interpolation between the bracketing widths), with a plain note; when it
    changes sign more than once the note says so and lists every crossing."""
    by_d = _measured_ratio(rows, tmpl, method)
    if by_d is None:
        return np.nan, "not measured"
    lr, dd = by_d.to_numpy(), by_d.index.to_numpy()
    if np.all(lr >= 0):
        return np.nan, f"measured: LoRA slower at every width {dd[0]:g}-{dd[-1]:g}"
    if np.all(lr < 0):
        return np.nan, f"measured: LoRA faster at every width {dd[0]:g}-{dd[-1]:g}"
    start_slower = lr[0] >= 0
    crossings = measured_crossings(rows, tmpl, method)
    if len(crossings) == 1:
        return float(crossings[0]), "" if start_slower else "measured: LoRA faster below, slower above"
    where = ", ".join(f"{x:,.0f}" for x in crossings)
    note = (f"measured: the ratio changes sign {len(crossings)} times (≈ 1 within noise) "
            f"at d ≈ {where}; the first shown" + ("" if start_slower else
                                                    ", where LoRA stops being faster"))
    return float(crossings[0]), note


#: Plain names of the physical terms, for the notes.
TERM_NAMES = {"kernels": "per-kernel overhead", "Intercept": "per-call dispatch",
              "gflops": "compute-time term", "gbytes": "memory-time term",
              "gresult": "result-buffer term"}


def _term_value(col: str, v_ms: float) -> str:
    """A design coefficient (ms per unit) in the report's units."""
    if col == "kernels":
        return f"{v_ms * 1e3:.3g} us per kernel"
    if col == "Intercept":
        return f"{v_ms * 1e3:.3g} us per call"
    return f"{TERM_NAMES.get(col, col)} {v_ms:.3g} ms/{'GFLOP' if col == 'gflops' else 'GB'}"


def _verdict(w: np.ndarray, gap: np.ndarray) -> tuple[float, bool, str]:
    """(d*, LoRA faster above, plain text) of one gap curve (n,) along widths w."""
    faster_above = bool(gap[0] >= 0)
    d = float(_first_crossing(w, gap[:, None], faster_above)[0])
    if np.isfinite(d):
        return d, faster_above, (f"d* = {d:,.0f}" if faster_above
                                 else f"LoRA faster below d* = {d:,.0f}, slower above")
    return d, faster_above, ("no crossover in range (LoRA slower throughout)" if faster_above
                             else "no crossover in range (LoRA faster throughout)")


def prior_note(result: fitmod.FitResult, boot: Bootstrap, method_terms: set[str],
               d_star: float, faster_above: bool, ci: tuple[float, float],
               free: tuple[float, bool, str] | None) -> str:
    """What a crossover rests on when the sign check fixed or dropped terms: which term, at
    what value and why, and what the unconstrained fit finds instead.

    method_terms: the constrained terms whose count differs between full and the LoRA method
    along the width axis (these set d* directly; the shared dispatch cancels in the
    difference and matters only through the other estimates). free: `_verdict` of the
    unconstrained fit, None when it failed. Empty when nothing was constrained, or when only
    shared terms were and the unconstrained answer is the same."""
    constrained = [c for c, _ in result.fixed] + list(result.dropped)
    if not constrained:
        return ""
    fixed, after = dict(result.fixed), dict(result.constrained_after)
    same = free is not None and (
        free[1] == faster_above and np.isfinite(free[0]) == np.isfinite(d_star)
        and (not np.isfinite(d_star) or ci[0] <= free[0] <= ci[1]))
    direct = [c for c in constrained if c in method_terms]
    if not direct and same:
        return ""
    subject = "d*" if np.isfinite(d_star) else "the verdict"

    def how(c: str) -> str:
        return "fixed" if c in fixed else "dropped"

    def why(c: str) -> str:
        before = after.get(c, ())
        if not before:
            return "the free fit put it below zero"
        names = " and ".join(f"{TERM_NAMES.get(b, b)} was {how(b)}" for b in before)
        return f"below zero once the {names}"

    def statement(c: str) -> str:
        share = f"{how(c)} in {boot.constrained.get(c, 0.0):.0%} of the bootstrap refits"
        if c in fixed:
            return (f"fixed at the device profile's {_term_value(c, fixed[c])} "
                    f"({why(c)}; {share})")
        return f"dropped (0: {why(c)}; {share})"

    if free is None:
        found = "with no term constrained the fit fails"
    else:
        cols = fitmod.design_matrix(result.form, fitmod._dummy_terms())[2]
        values = ", ".join(_term_value(c, result.unconstrained[cols.index(c)]) for c in constrained)
        found = f"with no term constrained the fit finds {values} and {free[2]}"
    if direct and same:
        return "; ".join(f"{TERM_NAMES.get(c, c)} {statement(c)}" for c in direct) + (
            f"; unconstrained fit: d* = {free[0]:,.0f}, within the interval"
            if np.isfinite(d_star) else "; unconstrained fit: the same")
    verb = "set by" if direct else "rests on"
    return (f"{subject} {verb} the " + "; the ".join(f"{TERM_NAMES.get(c, c)} {statement(c)}"
                                                   for c in (direct or constrained))
            + f"; {found}")


def crossover_table(result: fitmod.FitResult, boot: Bootstrap, rows: pd.DataFrame,
                    profile: HardwareProfile | None, d_min: float = D_MIN,
                    d_max: float = D_MAX, n_grid: int = N_GRID) -> CrossoverTable:
    """d* with its bootstrap interval, the measured crossover and the asymptotic speedup."""
    max_w = float(max(rows["embed"].max(), rows["hidden"].max()))
    min_w = float(min(rows["embed"].min(), rows["hidden"].min()))
    widths = np.geomspace(d_min, d_max, n_grid)
    all_cols = fitmod.design_matrix(result.form, fitmod._dummy_terms())[2]
    records = []
    for _, grp in crossover_groups(rows).iterrows():
        tmpl, targets = grp["template"], grp["targets"]
        lo = max(d_min, float(tmpl["rank"]))
        w = widths[widths >= lo]
        terms = _terms_square(tmpl, w, ["full"] + grp["loras"], targets, profile)
        X, off = _design(result.form, terms)
        mu_b = fitmod.predict_many(result.form, X, off, boot.params)  # (n, B)
        fn = time_fn(result, tmpl, targets, profile)
        n = len(w)
        params = full_params(result)
        mu_free = (None if result.unconstrained is None
                   else fitmod.predict_many(result.form, X, off, result.unconstrained))
        for k, m in enumerate(grp["loras"], start=1):
            gap_b = np.log(np.clip(mu_b[k * n:(k + 1) * n], 1e-30, None)) - np.log(
                np.clip(mu_b[:n], 1e-30, None))
            mu = fitmod.predict_many(result.form, X, off, params)
            gap = np.log(max(mu[k * n], 1e-30)) - np.log(max(mu[0], 1e-30))
            # LoRA slower at the start: find where it becomes faster. LoRA already faster at
            # the start: find where (if anywhere) it stops being faster -- same solver, the
            # roles of the two methods swapped.
            faster_above = bool(gap >= 0)
            swap = {"lora": m, "full": "full"} if faster_above else {"lora": "full", "full": m}
            point = costmodel.solve_crossover(lambda meth, d: fn(swap[meth], d), lo, d_max,
                                              n_grid=n_grid, limit=False)
            limit = costmodel.asymptotic_speedup(lambda meth, d: fn(m if meth == "lora" else meth, d),
                                                 d_max)
            roof_limit = np.nan
            if profile is not None:
                # The cost model alone (unfitted roofline on the device profile), for contrast.
                def roof_fn(meth, d, m=m):
                    return costs.square_counts(tmpl, m if meth == "lora" else "full",
                                               targets.get(m if meth == "lora" else "full", ""),
                                               np.atleast_1d(d), profile)[3]
                lim = costmodel.asymptotic_speedup(roof_fn, d_max)
                roof_limit = np.nan if lim is None else float(lim)
            d_b = _first_crossing(w, gap_b, faster_above)
            q = np.quantile(d_b, [ALPHA / 2, 1 - ALPHA / 2], method="inverted_cdf")
            meas, meas_note = measured_crossover(rows, tmpl, m)
            at_max = point.speedup_at_d_max if faster_above else 1 / point.speedup_at_d_max
            if point.d_star is None:
                if faster_above:
                    note = (f"no crossover in range: LoRA slower up to d = {d_max:g} "
                            f"(full/LoRA = {at_max:.3g} there)")
                else:
                    note = f"no crossover in range: LoRA faster over the whole range d = {lo:g}-{d_max:g}"
                d_star = np.nan
            else:
                d_star = float(point.d_star)
                note = "" if faster_above else "LoRA faster BELOW d*, slower above"
                if d_star > max_w:
                    note = "; ".join(x for x in (note, f"beyond the largest measured width "
                                                       f"{max_w:g}: an extrapolation") if x)
                elif d_star < min_w:
                    note = "; ".join(x for x in (note, f"below the smallest measured width "
                                                       f"{min_w:g}: an extrapolation") if x)
            # Terms whose count differs between full and this LoRA method along the axis.
            Xf, Xm = X[:n], X[k * n:(k + 1) * n]
            method_terms = {c for j, c in enumerate(all_cols) if np.any(Xf[:, j] != Xm[:, j])}
            free = None
            if mu_free is not None:
                tf, tm = mu_free[:n], mu_free[k * n:(k + 1) * n]
                bad = np.flatnonzero((tf <= 0) | (tm <= 0))
                start = 0 if bad.size == 0 else int(bad[-1]) + 1
                if start < n:  # read it only where its predicted times are positive
                    free = _verdict(w[start:], np.log(tm[start:]) - np.log(tf[start:]))
                    if start:
                        free = (*free[:2], f"{free[2]} (its predicted times are <= 0 below "
                                           f"d = {w[start]:,.0f})")
            extra = prior_note(result, boot, method_terms, d_star, faster_above,
                               (float(q[0]), float(q[1])), free)
            note = "; ".join(x for x in (note, extra) if x)
            records.append({
                **{c: tmpl[c] for c in CONTEXT_COLUMNS},
                "batch": int(tmpl["batch"]), "rank": int(tmpl["rank"]), "method": m,
                "d_star": d_star,
                "lora_faster": (("above d*" if faster_above else "below d*")
                                if np.isfinite(d_star) else
                                ("nowhere in range" if faster_above else "whole range")),
                "ci_low": float(q[0]), "ci_high": float(q[1]),
                # A replicate already past its crossing at the range's start is recorded as
                # d = the start: an interval end there is a censored bound ("≤ start").
                "ci_low_censored": bool(q[0] <= w[0]),
                "share_boot_no_crossover": float(np.mean(np.isinf(d_b))),
                "measured_d_star": meas,
                "measured_sign_changes": len(measured_crossings(rows, tmpl, m)),
                "measured_note": meas_note,
                "asymptotic_speedup": np.nan if limit is None else float(limit),
                "asymptotic_speedup_roofline": roof_limit,
                "speedup_at_d_max": float(at_max),
                "note": note,
            })
    return CrossoverTable(pd.DataFrame.from_records(records), d_min, d_max, max_w)


# ---------------------------------------------------------------- curves and extrapolation


def _bands(mu_b: np.ndarray, rel_resid: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """(CI low, CI high, PI low, PI high) of rows of mu_b (n, B)."""
    ci = np.quantile(mu_b, [ALPHA / 2, 1 - ALPHA / 2], axis=1)
    rng = np.random.default_rng(seed)
    eps = rng.choice(rel_resid, size=(1, mu_b.shape[1], RESID_DRAWS))
    draws = (mu_b[:, :, None] * eps).reshape(mu_b.shape[0], -1)
    pi = np.quantile(draws, [ALPHA / 2, 1 - ALPHA / 2], axis=1)
    return ci[0], ci[1], pi[0], pi[1]


@dataclass(frozen=True)
class Curves:
    """Fitted time vs width per (context, batch, rank, method) with bands, for plots."""

    table: pd.DataFrame  # ..., method, width, time_s, ci_low_s, ci_high_s, pi_low_s, pi_high_s


def predict_square(result: fitmod.FitResult, boot: Bootstrap, rows: pd.DataFrame,
                   widths: np.ndarray, profile: HardwareProfile | None,
                   seed: int = 0) -> pd.DataFrame:
    """Predicted time with CI and PI at e = h = width for every crossover group and method,
    plus each LoRA method's speedup (full / LoRA time) with its bootstrap CI."""
    params = full_params(result)
    max_w = float(max(rows["embed"].max(), rows["hidden"].max()))
    out = []
    for _, grp in crossover_groups(rows).iterrows():
        tmpl, targets = grp["template"], grp["targets"]
        w = np.asarray([x for x in widths if x >= tmpl["rank"]], dtype=float)
        methods = ["full"] + grp["loras"]
        terms = _terms_square(tmpl, w, methods, targets, profile)
        X, off = _design(result.form, terms)
        mu = fitmod.predict_many(result.form, X, off, params)
        mu_b = fitmod.predict_many(result.form, X, off, boot.params)
        ci_lo, ci_hi, pi_lo, pi_hi = _bands(mu_b, result.rel_resid, seed)
        n = len(w)
        for k, m in enumerate(methods):
            s = slice(k * n, (k + 1) * n)
            if m == "full":
                sp, sp_lo, sp_hi = (np.ones(n),) * 3
            else:
                ratio_b = mu_b[:n] / mu_b[s]
                sp = mu[:n] / mu[s]
                sp_lo, sp_hi = np.quantile(ratio_b, [ALPHA / 2, 1 - ALPHA / 2], axis=1)
            out.append(pd.DataFrame({
                **{c: tmpl[c] for c in CONTEXT_COLUMNS},
                "batch": int(tmpl["batch"]), "rank": int(tmpl["rank"]), "method": m,
                "width": w, "time_s": mu[s] / 1e3,
                "ci_low_s": ci_lo[s] / 1e3, "ci_high_s": ci_hi[s] / 1e3,
                "pi_low_s": pi_lo[s] / 1e3, "pi_high_s": pi_hi[s] / 1e3,
                "speedup_vs_full": sp, "speedup_ci_low": sp_lo, "speedup_ci_high": sp_hi,
                "extrapolated": w > max_w,
            }))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


@dataclass(frozen=True)
class Extrapolation:
    """Predictions at GPT-scale widths, labelled where they exceed the largest measured width."""

    table: pd.DataFrame
    max_measured_width: float
    device: str


def extrapolate(result: fitmod.FitResult, boot: Bootstrap, rows: pd.DataFrame,
                widths: tuple[int, ...], profile: HardwareProfile | None,
                device: str) -> Extrapolation:
    table = predict_square(result, boot, rows, np.asarray(widths, dtype=float), profile, seed=1)
    max_w = float(max(rows["embed"].max(), rows["hidden"].max()))
    return Extrapolation(table, max_w, device)


def curves(result: fitmod.FitResult, boot: Bootstrap, rows: pd.DataFrame,
           profile: HardwareProfile | None, n: int = 60) -> Curves:
    lo = float(min(rows["embed"].min(), rows["hidden"].min()))
    hi = float(max(rows["embed"].max(), rows["hidden"].max()))
    widths = np.geomspace(max(D_MIN, lo / 2), max(hi * 8, 16384), n)
    return Curves(predict_square(result, boot, rows, widths, profile, seed=2))
