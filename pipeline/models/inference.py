"""Batched inference of a model over uint8 images (features, logits): the one forward path of every stage."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.data.tensors import batches, to_float


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, mean, std, batch_size: int = 256) -> torch.Tensor:
    """Logits (or features, for a headless model) of uint8 NHWC images, model in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(to_float(images[sl], mean, std).to(device)).float().cpu() for sl in batches(len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
