"""Stage ``finetune``: fine-tune one (dataset, model, method, grid point, seed).

Inputs: ``data/prepared/{dataset}``, ``data/weights/{model}.safetensors``, and for
methods with ``init: lp`` (LP-FT) the linear-probe head ``results/{dataset}/{model}/lp/head.safetensors``.
Outputs in ``results/{dataset}/{model}/{method}/{hp}/seed{seed}/``:
  ``model.safetensors``  weights of the epoch ``select`` keeps (best ID val, never the initial weights; or last)
  ``history.csv``        per-epoch loss, lr and ID-val accuracy
  ``steps.csv``          per optimizer step (at most 2,000 rows: :data:`pipeline.training.loop.MAX_STEP_POINTS`):
                         step, epoch, lr and training loss, for ``dvc plots``' training curves
  ``run.json``           resolved settings, effective lr, frozen fraction, chosen epoch, config hash
  ``layers.csv``         per parameter tensor: layer group, frozen, its norm at the start and the
                         distance the chosen weights moved from it, and the optimizer's own
                         per-tensor statistics (SPD: the fraction of steps its projection applied)
  ``cost.json``          images/s, training seconds, GPU-hours and peak memory: measurements that
                         vary between runs, read only by the ``costs`` stage (never by results)
While it runs, a checkpoint under ``checkpoints/{dataset}/{model}/{method}/{hp}/seed{seed}/``
(every 10 minutes and on SIGTERM/SIGUSR1) lets a preempted or killed job resume where it
stopped when it is run again; it is removed once the outputs are written.
With ``gpus: N > 1`` (a training setting) the job runs under torchrun as N DDP ranks
(:mod:`pipeline.training.distributed`); rank 0 writes the outputs.
The method is assembled from the method registry (:mod:`pipeline.methods.assemble`): its head
initialisation, policies (freeze, lr scales), optimizer and regularisers.
Params: ``finetune`` (defaults), ``datasets.{dataset}.finetune`` (per-dataset defaults, e.g. epochs),
``methods.{method}`` (overrides; ``{hp}`` picks the grid point), ``models.{model}`` (architecture, and its
input transform's keys: ``input_size``, ``crop_pct``, ...), ``datasets.{dataset}.train_augment`` (the recipe's
RandomResizedCrop: ``crop_scale``, ``ratio``, ``interpolation``, and ``hflip``; defaults torchvision's).
Timings go to the log, not to the outputs: a re-run with the same inputs writes the same bytes.
"""
from __future__ import annotations

import logging
import os

import pandas as pd

from pipeline.config.settings import resolve_settings
from pipeline.data.shards import PreparedDataset
from pipeline.data.sources import train_augment
from pipeline.io import write_csv, write_json
from pipeline.methods.assemble import assemble, init_head
from pipeline.models.backbone import default_device, head_names, model_from_config, save_state
from pipeline.models.transforms import input_transforms
from pipeline.stages.job import parse_job
from pipeline.stages.registry import CHECKPOINT_DIR, LIVE_DIR
from pipeline.training.checkpoint import Checkpointer
from pipeline.training.distributed import close, init_distributed
from pipeline.training.finetune import layer_table, seed_everything
from pipeline.training.loop import LoopConfig, train
from pipeline.training.mixing import MixSpec
from pipeline.training.monitor import Monitor
from pipeline.training.runtime import resolve, set_determinism

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("finetune", argv)
    wc = job.wildcards
    settings = resolve_settings(job.params, wc["method"], job.point, wc["dataset"])
    if settings["randaugment"] is not None:
        raise ValueError(f"{wc['method']}: randaugment {settings['randaugment']!r} is defined but not applied yet "
                         "(per-image PIL transforms arrive with the loader rework); remove it")
    seed_everything(job.seed)
    set_determinism(settings["deterministic"])
    device = default_device()
    dist = init_distributed(device)   # several ranks under torchrun (settings.gpus > 1)

    data = PreparedDataset(job.inputs["data"])
    model = model_from_config(job.params["models"][wc["model"]], data.num_classes, job.inputs["weights"])
    init_head(model, settings["init"], job.inputs)
    model.to(device)
    start = {k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters()}
    method = assemble(model, settings, head_names(model), device)
    runtime = resolve(settings, device, model)
    facts = {**method.facts, **runtime.facts()}
    transforms = input_transforms(model, train_augment(job.params["datasets"][wc["dataset"]]))
    loop_cfg = LoopConfig(epochs=settings["epochs"], batch_size=settings["batch_size"],
                          warmup_epochs=settings["warmup_epochs"], label_smoothing=settings["label_smoothing"],
                          grad_clip=settings["grad_clip"], bn=settings["bn"], seed=job.seed,
                          name=f"{wc['method']}/{wc['hp']}", accumulate=settings["accumulate"],
                          checkpoint_seconds=float(os.environ.get("PIPELINE_CHECKPOINT_SECONDS", 600)),
                          select=settings["select"], schedule=settings["schedule"],
                          milestones=tuple(settings["milestones"]), milestone_factor=settings["milestone_factor"],
                          warmup_steps=settings["warmup_steps"], mix=MixSpec.of(settings),
                          num_classes=data.num_classes)
    log.info("%s/%s on %s (%s%s): %s, lr %g (effective %s), %d trainable params, %d frozen (%.1f%%: %s)",
             wc["method"], wc["hp"], device, runtime.precision, ", channels-last" if runtime.channels_last else "",
             facts["optimizer"], facts["lr"], facts["effective_lr"], facts["trainable_params"],
             facts["frozen_params"], 100 * facts["frozen_fraction"], ", ".join(facts["frozen_groups"]) or "nothing")
    checkpoint = Checkpointer(CHECKPOINT_DIR.format(**wc), job.config_hash)
    result = train(model, method.optimizer, data.split(data.info.get("train_split", "train")),
                   data.split(data.info.get("val_split", "id_val")), transforms, loop_cfg, hooks=method.hooks,
                   checkpoint=checkpoint, dist=dist, runtime=runtime,
                   monitor=Monitor(loop_cfg.name, device, dist.world, live_dir=LIVE_DIR.format(**wc)))
    close(dist)
    if not dist.main:
        return 0

    save_state(result.best_state, job.outputs["model"], metadata={"config_hash": job.config_hash,
                                                                  "epoch": str(result.best_epoch)})
    write_csv(job.outputs["history"], pd.DataFrame(result.history).assign(
        method=wc["method"], hp=wc["hp"], seed=job.seed, config_hash=job.config_hash))
    write_csv(job.outputs["steps"], pd.DataFrame(result.steps, columns=["step", "epoch", "lr", "train_loss"]).assign(
        method=wc["method"], hp=wc["hp"], seed=job.seed, config_hash=job.config_hash))
    write_csv(job.outputs["layers"], layer_table(model, start, result.best_state, method).assign(
        dataset=wc["dataset"], model=wc["model"], method=wc["method"], hp=wc["hp"], seed=job.seed,
        config_hash=job.config_hash))
    write_json(job.outputs["run"], {
        **wc, "seed": job.seed, "config_hash": job.config_hash, "settings": settings, **facts,
        "selected_epoch": result.best_epoch, "selected_id_val_acc": result.best_val_acc})
    write_json(job.outputs["cost"], {**wc, "seed": job.seed, "config_hash": job.config_hash, **result.cost})
    checkpoint.clear()
    log.info("selected epoch %d (id_val acc %.4f); trained in %.1fs on %s (%s img/s)", result.best_epoch,
             result.best_val_acc, result.seconds, device, result.cost.get("images_per_s"))
    return 0
