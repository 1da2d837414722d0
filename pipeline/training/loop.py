"""The one training loop every fine-tuning method runs through.

Straight-line and deliberately plain: shuffled mini-batches from the uint8 train
shard, tensor augmentation, cross-entropy, an optimizer step, a per-step warmup
+ cosine schedule, and after every epoch an ID-val evaluation that decides which
weights are kept (model selection on ID val, never on test or OOD data).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import compat
from pipeline.data.shards import SplitData
from pipeline.data.tensors import normalize, random_resized_crop
from pipeline.io import Preempted, progress
from pipeline.methods.groups import base_lr
from pipeline.models.inference import predict_logits
from pipeline.training.checkpoint import Checkpointer
from pipeline.training.distributed import Dist, wrap

compat.apply()
from timm.scheduler import CosineLRScheduler  # noqa: E402

log = logging.getLogger(__name__)


class TrainHook(Protocol):
    """Something a method adds to every step (a regulariser, :mod:`pipeline.methods.registry`)."""

    def after_backward(self) -> None:
        """Between the backward pass and clipping: e.g. add a penalty's gradient, as if it were in the loss."""


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss is NaN or inf; the run writes no results."""


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    batch_size: int
    warmup_epochs: float
    label_smoothing: float
    grad_clip: float
    bn: str                      # "train" or "eval" (BatchNorm statistics frozen)
    seed: int
    crop_scale: tuple[float, float] = (1.0, 1.0)
    hflip: bool = False
    name: str = "finetune"       # method name, used in error messages
    checkpoint_seconds: float = 600.0   # periodic checkpoints (with a Checkpointer), bounding work lost to SIGKILL


@dataclass
class LoopResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_acc: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """In ``eval`` mode BatchNorm layers normalise with their pretrained statistics and never update them."""
    if mode == "eval":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU (the best epoch's copy must not cost accelerator memory)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def accuracy(model: nn.Module, split: SplitData, mean, std) -> float:
    return float((predict_logits(model, split.images, mean, std).argmax(1).numpy() == split.labels).mean())


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


def train(model: nn.Module, optimizer: torch.optim.Optimizer, train_split: SplitData, val_split: SplitData,
          mean, std, cfg: LoopConfig, hooks: Sequence[TrainHook] = (),
          checkpoint: Checkpointer | None = None, dist: Dist = Dist()) -> LoopResult:
    """Train and return the weights with the best ID-val accuracy (epoch 0 = the initial model).

    Each of ``hooks`` (the method's regularisers) runs its ``after_backward`` between the
    backward pass and clipping (e.g. L2-SP adds its gradient, as if it were part of the loss).
    With a ``checkpoint``, the run resumes from its latest checkpoint, saves one
    every ``cfg.checkpoint_seconds`` and, on SIGTERM/SIGUSR1, saves one and raises
    :class:`Preempted`. Under torchrun (``dist``), each rank trains on its slice of
    every global batch through DDP (:mod:`pipeline.training.distributed`).
    """
    device = next(model.parameters()).device
    net, mine = wrap(model, dist), dist.shard(cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(train_split)
    labels = torch.tensor(train_split.labels)
    steps_per_epoch = max(1, n // cfg.batch_size)   # drop the ragged last batch: equal-size steps
    total_steps = cfg.epochs * steps_per_epoch
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps - 1)
    # Built before a checkpoint is restored: its constructor resets the groups' lr, the restore sets them back.
    sched = CosineLRScheduler(optimizer, t_initial=total_steps - warmup, warmup_t=warmup, warmup_prefix=True,
                              warmup_lr_init=0.0, lr_min=0.0, t_in_epochs=False)

    t0 = time.perf_counter()
    resumed = checkpoint.load(model, optimizer, gen) if checkpoint is not None else None
    if resumed is None:
        best_acc = accuracy(model, val_split, mean, std)
        best_state, order = cpu_state(model), None
        state = {"epoch": 1, "step_in_epoch": 0, "step": 0, "losses": [], "best_acc": best_acc, "best_epoch": 0,
                 "seconds": 0.0,
                 "history": [{"epoch": 0, "step": 0, "lr": 0.0, "train_loss": math.nan, "id_val_acc": best_acc}]}
    else:
        state, best_state, order = resumed["loop"], resumed["best_state"], resumed["order"]
    last_save = time.monotonic()

    def save() -> None:
        nonlocal last_save
        if dist.main:   # ranks hold the same state
            checkpoint.save(state["step"], model, optimizer, gen, best_state, order,
                            {**state, "seconds": state["seconds"] + time.perf_counter() - t0})
        last_save = time.monotonic()

    with StopSignals() as stop:
        for epoch in range(state["epoch"], cfg.epochs + 1):
            model.train()
            set_bn_mode(model, cfg.bn)
            if order is None:
                order = torch.randperm(n, generator=gen)
            for i in progress(range(state["step_in_epoch"], steps_per_epoch),
                              desc=f"{cfg.name} epoch {epoch}/{cfg.epochs}", leave=False):
                idx = np.sort(order[i * cfg.batch_size:(i + 1) * cfg.batch_size].numpy())  # sorted: fast memmap reads
                # Augmentation draws from the CPU generator, so a run is the same on any device.
                x = normalize(random_resized_crop(train_split.images[idx], cfg.crop_scale, gen, cfg.hflip), mean, std)
                loss = F.cross_entropy(net(x[mine].to(device, non_blocking=True)), labels[idx][mine].to(device),
                                       label_smoothing=cfg.label_smoothing)
                if not torch.isfinite(loss):
                    step = state["step"] + 1
                    raise NonFiniteLossError(f"{cfg.name}: loss is {loss.item()} at step {step} (epoch {epoch}); "
                                             "stopping, no results written (lower the learning rate?)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for hook in hooks:
                    hook.after_backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                state["step"] += 1
                state["step_in_epoch"] = i + 1
                sched.step_update(state["step"])
                state["losses"].append(loss.item())
                if checkpoint is not None:
                    if dist.any(stop.after_step(state["step"])):
                        save()
                        raise Preempted(f"{cfg.name}: signal {stop.received or 'on another rank'} at step "
                                        f"{state['step']}; checkpoint "
                                        f"saved in {checkpoint.root}, run the job again to resume")
                    elif time.monotonic() - last_save >= cfg.checkpoint_seconds:
                        save()
            val_acc = accuracy(model, val_split, mean, std)
            state["history"].append({"epoch": epoch, "step": state["step"], "lr": base_lr(optimizer),
                                     "train_loss": float(np.mean(state["losses"])), "id_val_acc": val_acc})
            log.info("%s epoch %d: train loss %.4f, id_val acc %.4f", cfg.name, epoch, np.mean(state["losses"]),
                     val_acc)
            if val_acc > state["best_acc"]:
                state["best_acc"], state["best_epoch"], best_state = val_acc, epoch, cpu_state(model)
            state.update(epoch=epoch + 1, step_in_epoch=0, losses=[])
            order = None
    seconds = state["seconds"] + time.perf_counter() - t0
    return LoopResult(best_state, state["best_epoch"], state["best_acc"], state["history"], seconds)
