"""Configuration: loading and validating params.yaml, its schema, and resolving a run's settings.

Below the stages wing and above the library: this package reads
:mod:`pipeline.methods.registry` (pure data) and the dataset sources' specs
(:mod:`pipeline.data.sources`), the table layouts' names and the reference files' format
(:mod:`pipeline.reporting`: its registry and reader, pure data), the linear probe's solvers and
defaults (:mod:`pipeline.training.probes`, pure data), and nothing that imports torch.
"""
from pipeline.config.load import DEFAULT_PARAMS, ParamsError, config_hash, load_params, lookup, validate

__all__ = ["DEFAULT_PARAMS", "ParamsError", "config_hash", "load_params", "lookup", "validate"]
