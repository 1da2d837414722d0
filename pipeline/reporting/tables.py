"""Render LaTeX tables with Jinja2; the results summary's table context.

Every table of the paper is a template in ``paper/templates/`` rendered by
:func:`render_template` (the results table here, the LP-FT theory table by its stage).
Templates use LaTeX-safe
delimiters, so braces and ``%`` in LaTeX need no escaping in the template:
``\\BLOCK{...}`` blocks, ``\\VAR{...}`` variables, ``\\#{...}`` comments, ``%%``
line statements and ``%#`` line comments. Every free-text value (labels, names)
goes through the ``latex_escape`` filter; cells are built here as LaTeX.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import jinja2
import pandas as pd

from pipeline.methods.registry import label
from pipeline.reporting.aggregate import KINDS

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_SPECIALS_RE = re.compile("|".join(re.escape(c) for c in LATEX_SPECIALS))
# Headings of the row groups after the first (LP and plain fine-tuning).
GROUP_HEADINGS = {"soup": r"Model soups, greedy order and acceptance on ID val",
                  "wise_ft": r"WiSE-FT, $\alpha$ selected on ID val",
                  "hp_oracle": r"Oracle: grid point selected on OOD val (not a valid selection rule)",
                  "oracle": r"Oracle: WiSE-FT, $\alpha$ selected on OOD val (not a valid selection rule)"}
MISSING = "--"


def latex_escape(value: object) -> str:
    """Escape text for LaTeX: ``50% & co_x`` -> ``50\\% \\& co\\_x``."""
    return _SPECIALS_RE.sub(lambda m: LATEX_SPECIALS[m.group()], str(value))


def make_environment(template_dir: str | Path) -> jinja2.Environment:
    """Jinja2 environment with LaTeX-safe delimiters and the ``latex_escape`` filter."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        block_start_string=r"\BLOCK{", block_end_string="}",
        variable_start_string=r"\VAR{", variable_end_string="}",
        comment_start_string=r"\#{", comment_end_string="}",
        line_statement_prefix="%%", line_comment_prefix="%#",
        trim_blocks=True, lstrip_blocks=True, autoescape=False, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined)
    env.filters["latex_escape"] = latex_escape
    return env


def format_cell(mean: float, std: float, n: int, scale: float = 100.0, digits: int = 1) -> str:
    """``mean $\\pm$ std`` (scaled, fixed decimals); just the mean for one seed; ``--`` if missing."""
    if mean is None or math.isnan(mean):
        return MISSING
    if n <= 1 or std is None or math.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} $\\pm$ {std * scale:.{digits}f}"


def _columns(quantities: set[str]) -> list[dict]:
    """Table columns: ID, OOD mean and per-OOD-domain accuracy, then ID/OOD of any other metric."""
    metrics = sorted({q.split("_", 1)[1] for q in quantities if q.startswith("id_")} |
                     {q.split("_", 1)[1].split("/")[0] for q in quantities if q.startswith("ood_")},
                     key=lambda m: (m != "acc", m))
    cols = []
    for m in metrics:
        suffix = "" if m == "acc" else f" {m}"
        if f"id_{m}" in quantities:
            cols.append({"quantity": f"id_{m}", "group": "ID" + suffix, "header": "all"})
        domains = sorted(q.split("/", 1)[1] for q in quantities if q.startswith(f"ood_{m}/"))
        if f"ood_{m}" in quantities:
            cols.append({"quantity": f"ood_{m}", "group": "OOD" + suffix, "header": "mean" if domains else "all"})
        cols += [{"quantity": f"ood_{m}/{d}", "group": "OOD" + suffix, "header": d} for d in domains]
    return cols


def _header_groups(cols: list[dict], first: int) -> list[dict]:
    """Runs of columns sharing a group title, with their (1-based) LaTeX column ranges."""
    groups: list[dict] = []
    for i, c in enumerate(cols, start=first):
        if groups and groups[-1]["title"] == c["group"]:
            groups[-1]["end"] = i
        else:
            groups.append({"title": c["group"], "start": i, "end": i})
    for g in groups:
        g["span"] = g["end"] - g["start"] + 1
    return groups


