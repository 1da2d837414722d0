"""The step schedule (``schedule: multistep``): the lr times ``milestone_factor`` at each milestone epoch.

Li et al. (ICLR 2020, section 3.1) fine-tune for 300 epochs and multiply the learning rate by 0.1 at
epochs 150 and 250: torch's ``MultiStepLR(milestones=[150, 250], gamma=0.1)`` stepped once per epoch,
so epoch ``e`` (0-based) runs at ``lr * factor ** (number of milestones <= e)``.

The loop's schedules are per optimizer step (``step_update(k)`` after step ``k`` sets the lr of step
``k``), so this is timm's ``MultiStepLRScheduler`` with the milestones in steps. timm applies a
milestone ``m`` one step early (its ``bisect_right(decay_t, t + 1)``, kept on purpose for its own
schedules: timm/scheduler/multistep_lr.py), so every milestone is passed as ``m * steps_per_epoch + 1``:
the drop then lands on the first step of epoch ``m``, where torch's per-epoch schedule puts it
(tests/test_schedule.py checks every step against ``MultiStepLR``). A warmup, if any, is a linear ramp
from 0 over the first ``warmup`` steps (timm's, not a prefix: the milestones stay at their epochs).
Each group's lr is its ``initial_lr`` put through the schedule, so layer-wise lr factors keep their ratios.
"""
from __future__ import annotations

import torch

from pipeline import compat

compat.apply()
from timm.scheduler import MultiStepLRScheduler  # noqa: E402


def multistep_scheduler(optimizer: torch.optim.Optimizer, milestones: list[int] | tuple[int, ...], factor: float,
                        epochs: int, steps_per_epoch: int, warmup: int = 0) -> MultiStepLRScheduler:
    """The step schedule over ``epochs`` x ``steps_per_epoch`` optimizer steps (milestones in epochs)."""
    ms = [int(m) for m in milestones]
    if ms != sorted(set(ms)) or any(not 0 < m < epochs for m in ms):
        raise ValueError(f"milestones {ms} must be increasing epochs between 1 and {epochs - 1} (training "
                         f"has {epochs} epochs)")
    if ms and warmup > ms[0] * steps_per_epoch:
        raise ValueError(f"a warmup of {warmup} steps runs past the first milestone ({ms[0]} epochs)")
    return MultiStepLRScheduler(optimizer, decay_t=[m * steps_per_epoch + 1 for m in ms], decay_rate=factor,
                                warmup_t=warmup, warmup_lr_init=0.0, warmup_prefix=False, t_in_epochs=False)
