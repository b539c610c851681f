"""The crossover table's notes: the sentences a reader sees beside d*, built from fields.

`analysis.crossover_table` computes; this module only words what it computed (the measured
crossover, the verdict of a fit, what d* rests on when the sign check fixed or dropped a
term). Nothing here computes a number the table does not already hold.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: Plain names of the physical terms, for the notes.
TERM_NAMES = {"kernels": "per-kernel overhead", "Intercept": "per-call dispatch",
              "gflops": "compute-time term", "gbytes": "memory-time term",
              "gresult": "result-buffer term"}


class Verdict(NamedTuple):
    """One fit's answer along the width axis.

    d_star: the first crossing (+inf when none in range); faster_above: LoRA slower at the
    range's start, so faster above d*; positive_from: the width from which the fit's
    predicted times are positive, where it was read (None: the whole range)."""

    d_star: float
    faster_above: bool
    positive_from: float | None = None


def term_value(col: str, v_ms: float) -> str:
    """A design coefficient (ms per unit) in the report's units."""
    if col == "kernels":
        return f"{v_ms * 1e3:.3g} us per kernel"
    if col == "Intercept":
        return f"{v_ms * 1e3:.3g} us per call"
    return f"{TERM_NAMES.get(col, col)} {v_ms:.3g} ms/{'GFLOP' if col == 'gflops' else 'GB'}"


def verdict_text(v: Verdict) -> str:
    if np.isfinite(v.d_star):
        text = (f"d* = {v.d_star:,.0f}" if v.faster_above
                else f"LoRA faster below d* = {v.d_star:,.0f}, slower above")
    else:
        text = ("no crossover in range (LoRA slower throughout)" if v.faster_above
                else "no crossover in range (LoRA faster throughout)")
    if v.positive_from is not None:
        text += f" (its predicted times are <= 0 below d = {v.positive_from:,.0f})"
    return text


def measured_text(assessment) -> str:
    """A `measure.refine.Assessment` in words: every measured crossing with its interval (an
    end written ≤ or ≥ when censored at the measured range's end) and its "≈ 1 within noise"
    span, or where LoRA is faster at every measured width."""
    pts = assessment.points
    if not pts:
        return "not measured"
    span = f"{assessment.lo:,.0f}-{assessment.hi:,.0f}"
    if not assessment.crossings:
        if not any(p.certain for p in pts):
            return f"measured: ≈ 1 within noise at every width {span}"
        side = "faster" if next(p for p in pts if p.certain).faster else "slower"
        return f"measured: LoRA {side} at every width {span} whose interval excludes 1"
    parts = []
    for c in assessment.crossings:
        way = "faster above" if c.direction == "faster_above" else "faster below"
        lo = ("≤" if c.censored_low else "") + f"{c.ci_low:,.0f}"
        hi = ("≥" if c.censored_high else "") + f"{c.ci_high:,.0f}"
        d = "a crossing in" if not np.isfinite(c.d_star) else f"d* ≈ {c.d_star:,.0f}"
        text = f"{d} [{lo}, {hi}] ({way})"
        if np.isfinite(c.noise_low) and c.noise_low == c.noise_high:
            text += f", ≈ 1 within noise at {c.noise_low:,.0f}"
        elif np.isfinite(c.noise_low):
            text += f", ≈ 1 within noise over [{c.noise_low:,.0f}, {c.noise_high:,.0f}]"
        parts.append(text)
    return "measured: " + "; ".join(parts)


def curve_note(crossings, directions: list[bool]) -> str:
    """A fitted curve that changes sign more than once, in words."""
    where = ", ".join(f"{x:,.0f}" for x in crossings)
    runs = " | ".join("faster" if f else "slower" for f in directions)
    return (f"the fitted ratio changes sign {len(crossings)} times, at d ≈ {where}: "
            f"LoRA {runs} on the intervals between")


