"""Stage ``wise_ft``: evaluate WiSE-FT interpolations of one fine-tuned run over the alpha grid.

Inputs: ``data/prepared/{dataset}``, ``data/weights/{model}.safetensors`` (theta_0),
``.../{hp}/seed{seed}/model.safetensors`` (theta_1), the inputs of the run's head initialisation
(the LP head for LP-FT runs: theta_0 then carries it, :mod:`pipeline.methods.registry`), and the
run's ``metrics.csv`` and ``predictions.npz`` from ``evaluate``, which already hold alpha = 1
(theta_1 itself).
Outputs: ``.../seed{seed}/wise_ft.csv``: tidy rows for every alpha (selection ``grid``),
repeated for the alpha chosen on ID val (``id_val``) and, labelled as an oracle,
the alpha chosen on OOD val (``ood_val_oracle``); ``.../seed{seed}/wise_ft_predictions.npz``:
per-example predictions of every alpha (entries ``alpha<a>``).
Runs for the methods in ``wise_ft.methods`` (default: all).
Params: ``wise_ft.alphas``, ``evaluate`` (batch size, precision), ``models.{model}``, ``methods.{method}.init``.
"""
from __future__ import annotations

import logging

import pandas as pd

from pipeline.data.shards import PreparedDataset
from pipeline.ensembling.interpolate import interpolate, pretrained_endpoint
from pipeline.evaluation.metrics import ALL_DOMAINS, read_tidy, tidy
from pipeline.evaluation.predict import evaluate_model
from pipeline.evaluation.predictions import SINGLE, PredictionFile, alpha_entry, entry_ids, save_predictions
from pipeline.io import progress, write_csv
from pipeline.job import parse_job
from pipeline.methods.assemble import pretrained_head
from pipeline.models.backbone import default_device, head_names, load_state, model_from_config, normalization
from pipeline.models.inference import inference_options

log = logging.getLogger(__name__)


def select(curve: pd.DataFrame, split: str) -> float:
    """Alpha with the best accuracy on ``split`` (whole split); ties go to the smaller alpha."""
    acc = curve[(curve["split"] == split) & (curve["domain"] == ALL_DOMAINS) & (curve["metric"] == "acc")]
    if acc.empty:
        raise ValueError(f"no accuracy rows for split {split!r} to select alpha on")
    return float(acc.sort_values(["value", "alpha"], ascending=[False, True]).iloc[0]["alpha"])


def main(argv: list[str] | None = None) -> int:
    job = parse_job("wise_ft", argv)
    params, wc = job.params, job.wildcards
    data = PreparedDataset(job.inputs["data"])
    model = model_from_config(params["models"][wc["model"]], data.num_classes, None).to(default_device()).eval()
    mean, std = normalization(model)
    theta1 = load_state(job.inputs["model"])
    head = pretrained_head(params["methods"][wc["method"]]["init"], job.inputs)
    theta0, keep = pretrained_endpoint(load_state(job.inputs["weights"]), theta1, head_names(model), head)

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
        result = evaluate_model(model, data, mean, std, **inference)
        frames.append(tidy(result.rows, **ids, selection="grid", config_hash=job.config_hash))
        predictions[alpha_entry(alpha)] = (ids, result.predictions)
    curve = pd.concat(frames, ignore_index=True)
    val_split = data.info.get("val_split", "id_val")
    ood_val = "ood_val" if "ood_val" in data.split_names else None   # some datasets have none (ImageNet)
    chosen = [("id_val", select(curve, val_split))]
    if ood_val:
        chosen.append(("ood_val_oracle", select(curve, ood_val)))
    for label, alpha in chosen:
        frames.append(curve[curve["alpha"] == alpha].assign(selection=label))
        log.info("alpha chosen on %s: %g", label, alpha)
    save_predictions(job.outputs["predictions"], predictions)
    write_csv(job.outputs["curve"], pd.concat(frames, ignore_index=True))
    return 0
