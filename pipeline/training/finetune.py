"""Stage ``finetune``: fine-tune one (dataset, model, method, grid point, seed).

Inputs: ``data/prepared/{dataset}``, ``data/weights/{model}.safetensors``, and for
methods with ``init: lp`` (LP-FT) the linear-probe head ``results/{dataset}/{model}/lp/head.safetensors``.
Outputs in ``results/{dataset}/{model}/{method}/{hp}/seed{seed}/``:
  ``model.safetensors``  weights of the epoch chosen on ID val
  ``history.csv``        per-epoch loss, lr and ID-val accuracy
  ``run.json``           resolved settings, effective lr, frozen fraction, chosen epoch, timings, config hash
  ``layers.csv``         per parameter tensor: layer group, frozen, its norm at the start and the
                         distance the chosen weights moved from it, and (SPD) the fraction of
                         steps its projection applied
While it runs, a checkpoint under ``checkpoints/{dataset}/{model}/{method}/{hp}/seed{seed}/``
(every 10 minutes and on SIGTERM/SIGUSR1) lets a preempted or killed job resume where it
stopped when it is run again; it is removed once the outputs are written.
With ``gpus: N > 1`` (a training setting) the job runs under torchrun as N DDP ranks
(:mod:`pipeline.training.distributed`); rank 0 writes the outputs.
Params: ``finetune`` (defaults), ``datasets.{dataset}.finetune`` (per-dataset defaults, e.g. epochs),
``methods.{method}`` (overrides; ``{hp}`` picks the grid point), ``models.{model}``,
``datasets.{dataset}.train_augment``.
"""
from __future__ import annotations

import logging
import math
import os
import random

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.cli import parse_job
from pipeline.data.shards import PreparedDataset
from pipeline.io import write_csv, write_json
from pipeline.models.backbone import default_device, head_names, init_head, model_from_config, normalization, save_state
from pipeline.models.layers import freeze_bottom, layer_groups, resolve_freeze
from pipeline.optimizers.factory import build_optimizer
from pipeline.optimizers.l2sp import L2SP
from pipeline.optimizers.spd import SPD
from pipeline.stages import CHECKPOINT_DIR
from pipeline.training.checkpoint import Checkpointer
from pipeline.training.distributed import close, init_distributed
from pipeline.training.loop import LoopConfig, train
from pipeline.training.settings import method_settings

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def layer_table(model: nn.Module, start: dict[str, torch.Tensor], final: dict[str, torch.Tensor],
                optimizer: torch.optim.Optimizer) -> pd.DataFrame:
    """Per parameter tensor: group, size, frozen, ||theta_0||, ||theta - theta_0||, SPD projection rate."""
    try:
        group_of = {n: g for g, names in layer_groups(model) for n in names}
    except ValueError:   # a family without layer groups: the table still has every tensor
        group_of = {}
    projected = dict(optimizer.projection_fractions()) if isinstance(optimizer, SPD) else {}
    rows = []
    for name, p in model.named_parameters():
        before, after = start[name].double(), final[name].double()
        rows.append({"param": name, "group": group_of.get(name, ""), "numel": p.numel(), "frozen": not p.requires_grad,
                     "init_norm": float(before.norm()), "delta_norm": float((after - before).norm()),
                     "spd_projected": projected.get(name, math.nan)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("finetune", argv)
    cfg, wc = job.cfg, job.wildcards
    settings = method_settings(cfg, wc["method"], wc["hp"], wc["dataset"])
    seed_everything(job.seed)
    device = default_device()
    dist = init_distributed(device)   # several ranks under torchrun (settings.gpus > 1)

    data = PreparedDataset(job.inputs["data"])
    model = model_from_config(cfg["models"][wc["model"]], data.num_classes, job.inputs["weights"])
    init_head(model, settings["init"], job.inputs.get("lp_head"))
    model.to(device)
    start = {k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters()}
    freeze = freeze_bottom(model, resolve_freeze(settings["freeze"]))
    head = head_names(model)
    optimizer, info = build_optimizer(model, settings, head, device)
    l2sp = L2SP(model, settings["l2sp_alpha"], settings["l2sp_beta"], head)
    mean, std = normalization(model)
    augment = cfg["datasets"][wc["dataset"]].get("train_augment", {})
    loop_cfg = LoopConfig(epochs=settings["epochs"], batch_size=settings["batch_size"],
                          warmup_epochs=settings["warmup_epochs"], label_smoothing=settings["label_smoothing"],
                          grad_clip=settings["grad_clip"], bn=settings["bn"], seed=job.seed,
                          crop_scale=tuple(augment.get("crop_scale", (1.0, 1.0))), hflip=augment.get("hflip", False),
                          name=f"{wc['method']}/{wc['hp']}",
                          checkpoint_seconds=float(os.environ.get("PIPELINE_CHECKPOINT_SECONDS", 600)))
    log.info("%s/%s on %s: %s, lr %g (effective %s), %d trainable params, %d frozen (%.1f%%: %s)", wc["method"],
             wc["hp"], device, info.name, info.lr, info.effective_lr, info.trainable_params, info.frozen_params,
             100 * freeze.fraction, ", ".join(freeze.frozen_groups) or "nothing")
    checkpoint = Checkpointer(CHECKPOINT_DIR.format(**wc), job.config_hash)
    result = train(model, optimizer, data.split(data.info.get("train_split", "train")),
                   data.split(data.info.get("val_split", "id_val")), mean, std, loop_cfg,
                   after_backward=l2sp.add_grad_ if l2sp.body or l2sp.head else None, checkpoint=checkpoint,
                   dist=dist)
    close(dist)
    if not dist.main:
        return 0

    save_state(result.best_state, job.outputs["model"], metadata={"config_hash": job.config_hash,
                                                                  "epoch": str(result.best_epoch)})
    write_csv(job.outputs["history"], pd.DataFrame(result.history).assign(
        method=wc["method"], hp=wc["hp"], seed=job.seed, config_hash=job.config_hash))
    write_csv(job.outputs["layers"], layer_table(model, start, result.best_state, optimizer).assign(
        dataset=wc["dataset"], model=wc["model"], method=wc["method"], hp=wc["hp"], seed=job.seed,
        config_hash=job.config_hash))
    write_json(job.outputs["run"], {
        **wc, "seed": job.seed, "config_hash": job.config_hash, "settings": settings, "device": str(device),
        "optimizer": info.name, "lr": info.lr, "effective_lr": info.effective_lr,
        "trainable_params": info.trainable_params, "frozen_params": info.frozen_params,
        "frozen_fraction": freeze.fraction, "frozen_groups": list(freeze.frozen_groups),
        "selected_epoch": result.best_epoch, "selected_id_val_acc": result.best_val_acc,
        "train_seconds": round(result.seconds, 2)})
    checkpoint.clear()
    log.info("selected epoch %d (id_val acc %.4f) in %.1fs", result.best_epoch, result.best_val_acc, result.seconds)
    return 0
