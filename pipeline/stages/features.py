"""Stage ``features``: pooled penultimate features of every split, computed once.

Inputs: ``data/prepared/{dataset}``, ``data/weights/{model}.safetensors``.
Output: ``results/{dataset}/{model}/features.safetensors`` holding, per split,
``<split>/features`` (float32 [N, D]), ``<split>/labels`` and ``<split>/domain``
(int64 codes into the ``domains`` list stored in the file's metadata).
Params: ``models.{model}`` (architecture and eval transform: ``input_size``, ``crop_pct``, ...),
``features`` (``batch_size``, ``precision``), ``linear_probe.train_augment`` and
``datasets.{dataset}.train_augment``. The network runs in eval mode without augmentation, so LP and
LP-FT see exactly these features; with ``linear_probe.train_augment: true`` the file also holds
``<train>/features_augmented``, one seeded view of each train image under the dataset's train
transform (:mod:`pipeline.models.features`), which the probe is then fit on.
"""
from __future__ import annotations

import logging
import time

from pipeline.config.settings import probe_option
from pipeline.data.shards import PreparedDataset
from pipeline.data.sources import train_augment as augment_settings
from pipeline.io import save_tensors
from pipeline.models.backbone import default_device, model_from_config
from pipeline.models.features import extract_features
from pipeline.models.inference import inference_options
from pipeline.stages.job import parse_job

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("features", argv)
    data = PreparedDataset(job.inputs["data"])
    model = model_from_config(job.params["models"][job.wildcards["model"]], 0, job.inputs["weights"]).eval()
    t0 = time.perf_counter()
    augmented = bool(probe_option(job.params, job.wildcards["dataset"], "train_augment"))
    train_augment = augment_settings(job.params["datasets"][job.wildcards["dataset"]]) if augmented else None
    tensors, meta = extract_features(model.to(default_device()), data, **inference_options(job.params.get("features")),
                                     train_augment=train_augment, augmented=augmented)
    n = sum(len(v) for k, v in tensors.items() if k.endswith("/labels"))
    log.info("%d images in %.1fs (%.0f img/s), dim %d", n, time.perf_counter() - t0,
             n / (time.perf_counter() - t0), tensors[f"{data.split_names[0]}/features"].shape[1])
    save_tensors(job.outputs["features"], tensors, {**meta, "config_hash": job.config_hash})
    return 0
