"""Evaluation: tidy metric rows per split and domain, each dataset's official metrics (WILDS), zero-shot models.

Depends on :mod:`pipeline.methods` (the zero-shot head initialisation), :mod:`pipeline.models`
and :mod:`pipeline.data`. Used by the ``evaluate``,
``zeroshot`` and ``linear_probe`` stages.
"""
