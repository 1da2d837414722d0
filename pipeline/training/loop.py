"""The one training loop every fine-tuning method runs through.

Straight-line and deliberately plain: shuffled mini-batches of the stored train images, decoded
ahead in a background thread, cropped by the recipe's train transform on the device
(:class:`pipeline.data.augment.TrainTransform`), optionally mixed (mixup / CutMix,
:mod:`pipeline.training.mixing`), the loss under the run's precision, ``accumulate`` micro-batches
per optimizer step, the method's hooks, an optimizer step, the run's schedule
(:mod:`pipeline.training.schedule`), and after every epoch an ID-val evaluation. ``select`` says
which weights are kept: ``best_id_val``, the epoch with the best ID-val accuracy (model selection on
ID val, never on test or OOD data; the initial weights are evaluated and logged as epoch 0 but are
never a candidate, as in transfer_learning: AnanyaKumar/transfer_learning@13c3e2b:
unlabeled_extrapolation/baseline_train.py:614-623, 687-698), or ``last``, the final epoch (wise-ft and
model-soups keep it: mlfoundations/wise-ft@58b7a4b:src/models/finetune.py:106-120).
Nothing in a step waits for the device: the loss stays on it and is read back every
``check_every`` steps and at each log line. Besides the per-epoch ``history``, the loop keeps a
per-step one (``steps``: step, epoch, lr, training loss): every optimizer step's loss is written
into a device buffer and read back once per epoch; a run longer than :data:`MAX_STEP_POINTS` steps
logs the mean over every ``ceil(steps / MAX_STEP_POINTS)`` consecutive steps instead.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import nn

from pipeline import compat
from pipeline.data.augment import InputTransforms
from pipeline.data.loader import Prefetcher, shuffled_batches
from pipeline.data.shards import SplitData
from pipeline.io import Preempted, progress
from pipeline.methods.groups import base_lr
from pipeline.models.inference import predict_logits
from pipeline.training.checkpoint import Checkpointer
from pipeline.training.distributed import Dist, wrap
from pipeline.training.guards import NonFiniteGuard, NonFiniteLossError, StopSignals
from pipeline.training.mixing import Criterion, MixSpec
from pipeline.training.monitor import Monitor
from pipeline.training.runtime import Runtime, prepare
from pipeline.training.schedule import build_schedule

compat.apply()

log = logging.getLogger(__name__)
# Rows of the per-step history at most: enough for a training curve, small enough for any run's checkpoint.
MAX_STEP_POINTS = 2000
__all__ = ["LoopConfig", "LoopResult", "NonFiniteLossError", "TrainHook", "set_bn_mode", "train"]


class TrainHook(Protocol):
    """Something a method adds to every step (a regulariser, :mod:`pipeline.methods.registry`)."""

    def after_backward(self) -> None:
        """Between the backward pass and clipping: e.g. add a penalty's gradient, as if it were in the loss."""


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    batch_size: int              # the global batch: every rank and micro-batch together
    warmup_epochs: float
    label_smoothing: float
    grad_clip: float
    bn: str                      # "train" or "eval" (BatchNorm statistics frozen)
    seed: int
    name: str = "finetune"       # method name, used in error messages
    checkpoint_seconds: float = 600.0   # periodic checkpoints (with a Checkpointer), bounding work lost to SIGKILL
    accumulate: int = 1          # micro-batches per optimizer step
    check_every: int = 50        # steps between reading the loss back (non-finite check, DDP stop agreement)
    log_every_s: float = 30.0    # seconds between progress lines in the job's log
    eval_batch_size: int = 256
    sync_debug: bool = False     # CUDA: make any host sync inside a step an error (tests, benchmarks)
    select: str = "best_id_val"  # the weights kept: best_id_val (epochs >= 1) or last
    schedule: str = "cosine"     # pipeline.training.schedule
    warmup_steps: int | None = None   # overrides warmup_epochs when set
    mix: MixSpec = MixSpec()     # mixup / CutMix (off by default)
    num_classes: int = 0         # needed by mixing only
    milestones: tuple[int, ...] = ()   # multistep: epochs at whose start the lr drops
    milestone_factor: float = 0.1      # multistep: the drop


