"""How a run uses its device: precision, memory format, compilation, determinism, activation checkpointing.

A run's settings (:data:`pipeline.config.settings.TRAIN_KEYS`) say what it asks for; :func:`resolve`
turns that into what this device gives, recorded with the run:

* ``precision``: ``auto`` is bf16 on a CUDA device that supports it, else fp32. bf16 and fp16
  run the forward and backward passes under :func:`torch.autocast`; weights, gradients and
  optimizer state stay fp32. fp16 adds a gradient scaler, and every optimizer, regulariser and
  the gradient clipping see the unscaled gradient (:meth:`Runtime.unscale`).
* ``channels_last``: ``auto`` is on for convolutional families on CUDA.
* ``compile``: :func:`torch.compile` of the model's forward (the weights stay the model's own).
* ``deterministic``: deterministic kernels (on CPU a resumed run equals an uninterrupted one bit
  for bit); off lets cuDNN pick the fastest algorithms.
* ``grad_checkpointing``: timm's ``set_grad_checkpointing`` (activations recomputed in backward).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.inference import PRECISIONS, channels_last_by_default, resolve_precision


@dataclass(frozen=True)
class Runtime:
    """The resolved device settings of a run, and the few calls the loop makes through them."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = True
    grad_checkpointing: bool = False
    scaler: torch.amp.GradScaler | None = None

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision context (a no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (fp16) before anything reads them."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step; with fp16, skipped when the scaled gradients overflowed, and the scale updated."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def facts(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile,
                "deterministic": self.deterministic, "grad_checkpointing": self.grad_checkpointing}


def resolve(settings: dict, device: torch.device, model: nn.Module) -> Runtime:
    """What the run's settings ask for, on this device."""
    precision = resolve_precision(settings["precision"], device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                         "use fp16 or fp32")
    channels_last = settings["channels_last"]
    if channels_last == "auto":
        channels_last = channels_last_by_default(model, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return Runtime(device, precision, bool(channels_last), bool(settings["compile"]),
                   bool(settings["deterministic"]), bool(settings["grad_checkpointing"]), scaler)


def set_determinism(deterministic: bool) -> None:
    """Deterministic kernels, or the fastest ones (cuDNN autotuning); TF32 matmuls on CUDA in both cases."""
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    # TF32 is deterministic; on CPU these flags do nothing.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def prepare(model: nn.Module, runtime: Runtime) -> nn.Module:
    """Move the model into the run's memory format and activation checkpointing; returns the module to call.

    The returned module is the compiled forward when ``compile`` is on; parameters,
    state dicts and checkpoints stay those of ``model``.
    """
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    if runtime.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"grad_checkpointing: {type(model).__name__} has no set_grad_checkpointing()")
        model.set_grad_checkpointing(True)
    return torch.compile(model) if runtime.compile else model