def _block(summary: pd.DataFrame, dataset: str, model: str) -> dict:
    part = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
    cols = _columns(set(part["quantity"]) - {"alpha"})
    stats = {(r.row, r.quantity): (r.mean, r.std, r.n) for r in part.itertuples(index=False)}
    groups = []
    for kind in KINDS:
        rows = part[part["kind"] == kind].drop_duplicates("row")
        if rows.empty:
            continue
        body = []
        for r in rows.itertuples(index=False):
            alpha = stats.get((r.row, "alpha"))
            cells = [MISSING if alpha is None else format_cell(alpha[0], math.nan, 1, scale=1.0, digits=2)]
            cells += [format_cell(*stats.get((r.row, c["quantity"]), (math.nan, math.nan, 0))) for c in cols]
            body.append({"label": r.label, "cells": cells})
        groups.append({"kind": kind, "heading": GROUP_HEADINGS.get(kind), "rows": body})
    return {"dataset": dataset, "model": model, "columns": cols, "ncols": len(cols) + 2,
            "header_groups": _header_groups(cols, first=3), "groups": groups}


def _number(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e") if x < 1e-2 else f"{x:g}"


def settings_lines(runs: pd.DataFrame, labels: dict[str, str], methods: list[str],
                   chosen: pd.DataFrame | None = None) -> list[str]:
    """One LaTeX line per fine-tuning method: optimizer, lr (effective lr), frozen share, chosen grid point."""
    lines = []
    for m in methods:
        r = runs[runs["method"] == m]
        if r.empty:
            continue
        grid = sorted(set(r["hp"]))
        pick = chosen[chosen["method"] == m]["id_hp"] if chosen is not None else pd.Series(dtype=object)
        if not pick.empty and pick.iloc[0] in grid:
            r = r[r["hp"] == pick.iloc[0]]
        first = r.iloc[0]
        optimizer = first["optimizer"] or "?"
        text = f"{latex_escape(labels.get(m, m))}: {latex_escape(label('optimizer', optimizer))}"
        if first["lr"] is not None and not pd.isna(first["lr"]):
            text += f", lr {_number(float(first['lr']))}"
            eff = first["effective_lr"]
            if eff is not None and not pd.isna(eff) and not math.isclose(float(eff), float(first["lr"])):
                text += f" (effective {_number(float(eff))})"
        frozen = first.get("frozen_fraction", 0.0)
        if frozen and not pd.isna(frozen) and float(frozen) > 0:
            text += f", {100 * float(frozen):.1f}\\% of weights frozen"
        if len(grid) > 1:
            text += (f", grid point \\texttt{{{latex_escape(first['hp'])}}} chosen on ID val "
                     f"of {len(grid)}")
        lines.append(text)
    return lines


def _seeds_text(summary: pd.DataFrame) -> str:
    ns = sorted(set(summary.loc[summary["kind"] == "ft", "n"].astype(int)))
    if not ns or ns == [1]:
        return "one seed"
    return f"mean $\\pm$ std over {'/'.join(map(str, ns))} seeds"


def table_context(summary: pd.DataFrame, runs: pd.DataFrame, report_cfg: dict, methods: list[str],
                  chosen: pd.DataFrame | None = None) -> dict:
    """Everything the template needs; text fields are raw (the template escapes them)."""
    pairs = summary[["dataset", "model"]].drop_duplicates().itertuples(index=False)
    return {"title": report_cfg.get("title", ""), "id_split": report_cfg.get("id_split", "id_test"),
            "ood_split": report_cfg.get("ood_split", "ood_test"), "seeds": _seeds_text(summary),
            "blocks": [_block(summary, d, m) for d, m in pairs],
            "settings": settings_lines(runs, report_cfg.get("labels") or {}, methods, chosen)}


def render_template(template: str | Path, context: dict) -> str:
    """Render a ``.tex.j2`` template: the one way a table of the paper is written."""
    template = Path(template)
    return make_environment(template.parent).get_template(template.name).render(**context)
