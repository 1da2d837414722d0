"""Fine-tuning methods as parts: optimizers, head initialisations, regularisers and parameter policies.

:mod:`~pipeline.methods.registry` lists them (pure data, read by the config, the stage registry
and the report); each part is one module here; :mod:`~pipeline.methods.assemble` builds a run's
method from its settings. Depends on :mod:`pipeline.models` only (the config reads the registry).
"""
