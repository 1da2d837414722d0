"""Weight-space interpolation (WiSE-FT, Wortsman et al. 2022) and the choice of its mixing coefficient.

theta_alpha[k] = (1 - alpha) * theta_0[k] + alpha * theta_1[k] for every floating
tensor. When the fine-tuned model has a new head that the pretrained model never
had (a fresh head), the backbone is interpolated and the head is taken from the
fine-tuned model (methods.md section 1.8); when FT started from a head the
pretrained side carries too (the LP head of LP-FT), both endpoints share it and it is
interpolated too. Which case applies is the head initialisation's to say
(``pretrained_head`` of its registry module). With ``head: project`` (timm CLIP models) the head is
only the new layer: the kept pretrained projection belongs to theta_0 and is interpolated with the
backbone.
"""
from __future__ import annotations

import pandas as pd
import torch

from pipeline.evaluation.metrics import ALL_DOMAINS


def interpolate(theta0: dict[str, torch.Tensor], theta1: dict[str, torch.Tensor], alpha: float,
                keep_from_1: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """(1 - alpha) theta0 + alpha theta1; keys in ``keep_from_1`` and integer buffers come from theta1."""
    if set(theta0) != set(theta1):
        missing = sorted(set(theta0) ^ set(theta1))
        raise KeyError(f"state dicts differ in keys: {missing[:5]}")
    out = {}
    for k, v1 in theta1.items():
        if k in keep_from_1 or not v1.is_floating_point():
            out[k] = v1.clone()
        elif alpha == 0.0:
            out[k] = theta0[k].clone()   # exact endpoints, no 0 * x rounding
        elif alpha == 1.0:
            out[k] = v1.clone()
        else:
            out[k] = torch.lerp(theta0[k].to(v1.dtype), v1, alpha)
    return out


def pretrained_endpoint(pretrained: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor],
                        head_keys: tuple[str, str], head: dict[str, torch.Tensor] | None
                        ) -> tuple[dict[str, torch.Tensor], frozenset[str]]:
    """theta_0 for WiSE-FT and the keys to keep from the fine-tuned model.

    ``head`` (``weight``, ``bias``) is the head theta_0 carries, reshaped to the classifier's
    form (a 1x1 convolution takes a [K, D] matrix as [K, D, 1, 1]); None keeps the fine-tuned
    head. The pretrained checkpoint's own classifier (e.g. ImageNet's 1000 classes) is never used.
    """
    theta0 = {k: v for k, v in pretrained.items() if k not in head_keys and k in finetuned}
    # Integer buffers (BatchNorm step counters) are not interpolated; take them from theta_1.
    theta0.update({k: v for k, v in finetuned.items() if k not in theta0 and not v.is_floating_point()})
    missing = set(finetuned) - set(theta0) - set(head_keys)
    if missing:
        raise KeyError(f"pretrained weights lack {sorted(missing)[:5]}")
    if head is not None:
        for key, part in zip(head_keys, ("weight", "bias")):
            if head[part].numel() != finetuned[key].numel():
                raise ValueError(f"head {part} {tuple(head[part].shape)} does not fit {key} "
                                 f"{tuple(finetuned[key].shape)}")
            theta0[key] = head[part].reshape(finetuned[key].shape).to(finetuned[key].dtype)
        return theta0, frozenset()
    theta0[head_keys[0]], theta0[head_keys[1]] = finetuned[head_keys[0]], finetuned[head_keys[1]]
    return theta0, frozenset(head_keys)


def select_alpha(curve: pd.DataFrame, split: str) -> float:
    """Alpha with the best accuracy on ``split`` (whole split); ties go to the smaller alpha."""
    acc = curve[(curve["split"] == split) & (curve["domain"] == ALL_DOMAINS) & (curve["metric"] == "acc")]
    if acc.empty:
        raise ValueError(f"no accuracy rows for split {split!r} to select alpha on")
    return float(acc.sort_values(["value", "alpha"], ascending=[False, True]).iloc[0]["alpha"])
