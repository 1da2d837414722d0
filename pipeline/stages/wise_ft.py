"""Stage ``wise_ft``: evaluate WiSE-FT interpolations of one fine-tuned run over the alpha grid.

Inputs: ``data/prepared/{dataset}``, ``data/weights/{model}.safetensors`` (theta_0),
``.../{hp}/seed{seed}/model.safetensors`` (theta_1), the inputs of the run's head initialisation
(the LP head for LP-FT runs: theta_0 then carries it, :mod:`pipeline.methods.registry`), and the
run's ``metrics.csv`` and ``predictions.npz`` from ``evaluate``, which already hold alpha = 1
(theta_1 itself).
Outputs: ``.../seed{seed}/wise_ft.csv``: tidy rows for every alpha (selection ``grid``),
repeated for the alpha chosen on ID val (``id_val``; not with ``wise_ft.select: fixed``, where nothing
is chosen and the report shows the fixed alpha) and, labelled as an oracle, the alpha chosen on OOD
val (``ood_val_oracle``, datasets with an OOD val split); ``.../seed{seed}/wise_ft_predictions.npz``:
per-example predictions of every alpha (entries ``alpha<a>``).
Runs for the methods in ``wise_ft.methods`` (default: all).
Params: ``wise_ft.alphas``, ``wise_ft.select``, ``evaluate`` (batch size, precision), ``models.{model}`` (with
its eval transform), ``methods.{method}.init``.
"""
from __future__ import annotations

import logging

import pandas as pd

from pipeline.config.settings import WISE_FT_SELECT
from pipeline.data.shards import PreparedDataset
from pipeline.ensembling.interpolate import interpolate, pretrained_endpoint, select_alpha
from pipeline.evaluation.metrics import read_tidy, tidy
from pipeline.evaluation.predict import evaluate_model
from pipeline.evaluation.predictions import SINGLE, PredictionFile, alpha_entry, entry_ids, save_predictions
from pipeline.io import progress, write_csv
from pipeline.methods.assemble import pretrained_head
from pipeline.models.backbone import (
    default_device,
    head_names,
    load_state,
    model_from_config,
    model_skeleton,
)
from pipeline.models.inference import inference_options
from pipeline.models.transforms import eval_transform
from pipeline.stages.job import parse_job

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("wise_ft", argv)
    params, wc = job.params, job.wildcards
    select = params["wise_ft"].get("select", WISE_FT_SELECT[0])
    data = PreparedDataset(job.inputs["data"])
    mcfg = params["models"][wc["model"]]
    model = model_skeleton(mcfg, data.num_classes).to(default_device()).eval()   # each alpha loads a whole state
    transform = eval_transform(model)
    theta1 = load_state(job.inputs["model"])
    head = pretrained_head(params["methods"][wc["method"]]["init"], job.inputs)
    # theta_0 as the fine-tune started from it: the pretrained weights loaded into the run's own model form
    # (head: project keeps the pretrained projection under the classifier's names), its new head aside.
    pretrained = model_from_config(mcfg, data.num_classes, job.inputs["weights"]).state_dict()
    theta0, keep = pretrained_endpoint(pretrained, theta1, head_names(model), head)

    inference = inference_options(params.get("evaluate"))
    frames, predictions = [], {}
    for alpha in progress(sorted(params["wise_ft"]["alphas"]), desc="wise-ft"):
        ids = entry_ids(wc["dataset"], wc["model"], wc["method"], wc["hp"], job.seed, alpha)
        if alpha == 1.0:   # theta_1 itself, already scored by `evaluate`
            frames.append(read_tidy([job.inputs["metrics"]]).assign(alpha=1.0, selection="grid",
                                                                     config_hash=job.config_hash))
            predictions[alpha_entry(alpha)] = (ids, PredictionFile(job.inputs["predictions"]).all(SINGLE))
            continue
        model.load_state_dict(interpolate(theta0, theta1, alpha, keep), strict=True)
        result = evaluate_model(model, data, transform, **inference)
        frames.append(tidy(result.rows, **ids, selection="grid", config_hash=job.config_hash))
        predictions[alpha_entry(alpha)] = (ids, result.predictions)
    curve = pd.concat(frames, ignore_index=True)
    val_split = data.info.get("val_split", "id_val")
    ood_val = "ood_val" if "ood_val" in data.split_names else None   # some datasets have none (ImageNet)
    chosen = [("id_val", select_alpha(curve, val_split))] if select == "id_val" else []
    if ood_val:
        chosen.append(("ood_val_oracle", select_alpha(curve, ood_val)))
    for label, alpha in chosen:
        frames.append(curve[curve["alpha"] == alpha].assign(selection=label))
        log.info("alpha chosen on %s: %g", label, alpha)
    save_predictions(job.outputs["predictions"], predictions)
    write_csv(job.outputs["curve"], pd.concat(frames, ignore_index=True))
    return 0
