"""Stage ``soup``: uniform and greedy model soups (Wortsman et al. 2022) of one seed's runs.

Ingredients are every grid point of the methods in ``soups.methods`` for one
(dataset, model, seed). They share their initialisation (validated: the same
``init``; with ``init: random`` the head is drawn from the seed, so runs of one
seed start from the same weights), which is what makes averaging them meaningful.
With ``soups.include_lp`` (runs that start from the LP head, ``init: lp``), that start is an
ingredient too: the pretrained backbone with the linear probe's head, ranked by the probe's own
ID-val accuracy, first in the list (the model soups' ``model_0``, "LP initialization", is in their
pool of 72: ``mlfoundations/model-soups@d5398f1:main.py:62,78``, ``hparam_info.json:1``).

* Uniform soup: the mean of all ingredients.
* Greedy soup: sort the ingredients by ID-val accuracy; start from the best and add
  each next one only if the average's ID-val accuracy strictly increases
  (methods.md section 1.9). Selection never looks at test or OOD data.

Inputs: ``data/prepared/{dataset}``, each ingredient's ``model.safetensors`` and ``metrics.csv``; with
``soups.include_lp``, ``data/weights/{model}.safetensors``, the LP's ``head.safetensors`` and ``metrics.csv``.
Outputs in ``results/{dataset}/{model}/soup/seed{seed}/``: ``metrics.csv`` (tidy rows of
methods ``uniform_soup`` and ``greedy_soup``; ``hp`` says how many ingredients), their
per-example ``predictions.npz`` (one entry per soup) and ``soup.json`` (ingredients in greedy
order, their ID-val accuracy, which were kept).
Params: ``soups.methods``, ``soups.include_lp``, ``evaluate`` (batch size, precision), ``models.{model}`` (with its
eval transform).
"""
from __future__ import annotations

import logging

import pandas as pd

from pipeline.data.shards import PreparedDataset
from pipeline.ensembling.interpolate import pretrained_endpoint
from pipeline.ensembling.soup import RunningMean, State, greedy_soup, id_val_accuracy
from pipeline.evaluation.metrics import tidy
from pipeline.evaluation.predict import evaluate_model
from pipeline.evaluation.predictions import entry_ids, save_predictions
from pipeline.io import write_csv, write_json
from pipeline.models.backbone import default_device, head_names, load_state, model_skeleton
from pipeline.models.inference import inference_options
from pipeline.models.transforms import eval_transform
from pipeline.stages.job import parse_job

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("soup", argv)
    params, wc = job.params, job.wildcards
    data = PreparedDataset(job.inputs["data"])
    val_split = data.info.get("val_split", "id_val")
    # every use below loads a whole state dict first
    model = model_skeleton(params["models"][wc["model"]], data.num_classes).to(default_device()).eval()
    transform = eval_transform(model)
    inference = inference_options(params.get("evaluate"))

    paths, metrics = list(job.inputs["models"]), list(job.inputs["metrics"])
    loaders = [lambda p=p: load_state(p) for p in paths]
    if params["soups"].get("include_lp", False):
        # the LP model first, as model_0 of the model soups' pool; its head on the pretrained backbone
        lp_model, template = f"{job.inputs['weights']} + {job.inputs['lp_head']}", paths[0]
        loaders.insert(0, lambda: lp_state(job.inputs["weights"], job.inputs["lp_head"], template, head_names(model)))
        paths, metrics = [lp_model, *paths], [job.inputs["lp_metrics"], *metrics]
    scores = [id_val_accuracy(m, val_split) for m in metrics]
    order = sorted(range(len(paths)), key=lambda i: -scores[i])   # stable: ties keep the run order
    uniform: RunningMean | None = None

    def ingredients():
        # Each checkpoint is read once: the greedy pass also accumulates the uniform soup.
        nonlocal uniform
        for i in order:
            state = loaders[i]()
            uniform = RunningMean(state) if uniform is None else uniform.with_(state)
            yield state

    def score(state: State) -> float:
        model.load_state_dict(state, strict=True)
        return evaluate_model(model, data, transform, splits=[val_split], **inference).value(val_split)

    greedy, kept, greedy_val = greedy_soup(ingredients(), scores[order[0]], score)
    frames, predictions = [], {}
    for name, state, n in (("uniform_soup", uniform.state(), len(paths)), ("greedy_soup", greedy, sum(kept))):
        model.load_state_dict(state, strict=True)
        result = evaluate_model(model, data, transform, **inference)
        ids = entry_ids(wc["dataset"], wc["model"], name, f"{n}of{len(paths)}", job.seed)
        frames.append(tidy(result.rows, **ids, config_hash=job.config_hash))
        predictions[name] = (ids, result.predictions)
    save_predictions(job.outputs["predictions"], predictions)
    write_csv(job.outputs["metrics"], pd.concat(frames, ignore_index=True))
    write_json(job.outputs["soup"], {
        **wc, "config_hash": job.config_hash, "selection_split": val_split, "greedy_id_val_acc": greedy_val,
        "ingredients": [{"model": paths[i], "id_val_acc": scores[i], "kept": k} for i, k in zip(order, kept)]})
    log.info("greedy soup kept %d of %d ingredients (%s acc %.4f)", sum(kept), len(paths), val_split, greedy_val)
    return 0


def lp_state(weights: str, lp_head: str, template: str, head: tuple[str, str]) -> State:
    """The LP model as an ingredient: the pretrained weights with the probe's head, in a fine-tune's keys."""
    state, _ = pretrained_endpoint(load_state(weights), load_state(template), head, load_state(lp_head))
    return state
