"""Ordered layer groups per architecture family, and freeze-embed.

Freeze-embed (Kumar, Shen, Bubeck, Gunasekar, ICLR 2024) freezes the model's
"embedding", i.e. the first ``k=2`` entries of an ordered input→output list of
layers, and fine-tunes the rest with SGD. :func:`layer_groups` is that list for
the timm families we use, chosen so that ``k=2`` matches the reference code
(methods.md §1.4):

* ViT: patch_embed + norm_pre (CLIP's ``ln_pre``; an empty group in plain ViTs,
  kept so that k=2 means the same layers for every ViT). pos_embed/cls_token
  stay trainable.
* ConvNeXt: stem + stages[0]; ResNet / ResNetV2 (BiT): stem + first stage;
  EfficientNet (timm's MobileNetV1 too): stem + blocks[0]; DenseNet: stem + the first dense block with
  its transition.
* OpenCLIP image towers (:class:`pipeline.models.openclip.OpenCLIPClassifier`): ViT = ``conv1``
  + ``ln_pre``, CLIP's own embedding in the paper's code; ModifiedResNet (CLIP RN50...) =
  ``conv1`` + ``bn1``, the reference code's first two layers of that model.

A timm model with ``head: project`` (:mod:`pipeline.models.heads`) has its kept pretrained
projection as a group ``proj`` of its own, just below the new ``head``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pipeline.models.heads import projection_prefix

FREEZE_ALIASES: dict[str, int] = {"none": 0, "patch_embed": 1, "embed": 2}

# A group spec: (group name, module/parameter name prefixes owned by the group).
Spec = list[tuple[str, list[str]]]


def _n_children(model: nn.Module, attr: str) -> int:
    return len(getattr(model, attr))


def _vit_spec(model: nn.Module) -> Spec:
    # The reference code lists pos_embed and cls_token as separate layers right after
    # ln_pre; we keep them (and register tokens) together in one "tokens" group at
    # index 2. Either way k<=2 leaves them trainable; only k>=3 ablations differ.
    spec: Spec = [("patch_embed", ["patch_embed"]), ("norm_pre", ["norm_pre"]),
                  ("tokens", ["cls_token", "pos_embed", "reg_token"])]
    spec += [(f"blocks.{i}", [f"blocks.{i}"]) for i in range(_n_children(model, "blocks"))]
    # Plain ViTs normalise with ``norm`` (cls pooling), avg-pool ViTs with ``fc_norm``;
    # attention-pool heads (SigLIP) also sit between the blocks and the classifier.
    spec += [("norm", ["norm", "attn_pool", "fc_norm"]), ("head", ["head"])]
    return spec


def _convnext_spec(model: nn.Module) -> Spec:
    spec: Spec = [("stem", ["stem"])]
    spec += [(f"stages.{i}", [f"stages.{i}"]) for i in range(_n_children(model, "stages"))]
    # norm_pre is the head-side norm when head_norm_first=True, head.norm otherwise;
    # an optional hidden MLP (head.pre_logits) counts as part of the classifier.
    spec += [("norm", ["norm_pre", "head.norm"]), ("head", ["head.pre_logits", "head.fc"])]
    return spec


def _resnet_spec(model: nn.Module) -> Spec:
    # conv1 is a Sequential for deep stems (resnet*d, test_resnet): prefixes cover both.
    spec: Spec = [("stem", ["conv1", "bn1"])]
    spec += [(f"layer{i}", [f"layer{i}"]) for i in range(1, 5) if hasattr(model, f"layer{i}")]
    return spec + [("fc", ["fc"])]


def _resnetv2_spec(model: nn.Module) -> Spec:
    spec: Spec = [("stem", ["stem"])]
    spec += [(f"stages.{i}", [f"stages.{i}"]) for i in range(_n_children(model, "stages"))]
    return spec + [("norm", ["norm"]), ("head", ["head"])]


def _densenet_spec(model: nn.Module) -> Spec:
    # features.conv0/norm0 (a Sequential for deep stems) is the stem; each dense block owns the transition
    # after it (a stage, as ResNet's layer<i>); norm5 closes the last block.
    spec: Spec = [("stem", ["features.conv0", "features.norm0"])]
    blocks = [n for n, _ in model.features.named_children() if n.startswith("denseblock")]
    spec += [(name, [f"features.{name}", f"features.transition{name[len('denseblock'):]}"]) for name in blocks]
    return spec + [("norm", ["features.norm5"]), ("classifier", ["classifier"])]


def _efficientnet_spec(model: nn.Module) -> Spec:
    spec: Spec = [("stem", ["conv_stem", "bn1"])]
    spec += [(f"blocks.{i}", [f"blocks.{i}"]) for i in range(_n_children(model, "blocks"))]
    return spec + [("conv_head", ["conv_head", "bn2"]), ("classifier", ["classifier"])]


def _openclip_vit_spec(model: nn.Module) -> Spec:
    # The reference code lists conv1, ln_pre, the blocks and ln_post (no tokens, no proj); as
    # for timm ViTs the class/positional embeddings form a "tokens" group at index 2, and
    # proj (and an attention pool, where a config has one) joins ln_post before the head.
    v = "visual."
    spec: Spec = [("conv1", [v + "conv1"]), ("ln_pre", [v + "ln_pre"]),
                  ("tokens", [v + "class_embedding", v + "positional_embedding"])]
    blocks = len(model.visual.transformer.resblocks)
    spec += [(f"resblocks.{i}", [f"{v}transformer.resblocks.{i}"]) for i in range(blocks)]
    spec += [("ln_post", [v + "ln_post", v + "proj", v + "attn_pool", v + "attn_pool_contrastive"]), ("head", ["head"])]
    return spec


def _openclip_resnet_spec(model: nn.Module) -> Spec:
    # CLIP's ModifiedResNet has a three-conv stem; the reference code lists each conv and BN
    # as a layer, so k=2 freezes conv1 + bn1 (its list repeats layer3 and omits layer4: a bug
    # not copied here).
    v = "visual."
    spec: Spec = [(name, [v + name]) for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
    spec += [(f"layer{i}", [f"{v}layer{i}"]) for i in range(1, 5)]
    return spec + [("attnpool", [v + "attnpool"]), ("head", ["head"])]


def _byobnet_spec(model: nn.Module) -> Spec:
    # timm's ByobNet, e.g. the CLIP ResNet-50 port (resnet50_clip): as for OpenCLIP's ModifiedResNet,
    # each conv and norm of the stem is a layer (k=2: its first conv and norm), then the stages; an
    # attention-pool head is split into the pool and its projection (the classifier).
    stem = list(dict.fromkeys(n.rsplit(".", 1)[0] for n, _ in model.named_parameters() if n.startswith("stem.")))
    spec: Spec = [(name.removeprefix("stem."), [name]) for name in stem]
    spec += [(f"stages.{i}", [f"stages.{i}"]) for i in range(_n_children(model, "stages"))]
    spec += [("final_conv", ["final_conv"])]
    if hasattr(model.head, "proj"):   # attention pool: pos_embed, q, k, v, then the projection
        pool = [f"head.{n}" for n, _ in model.head.named_children() if n != "proj"] + ["head.pos_embed"]
        return spec + [("attnpool", pool), ("head", ["head.proj"])]
    return spec + [("head", ["head"])]


_OPENCLIP_TOWERS = {"VisionTransformer": _openclip_vit_spec, "ModifiedResNet": _openclip_resnet_spec}


def _openclip_spec(model: nn.Module) -> Spec:
    tower = type(model.visual).__name__
    if tower not in _OPENCLIP_TOWERS:
        raise ValueError(f"layer_groups: unsupported OpenCLIP image tower {tower!r}; "
                         f"supported: {', '.join(sorted(_OPENCLIP_TOWERS))}")
    return _OPENCLIP_TOWERS[tower](model)


# Exact class names (not isinstance): a subclass may add modules the spec does not know,
# which the exhaustiveness check would catch anyway, but an explicit list is clearer.
_FAMILIES = {
    "VisionTransformer": _vit_spec,
    "ConvNeXt": _convnext_spec,
    "ResNet": _resnet_spec,
    "ResNetV2": _resnetv2_spec,
    "EfficientNet": _efficientnet_spec,
    "OpenCLIPClassifier": _openclip_spec,
    "ByobNet": _byobnet_spec,
    "DenseNet": _densenet_spec,
}


def _owned_by(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Parameter names of ``model`` partitioned into ordered groups, input to output.

    Groups may be empty (a ViT's Identity ``norm_pre``); they still count as layers.
    Raises ValueError for an unsupported class, AssertionError if a parameter falls
    in no group or in several.
    """
    cls = type(model).__name__
    if cls not in _FAMILIES:
        raise ValueError(f"layer_groups: unsupported model class {cls!r}; "
                         f"supported families: {', '.join(sorted(_FAMILIES))}")
    spec = _FAMILIES[cls](model)
    names = [n for n, _ in model.named_parameters()]
    groups = [(g, [n for n in names if any(_owned_by(n, p) for p in prefixes)]) for g, prefixes in spec]
    proj = projection_prefix(model)
    if proj is not None:   # head: project: the pretrained projection below the new head
        groups = [part for g, members in groups for part in _split_projection(g, members, proj)]

    counts: dict[str, int] = dict.fromkeys(names, 0)
    for _, members in groups:
        for n in members:
            counts[n] += 1
    unassigned = [n for n, c in counts.items() if c == 0]
    doubled = [n for n, c in counts.items() if c > 1]
    assert not unassigned, f"layer_groups({cls}): parameters in no group: {unassigned}"
    assert not doubled, f"layer_groups({cls}): parameters in several groups: {doubled}"
    return groups


