"""The one training loop every fine-tuning method runs through.

Straight-line and deliberately plain: shuffled mini-batches from the uint8 train
shard, tensor augmentation, cross-entropy, an optimizer step, a per-step warmup
+ cosine schedule, and after every epoch an ID-val evaluation that decides which
weights are kept (model selection on ID val, never on test or OOD data).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import compat
from pipeline.data.shards import SplitData
from pipeline.data.tensors import random_resized_crop, to_float
from pipeline.evaluation.predict import predict_logits
from pipeline.io import progress

compat.apply()
from timm.scheduler import CosineLRScheduler  # noqa: E402

log = logging.getLogger(__name__)


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


def train(model: nn.Module, optimizer: torch.optim.Optimizer, train_split: SplitData, val_split: SplitData,
          mean, std, cfg: LoopConfig, after_backward: Callable[[], None] | None = None) -> LoopResult:
    """Train and return the weights with the best ID-val accuracy (epoch 0 = the initial model).

    ``after_backward`` runs between the backward pass and the step (e.g. to add
    the L2-SP gradient before clipping, as if it were part of the loss).
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(train_split)
    labels = torch.tensor(train_split.labels)
    steps_per_epoch = max(1, n // cfg.batch_size)   # drop the ragged last batch: equal-size steps
    total_steps = cfg.epochs * steps_per_epoch
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps - 1)
    sched = CosineLRScheduler(optimizer, t_initial=total_steps - warmup, warmup_t=warmup, warmup_prefix=True,
                              warmup_lr_init=0.0, lr_min=0.0, t_in_epochs=False)

    t0 = time.perf_counter()
    best_acc = accuracy(model, val_split, mean, std)
    best_state, best_epoch = cpu_state(model), 0
    history = [{"epoch": 0, "step": 0, "lr": 0.0, "train_loss": math.nan, "id_val_acc": best_acc}]
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        set_bn_mode(model, cfg.bn)
        order = torch.randperm(n, generator=gen)
        losses = []
        for i in progress(range(steps_per_epoch), desc=f"{cfg.name} epoch {epoch}/{cfg.epochs}", leave=False):
            idx = np.sort(order[i * cfg.batch_size:(i + 1) * cfg.batch_size].numpy())  # sorted: fast memmap reads
            # Augmentation draws from the CPU generator, so a run is the same on any device.
            x = random_resized_crop(to_float(train_split.images[idx], mean, std), cfg.crop_scale, gen, cfg.hflip)
            loss = F.cross_entropy(model(x.to(device, non_blocking=True)), labels[idx].to(device),
                                   label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"{cfg.name}: loss is {loss.item()} at step {step + 1} (epoch {epoch}); "
                                         "stopping, no results written (lower the learning rate?)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            sched.step_update(step)
            losses.append(loss.item())
        val_acc = accuracy(model, val_split, mean, std)
        history.append({"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
                        "train_loss": float(np.mean(losses)), "id_val_acc": val_acc})
        log.info("%s epoch %d: train loss %.4f, id_val acc %.4f", cfg.name, epoch, np.mean(losses), val_acc)
        if val_acc > best_acc:
            best_acc, best_epoch, best_state = val_acc, epoch, cpu_state(model)
    return LoopResult(best_state, best_epoch, best_acc, history, time.perf_counter() - t0)
