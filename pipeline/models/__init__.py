"""Backbones: timm models from local weight files, their layer groups, and batched inference.

Depends on :mod:`pipeline.data`, and on :mod:`pipeline.download` for where a fetched
``weights: hub`` checkpoint lies and its error type. Stages: ``backbone`` (:mod:`~pipeline.models.weights`)
and ``features`` (:mod:`~pipeline.models.features`).
"""