def point_note(d_star: float, faster_above: bool, speedup_at_d_max: float, d_lo: float,
               d_max: float, min_measured: float, max_measured: float) -> str:
    """What the point estimate d* says: no crossover in range, LoRA faster below d*, or a d*
    outside the measured widths (an extrapolation)."""
    if not np.isfinite(d_star):
        if faster_above:
            return (f"no crossover in range: LoRA slower up to d = {d_max:g} "
                    f"(full/LoRA = {speedup_at_d_max:.3g} there)")
        return f"no crossover in range: LoRA faster over the whole range d = {d_lo:g}-{d_max:g}"
    note = "" if faster_above else "LoRA faster BELOW d*, slower above"
    if d_star > max_measured:
        note = "; ".join(x for x in (note, f"beyond the largest measured width "
                                           f"{max_measured:g}: an extrapolation") if x)
    elif d_star < min_measured:
        note = "; ".join(x for x in (note, f"below the smallest measured width "
                                           f"{min_measured:g}: an extrapolation") if x)
    return note


def prior_note(constrained: list[str], fixed: dict[str, float],
               after: dict[str, tuple[str, ...]], boot_share: dict[str, float],
               unconstrained: dict[str, float] | None, method_terms: set[str],
               d_star: float, faster_above: bool, ci: tuple[float, float],
               free: Verdict | None) -> str:
    """What a crossover rests on when the sign check fixed or dropped terms: which term, at
    what value and why, and what the unconstrained fit finds instead.

    constrained: the fixed and dropped terms; fixed: term -> prior value (ms per unit);
    after: term -> the terms constrained before it; boot_share: term -> share of bootstrap
    refits that constrained it; unconstrained: term -> the unconstrained fit's value (None
    when it failed). method_terms: the constrained terms whose count differs between full and
    the LoRA method along the width axis (these set d* directly; the shared dispatch cancels
    in the difference and matters only through the other estimates). free: the verdict of the
    unconstrained fit, None when it failed. Empty when nothing was constrained, or when only
    shared terms were and the unconstrained answer is the same."""
    if not constrained:
        return ""
    same = free is not None and (
        free.faster_above == faster_above and np.isfinite(free.d_star) == np.isfinite(d_star)
        and (not np.isfinite(d_star) or ci[0] <= free.d_star <= ci[1]))
    direct = [c for c in constrained if c in method_terms]
    if not direct and same:
        return ""
    subject = "d*" if np.isfinite(d_star) else "the verdict"

    def how(c: str) -> str:
        return "held" if c in fixed else "dropped"

    def why(c: str) -> str:
        before = after.get(c, ())
        free_v = None if unconstrained is None else unconstrained.get(c)
        where = ("below zero" if free_v is None or free_v < 0 or c not in fixed
                 else "outside that box")
        if not before:
            return f"the free fit put it {where}"
        names = " and ".join(f"{TERM_NAMES.get(b, b)} was {how(b)}" for b in before)
        return f"{where} once the {names}"

    def statement(c: str) -> str:
        share = f"{how(c)} in {boot_share.get(c, 0.0):.0%} of the bootstrap refits"
        if c in fixed:
            return (f"held at {term_value(c, fixed[c])}, an end of its box around the device "
                    f"profile's measured value ({why(c)}; {share})")
        return f"dropped (0: {why(c)}; {share})"

    if free is None or unconstrained is None:
        found = "with no term constrained the fit fails"
    else:
        values = ", ".join(term_value(c, unconstrained[c]) for c in constrained)
        found = f"with no term constrained the fit finds {values} and {verdict_text(free)}"
    if direct and same:
        return "; ".join(f"{TERM_NAMES.get(c, c)} {statement(c)}" for c in direct) + (
            f"; unconstrained fit: d* = {free.d_star:,.0f}, within the interval"
            if np.isfinite(d_star) else "; unconstrained fit: the same")
    verb = "set by" if direct else "rests on"
    return (f"{subject} {verb} the " + "; the ".join(f"{TERM_NAMES.get(c, c)} {statement(c)}"
                                                   for c in (direct or constrained))
            + f"; {found}")
