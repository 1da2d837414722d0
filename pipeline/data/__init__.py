"""Datasets: the sources users name in params.yaml, storing them once as image shards, reading them back, and
the input transforms that crop and resize their images on the device.

The bottom library layer: imports no other folder of the package, only the base modules (``io``,
``compat``). Used by the ``prepare_data`` stage (:mod:`pipeline.data.prepare`) and every later one.
"""
