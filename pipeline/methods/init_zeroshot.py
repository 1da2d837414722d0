"""Head initialisation ``zeroshot`` (WiSE-FT, Model Soups): start from the CLIP zero-shot head.

The head is a matrix ``weight`` [K, D] (unit text embeddings x logit_scale) and a zero ``bias``
[K], built once per dataset and model from the text tower (:mod:`pipeline.models.zeroshot`) for
an OpenCLIP classifier, whose image features are L2-normalised before the head. The pretrained
side of WiSE-FT carries the same head, so both endpoints share every key and all are interpolated,
head included (methods.md 1.8); soups of such runs average every key too.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.methods.init_lp import fit_head
from pipeline.models.backbone import head_names, load_state


def init_head(model: nn.Module, inputs: dict) -> None:
    if not getattr(model, "pretrained_cfg", {}).get("architecture", "").startswith("open_clip:"):
        # A text-embedding head only means something over CLIP's normalised image features.
        raise ValueError(f"init zeroshot needs an OpenCLIP model (models.<name>.open_clip), got {type(model).__name__}")
    if not getattr(model, "normalize", True):
        raise ValueError("init zeroshot needs normalize_features: true (the head is built for unit image features)")
    w_name, b_name = head_names(model)
    state = model.state_dict()
    head = fit_head(load_state(inputs["zeroshot_head"]), state[w_name], state[b_name],
                    f"zero-shot head {inputs['zeroshot_head']}")
    model.load_state_dict({w_name: head["weight"], b_name: head["bias"]}, strict=False)


def pretrained_head(inputs: dict) -> dict[str, torch.Tensor] | None:
    """theta_0's head for WiSE-FT: the zero-shot head the fine-tune started from."""
    return load_state(inputs["zeroshot_head"])
