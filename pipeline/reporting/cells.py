"""Table cells and grids, shared by every layout and rendered both as LaTeX and as HTML.

A layout (:mod:`pipeline.reporting.layouts`) builds :class:`Grid` objects of :class:`Cell` values;
its ``.tex.j2`` template lays them out for the paper (filter ``tex``) and the report's HTML
tables use the same grids (filter ``html``), so the two always show the same numbers.

An accuracy cell reads ``91.2 [90.1, 92.3]``: the mean over seeds and its 95% bootstrap
interval, in percent, followed by ``+`` or ``-`` when it is significantly above or below the
baseline. A published cell reads ``98.2 (-0.4)``: the published value and ours minus it. An error cell
(kind ``err``, for papers that print top-1 error) holds the accuracy like an accuracy cell and shows
``100 - accuracy`` with the interval turned around.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

MISSING = "--"
LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_SPECIALS_RE = re.compile("|".join(re.escape(c) for c in LATEX_SPECIALS))


def latex_escape(value: object) -> str:
    """Escape text for LaTeX: ``50% & co_x`` -> ``50\\% \\& co\\_x``."""
    return _SPECIALS_RE.sub(lambda m: LATEX_SPECIALS[m.group()], str(value))


_ALPHA_RE = re.compile(r"\balpha\b")


def latex_text(value: object) -> str:
    """Free text for a LaTeX table: escaped, with the word ``alpha`` typeset as the symbol."""
    return _ALPHA_RE.sub(lambda m: r"$\alpha$", latex_escape(value))


def html_text(value: object) -> str:
    return _ALPHA_RE.sub("\u03b1", html.escape(str(value)))


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


@dataclass
class Cell:
    """One table cell. ``kind``: ``acc`` (percent, with interval), ``err`` (its error), ``published``, ``number``
    or ``text``."""

    kind: str = "acc"
    value: float = math.nan          # fraction for acc, percent for published, as-is for number
    low: float = math.nan
    high: float = math.nan
    mark: str = ""                   # "+" / "-": significantly above / below the baseline
    delta: float = math.nan          # published: ours minus published, in points
    digits: int = 1
    scale: float = 100.0             # number cells: ER and ECE are shown in points too
    text: str = ""

    def parts(self) -> tuple[str, str, str] | None:
        """(main number, interval or difference, mark) as plain text; None if missing."""
        if self.kind == "text":
            return (self.text, "", "") if self.text else None
        if _nan(self.value):
            return None
        d = self.digits
        if self.kind == "published":
            # a difference that rounds to zero is +0.0: its sign would be float noise, not a finding
            diff = "" if _nan(self.delta) else f"{self.delta if round(self.delta, d) else 0.0:+.{d}f}"
            return f"{self.value:.{d}f}", diff, ""
        if self.kind == "number":
            return f"{self.value * self.scale:.{d}f}", "", ""
        if self.kind == "err":
            interval = "" if _nan(self.low) else f"{(1 - self.high) * 100:.{d}f}, {(1 - self.low) * 100:.{d}f}"
            return f"{(1 - self.value) * 100:.{d}f}", interval, self.mark
        interval = "" if _nan(self.low) else f"{self.low * 100:.{d}f}, {self.high * 100:.{d}f}"
        return f"{self.value * 100:.{d}f}", interval, self.mark


def _render(c: Cell, text, number, interval, difference, mark) -> str:
    """A cell in one markup: ``text`` escapes free text, ``number`` a number, the others wrap a part."""
    p = c.parts()
    if p is None:
        return MISSING
    main, extra, sign = p
    if c.kind == "text":
        return text(main)
    if extra:
        extra = (difference if c.kind == "published" else interval)(number(extra))
    return number(main) + extra + (mark(sign) if sign else "")


def cell_tex(c: Cell) -> str:
    return _render(c, latex_text, lambda x: x.replace("-", "$-$").replace("+", "$+$"),
                   lambda x: rf"\,{{\scriptsize[{x}]}}", lambda x: rf"\,{{\scriptsize({x})}}", lambda m: f"$^{{{m}}}$")


def cell_html(c: Cell) -> str:
    return _render(c, html_text, html.escape, lambda x: f" <small>[{x}]</small>", lambda x: f" <small>({x})</small>",
                   lambda m: f"<sup>{html.escape(m)}</sup>")


@dataclass
class Row:
    label: str
    cells: list[Cell]
    published: bool = False          # a row of published values, set under the row it compares


@dataclass
class Group:
    heading: str | None
    rows: list[Row] = field(default_factory=list)


@dataclass
class Header:
    text: str
    span: int = 1


@dataclass
class Grid:
    """A table body: header rows (spanning titles over the value columns) and row groups."""

    title: str
    corner: str                      # heading of the label column
    header: list[list[Header]]       # every header row covers all value columns
    groups: list[Group]

    @property
    def ncols(self) -> int:
        return sum(h.span for h in self.header[-1]) if self.header else 0

    def spans(self, level: int) -> list[dict]:
        """Header cells of one row with their 1-based LaTeX column ranges (the label column is 1)."""
        out, start = [], 2
        for h in self.header[level]:
            out.append({"text": h.text, "span": h.span, "start": start, "end": start + h.span - 1})
            start += h.span
        return out

    def is_empty(self) -> bool:
        return not any(g.rows for g in self.groups)


def with_published(label: str, cells: list[Cell], published: list[Cell | None], source: str) -> list[Row]:
    """The row, and under it a row of published values where any cell has one."""
    rows = [Row(label, cells)]
    if any(p is not None for p in published):
        rows.append(Row(source, [p if p is not None else Cell("text") for p in published], published=True))
    return rows


def published_cell(value: float | None, ours: Cell) -> Cell | None:
    """A published value and ``ours - published`` (points), or None when there is no published value.

    Against an error cell the value is an error and so is the difference; against a number cell (e.g. a
    similarity) both are in the number's own units and digits.
    """
    if value is None:
        return None
    if ours.kind == "number":
        delta = math.nan if _nan(ours.value) else ours.value * ours.scale - value
        return Cell("published", value=value, delta=delta, digits=ours.digits)
    ours_percent = math.nan if _nan(ours.value) else 100 * (1 - ours.value if ours.kind == "err" else ours.value)
    return Cell("published", value=value, delta=ours_percent - value, digits=ours.digits)
