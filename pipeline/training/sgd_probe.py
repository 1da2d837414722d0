"""A linear probe trained by SGD on cached features: the LP-FT code's ImageNet probe.

For ImageNet the LP-FT code (Kumar et al. 2022) does not fit a logistic regression: its LP is a
torch fine-tune of a fresh linear layer on the frozen network, and LP-FT starts from that run's
head (``linear_probe: {solver: sgd}``; :mod:`pipeline.training.logistic` is the other solver).
The rule, as ``AnanyaKumar/transfer_learning@13c3e2b`` runs it:

* a fresh ``nn.Linear(D, K)`` with PyTorch's default initialisation, drawn after the run's seed
  (``unlabeled_extrapolation/models/clip_model.py:180-183``; ``baseline_train.py:216, 831-834``);
* ``torch.optim.SGD`` with momentum 0.9 and no weight decay over the head, cross-entropy (mean),
  ``CosineAnnealingLR(T_max=epochs)`` stepped once after every epoch (``configs/adaptation/
  resnet50_transfer.yaml:13-23``; ``baseline_train.py:604-607, 659-660``);
* a shuffled ``DataLoader`` of batch 128 that keeps the last, smaller batch (``configs/adaptation/
  imagenet.yaml:8``; ``baseline_train.py:171-176``); 5 epochs at lr 0.1, seed 0
  (``scripts/run_adaptation_experiments.py:1616-1618, 1632-1638``);
* after each epoch the validation accuracy, and the head of the epoch with the best one, strictly
  greater (ties keep the earlier epoch); the untrained head is never a candidate
  (``baseline_train.py:614-623, 687-698``).

The frozen network runs in eval mode on un-augmented images there, so training on cached features
(eval mode, no augmentation) is the same problem. Two differences are kept and stated: the
validation split is our held-out ID val (the LP-FT code picks the epoch on ImageNet val, which it
also reports as the ID test), and the random stream is the probe's own generator: the order of
draws is the official one (the head's weight then bias, then per epoch the DataLoader's worker seed
and the shuffle's seed), but the official process also draws for building CLIP and for every
evaluation loader, which no run outside it can replay. ``tests/test_linear_probe.py`` checks the
rule against a transcription of that loop fed the same stream.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, Sampler, TensorDataset

from pipeline.training.probes import SGD_DEFAULTS

# The official ImageNet probe's settings (module docstring) are the defaults, defined in pipeline.training.probes.
DEFAULTS = SGD_DEFAULTS
SELECT = ("best_id_val", "last")


@dataclass(frozen=True)
class EpochRow:
    """One epoch of the probe: its learning rate, the training loss and accuracy seen while training, and val."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    val_acc: float
    seconds: float


@dataclass(frozen=True)
class ProbeResult:
    """Every epoch's row, the selected index, and that epoch's head for raw features."""

    rows: list[EpochRow]
    selected: int
    weight: torch.Tensor   # [K, D] float32
    bias: torch.Tensor     # [K] float32


class ShuffleOnce(Sampler[int]):
    """A random permutation per pass, drawn as ``DataLoader(shuffle=True)`` draws it without a generator:
    a seed from the stream, then ``randperm`` from a fresh generator with that seed; here the stream is
    ``generator`` instead of torch's global one."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator

    def __iter__(self) -> Iterator[int]:
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
        yield from torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).tolist()

    def __len__(self) -> int:
        return self.n


def linear_head(dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear(dim, num_classes)`` with PyTorch's default initialisation, drawn from ``generator``."""
    head = torch.nn.utils.skip_init(nn.Linear, dim, num_classes)   # nn.Linear() would draw from the global stream
    with torch.no_grad():
        nn.init.kaiming_uniform_(head.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(dim) if dim > 0 else 0.0
        nn.init.uniform_(head.bias, -bound, bound, generator=generator)
    return head


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator) -> DataLoader:
    """Shuffled batches that keep the last, smaller one; each pass draws as an official DataLoader does.

    Whole batches are gathered by one index (``batch_size=None`` over a batch sampler): the same rows in
    the same order as a ``DataLoader(batch_size=...)``, without a Python call per example.
    """
    sampler = BatchSampler(ShuffleOnce(len(y), generator), batch_size, drop_last=False)
    return DataLoader(TensorDataset(x, y), sampler=sampler, batch_size=None, generator=generator)


@torch.no_grad()
def accuracy(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, chunk: int = 65536) -> float:
    correct = sum(int((head(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum()) for i in range(0, len(y), chunk))
    return correct / max(len(y), 1)


def train_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                num_classes: int, lr: float = DEFAULTS["lr"], epochs: int = DEFAULTS["epochs"],
                batch_size: int = DEFAULTS["batch_size"], momentum: float = DEFAULTS["momentum"],
                weight_decay: float = DEFAULTS["weight_decay"], seed: int = DEFAULTS["seed"],
                select: str = DEFAULTS["select"]) -> ProbeResult:
    """Train the probe for ``epochs`` and return the head of the epoch ``select`` picks (module docstring)."""
    if select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, not {select!r}")
    x_train, x_val = x_train.float(), x_val.float()
    y_train, y_val = y_train.long(), y_val.long()
    generator = torch.Generator().manual_seed(int(seed))
    head = linear_head(x_train.shape[1], num_classes, generator)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loader = batches(x_train, y_train, batch_size, generator)
    rows: list[EpochRow] = []
    best: tuple[int, torch.Tensor, torch.Tensor] | None = None
    for epoch in range(1, epochs + 1):
        start, epoch_lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = 0
        for xb, yb in loader:
            optimizer.zero_grad()
            logits = head(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * len(yb)
            correct += int((logits.detach().argmax(1) == yb).sum())
        scheduler.step()
        val_acc = accuracy(head, x_val, y_val)
        rows.append(EpochRow(epoch, float(epoch_lr), float(loss_sum) / len(y_train), correct / len(y_train), val_acc,
                             time.perf_counter() - start))
        if select == "last" or best is None or val_acc > rows[best[0]].val_acc:   # strictly better
            best = (len(rows) - 1, head.weight.detach().clone(), head.bias.detach().clone())
    assert best is not None
    return ProbeResult(rows, best[0], best[1], best[2])
