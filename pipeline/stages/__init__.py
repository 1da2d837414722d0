"""The stages wing: one module per stage, the stage table and the job contract.

``pipeline/stages/<name>.py`` is stage ``<name>``'s entry point: a thin ``main(argv)`` that gets its
job through the contract (:mod:`~pipeline.stages.job`: its wildcards, paths and declared params)
and calls the library folders. :mod:`~pipeline.stages.registry` defines every stage (the Snakefile
and ``dvc.yaml`` are views of it) and :mod:`~pipeline.stages.code` what code each job depends on.
Above the library: depends on :mod:`pipeline.config` and on every library folder
(:mod:`pipeline.data`, :mod:`pipeline.download`, :mod:`pipeline.models`, :mod:`pipeline.methods`,
:mod:`pipeline.training`, :mod:`pipeline.evaluation`, :mod:`pipeline.ensembling`,
:mod:`pipeline.analysis`, :mod:`pipeline.reporting`), none of which imports it.
Cheap to import: nothing is imported here.
"""
