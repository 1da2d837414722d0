"""Analyses beside the main results: the LP-FT toy model and per-layer gradient norms.

Depends on :mod:`pipeline.reporting` (to render its table), :mod:`pipeline.methods`,
:mod:`pipeline.models` and :mod:`pipeline.data`. Stages: ``lpft_theory``, ``grad_norms``.
"""
