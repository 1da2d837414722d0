"""A model's input transforms: its own eval transform, and the run's training crop at its input size.

Resolved from the built model's pretrained data config, as timm's own ``create_transform(
**resolve_data_config(model=model))`` is: ``input_size``, ``crop_pct``, ``crop_mode``,
``interpolation``, ``mean``, ``std`` (:func:`data_config`). The OpenCLIP wrapper
(:mod:`pipeline.models.openclip`) carries open_clip's preprocess config in the same keys (crop_pct 1,
its resize mode and interpolation, the pretrained tag's mean and std), so ``Resize(size) +
CenterCrop(size)`` bicubic is CLIP's eval transform.

A ``models.<m>`` entry may override each of these keys (``input_size`` an int);
:func:`pipeline.models.backbone.apply_overrides`, called by ``model_from_config``, writes them into the model's
``pretrained_cfg``, so every stage that builds the model sees the same transform, and the stages that
use it declare ``models.<m>`` (features, evaluate, zeroshot, wise_ft, soup, finetune, grad_norms).
A ViT built with ``model_kwargs: {img_size: N}`` takes N px inputs unless ``input_size`` says otherwise.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from pipeline import compat
from pipeline.data.augment import EvalTransform, InputTransforms, TrainTransform
from pipeline.data.resample import INTERPOLATIONS

compat.apply()
from timm.data import resolve_data_config  # noqa: E402


def data_config(model: nn.Module) -> dict:
    """timm's ``resolve_data_config(model=model)``: input_size, interpolation, mean, std, crop_pct, crop_mode."""
    return resolve_data_config({}, model=model)


def _arch(model: nn.Module) -> str:
    return str(model.pretrained_cfg.get("architecture", type(model).__name__))


def eval_transform(model: nn.Module) -> EvalTransform:
    """The model's eval transform: resize ``floor(size / crop_pct)``, centre crop ``size``, normalise."""
    cfg = data_config(model)
    _, h, w = cfg["input_size"]
    if h != w:
        raise ValueError(f"{_arch(model)}: input size {h}x{w} is not square; set models.<name>.input_size")
    interpolation = cfg.get("interpolation") or "bicubic"
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"{_arch(model)}: eval interpolation {interpolation!r} (its pretrained config) is not "
                         f"supported; set models.<name>.interpolation: {' or '.join(INTERPOLATIONS)}")
    crop_mode = cfg.get("crop_mode") or "center"
    if crop_mode not in ("center", "squash"):
        raise ValueError(f"{_arch(model)}: eval crop_mode {crop_mode!r} (its pretrained config) is not supported; "
                         "set models.<name>.crop_mode: center or squash")
    return EvalTransform(int(h), tuple(cfg["mean"]), tuple(cfg["std"]), float(cfg.get("crop_pct") or 1.0),
                         crop_mode, interpolation)


def train_transform(model: nn.Module, augment: Mapping) -> TrainTransform:
    """The recipe's training crop (``datasets.<d>.train_augment``, defaults filled in) at the model's input size."""
    ev = eval_transform(model)
    return TrainTransform(ev.size, ev.mean, ev.std, tuple(augment["crop_scale"]), tuple(augment["ratio"]),
                          bool(augment["hflip"]), str(augment["interpolation"]))


def input_transforms(model: nn.Module, augment: Mapping) -> InputTransforms:
    return InputTransforms(train_transform(model, augment), eval_transform(model))
