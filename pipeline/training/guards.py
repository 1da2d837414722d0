"""What stops a training run: a non-finite loss, or a preemption signal.

Both are watched without a host sync in the step: the loss is checked on the device and read
back every few steps (:class:`NonFiniteGuard`); signals only set a host-side flag that the
loop looks at between steps (:class:`StopSignals`).
"""
from __future__ import annotations

import math
import os
import signal

import torch


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss is NaN or inf; the run writes no results."""


class NonFiniteGuard:
    """Remembers, on the device, the first step whose loss was not finite and that loss.

    :meth:`update` is a few device ops per step; :meth:`check` reads the result back (one
    sync) and raises :class:`NonFiniteLossError` naming the first bad step, its epoch and the
    method. The loop checks every ``check_every`` steps, at every epoch's end and before every
    checkpoint, so no checkpoint or result ever holds weights trained through a bad step.
    """

    def __init__(self, device: torch.device, name: str, steps_per_epoch: int, step: int = 0):
        self.name, self.steps_per_epoch = name, steps_per_epoch
        self._step = torch.full((), step, dtype=torch.long, device=device)
        self._first = torch.full((), -1, dtype=torch.long, device=device)
        self._value = torch.zeros((), dtype=torch.float32, device=device)

    def update(self, loss: torch.Tensor) -> None:
        self._step += 1
        new = ~torch.isfinite(loss) & (self._first < 0)
        self._first = torch.where(new, self._step, self._first)
        self._value = torch.where(new, loss.detach().float(), self._value)

    def check(self) -> None:
        first = int(self._first)
        if first >= 0:
            value = float(self._value)
            kind = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            epoch = (first - 1) // self.steps_per_epoch + 1
            raise NonFiniteLossError(f"{self.name}: loss is {kind} at step {first} (epoch {epoch}); "
                                     "stopping, no results written (lower the learning rate?)")


class StopSignals:
    """Turns SIGTERM and SIGUSR1 (Slurm's time-limit warning, preemption) into a flag checked between steps.

    ``PIPELINE_SIGNAL_AT_STEP=<step>`` sends this process a real SIGTERM after that
    global step: fault injection for the resume tests.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self.inject_at = int(os.environ.get("PIPELINE_SIGNAL_AT_STEP", 0) or 0)

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def after_step(self, step: int) -> bool:
        if step == self.inject_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.received is not None
