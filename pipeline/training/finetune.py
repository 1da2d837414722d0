"""What a fine-tune does besides training: seeding the run, and its per-layer record.

:func:`layer_table` is ``layers.csv``: per parameter tensor, its layer group, whether it was frozen,
its norm at the start and the distance the selected weights moved from it, and the optimizer's
own per-tensor statistics (SPD: the fraction of steps its projection applied).
"""
from __future__ import annotations

import logging
import random

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.methods.assemble import Assembly
from pipeline.methods.registry import layer_columns
from pipeline.models.layers import layer_groups

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def layer_table(model: nn.Module, start: dict[str, torch.Tensor], final: dict[str, torch.Tensor],
                method: Assembly) -> pd.DataFrame:
    """Per parameter tensor: group, size, frozen, ||theta_0||, ||theta - theta_0||, the optimizer's statistics."""
    try:
        group_of = {n: g for g, names in layer_groups(model) for n in names}
    except ValueError:   # a family without layer groups: the table still has every tensor
        group_of = {}
    stats = method.layer_stats()
    empty = dict.fromkeys(layer_columns(), float("nan"))   # frozen tensors: no optimizer statistics
    rows = []
    for name, p in model.named_parameters():
        before, after = start[name].double(), final[name].double()
        rows.append({"param": name, "group": group_of.get(name, ""), "numel": p.numel(), "frozen": not p.requires_grad,
                     "init_norm": float(before.norm()), "delta_norm": float((after - before).norm()),
                     **stats.get(name, empty)})
    return pd.DataFrame(rows)
