"""Backbones: timm models from local weight files, their layer groups, and batched inference.

Depends on :mod:`pipeline.data` only. Stages: ``backbone`` (:mod:`~pipeline.models.weights`)
and ``features`` (:mod:`~pipeline.models.features`).
"""
