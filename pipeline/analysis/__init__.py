"""Analyses beside the main results: the LP-FT toy model, per-layer gradient norms, and the
source-target domain similarity of Cui et al. 2018 (:mod:`.similarity`; class means read from a
features file: :mod:`.domain_features`).

Depends on :mod:`pipeline.reporting` (to render its table), :mod:`pipeline.methods`,
:mod:`pipeline.models` and :mod:`pipeline.data`. Used by the
``lpft_theory``, ``grad_norms`` and ``similarity`` stages (``pipeline/stages/``).
"""
