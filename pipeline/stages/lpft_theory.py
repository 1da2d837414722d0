"""Stage ``lpft_theory``: LP vs FT vs LP-FT on the two-layer linear network of Kumar et al. 2022.

No inputs but the table's template (``paper/templates/lpft_theory.tex.j2``). Outputs:
``results/analysis/lpft_theory.csv`` (one row per eps x seed x method, with the config hash) and
``paper/tables/lpft_theory.tex``. The model and the methods: :mod:`pipeline.analysis.lpft_theory`.
Params: ``analysis.lpft_theory`` (``eps``, ``seeds``, and the sizes ``d``, ``k``, ``m``, ``n``).
"""
from __future__ import annotations

from pipeline.analysis.lpft_theory import (
    DEFAULT_EPS,
    DEFAULT_SEEDS,
    ToyConfig,
    run_grid,
    summarize,
    table_context,
)
from pipeline.io import write_csv, write_text
from pipeline.reporting.tables import render_template
from pipeline.stages.job import parse_job


def main(argv: list[str] | None = None) -> int:
    job = parse_job("lpft_theory", argv)
    p = dict(((job.params.get("analysis") or {}).get("lpft_theory") or {}).items())
    eps = p.pop("eps", DEFAULT_EPS)
    seeds = range(p.pop("seeds", len(DEFAULT_SEEDS)))
    cfg = ToyConfig(**p)
    grid = run_grid(cfg, eps, seeds).assign(config_hash=job.config_hash)
    write_csv(job.outputs["results"], grid)
    write_text(job.outputs["table"], render_template(job.inputs["template"], table_context(summarize(grid))))
    return 0
