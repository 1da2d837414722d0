"""Stage ``zeroshot``: an OpenCLIP model's zero-shot head for one dataset, and the zero-shot model's scores.

Inputs: ``data/prepared/{dataset}`` (its class names, in label order: ``info.json``) and
``data/weights/{model}.safetensors`` (the whole CLIP model: the text tower builds the head).
Outputs in ``results/{dataset}/{model}/zeroshot/``:

* ``head.safetensors``: ``weight`` [K, D] (per class, the mean over prompt templates of the
  normalised text embeddings, renormalised, times the logit scale) and a zero ``bias`` [K]: the
  head that ``init: zeroshot`` fine-tunes start from and that WiSE-FT's pretrained endpoint
  carries (:mod:`pipeline.methods.init_zeroshot`);
* ``metrics.csv``: tidy metric rows of the zero-shot model (``method=zeroshot``) on every split
  but train, the report's "Zero-shot" row; ``predictions.npz``: its per-example predictions.

The class names and templates are the dataset source's (``pipeline/data/prompts/<source>.yaml``).
Runs for every OpenCLIP model and dataset whose source has them.
Params: ``models.{model}`` (with its eval transform), the dataset's source keys, ``evaluate`` (batch size,
precision).
"""
from __future__ import annotations

import logging

from pipeline.data.prompts import prompts_for
from pipeline.data.shards import PreparedDataset
from pipeline.evaluation.metrics import tidy
from pipeline.evaluation.predict import evaluate_model
from pipeline.evaluation.predictions import SINGLE, entry_ids, save_predictions
from pipeline.io import write_csv
from pipeline.methods.init_zeroshot import init_head
from pipeline.models.backbone import default_device, model_from_config
from pipeline.models.inference import inference_options
from pipeline.models.transforms import eval_transform
from pipeline.models.zeroshot import save_head, zeroshot_head
from pipeline.stages.job import parse_job

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("zeroshot", argv)
    wc = job.wildcards
    mcfg, dcfg = job.params["models"][wc["model"]], job.params["datasets"][wc["dataset"]]
    data = PreparedDataset(job.inputs["data"])
    device = default_device()
    names, templates = prompts_for(str(dcfg["source"]), dcfg, classes=data.info["classes"], dataset=wc["dataset"])
    head = zeroshot_head(mcfg, job.inputs["weights"], names, templates, device, name=wc["model"])
    save_head(head, job.outputs["head"], {"config_hash": job.config_hash, "templates": str(len(templates))})

    model = model_from_config(mcfg, data.num_classes, job.inputs["weights"])
    model.normalize = True   # the zero-shot classifier is CLIP's cosine one, whatever normalize_features says
    init_head(model, {"zeroshot_head": job.outputs["head"]})
    model = model.to(device).eval()
    transform = eval_transform(model)
    result = evaluate_model(model, data, transform, **inference_options(job.params.get("evaluate")))
    ids = entry_ids(wc["dataset"], wc["model"], "zeroshot", f"{len(templates)}templates", 0)
    save_predictions(job.outputs["predictions"], {SINGLE: (ids, result.predictions)})
    write_csv(job.outputs["metrics"], tidy(result.rows, **ids, config_hash=job.config_hash))
    log.info("zero-shot head of %s for %s: %d classes x %d templates", wc["model"], wc["dataset"], len(names),
             len(templates))
    return 0
