"""Stage ``evaluate``: accuracy of one fine-tuned model on every split and domain.

Inputs: ``data/prepared/{dataset}``, ``results/{dataset}/{model}/{method}/{hp}/seed{seed}/model.safetensors``.
Outputs: ``.../seed{seed}/metrics.csv`` (tidy rows, :mod:`pipeline.evaluation.metrics`: accuracy and
calibration per split and domain, the dataset's official metrics) and ``.../seed{seed}/predictions.npz``
(per-example predictions, :mod:`pipeline.evaluation.predictions`).
Params: ``evaluate`` (``batch_size``, ``precision``), ``models.{model}`` (architecture and eval transform).
"""
from __future__ import annotations

from pipeline.data.shards import PreparedDataset
from pipeline.evaluation.metrics import tidy
from pipeline.evaluation.predict import evaluate_model, load_finetuned
from pipeline.evaluation.predictions import SINGLE, entry_ids, save_predictions
from pipeline.io import write_csv
from pipeline.models.inference import inference_options
from pipeline.models.transforms import eval_transform
from pipeline.stages.job import parse_job


def main(argv: list[str] | None = None) -> int:
    job = parse_job("evaluate", argv)
    wc = job.wildcards
    data = PreparedDataset(job.inputs["data"])
    model = load_finetuned(job.params["models"][wc["model"]], data.num_classes, job.inputs["model"])
    transform = eval_transform(model)
    result = evaluate_model(model, data, transform, **inference_options(job.params.get("evaluate")))
    ids = entry_ids(wc["dataset"], wc["model"], wc["method"], wc["hp"], job.seed)
    save_predictions(job.outputs["predictions"], {SINGLE: (ids, result.predictions)})
    write_csv(job.outputs["metrics"], tidy(result.rows, **ids, config_hash=job.config_hash))
    return 0
