"""One colour, marker and line style per method, shared by every figure of the report.

The experiment's methods take the colours of matplotlib's ``tab10`` (then ``tab20b``) in
``experiment.methods`` order, whatever subset a figure draws, so a method looks the same in the
ID-vs-OOD figure, the effective-robustness figure and the per-layer figure. The rows that are not
fine-tuning methods have fixed styles: zero-shot and LP in black, the soups in grey and gold. A
WiSE-FT row is drawn in its method's style with an open marker (:data:`WISE_FT_FACE`).
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib

# Markers for the methods, after those the fixed rows use (P, s, D); filled shapes only, so an
# open (WiSE-FT) version of each is still recognisable.
MARKERS = ("o", "^", "v", "<", ">", "p", "h", "X", "d", "8", "H", "*")
LINESTYLES = ("-", "--", "-.", ":")
WISE_FT_FACE = "white"


@dataclass(frozen=True)
class Style:
    color: object
    marker: str
    linestyle: str = "-"


FIXED = {"zeroshot": Style("black", "P"), "lp": Style("black", "s"),
         "uniform_soup": Style("dimgrey", "D", ":"), "greedy_soup": Style("darkgoldenrod", "D", "--")}


def palette(n: int) -> list:
    colors = list(matplotlib.color_sequences["tab10"])
    return colors if n <= len(colors) else colors + list(matplotlib.color_sequences["tab20b"])


def method_styles(methods: list[str]) -> dict[str, Style]:
    """The style of each of ``experiment.methods`` (in that order) and of the fixed rows."""
    colors = palette(len(methods))
    out = dict(FIXED)
    for i, m in enumerate(dict.fromkeys(x for x in methods if x not in FIXED)):
        out[m] = Style(colors[i % len(colors)], MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)])
    return out


def style_of(styles: dict[str, Style], method: str) -> Style:
    """A method's style; one outside the experiment's list (a user's extra row) is grey circles."""
    return styles.get(method, Style("grey", "o"))
