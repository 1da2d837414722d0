"""Reproducible, cached pipeline for robust fine-tuning research.

Stages are defined once in :mod:`pipeline.stages`; run them through Snakemake
(``snakemake --cores 2``), DVC (``dvc repro``) or directly with
``python -m pipeline <stage> ...``.
"""
__version__ = "0.1.0"
