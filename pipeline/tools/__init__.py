"""Commands beside the stages: checks, downloads and the runners' glue.

``preflight`` (the checks that need the model libraries, before any job), ``fetch`` (every dataset
and hub checkpoint a config needs, on a machine with network), ``dvc_render`` (``dvc.yaml`` and
``params.defaults.yaml`` from the stage registry), ``dvc_commit`` (record Snakemake's outputs in
DVC) and ``dvc_exps`` (experiments as one table). Above the stages wing: depends on
:mod:`pipeline.stages` (the registry), :mod:`pipeline.config`, :mod:`pipeline.download`,
:mod:`pipeline.models` and :mod:`pipeline.data`; only the CLI imports it.
"""
