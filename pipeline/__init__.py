"""Reproducible, cached pipeline for robust fine-tuning research.

Stages are defined once in :mod:`pipeline.stages.registry`, each in its own module of
:mod:`pipeline.stages`; run them through Snakemake (``snakemake --cores 2``), DVC (``dvc repro``)
or directly with ``python -m pipeline <stage> ...``. The library folders below the stages wing
(data, download, models, methods, training, evaluation, ensembling, analysis, reporting) never
import it; ``pipeline.tools`` holds the commands beside the stages.
"""
__version__ = "0.1.0"
