"""What the results show, in words generated from them: the claims section of the paper and the report.

:func:`context` turns the evaluated claims (:mod:`pipeline.reporting.claims`) and the summary into
the context of ``paper/templates/claims.tex.j2`` and ``claims.html.j2``: per dataset/model a
sentence on the most accurate rows, a count of verdicts, and per claim its evidence (each
comparison's numbers, intervals and verdict), the paper's condition measured on the same data,
and what the two together mean. Nothing in that text is fixed prose about a particular result.
"""
from __future__ import annotations

import math

import pandas as pd

from pipeline.reporting import names
from pipeline.reporting.aggregate import headline
from pipeline.reporting.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_EVALUATED, Check, ClaimResult, Value
from pipeline.reporting.tables import seeds_text

# Rows that are models one could deploy (the oracles select on OOD data, WiSE-FT's fixed alpha repeats the curve).
VALID_KINDS = ("zeroshot", "lp", "ft", "soup", "wise_ft")


def value_text(v: Value) -> str:
    if math.isnan(v.mean):
        return f"{v.label} --"
    interval = "" if math.isnan(v.low) else f" [{v.low:.1f}, {v.high:.1f}]"
    return f"{v.label} {v.mean:.1f}{interval}"


def difference_text(c: Check) -> str:
    if math.isnan(c.delta):
        return "no paired difference"
    interval = "" if math.isnan(c.low) else f" [{c.low:+.1f}, {c.high:+.1f}]"
    return f"{c.delta:+.1f}{interval} points"


def check_text(c: Check) -> str:
    """``LP-FT 45.7 [43.1, 48.2] vs FT (AdamW) 54.4 [...]: -8.7 [-11.0, -6.4] points``."""
    if c.b is None:
        return f"{c.text}: {c.a.mean:.2f} ({c.verdict})"
    return f"{value_text(c.a)} vs {value_text(c.b)}: {difference_text(c)} ({c.verdict})"


def conclusion(r: ClaimResult) -> str:
    """What the claim's verdict and its condition's say together."""
    cond = r.condition_verdict
    if r.verdict == NOT_EVALUATED:
        return f"Not evaluated: the experiment lacks {', '.join(r.missing)}."
    if r.verdict == HOLDS:
        return "The claim holds on these results."
    if r.verdict == FAILS:
        if cond == FAILS:
            return ("The paper's condition is not met on this data either, so the result lies outside the scope "
                    "the paper states for its claim rather than refuting it.")
        if cond == HOLDS:
            return "The paper's condition is met, so these results go against the claim."
        return "Whether the paper's condition is met cannot be told from these results."
    text = ("The intervals straddle the bound: more seeds or test examples are needed to tell whether the "
            "claim holds.")
    if cond == FAILS:
        text += " The paper's condition is not met here."
    return text


def _best(summary: pd.DataFrame, cfg: dict, dataset: str, model: str, side: str) -> str:
    """``LP-FT (54.4 [52.1, 56.6])``: the valid row with the highest mean of the headline quantity."""
    q = headline(cfg, dataset, side)
    s = summary[(summary["dataset"] == dataset) & (summary["model"] == model) & (summary["quantity"] == q)
                & summary["kind"].isin(VALID_KINDS)].dropna(subset=["mean"])
    if s.empty:
        return ""
    top = s.sort_values("mean", ascending=False, kind="stable").iloc[0]
    low, high = top.get("ci_low", math.nan), top.get("ci_high", math.nan)
    interval = "" if pd.isna(low) else f" [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{top['label']} ({100 * top['mean']:.1f}{interval})"


def pair_summary(results: list[ClaimResult], summary: pd.DataFrame, cfg: dict, dataset: str, model: str) -> str:
    """Which rows are most accurate ID and OOD, and how many claims hold."""
    parts = []
    for side in ("id", "ood"):
        best = _best(summary, cfg, dataset, model, side)
        if best:
            parts.append(f"by {names.quantity(headline(cfg, dataset, side), unit=False)} (%), {best}")
    text = ("The most accurate model " + "; ".join(parts) + ".") if parts else ""
    evaluated = [r for r in results if r.verdict != NOT_EVALUATED]
    n = {v: sum(r.verdict == v for r in evaluated) for v in (HOLDS, FAILS, INCONCLUSIVE)}
    if evaluated:
        text += (f" Of the {len(evaluated)} claims checked, {n[HOLDS]} {'holds' if n[HOLDS] == 1 else 'hold'}, "
                 f"{n[FAILS]} {'does' if n[FAILS] == 1 else 'do'} not hold and {n[INCONCLUSIVE]} "
                 f"{'is' if n[INCONCLUSIVE] == 1 else 'are'} inconclusive.")
    return text.strip()


def claim_context(r: ClaimResult) -> dict:
    return {"id": r.claim.id, "paper": r.claim.paper, "statement": r.claim.statement, "verdict": r.verdict,
            "instance": f" (WiSE-FT of {r.instance_label})" if r.instance else "",
            "evidence": "; ".join(check_text(c) for c in r.checks) + (f". Here {r.note}." if r.note else "."),
            "condition": r.claim.condition, "condition_verdict": r.condition_verdict,
            "condition_evidence": "; ".join(check_text(c) for c in r.condition_checks),
            "conclusion": conclusion(r), "checks": [] if r.verdict == NOT_EVALUATED else
            [check_row(c, "claim") for c in r.checks] + [check_row(c, "condition") for c in r.condition_checks]}


def check_row(c: Check, part: str) -> dict:
    """One line of the claims table: plain-text cells."""
    def cell(v: Value | None) -> str:
        if v is None or math.isnan(v.mean):
            return "--"
        return f"{v.mean:.1f}" + ("" if math.isnan(v.low) else f" [{v.low:.1f}, {v.high:.1f}]")

    if c.b is None:   # a measured ratio
        return {"part": part, "text": c.text, "a": f"{c.a.mean:.2f}", "b": "", "difference": "", "verdict": c.verdict}
    diff = "--" if math.isnan(c.delta) else f"{c.delta:+.1f}" + (
        "" if math.isnan(c.low) else f" [{c.low:+.1f}, {c.high:+.1f}]")
    return {"part": part, "text": c.text, "a": cell(c.a), "b": cell(c.b), "difference": diff, "verdict": c.verdict}


def context(results: list[ClaimResult], view) -> dict:
    """The claims templates' context: one entry per dataset/model, in the experiment's order."""
    pairs = []
    for dataset, model in view.pairs():
        mine = [r for r in results if (r.dataset, r.model) == (dataset, model)]
        pairs.append({"title": names.pair(dataset, model), "dataset": dataset, "model": model,
                      "summary": pair_summary(mine, view.summary, view.cfg, dataset, model),
                      "claims": [claim_context(r) for r in mine]})
    return {"pairs": pairs, "seeds": seeds_text(view.summary), "verdicts": (HOLDS, FAILS, INCONCLUSIVE)}
