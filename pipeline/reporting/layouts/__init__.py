"""Table layouts: each is one module (it builds the grids) plus one LaTeX template, registered here.

The report renders every layout (``paper/tables/<name>.tex``, and ``results/report/tables/<name>.html``
for ``snakemake --report``); ``report.tables`` picks the ones ``paper/tables/tables.tex`` puts
in the paper. Cheap to import (the stage registry lists the outputs from it).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

TEMPLATES = "paper/templates"


@dataclass(frozen=True)
class Layout:
    name: str
    module: str      # defines ``context(view) -> dict`` for the template
    doc: str

    @property
    def template(self) -> str:
        return f"{TEMPLATES}/{self.name}.tex.j2"


LAYOUTS: dict[str, Layout] = {x.name: x for x in (
    Layout("results", "pipeline.reporting.layouts.results",
           "Every row of every dataset/model: ID, OOD and per-domain accuracy, calibration, effective robustness."),
    Layout("freeze_embed", "pipeline.reporting.layouts.freeze_embed",
           "Kumar et al. 2024: methods x datasets as ID/OOD pairs plus the average, per model and over models."),
    Layout("lpft", "pipeline.reporting.layouts.lpft",
           "Kumar et al. 2022: LP, FT and LP-FT, one table of ID and one of OOD accuracy."),
    Layout("wise_ft", "pipeline.reporting.layouts.wise_ft",
           "Wortsman et al. 2022: zero-shot, fine-tuned, WiSE-FT at alpha 0.5 and at the alpha chosen on ID val."),
)}
DEFAULT_TABLES = ("results",)
# Shared by the layouts' templates: the grid macro, and the HTML page of any layout.
GRID_MACRO = f"{TEMPLATES}/_grid.tex.j2"
HTML_TEMPLATE = f"{TEMPLATES}/table.html.j2"


def build(name: str, view) -> dict:
    """The template context of one layout."""
    return importlib.import_module(LAYOUTS[name].module).context(view)
