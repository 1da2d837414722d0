"""Training: the linear probe and the fine-tuning loop (checkpoints, preemption, DDP).

Depends on :mod:`pipeline.config` (a run's settings), :mod:`pipeline.methods`,
:mod:`pipeline.evaluation`, :mod:`pipeline.models` and :mod:`pipeline.data`. Stages:
``linear_probe`` (:mod:`~pipeline.training.linear_probe`) and ``finetune``
(:mod:`~pipeline.training.finetune`).
"""
