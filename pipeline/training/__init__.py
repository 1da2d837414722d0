"""Training: the linear probe and the fine-tuning loop (checkpoints, preemption, DDP).

Depends on :mod:`pipeline.methods`, :mod:`pipeline.evaluation`, :mod:`pipeline.models` and
:mod:`pipeline.data`; a run's resolved settings come in from the ``finetune`` stage. Used by the
``linear_probe`` (:mod:`~pipeline.training.linear_probe`) and ``finetune``
(:mod:`~pipeline.training.finetune`) stages.
"""
