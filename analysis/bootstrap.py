"""Case bootstrap of the chosen fit: the refitted parameters every interval downstream uses.

Shapes are resampled with replacement: every method and every rank of a resampled shape
travel together, because full fine-tuning ignores the rank, so the full rows of one shape at
several ranks are replicates of one measurement and a shape is the independent unit
(`analysis.validate.shape_ids`).
and each replicate is refitted with the fit's sign check redone (a term that fits negative
there is fixed at its prior or dropped; the prior value is taken as exact), so the intervals
carry the uncertainty of that choice too. `analysis.crossover_table` reads d* intervals off
these replicates, `analysis.curves` the confidence and prediction bands.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import fit as fitmod

#: Default refits: about the most that keep the main job's analysis of the quick grid (plots
#: included) within 15 s on the 2-core CI machine, whichever form is chosen. Measured there
#: idle ("analysis took"): WLS 1,000 refits 9.8 s with plots (1.6 s without), 10,000 10.3 s
#: (3.2 s); the Gamma GLM's IRLS refits cost up to ten times WLS's: 5,000 took 10.2 s without
#: plots, and with them 2,000 took 10.1 s, 3,000 13.2 s (`benchmarks/stability.py` prints
#: the analysis time of each cold run).
N_BOOT = 2_000
#: The most bootstrap refits a run may ask for: 10^5 replicates put the 2.5% quantile on
#: 2,500 draws, far past where the interval stops moving; 10^9 ran for 11 minutes and grew
#: memory without end.
MAX_BOOT = 100_000
#: Seconds of refits after which a progress bar appears (on a terminal).
PROGRESS_AFTER_S = 3.0
#: Two-sided level of every bootstrap interval (95%).
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
    """Resample shapes with replacement, refit `result.form` on each replicate with the same
    sign check as the fit (a term that fits negative is fixed at its prior or dropped), so the
    interval carries the uncertainty of that choice. A term with a prior (`fit.PRIOR_TERMS`)
    has its pseudo-observation redrawn from the prior in each replicate, as the rows are
    (cut at 0), so its interval carries the prior's uncertainty too; a box's ends are exact."""
    X, off, cols = fitmod.design_matrix(result.form, rows)
    priors = dict(result.priors)
    sds = fitmod.prior_sds(priors) if result.form not in fitmod.LOG_FORMS else {}
    start = full_params(result)
    y = rows["time_ms"].to_numpy()
    from analysis.validate import shape_ids

    cid = shape_ids(rows)
    ids = np.unique(cid)
    members = [np.flatnonzero(cid == i) for i in ids]
    rng = np.random.default_rng(seed)
    out, failed = [], 0
    counts: dict[str, int] = {}
    from tqdm import tqdm

    # a bar on a terminal once the refits have taken PROGRESS_AFTER_S (nothing for a short run)
    bar = tqdm(total=n_boot, desc="bootstrap refits", unit="fit", file=sys.stderr, leave=False,
               delay=PROGRESS_AFTER_S, disable=not sys.stderr.isatty())
    for _ in range(n_boot):
        bar.update(1)
        pick = rng.integers(0, len(ids), len(ids))
        idx = np.concatenate([members[i] for i in pick])
        draws = {t: max(priors[t] + sd * float(rng.standard_normal()), 0.0)
                 for t, sd in sds.items()}
        try:
            p, fixed, dropped = fitmod.fit_full(result.form, X[idx], off[idx], y[idx], cols,
                                                priors, start, draws)
        except (np.linalg.LinAlgError, ValueError):
            failed += 1
            continue
        if not np.all(np.isfinite(p)):
            failed += 1
            continue
        out.append(p)
        for c in fixed + dropped:
            counts[c] = counts.get(c, 0) + 1
    bar.close()
    params = np.array(out).reshape(-1, len(cols))
    share = {c: k / max(len(out), 1) for c, k in counts.items()}
    return Bootstrap(params, failed, seed, share)


def full_params(result: fitmod.FitResult) -> np.ndarray:
    """The point estimate over all design columns (zeros for dropped, priors for fixed)."""
    return fitmod.expand_params(result, result.params[None, :])[0]
