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
    html: str | None = None   # its own HTML template (default: the shared page of grids, HTML_TEMPLATE)

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
    Layout("recipe", "pipeline.reporting.layouts.recipe",
           "The recipe card: per setting a paper fixes, our value, the official one and its source, each difference "
           "marked and explained.", html=f"{TEMPLATES}/recipe.html.j2"),
    Layout("li2020_momentum", "pipeline.reporting.layouts.li2020_momentum",
           "Li et al. 2020, Table 2: top-1 error (%) with momentum 0.9 and 0 at two learning rates and weight decays."),
    Layout("li2020_similarity", "pipeline.reporting.layouts.li2020_similarity",
           "Li et al. 2020, Table 4: domain similarity to the source and the optimal effective learning rate."),
    Layout("li2020_hpo", "pipeline.reporting.layouts.li2020_hpo",
           "Li et al. 2020, Table 8: top-1 error (%) at the default hyperparameters and at the searched ones."),
    Layout("li2020_elr", "pipeline.reporting.layouts.li2020_elr",
           "Li et al. 2020, Figure 4: top-1 error (%) against the effective learning rate; best error and its ELR."),
)}
DEFAULT_TABLES = ("results",)
# Shared by the layouts' templates: the grid macro, and the HTML page of any layout.
GRID_MACRO = f"{TEMPLATES}/_grid.tex.j2"
HTML_TEMPLATE = f"{TEMPLATES}/table.html.j2"


def build(name: str, view) -> dict:
    """The template context of one layout."""
    return importlib.import_module(LAYOUTS[name].module).context(view)
