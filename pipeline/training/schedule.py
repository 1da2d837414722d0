"""The learning-rate schedules of the training loop, one per protocol (``schedule`` setting).

Every schedule is a function of the optimizer step: the loop builds it before a checkpoint is
restored, then calls ``step_update(k)`` after optimizer step ``k`` (so step ``k`` itself ran at the
lr set for ``k``). Each group's lr is its ``initial_lr`` (base lr x the group's ``lr_factor``) put
through the schedule, so layer decay and embedding-lr factors keep their ratios.

* ``cosine`` (default): timm's ``CosineLRScheduler``, per step: linear warmup from 0 (step ``j``
  of the warmup runs at ``base * j / warmup``), then cosine to 0 over the remaining steps.
* ``cosine_lr``: wise-ft's and model-soups' ``cosine_lr``, per step: warmup at
  ``base * (j + 1) / warmup`` (the first step is not at lr 0), then the same cosine
  (mlfoundations/wise-ft@58b7a4b:src/models/utils.py:11-32, called before every step at
  mlfoundations/wise-ft@58b7a4b:src/models/finetune.py:74-75; mlfoundations/model-soups@d5398f1:utils.py:110-129).
* ``cosine_per_epoch``: transfer_learning's ``CosineAnnealingLR(T_max=epochs)``, stepped once after
  every epoch, no warmup (AnanyaKumar/transfer_learning@13c3e2b:unlabeled_extrapolation/baseline_train.py:604-607,
  659-660): every step of epoch ``e`` (0-based) runs at torch's value after ``e`` scheduler steps,
  computed by torch's own class.
* ``multistep``: the lr times ``milestone_factor`` at each of the ``milestones`` (epochs), torch's
  ``MultiStepLR`` (Li et al. 2020): :mod:`pipeline.training.multistep`.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pipeline import compat
from pipeline.training.multistep import multistep_scheduler

compat.apply()
from timm.scheduler import CosineLRScheduler  # noqa: E402


def cosine_lr(base_lr: float, warmup_length: int, steps: int, step: int) -> float:
    """wise-ft's ``cosine_lr`` at ``step`` (its ``_warmup_lr`` and cosine branch, the same arithmetic)."""
    if step < warmup_length:
        return base_lr * (step + 1) / warmup_length
    e = step - warmup_length
    es = steps - warmup_length
    return float(0.5 * (1 + np.cos(np.pi * e / es)) * base_lr)


def cosine_annealing_per_epoch(base_lr: float, epochs: int) -> list[float]:
    """The lr of every epoch 0..epochs under ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch (torch's
    own recurrence, on a scratch optimizer, so the values are torch's to the last bit)."""
    scratch = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(scratch, T_max=epochs)
    out = [scratch.param_groups[0]["lr"]]
    for _ in range(epochs):
        scratch.step()   # no gradient: a no-op that keeps torch's "step the optimizer first" check quiet
        sched.step()
        out.append(scratch.param_groups[0]["lr"])
    return out


class StepSchedule:
    """Sets each group's lr to ``lr_at(initial_lr, step)``: a pure function of the step, so a restored
    optimizer (its groups' lr) and the step counter are the whole state."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_at: Callable[[float, int], float]):
        self.optimizer, self.lr_at = optimizer, lr_at
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.step_update(0)

    def step_update(self, num_updates: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(group["initial_lr"], num_updates)


def build_schedule(optimizer: torch.optim.Optimizer, name: str, epochs: int, steps_per_epoch: int, warmup: int,
                   milestones: tuple[int, ...] = (), milestone_factor: float = 0.1):
    """The schedule ``name`` over ``epochs`` x ``steps_per_epoch`` optimizer steps with ``warmup`` warmup steps
    (``milestones``, ``milestone_factor``: the multistep schedule's drops, in epochs)."""
    total = epochs * steps_per_epoch
    if name == "multistep":
        return multistep_scheduler(optimizer, milestones, milestone_factor, epochs, steps_per_epoch, warmup)
    if name == "cosine":
        return CosineLRScheduler(optimizer, t_initial=total - warmup, warmup_t=warmup, warmup_prefix=True,
                                 warmup_lr_init=0.0, lr_min=0.0, t_in_epochs=False)
    if name == "cosine_lr":
        return StepSchedule(optimizer, lambda base, step: cosine_lr(base, warmup, total, step))
    if name == "cosine_per_epoch":
        if warmup:
            raise ValueError("schedule cosine_per_epoch has no warmup (transfer_learning's has none): set "
                             "warmup_epochs: 0")
        table: dict[float, list[float]] = {}

        def per_epoch(base: float, step: int) -> float:
            if base not in table:
                table[base] = cosine_annealing_per_epoch(base, epochs)
            return table[base][min(step // steps_per_epoch, epochs)]

        return StepSchedule(optimizer, per_epoch)
    raise ValueError(f"unknown schedule {name!r} (schedules: cosine, cosine_lr, cosine_per_epoch, multistep)")
