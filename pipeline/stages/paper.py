r"""Stage ``paper``: compile ``paper/main.tex`` into ``paper/main.pdf`` with latexmk.

Inputs: ``main`` (``paper/main.tex``), the tables and figures of the ``report`` stage
(``paper/tables/results.tex``, ``paper/figures/{id_vs_ood,grad_norms,layers}.pdf``),
``paper/tables/lpft_theory.tex`` of the ``lpft_theory`` stage and ``paper/tables/costs.tex`` of
the ``costs`` stage (measured costs: the PDF is the same bytes only when they are).
Output: ``pdf`` (``paper/main.pdf``). Params: none.

latexmk runs with the paper's folder as working directory (so ``\input{tables/...}``
and ``\includegraphics{figures/...}`` resolve) and a temporary ``-outdir``, so aux
files never land in ``paper/``; the PDF is then moved into place atomically.
Without latexmk the stage fails with an install hint and writes no PDF.
"""
from __future__ import annotations

import logging
import sys

from pipeline.reporting.paper import (
    PaperError,
    build_pdf,
)
from pipeline.stages.job import parse_job

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("paper", argv)
    try:
        build_pdf(job.inputs["main"], job.outputs["pdf"])
    except PaperError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    log.info("wrote %s", job.outputs["pdf"])
    return 0
