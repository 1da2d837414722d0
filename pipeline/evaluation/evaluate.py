"""Stage ``evaluate``: accuracy of one fine-tuned model on every split and domain.

Inputs: ``data/prepared/{dataset}``, ``results/{dataset}/{model}/{method}/{hp}/seed{seed}/model.safetensors``.
Outputs: ``.../seed{seed}/metrics.csv`` (tidy rows, :mod:`pipeline.evaluation.metrics`: accuracy and
calibration per split and domain, the dataset's official metrics) and ``.../seed{seed}/predictions.npz``
(per-example predictions, :mod:`pipeline.evaluation.predictions`).
Params: ``evaluate`` (``batch_size``, ``precision``), ``models.{model}`` (architecture).
"""
from __future__ import annotations

from collections.abc import Mapping

from pipeline.data.shards import PreparedDataset
from pipeline.evaluation.metrics import tidy
from pipeline.evaluation.predict import evaluate_model
from pipeline.evaluation.predictions import SINGLE, entry_ids, save_predictions
from pipeline.io import write_csv
from pipeline.job import parse_job
from pipeline.models.backbone import default_device, load_state, model_from_config, normalization
from pipeline.models.inference import inference_options


def load_finetuned(model_cfg: Mapping, num_classes: int, path: str):
    """Architecture from the config, every tensor from the fine-tuned checkpoint (strict), on the job's device."""
    model = model_from_config(model_cfg, num_classes, None)
    model.load_state_dict(load_state(path), strict=True)
    return model.to(default_device()).eval()


def main(argv: list[str] | None = None) -> int:
    job = parse_job("evaluate", argv)
    wc = job.wildcards
    data = PreparedDataset(job.inputs["data"])
    model = load_finetuned(job.params["models"][wc["model"]], data.num_classes, job.inputs["model"])
    mean, std = normalization(model)
    result = evaluate_model(model, data, mean, std, **inference_options(job.params.get("evaluate")))
    ids = entry_ids(wc["dataset"], wc["model"], wc["method"], wc["hp"], job.seed)
    save_predictions(job.outputs["predictions"], {SINGLE: (ids, result.predictions)})
    write_csv(job.outputs["metrics"], tidy(result.rows, **ids, config_hash=job.config_hash))
    return 0
