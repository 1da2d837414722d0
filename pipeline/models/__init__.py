"""Backbones: timm models and OpenCLIP image towers from local weight files, zero-shot heads from
OpenCLIP text towers, layer groups per family, and batched inference.

Depends on :mod:`pipeline.data` (and its class names and prompts), and on :mod:`pipeline.download`
for where a fetched ``weights: hub`` checkpoint lies and its error type. Used by the ``backbone``
(:mod:`~pipeline.models.weights`) and ``features`` (:mod:`~pipeline.models.features`) stages, and
every later one.
"""
