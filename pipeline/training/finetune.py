"""Stage ``finetune``: fine-tune one (dataset, model, method, seed).

Inputs: ``data/prepared/{dataset}``, ``data/weights/{model}.safetensors``, and for
methods with ``init: lp`` (LP-FT) the linear-probe head ``results/{dataset}/{model}/lp/head.safetensors``.
Outputs in ``results/{dataset}/{model}/{method}/seed{seed}/``: ``model.safetensors``
(weights chosen on ID val), ``history.csv`` (per-epoch loss, lr, ID-val accuracy),
``run.json`` (settings, effective lr, chosen epoch, timings, config hash).
Params: ``finetune`` (defaults), ``methods.{method}`` (overrides), ``models.{model}``,
``datasets.{dataset}`` (train augmentation).
"""
from __future__ import annotations

import logging
import random

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.cli import parse_job
from pipeline.data.shards import PreparedDataset
from pipeline.io import write_csv, write_json
from pipeline.models.backbone import head_names, load_state, model_from_config, normalization, save_state
from pipeline.training.loop import LoopConfig, train
from pipeline.training.optim import build_optimizer
from pipeline.training.settings import method_settings

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def init_head(model: nn.Module, init: str, lp_head: str | None) -> None:
    """Fresh small head (timm's tf_ init starts at loss ~5.7) or the LP solution (LP-FT)."""
    w_name, b_name = head_names(model)
    state = model.state_dict()
    if init == "lp":
        head = load_state(lp_head)
        if head["weight"].shape != state[w_name].shape:
            raise ValueError(f"LP head {tuple(head['weight'].shape)} does not fit classifier "
                             f"{tuple(state[w_name].shape)}")
        new = {w_name: head["weight"], b_name: head["bias"]}
    else:
        new = {w_name: torch.randn_like(state[w_name]) * 0.01, b_name: torch.zeros_like(state[b_name])}
    model.load_state_dict(new, strict=False)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("finetune", argv)
    cfg, wc = job.cfg, job.wildcards
    settings = method_settings(cfg, wc["method"])
    seed_everything(job.seed)

    data = PreparedDataset(job.inputs["data"])
    model = model_from_config(cfg["models"][wc["model"]], data.num_classes, job.inputs["weights"])
    init_head(model, settings["init"], job.inputs.get("lp_head"))
    optimizer, info = build_optimizer(model, settings)
    mean, std = normalization(model)
    augment = cfg["datasets"][wc["dataset"]].get("train_augment", {})
    loop_cfg = LoopConfig(epochs=settings["epochs"], batch_size=settings["batch_size"],
                          warmup_epochs=settings["warmup_epochs"], label_smoothing=settings["label_smoothing"],
                          grad_clip=settings["grad_clip"], bn=settings["bn"], seed=job.seed,
                          crop_scale=tuple(augment.get("crop_scale", (1.0, 1.0))), hflip=augment.get("hflip", False),
                          name=wc["method"])
    log.info("%s: %s, lr %g (effective %s), %d trainable / %d frozen params", wc["method"], info.name, info.lr,
             info.effective_lr, info.trainable_params, info.frozen_params)
    result = train(model, optimizer, data.split(data.info.get("train_split", "train")),
                   data.split(data.info.get("val_split", "id_val")), mean, std, loop_cfg)

    save_state(result.best_state, job.outputs["model"], metadata={"config_hash": job.config_hash,
                                                                  "epoch": str(result.best_epoch)})
    write_csv(job.outputs["history"], pd.DataFrame(result.history).assign(
        method=wc["method"], seed=job.seed, config_hash=job.config_hash))
    write_json(job.outputs["run"], {
        **wc, "seed": job.seed, "config_hash": job.config_hash, "settings": settings,
        "optimizer": info.name, "effective_lr": info.effective_lr, "trainable_params": info.trainable_params,
        "frozen_params": info.frozen_params, "selected_epoch": result.best_epoch,
        "selected_id_val_acc": result.best_val_acc, "train_seconds": round(result.seconds, 2)})
    log.info("selected epoch %d (id_val acc %.4f) in %.1fs", result.best_epoch, result.best_val_acc, result.seconds)
    return 0
