"""Weight-space ensembles: WiSE-FT interpolation and uniform / greedy model soups.

Depends on :mod:`pipeline.evaluation`, :mod:`pipeline.methods` (which head the pretrained
endpoint carries), :mod:`pipeline.models` and :mod:`pipeline.data`. Used by the
``wise_ft`` and ``soup`` stages.
"""
