"""Stage ``features``: pooled penultimate features of every split, computed once.

Inputs: ``data/prepared/{dataset}``, ``data/weights/{model}.safetensors``.
Output: ``results/{dataset}/{model}/features.safetensors`` holding, per split,
``<split>/features`` (float32 [N, D]), ``<split>/labels`` and ``<split>/domain``
(int64 codes into the ``domains`` list stored in the file's metadata).
Params: ``models.{model}``, ``features`` (``batch_size``, ``precision``). The network runs in eval
mode without augmentation, so LP and LP-FT see exactly these features.
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np
import torch

from pipeline.data.shards import PreparedDataset
from pipeline.io import progress, save_tensors
from pipeline.job import parse_job
from pipeline.models.backbone import default_device, model_from_config, normalization
from pipeline.models.inference import inference_options, predict_logits

log = logging.getLogger(__name__)


def extract_features(model, data: PreparedDataset, batch_size: int = 256, precision: str = "auto"
                     ) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of the features file."""
    mean, std = normalization(model)
    domains = sorted(data.metadata["domain"].astype(str).unique())
    code = {d: i for i, d in enumerate(domains)}
    tensors: dict[str, torch.Tensor] = {}
    for name in progress(data.split_names, desc="features"):
        split = data.split(name)
        tensors[f"{name}/features"] = predict_logits(model, split.images, mean, std, batch_size,
                                                     precision).float().contiguous()
        tensors[f"{name}/labels"] = torch.from_numpy(split.labels)
        tensors[f"{name}/domain"] = torch.from_numpy(
            np.array([code[d] for d in split.metadata["domain"].astype(str)], dtype=np.int64))
    meta = {"splits": json.dumps(data.split_names), "domains": json.dumps(domains),
            "num_classes": str(data.num_classes), "train_split": data.info.get("train_split", "train"),
            "val_split": data.info.get("val_split", "id_val")}
    return tensors, meta


def load_features(path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """{split: {features, labels, domain}} and the file's metadata (domains decoded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        flat = {k: f.get_tensor(k) for k in f.keys()}
    meta["splits"], meta["domains"] = json.loads(meta["splits"]), json.loads(meta["domains"])
    meta["num_classes"] = int(meta["num_classes"])
    out = {s: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"{s}/")} for s in meta["splits"]}
    return out, meta


def main(argv: list[str] | None = None) -> int:
    job = parse_job("features", argv)
    data = PreparedDataset(job.inputs["data"])
    model = model_from_config(job.params["models"][job.wildcards["model"]], 0, job.inputs["weights"]).eval()
    t0 = time.perf_counter()
    tensors, meta = extract_features(model.to(default_device()), data, **inference_options(job.params.get("features")))
    n = sum(len(v) for k, v in tensors.items() if k.endswith("/labels"))
    log.info("%d images in %.1fs (%.0f img/s), dim %d", n, time.perf_counter() - t0,
             n / (time.perf_counter() - t0), tensors[f"{data.split_names[0]}/features"].shape[1])
    save_tensors(job.outputs["features"], tensors, {**meta, "config_hash": job.config_hash})
    return 0
