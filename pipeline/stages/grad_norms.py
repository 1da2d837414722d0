"""Stage ``grad_norms``: per-layer gradient norms of the pretrained backbone with a fresh head, on one batch.

Inputs: ``data/prepared/{dataset}``, ``data/weights/{model}.safetensors``.
Output: ``results/{dataset}/{model}/grad_norms.csv`` (one row per layer group:
:func:`pipeline.analysis.grad_norms.layer_grad_norms`), for the freeze-embed analysis.
Params: ``analysis.grad_norms.batch_size``, ``models.{model}`` (the batch goes through its eval transform).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.analysis.grad_norms import layer_grad_norms
from pipeline.data.loader import Prefetcher
from pipeline.data.shards import PreparedDataset
from pipeline.io import write_csv
from pipeline.methods.init_random import init_head
from pipeline.models.backbone import default_device, model_from_config
from pipeline.models.transforms import eval_transform
from pipeline.stages.job import parse_job


def main(argv: list[str] | None = None) -> int:
    job = parse_job("grad_norms", argv)
    params, wc = job.params, job.wildcards
    torch.manual_seed(0)
    data = PreparedDataset(job.inputs["data"])
    model = model_from_config(params["models"][wc["model"]], data.num_classes, job.inputs["weights"])
    init_head(model, {})
    model.to(default_device())
    train = data.split(data.info.get("train_split", "train"))
    n = min(int(((params.get("analysis") or {}).get("grad_norms") or {}).get("batch_size", 64)), len(train))
    idx = np.sort(np.random.default_rng(0).choice(len(train), size=n, replace=False))
    # the model's eval transform: the deterministic view of the batch (no crop draws)
    with Prefetcher(train.images, [idx], device=next(model.parameters()).device) as batches:
        images = eval_transform(model)(next(iter(batches)).images)
    df = layer_grad_norms(model, images, torch.tensor(train.labels[idx]))
    write_csv(job.outputs["grad_norms"], df.assign(dataset=wc["dataset"], model=wc["model"],
                                                   config_hash=job.config_hash))
    return 0