@dataclass
class LoopResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_acc: float
    history: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)   # per optimizer step (or per MAX_STEP_POINTS-th of the run)
    seconds: float = 0.0
    cost: dict = field(default_factory=dict)


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """In ``eval`` mode BatchNorm layers normalise with their pretrained statistics and never update them."""
    if mode == "eval":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU (the best epoch's copy must not cost accelerator memory)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@contextlib.contextmanager
def no_host_sync(enabled: bool):
    """With ``enabled`` on CUDA, any device-to-host synchronisation inside raises (torch's sync debug mode)."""
    if not enabled or not torch.cuda.is_available():
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def step_rows(epoch: int, first_step: int, losses: list[float], lrs: list[float], every: int) -> list[dict]:
    """The per-step history of one epoch: a row every ``every`` global steps and at the epoch's end.

    ``losses`` and ``lrs`` hold the epoch's steps in order (``lrs``: the rate each step was taken at);
    a row's loss is the mean over the steps since the previous row of the epoch.
    """
    rows, since = [], []
    for i, (loss, lr) in enumerate(zip(losses, lrs)):
        step = first_step + i + 1
        since.append(loss)
        if step % every == 0 or i == len(losses) - 1:
            rows.append({"step": step, "epoch": epoch, "lr": lr, "train_loss": sum(since) / len(since)})
            since = []
    return rows


def micro_batches(n: int, k: int) -> list[slice]:
    """``k`` equal slices of a rank's ``n`` images (``n`` must split evenly)."""
    if n % k:
        raise ValueError(f"accumulate {k} does not split a batch of {n} images per process evenly")
    per = n // k
    return [slice(j * per, (j + 1) * per) for j in range(k)]


def train(model: nn.Module, optimizer: torch.optim.Optimizer, train_split: SplitData, val_split: SplitData,
          transforms: InputTransforms, cfg: LoopConfig, hooks: Sequence[TrainHook] = (),
          checkpoint: Checkpointer | None = None, dist: Dist = Dist(), runtime: Runtime | None = None,
          monitor: Monitor | None = None) -> LoopResult:
    """Train and return the weights ``cfg.select`` keeps: the best ID-val epoch (>= 1) or the last one.

    ``transforms``: the recipe's training crop (drawn from the run's CPU generator) and the model's eval
    transform (ID val), :func:`pipeline.models.transforms.input_transforms`.

    Each of ``hooks`` (the method's regularisers) runs its ``after_backward`` between the
    backward pass (gradients unscaled) and clipping. With a ``checkpoint``, the run resumes
    from its latest checkpoint, saves one every ``cfg.checkpoint_seconds`` and, on
    SIGTERM/SIGUSR1, saves one and raises :class:`Preempted`. Under torchrun (``dist``), each
    rank trains on its slice of every global batch through DDP.
    """
    device = next(model.parameters()).device
    runtime = runtime or Runtime(device)
    monitor = monitor or Monitor(cfg.name, device, dist.world, cfg.log_every_s)
    forward = prepare(model, runtime)   # memory format, activation checkpointing
    net = wrap(forward, dist)
    if runtime.compile:
        net = torch.compile(net)
    mine = dist.shard(cfg.batch_size)
    parts = micro_batches(mine.stop - mine.start, cfg.accumulate)
    augment = replace(transforms.train, memory_format=runtime.memory_format)
    shapes = torch.from_numpy(train_split.images.sizes)   # (height, width) of every stored image: the crops' draws
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(train_split)
    if cfg.batch_size > n:
        raise ValueError(f"{cfg.name}: batch_size {cfg.batch_size} is larger than the training split ({n} images)")
    steps_per_epoch = n // cfg.batch_size   # drop the ragged last batch: equal-size steps
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.warmup_steps is not None and cfg.warmup_steps >= total_steps:
        raise ValueError(f"{cfg.name}: warmup_steps {cfg.warmup_steps} is not shorter than training "
                         f"({total_steps} steps)")
    every = max(1, math.ceil(total_steps / MAX_STEP_POINTS))   # steps per row of the per-step history
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(
        int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps - 1)
    # Built before a checkpoint is restored: its constructor resets the groups' lr, the restore sets them back.
    sched = build_schedule(optimizer, cfg.schedule, cfg.epochs, steps_per_epoch, warmup, cfg.milestones,
                           cfg.milestone_factor)
    criterion = Criterion(cfg.mix, cfg.label_smoothing, cfg.num_classes)
    if cfg.select not in ("best_id_val", "last"):
        raise ValueError(f"{cfg.name}: select must be best_id_val or last, got {cfg.select!r}")

    def accuracy() -> float:
        logits = predict_logits(model, val_split.images, transforms.eval, cfg.eval_batch_size, runtime.precision,
                                runtime.memory_format)
        return float((logits.argmax(1).numpy() == val_split.labels).mean())

    resumed = checkpoint.load(model, optimizer, gen) if checkpoint is not None else None
    if resumed is None:
        initial_acc = accuracy()   # logged as epoch 0, never selected
        best_state, order = {}, None
        state = {"epoch": 1, "step_in_epoch": 0, "step": 0, "loss_sum": 0.0, "best_acc": -math.inf, "best_epoch": 0,
                 "history": [{"epoch": 0, "step": 0, "lr": 0.0, "train_loss": math.nan, "id_val_acc": initial_acc}],
                 "steps": [], "epoch_lrs": [], "epoch_losses": []}
    else:
        state, best_state, order = resumed["loop"], resumed["best_state"], resumed["order"]
        if runtime.scaler is not None and "scaler" in state:
            runtime.scaler.load_state_dict(state["scaler"])
    guard = NonFiniteGuard(device, cfg.name, steps_per_epoch, state["step"])
    epoch_loss = torch.tensor(state["loss_sum"], dtype=torch.float64, device=device)   # this epoch's losses, summed
    # This epoch's per-step losses, on the device (read back once per epoch); a resumed run refills its start.
    step_losses = torch.zeros(steps_per_epoch, dtype=torch.float32, device=device)
    for key in ("steps", "epoch_lrs"):
        state.setdefault(key, [])
    done = state.pop("epoch_losses", None) or []
    if done:
        step_losses[:len(done)] = torch.tensor(done, dtype=torch.float32)
    last_save = time.monotonic()

    def save() -> None:
        nonlocal last_save
        guard.check()   # never checkpoint weights trained through a non-finite loss
        if dist.main:   # ranks hold the same state
            extra = {"scaler": runtime.scaler.state_dict()} if runtime.scaler is not None else {}
            checkpoint.save(state["step"], model, optimizer, gen, best_state, order,
                            {**state, "loss_sum": float(epoch_loss), **extra,
                             "epoch_losses": step_losses[:state["step_in_epoch"]].tolist()})
        last_save = time.monotonic()

    with StopSignals() as stop:
        for epoch in range(state["epoch"], cfg.epochs + 1):
            model.train()
            set_bn_mode(model, cfg.bn)
            if order is None:
                order = torch.randperm(n, generator=gen)
            start = state["step_in_epoch"]
            # Each rank loads only its slice of every global batch.
            rows = shuffled_batches(order, cfg.batch_size, steps_per_epoch, start)
            index = [r[mine] for r in rows]
            monitor.start()
            with Prefetcher(train_split.images, index, train_split.labels, device=device) as batches:
                steps = progress(range(start, steps_per_epoch), desc=f"{cfg.name} epoch {epoch}/{cfg.epochs}",
                                 leave=False)
                for i, batch in zip(steps, batches):
                    with no_host_sync(cfg.sync_debug):
                        # Crops are drawn for the whole global batch from the CPU generator: the same on any device.
                        crops = augment.draw(shapes[rows[i - start]], gen)[mine]
                        optimizer.zero_grad(set_to_none=True)
                        step_loss = torch.zeros((), device=device)
                        for j, part in enumerate(parts):
                            x = augment.apply(batch.images.part(part), crops[part])   # float32, outside autocast
                            x, target = criterion.mix(x, batch.labels[part])
                            # DDP averages gradients on the last micro-batch only.
                            last = dist.world == 1 or j == len(parts) - 1
                            with contextlib.nullcontext() if last else net.no_sync():
                                with runtime.autocast():
                                    loss = criterion.loss(net(x), target)
                                runtime.backward(loss / len(parts))
                            step_loss += loss.detach().float() / len(parts)
                        runtime.unscale(optimizer)
                        for hook in hooks:
                            hook.after_backward()
                        if cfg.grad_clip > 0:
                            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        state["epoch_lrs"].append(base_lr(optimizer))   # the rate this step is taken at
                        runtime.step(optimizer)
                        state["step"] += 1
                        state["step_in_epoch"] = i + 1
                        sched.step_update(state["step"])
                        guard.update(step_loss)
                        epoch_loss += step_loss
                        step_losses[i] = step_loss
                        monitor.step(state["step"], cfg.batch_size, step_loss, base_lr(optimizer))
                    if state["step"] % cfg.check_every == 0:
                        guard.check()
                    if checkpoint is None:
                        continue
                    # One process: the signal flag costs nothing. DDP: ranks agree every check_every steps.
                    asked = stop.after_step(state["step"])
                    agree = dist.world == 1 or state["step"] % cfg.check_every == 0
                    if agree and dist.any(asked):
                        save()
                        raise Preempted(f"{cfg.name}: signal {stop.received or 'on another rank'} at step "
                                        f"{state['step']}; checkpoint saved in {checkpoint.root}, run the job "
                                        "again to resume")
                    if time.monotonic() - last_save >= cfg.checkpoint_seconds:
                        save()
            guard.check()
            train_loss = float(epoch_loss) / steps_per_epoch
            state["steps"] += step_rows(epoch, state["step"] - steps_per_epoch, step_losses.tolist(),
                                        state["epoch_lrs"], every)
            state["epoch_lrs"] = []
            monitor.flush(state["step"], base_lr(optimizer))
            val_acc = accuracy()
            state["history"].append({"epoch": epoch, "step": state["step"], "lr": base_lr(optimizer),
                                     "train_loss": train_loss, "id_val_acc": val_acc})
            log.info("%s epoch %d: train loss %.4f, id_val acc %.4f", cfg.name, epoch, train_loss, val_acc)
            if cfg.select == "last":   # the weights are copied once, after the final epoch
                state["best_acc"], state["best_epoch"] = val_acc, epoch
            elif val_acc > state["best_acc"]:   # strict: ties keep the earlier epoch
                state["best_acc"], state["best_epoch"], best_state = val_acc, epoch, cpu_state(model)
            state.update(epoch=epoch + 1, step_in_epoch=0)
            epoch_loss.zero_()
            order = None
    monitor.close()
    if cfg.select == "last":
        best_state = cpu_state(model)
    return LoopResult(best_state, state["best_epoch"], state["best_acc"], state["history"], state["steps"],
                      monitor.seconds, monitor.cost())