def _split_projection(group: str, members: list[str], proj: str) -> list[tuple[str, list[str]]]:
    inside = [n for n in members if _owned_by(n, proj)]
    if not inside:
        return [(group, members)]
    return [("proj", inside), (group, [n for n in members if not _owned_by(n, proj)])]


def resolve_freeze(spec: str | int) -> int:
    """Number of bottom groups to freeze from an alias ("none", "patch_embed", "embed") or an int >= 0."""
    # bool is an int subclass and True/False is almost surely a config slip. ValueError
    # (not TypeError) throughout, so callers parsing configs catch one exception type.
    if isinstance(spec, bool):
        raise ValueError(f"freeze spec must be an int or one of {sorted(FREEZE_ALIASES)}, got {spec!r}")
    if isinstance(spec, int):
        k = spec
    elif isinstance(spec, str) and spec.strip().lower() in FREEZE_ALIASES:
        k = FREEZE_ALIASES[spec.strip().lower()]
    elif isinstance(spec, str) and spec.strip().isdigit():
        k = int(spec.strip())
    else:
        raise ValueError(f"freeze spec must be an int >= 0 or one of {sorted(FREEZE_ALIASES)}, got {spec!r}")
    if k < 0:
        raise ValueError(f"freeze spec must be >= 0, got {k}")
    return k


