"""Data-parallel fine-tuning over several GPUs (or CPU processes) with torch DDP, launched by torchrun.

A method with ``gpus: N > 1`` runs as ``torchrun --standalone --nproc_per_node N -m pipeline
finetune ...`` (:meth:`pipeline.stages.Stage.command`). Every rank draws the same data order
and augmentation for the whole global batch and trains on its contiguous slice of it, and
DDP averages the gradients, so N ranks take the same steps as one process with the same
global batch (up to floating-point summation order). Rank 0 writes checkpoints and outputs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank and world size (1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch_size: int) -> slice:
        """This rank's slice of a global batch; the batch must split evenly."""
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} does not split over {self.world} processes; "
                             f"use a multiple of {self.world}")
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any (e.g. one rank got the preemption signal)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)])
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return bool(t.item())


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun set up (nccl on GPUs, gloo on CPU); a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(torch_dist.get_rank(), world)


def wrap(model: nn.Module, dist: Dist) -> nn.Module:
    """The module to run forward passes through: DDP-wrapped when there are several ranks."""
    if dist.world == 1:
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def close(dist: Dist) -> None:
    if dist.world > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
