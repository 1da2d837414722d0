"""The ``project`` classifier form of timm models: keep the pretrained classifier, add a new layer on top.

In timm, CLIP's image projection is the classifier: ``vit_base_patch16_clip_224.openai`` converts
OpenAI's ``visual.proj`` into ``head`` (Linear 768 -> 512, zero bias) and ``resnet50_clip.openai``
its ``attnpool.c_proj`` into ``head.proj`` (Linear 2048 -> 1024)
(huggingface/pytorch-image-models, timm 1.0.31: timm/models/vision_transformer.py:1768-1771,
timm/models/byobnet.py:2457-2465, 2717-2723). ``num_classes=K`` (``head: replace``, the default)
drops it. transfer_learning's ``ClipModel`` keeps it and trains a new ``nn.Linear(output_dim, K)``
on ``encode_image`` features, which it does not L2-normalise
(AnanyaKumar/transfer_learning@13c3e2b:unlabeled_extrapolation/models/clip_model.py:180-183, 197-198).

``head: project`` builds that: the timm model with its pretrained classifier (``num_classes`` from the
pretrained tag, or ``model_kwargs.num_classes``), whose classifier module (``pretrained_cfg["classifier"]``,
an ``nn.Linear``) becomes :class:`ProjectionHead` ``(proj, fc)``: ``proj`` the pretrained layer, loaded
as it was and trained with the backbone, ``fc`` a new ``Linear(proj.out_features, K)``. The model's
``classifier`` then names ``fc`` (head initialisation, LP heads, WiSE-FT's head keys, SPD's head
group) and ``projection`` names ``proj`` (a layer group of its own, between the backbone and the head).
With ``num_classes=0`` ``fc`` is the identity: the features are the projection's outputs
(``encode_image``), which the linear probe is fit on.
"""
from __future__ import annotations

from torch import nn

HEAD_FORMS = ("replace", "project")
DEFAULT_HEAD = "replace"


class HeadFormError(ValueError):
    """A model that cannot take the head form asked for (one line)."""


class ProjectionHead(nn.Module):
    """``fc(proj(x))``: the pretrained classifier kept as a trainable projection, and the new head."""

    def __init__(self, proj: nn.Linear, num_classes: int):
        super().__init__()
        self.proj = proj
        self.fc = nn.Linear(proj.out_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        return self.fc(self.proj(x))


def keep_projection(model: nn.Module, num_classes: int) -> nn.Module:
    """Turn ``model``'s pretrained classifier into a :class:`ProjectionHead` with a new ``num_classes`` layer."""
    name = model.pretrained_cfg.get("classifier")
    layer = model.get_submodule(name) if name else None
    if not isinstance(layer, nn.Linear):
        kind = type(layer).__name__ if layer is not None else "none"
        raise HeadFormError(f"head: project keeps the pretrained classifier as a projection, but "
                            f"{model.pretrained_cfg.get('architecture', type(model).__name__)}'s classifier "
                            f"{name!r} is {kind}, not a linear layer (use head: replace)")
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, ProjectionHead(layer, num_classes))
    # Copies: timm's cfg dicts are shared with the model registry.
    cfg = {**model.pretrained_cfg, "classifier": f"{name}.fc", "projection": f"{name}.proj",
           "num_classes": num_classes}
    model.pretrained_cfg = model.default_cfg = cfg
    model.num_classes = num_classes
    return model


def projection_prefix(model: nn.Module) -> str | None:
    """Parameter-name prefix of a kept pretrained projection (``head: project``), else None."""
    return getattr(model, "pretrained_cfg", {}).get("projection")