@dataclass
class FreezeReport:
    """What :func:`freeze_bottom` froze (parameter counts are numel, not tensors)."""

    k: int
    frozen_params: int
    total_params: int
    fraction: float
    frozen_groups: list[str]


def freeze_bottom(model: nn.Module, k: int) -> FreezeReport:
    """Set ``requires_grad=False`` on the first ``k`` layer groups (k=2: freeze-embed).

    k=1 freezes the patch embedding / stem only (the "not layer-norm" ablation).
    Freezing the classifier is refused: k must be at most ``len(groups) - 1``.
    Other parameters' flags are left as they are. k=0 needs no layer groups, so any model
    family (supported by :func:`layer_groups` or not) fine-tunes unfrozen.
    """
    if k == 0:
        total = sum(p.numel() for p in model.parameters())
        return FreezeReport(k=0, frozen_params=0, total_params=total, fraction=0.0, frozen_groups=[])
    groups = layer_groups(model)
    if not 0 <= k <= len(groups) - 1:
        raise ValueError(f"freeze_bottom: k={k} out of range for {type(model).__name__} with "
                         f"{len(groups)} layer groups (0 <= k <= {len(groups) - 1}; the head stays trainable)")
    params = dict(model.named_parameters())
    frozen = [n for _, members in groups[:k] for n in members]
    for n in frozen:
        params[n].requires_grad_(False)
    total = sum(p.numel() for p in params.values())
    n_frozen = sum(params[n].numel() for n in frozen)
    return FreezeReport(k=k, frozen_params=n_frozen, total_params=total,
                        fraction=n_frozen / total if total else 0.0,
                        frozen_groups=[g for g, _ in groups[:k]])
