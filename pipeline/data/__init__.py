"""Datasets: the sources users name in params.yaml, decoding them once into uint8 shards, and reading them.

The bottom layer with :mod:`pipeline.io`: imports no other folder of the package. Its stage is
``prepare_data`` (:mod:`pipeline.data.prepare`).
"""
