"""Stage ``backbone``: one timm-layout safetensors file of pretrained weights per model.

The sources ``models.{model}.weights`` can name are :mod:`pipeline.models.weights`'s.
Output: ``data/weights/{model}.safetensors``; every later stage builds the model from it. A checkpoint that is
unreadable, holds NaN or infinite values, or does not fit the architecture stops the job in one line naming
the file and the first bad key (:mod:`pipeline.models.state_files`).
"""
from __future__ import annotations

import logging

from pipeline.models.backbone import model_kwargs, save_state
from pipeline.models.state_files import check_finite
from pipeline.models.weights import resolve_weights
from pipeline.stages.job import parse_job

log = logging.getLogger(__name__)


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
    check_finite(state, f"models.{name}.weights ({mcfg['weights']})")   # whatever the source: never NaN features
    save_state(state, job.outputs["weights"], metadata={"architecture": arch, "source": mcfg["weights"],
                                                        "config_hash": job.config_hash})
    log.info("wrote %s (%d tensors, %.1fM values)", job.outputs["weights"], len(state),
             sum(v.numel() for v in state.values()) / 1e6)
    return 0
