"""Batched inference over stored images: the one forward path of features, evaluation, WiSE-FT, soups and ID-val.

The images are read and decoded ahead of the model in a background thread and copied to the device
non-blocking (:class:`pipeline.data.loader.Prefetcher`), put through the model's eval transform there
(:class:`pipeline.data.augment.EvalTransform`: resize, centre crop, normalise), and the outputs are
copied back non-blocking into one (pinned) host tensor: the device is synchronised once, at the end.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from pipeline.data.augment import EvalTransform
from pipeline.data.loader import Prefetcher, sequential_batches
from pipeline.data.shards import ImageStore

# The autocast dtype of each precision setting (fp32: no autocast); the settings' schema is
# pipeline.config.settings.PRECISION. Training and inference share this table.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Families whose layers are mostly convolutions: channels-last pays on GPUs (tensor cores, cuDNN).
CONV_FAMILIES = ("ResNet", "ResNetV2", "ConvNeXt", "EfficientNet", "ModifiedResNet")
# An inference section of params.yaml (``features``, ``evaluate``): its keys and defaults.
INFERENCE_DEFAULTS = {"batch_size": 256, "precision": "auto"}


def inference_options(section: Mapping | None) -> dict:
    """``batch_size`` and ``precision`` of an inference section (``features``, ``evaluate``), defaults filled in."""
    section = section or {}
    return {k: section.get(k, v) for k, v in INFERENCE_DEFAULTS.items()}


def channels_last_by_default(model: nn.Module, device: torch.device) -> bool:
    """Channels-last for convolutional families on CUDA."""
    return device.type == "cuda" and type(model).__name__ in CONV_FAMILIES


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a CUDA device that supports it, fp32 elsewhere (as training's default)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


@torch.no_grad()
def predict_logits(model: nn.Module, images: ImageStore | np.ndarray, transform: EvalTransform, batch_size: int = 256,
                   precision: str = "auto", memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """Logits (or features, for a headless model) of stored images through ``transform``, model in eval mode;
    float32 on the CPU.

    ``precision``: the autocast precision (``auto``: :func:`resolve_precision`); ``memory_format``
    of the inputs (None: channels-last for convolutional families on CUDA, the model moved to it).
    ``transform``: the model's eval transform, or any frozen dataclass with a ``memory_format`` field called
    on each batch in order (the features stage's seeded train view, :class:`pipeline.models.features.TrainView`).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if memory_format is None:
        memory_format = torch.channels_last if channels_last_by_default(model, device) else torch.contiguous_format
        if memory_format == torch.channels_last:
            model.to(memory_format=torch.channels_last)
    resolved = resolve_precision(precision, device)
    cast = torch.autocast(device.type, dtype=PRECISIONS[resolved]) if resolved != "fp32" else contextlib.nullcontext()
    cuda = device.type == "cuda"
    transform = replace(transform, memory_format=memory_format)
    out = None
    with Prefetcher(images, sequential_batches(len(images), batch_size), device=device) as batches:
        for batch in batches:
            x = transform(batch.images)   # float32, outside autocast
            with cast:
                y = model(x)
            if out is None:   # pinned: the copies back stay asynchronous
                out = torch.empty((len(images), *y.shape[1:]), dtype=torch.float32, pin_memory=cuda)
            out[batch.index].copy_(y, non_blocking=cuda)
    if cuda:
        torch.cuda.current_stream(device).synchronize()
    model.train(was_training)
    return out if out is not None else torch.empty(0)
