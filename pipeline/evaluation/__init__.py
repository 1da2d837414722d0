"""Evaluation: tidy metric rows per split and domain, and each dataset's official metrics (WILDS).

Depends on :mod:`pipeline.models` and :mod:`pipeline.data`. Stage: ``evaluate``.
"""
