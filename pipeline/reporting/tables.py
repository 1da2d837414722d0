"""Render tables with Jinja2, and the pieces every table layout shares.

Every table of the paper is a template in ``paper/templates/`` rendered by
:func:`render_template` (the layouts' tables by the report, the LP-FT theory and cost tables by
their stages). LaTeX templates use LaTeX-safe delimiters, so braces and ``%`` in LaTeX need no
escaping in the template: ``\\BLOCK{...}`` blocks, ``\\VAR{...}`` variables, ``\\#{...}``
comments, ``%%`` line statements and ``%#`` line comments. Free text goes through the
``latex_escape`` filter, cells through ``tex`` (:mod:`pipeline.reporting.cells`). HTML templates
(``*.html.j2``) use Jinja's usual delimiters, autoescaping, and the ``html`` cell filter.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

from pipeline.methods.registry import label
from pipeline.reporting.cells import (
    Cell,
    Grid,
    Group,
    Header,
    Row,
    cell_html,
    cell_tex,
    html_text,
    latex_escape,
    latex_text,
)

# Headings of the row groups after the first (LP and plain fine-tuning), by row kind.
GROUP_HEADINGS = {"soup": "Model soups, greedy order and acceptance on ID val",
                  "wise_ft_fixed": "WiSE-FT at a fixed alpha",
                  "wise_ft": "WiSE-FT, alpha selected on ID val",
                  "hp_oracle": "Oracle: grid point selected on OOD val (not a valid selection rule)",
                  "oracle": "Oracle: WiSE-FT, alpha selected on OOD val (not a valid selection rule)",
                  "wise_ft_optimal": "Oracle: WiSE-FT, the best alpha of each test column (the WiSE-FT paper's "
                                     "optimal alpha; not a valid selection rule)"}


_BREAKS = re.compile(r"([./:@,;]|\\_)")


def make_environment(template_dir: str | Path, html: bool = False) -> jinja2.Environment:
    """Jinja2 environment: LaTeX-safe delimiters and filters, or (``html``) Jinja's own with autoescape."""
    common = dict(loader=jinja2.FileSystemLoader(str(template_dir)), trim_blocks=True, lstrip_blocks=True,
                  keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    if html:
        env = jinja2.Environment(autoescape=True, **common)
        env.filters["html"] = lambda c: Markup(cell_html(c))
        env.filters["text"] = lambda t: Markup(html_text(t))
        return env
    env = jinja2.Environment(
        block_start_string=r"\BLOCK{", block_end_string="}",
        variable_start_string=r"\VAR{", variable_end_string="}",
        comment_start_string=r"\#{", comment_end_string="}",
        line_statement_prefix="%%", line_comment_prefix="%#", autoescape=False, **common)
    env.filters["latex_escape"] = latex_escape
    env.filters["latex_text"] = latex_text
    env.filters["tex_header"] = lambda h: (latex_text(h["text"]) if h["span"] == 1
                                           else f"\\multicolumn{{{h['span']}}}{{c}}{{{latex_text(h['text'])}}}")
    env.filters["tex"] = cell_tex
    # long identifiers (keys, repo@commit:path:line) may break after . / : @ , ; and _
    env.filters["breakable"] = lambda t: _BREAKS.sub(r"\1\\allowbreak{}", latex_escape(t))
    return env


def render_template(template: str | Path, context: dict) -> str:
    """Render a ``.tex.j2`` or ``.html.j2`` template: the one way a table is written."""
    template = Path(template)
    env = make_environment(template.parent, html=template.name.endswith(".html.j2"))
    return env.get_template(template.name).render(**context)


@dataclass(frozen=True)
class Column:
    """One value column: its group title (spanning header), its own header, and how a row's cell is made."""

    group: str
    header: str
    cell: Callable[[str], Cell]          # table row id -> cell
    published: Callable[[str, str], Cell | None] | None = None   # (row id, reference name) -> published cell


def grid(title: str, corner: str, columns: list[Column], groups: list[tuple[str | None, pd.DataFrame]],
         source: str = "published") -> Grid:
    """A grid from columns and row groups (``(heading, frame with row, method, label[, ref])``); empty groups
    dropped."""
    header: list[list[Header]] = [[], []]
    for c in columns:
        if header[0] and header[0][-1].text == c.group:
            header[0][-1].span += 1
        else:
            header[0].append(Header(c.group))
        header[1].append(Header(c.header))
    out = []
    for heading, rows in groups:
        body: list[Row] = []
        for r in rows.itertuples(index=False):
            body.append(Row(r.label, [c.cell(r.row) for c in columns]))
            # a reference file names a table row by its id (the method, or method/kind for WiSE-FT and oracle
            # rows) unless the frame says otherwise in `ref` (a grid point's row: its method)
            ref = getattr(r, "ref", r.row)
            pubs = [c.published(r.row, ref) if c.published else None for c in columns]
            if any(p is not None for p in pubs):
                body.append(Row(source, [p if p is not None else Cell("text") for p in pubs], published=True))
        if body:
            out.append(Group(heading, body))
    return Grid(title, corner, header, out)


def _number(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e") if x < 1e-2 else f"{x:g}"


# One `<key><value>` segment of a run name (pipeline/config/settings.py: run_name), e.g. l2sp_alpha0.01.
_SEGMENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*?-?\d[\d.e-]*(?=_|$)")


def _segments(name: str) -> list[str] | None:
    out, pos = [], 0
    while pos < len(name):
        match = _SEGMENT.match(name, pos)
        if match is None:
            return None   # not a spelled-out name (a hashed one, "default")
        out.append(match.group(0))
        pos = match.end() + 1
    return out


def swept_part(name: str, names: list[str]) -> str:
    """What tells grid point ``name`` from the others in ``names``: its name without the segments all share
    (``epochs2_lr0.0003_spd_lambda1`` among the SPD grid: ``spd_lambda1``)."""
    parsed = [_segments(n) for n in names]
    mine = _segments(name)
    if mine is None or any(p is None for p in parsed):
        return name
    common = set.intersection(*(set(p) for p in parsed))
    return "_".join(s for s in mine if s not in common) or name


def settings_lines(runs: pd.DataFrame, labels: dict[str, str], methods: list[str],
                   chosen: pd.DataFrame | None = None) -> list[str]:
    """One plain-text line per fine-tuning method: optimizer, lr (effective lr), frozen share, chosen grid point."""
    lines = []
    for m in methods:
        r = runs[runs["method"] == m] if not runs.empty else runs
        if r.empty:
            continue
        grid_points = sorted(set(r["hp"]))
        pick = chosen[chosen["method"] == m]["id_hp"] if chosen is not None else pd.Series(dtype=object)
        if not pick.empty and pick.iloc[0] in grid_points:
            r = r[r["hp"] == pick.iloc[0]]
        first = r.iloc[0]
        text = f"{labels.get(m, m)}: {label('optimizer', first['optimizer'] or '?')}"
        if first["lr"] is not None and not pd.isna(first["lr"]):
            text += f", lr {_number(float(first['lr']))}"
            eff = first["effective_lr"]
            if eff is not None and not pd.isna(eff) and not math.isclose(float(eff), float(first["lr"])):
                text += f" (effective {_number(float(eff))})"
        frozen = first.get("frozen_fraction", 0.0)
        if frozen and not pd.isna(frozen) and float(frozen) > 0:
            text += f", {100 * float(frozen):.1f}% of weights frozen"
        if len(grid_points) > 1:
            text += f", grid point {swept_part(first['hp'], grid_points)} chosen on ID val of {len(grid_points)}"
        lines.append(text)
    return lines


def seeds_text(summary: pd.DataFrame) -> str:
    ns = sorted(set(summary.loc[summary["kind"] == "ft", "n"].dropna().astype(int)))
    if not ns or ns == [1]:
        return "one seed"
    return f"mean over {'/'.join(map(str, ns))} seeds"


def published_label(view) -> str:
    """Label of the rows of published values: the papers they come from."""
    return "published: " + ", ".join(view.sources()) if view.sources() else "published"


def common_context(view) -> dict:
    """What every layout's template may say: title, splits, seeds, interval and baseline settings."""
    from pipeline.reporting.bootstrap import DEFAULTS

    cfg = view.cfg
    boot = {**DEFAULTS, **(cfg.get("bootstrap") or {})}
    labels = cfg.get("labels") or {}
    base = cfg.get("baseline")
    return {"title": cfg.get("title", ""), "id_split": cfg["id_split"], "ood_split": cfg["ood_split"],
            "seeds": seeds_text(view.summary), "confidence": f"{100 * float(boot['confidence']):g}",
            "resamples": int(boot["n_resamples"]), "baseline": labels.get(base, base) if base else "",
            "sources": view.sources(), "settings": settings_lines(view.runs, labels, view.methods, view.chosen)}
