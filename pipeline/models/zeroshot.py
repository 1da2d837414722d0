"""Zero-shot heads from an OpenCLIP text tower (WiSE-FT, Wortsman et al. 2022; methods.md 1.8).

Per class, every prompt (template x class name) is encoded, each embedding L2-normalised, the
mean over templates renormalised, and the row scaled by ``logit_scale.exp()``; the bias is zero.
With image features normalised first (:class:`pipeline.models.openclip.OpenCLIPClassifier`),
``head(features)`` is CLIP's own zero-shot logit, ``logit_scale * cos(image, class text)``.
The embedding and averaging are open_clip's ``build_zero_shot_classifier``; this module adds the
scale and the head's [K, D] layout, and keeps the text tower out of the classifier.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import torch

from pipeline.data.prompts import check_template, render
from pipeline.models.openclip import create_clip, open_clip

Template = str | Callable[[str], str]


def template_fns(templates: Sequence[Template]) -> list[Callable[[str], str]]:
    """Templates as callables: format strings (``{c}``, ``{article_c}``; or CLIP's bare ``{}``) or callables."""
    out: list[Callable[[str], str]] = []
    for t in templates:
        if callable(t):
            out.append(t)
        elif "{}" in t:
            out.append(t.format)   # CLIP's notation, as open_clip's metadata strings use
        else:
            check_template(t)
            out.append(partial(render, t))
    if not out:
        raise ValueError("zero-shot head: no prompt templates")
    return out


@torch.no_grad()
def text_head(clip: torch.nn.Module, tokenizer: Callable, classnames: Sequence[str], templates: Sequence[Template],
              device: str | torch.device = "cpu", classes_per_batch: int = 10) -> dict[str, torch.Tensor]:
    """``{"weight": [K, D], "bias": [K]}`` from a CLIP model's text tower (see the module docstring)."""
    if not classnames:
        raise ValueError("zero-shot head: no class names")
    clip = clip.to(device).eval()
    unit = open_clip.build_zero_shot_classifier(clip, tokenizer, list(classnames), template_fns(templates),
                                                num_classes_per_batch=classes_per_batch, device=device)  # [D, K]
    scale = clip.logit_scale.exp().float()
    weight = (unit.float().T * scale).cpu().contiguous()
    return {"weight": weight, "bias": torch.zeros(weight.shape[0], dtype=weight.dtype)}


def zeroshot_head(model_cfg: Mapping, weights: str | Path | None, classnames: Sequence[str],
                  templates: Sequence[Template], device: str | torch.device = "cpu", name: str = "<model>",
                  classes_per_batch: int = 10) -> dict[str, torch.Tensor]:
    """The zero-shot head of a ``models.<name>`` OpenCLIP entry for one dataset's classes.

    ``weights``: the full CLIP state-dict file (the backbone stage's output), or None for the
    random model (tests). Rows follow ``classnames`` (label order); use
    :func:`pipeline.data.prompts.prompts_for` for both lists. The tokenizer is open_clip's for
    the architecture (CLIP's BPE vocabulary ships in the wheel: no download).
    """
    clip = create_clip(model_cfg, weights, name)
    tokenizer = open_clip.get_tokenizer(str(model_cfg["open_clip"]))
    return text_head(clip, tokenizer, classnames, templates, device, classes_per_batch)


def save_head(head: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write the head as safetensors (``weight``, ``bias``), atomically and byte-identically."""
    from pipeline.io import save_tensors

    save_tensors(path, {"weight": head["weight"], "bias": head["bias"]}, metadata)
