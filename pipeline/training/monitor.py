"""Progress you can watch and the cost of a run, measured without slowing it down.

:class:`Monitor` counts steps and images on the host and keeps the loss on the device, so a
training step never waits for the GPU. Every ``every_s`` seconds (and at each epoch's end) it
reads the loss back once and logs the mean loss, the learning rate, images/s and peak memory
(CUDA: max allocated; CPU: the process's peak resident set). With ``PIPELINE_LIVE=1`` in the
environment it also logs them with dvclive under ``logs/live/<run>/`` (off by default: a
logging switch, not a result, so not a params key). :meth:`Monitor.cost` is what the run
records about its cost: images/s, seconds and GPU-hours, peak memory.
"""
from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
LIVE_ENV = "PIPELINE_LIVE"


def peak_memory(device: torch.device) -> int:
    """Bytes: CUDA max allocated on ``device``, else this process's peak resident set."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024   # Linux reports KiB


class Monitor:
    """Interval logging of a training run and its cost."""

    def __init__(self, name: str, device: torch.device, world: int = 1, every_s: float = 30.0,
                 live_dir: str | Path | None = None):
        self.name, self.device, self.world, self.every_s = name, device, world, every_s
        self.images = 0            # images trained on (global batches), since start or resume
        self.seconds = 0.0         # training time (evaluation excluded)
        self._since_images, self._since_steps = 0, 0
        self._loss = torch.zeros((), device=device)   # summed on the device between log lines
        self._t0 = self._last = time.perf_counter()
        self._live = None
        if live_dir is not None and os.environ.get(LIVE_ENV, "") not in ("", "0"):
            from dvclive import Live

            self._live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def start(self) -> None:
        """(Re)start the clock: after evaluation, so that images/s counts training only."""
        self._last = time.perf_counter()

    def step(self, step: int, batch_size: int, loss: torch.Tensor, lr: float) -> None:
        """Count one optimizer step; every ``every_s`` seconds, log (one device sync)."""
        self.images += batch_size
        self._since_images += batch_size
        self._since_steps += 1
        self._loss += loss.detach().float()
        if time.perf_counter() - self._last >= self.every_s:
            self.flush(step, lr)

    def flush(self, step: int, lr: float) -> float | None:
        """Log the interval's mean loss and throughput; returns the mean loss (None if no step since)."""
        now = time.perf_counter()
        if not self._since_steps:
            self._last = now
            return None
        loss = float(self._loss) / self._since_steps   # the sync, once per interval
        self.seconds += now - self._last
        rate = self._since_images / max(now - self._last, 1e-9)
        log.info("%s step %d: loss %.4f, lr %.3g, %.1f img/s, peak memory %.0f MiB", self.name, step, loss, lr,
                 rate, peak_memory(self.device) / 2**20)
        if self._live is not None:
            for key, value in (("train/loss", loss), ("train/lr", lr), ("train/images_per_s", rate)):
                self._live.log_metric(key, value)
            self._live.step = step
            self._live.next_step()
        self._loss.zero_()
        self._since_images = self._since_steps = 0
        self._last = now
        return loss

    def cost(self) -> dict:
        """Throughput and memory of the run (vary between runs: kept out of the results)."""
        return {"images_per_s": round(self.images / self.seconds, 2) if self.seconds else None,
                "train_seconds": round(self.seconds, 2), "gpus": self.world if self.device.type == "cuda" else 0,
                "gpu_hours": round(self.seconds * self.world / 3600, 4) if self.device.type == "cuda" else 0.0,
                "peak_memory_bytes": peak_memory(self.device), "device": str(self.device)}

    def close(self) -> None:
        if self._live is not None:
            self._live.end()
