"""Stage ``soup``: uniform and greedy model soups (Wortsman et al. 2022) of one seed's runs.

Ingredients are every grid point of the methods in ``soups.methods`` for one
(dataset, model, seed). They share their initialisation (validated: the same
``init``; with ``init: random`` the head is drawn from the seed, so runs of one
seed start from the same weights), which is what makes averaging them meaningful.

* Uniform soup: the mean of all ingredients.
* Greedy soup: sort the ingredients by ID-val accuracy; start from the best and add
  each next one only if the average's ID-val accuracy strictly increases
  (methods.md section 1.9). Selection never looks at test or OOD data.

Inputs: ``data/prepared/{dataset}``, each ingredient's ``model.safetensors`` and ``metrics.csv``.
Outputs in ``results/{dataset}/{model}/soup/seed{seed}/``: ``metrics.csv`` (tidy rows of
methods ``uniform_soup`` and ``greedy_soup``; ``hp`` says how many ingredients), their
per-example ``predictions.npz`` (one entry per soup) and ``soup.json`` (ingredients in greedy
order, their ID-val accuracy, which were kept).
Params: ``soups.methods``, ``evaluate`` (batch size, precision), ``models.{model}``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import pandas as pd
import torch

from pipeline.data.shards import PreparedDataset
from pipeline.evaluation.metrics import ALL_DOMAINS, read_tidy, tidy
from pipeline.evaluation.predict import evaluate_model
from pipeline.evaluation.predictions import entry_ids, save_predictions
from pipeline.io import write_csv, write_json
from pipeline.job import parse_job
from pipeline.models.backbone import default_device, load_state, model_from_config, normalization
from pipeline.models.inference import inference_options

log = logging.getLogger(__name__)
State = dict[str, torch.Tensor]


class RunningMean:
    """Mean of state dicts added one at a time (one accumulator, in float64 for long soups)."""

    def __init__(self, first: State):
        self.sum = {k: v.double() if v.is_floating_point() else v.clone() for k, v in first.items()}
        self.dtypes = {k: v.dtype for k, v in first.items()}
        self.count = 1

    def with_(self, other: State) -> RunningMean:
        """A new mean that also holds ``other`` (self is unchanged)."""
        out = RunningMean.__new__(RunningMean)
        out.sum = {k: v + other[k].double() if v.is_floating_point() else v for k, v in self.sum.items()}
        out.dtypes, out.count = self.dtypes, self.count + 1
        return out

    def state(self) -> State:
        # Integer buffers (BatchNorm counters) are taken from the first ingredient, not averaged.
        return {k: (v / self.count).to(self.dtypes[k]) if v.is_floating_point() else v.clone()
                for k, v in self.sum.items()}


def uniform_soup(states: Iterable[State]) -> State:
    """The plain mean of every ingredient (loaded one at a time if ``states`` is lazy)."""
    it = iter(states)
    mean = RunningMean(next(it))
    for s in it:
        mean = mean.with_(s)
    return mean.state()


def greedy_soup(states: Iterable[State], best_score: float, score: Callable[[State], float]
                ) -> tuple[State, list[bool], float]:
    """Greedy soup; returns the soup, which ingredients it kept, and its ID-val score.

    ``states`` must come best first; ``best_score`` is the first one's ID-val accuracy and
    ``score`` evaluates a candidate on ID val. At most three copies are alive at once.
    """
    it = iter(states)
    mean, best = RunningMean(next(it)), best_score
    kept = [True]
    for s in it:
        candidate = mean.with_(s)
        acc = score(candidate.state())
        kept.append(acc > best)          # strictly better, as in the paper
        if kept[-1]:
            mean, best = candidate, acc
    return mean.state(), kept, best


def id_val_accuracy(metrics_csv: str, val_split: str) -> float:
    df = read_tidy([metrics_csv])
    row = df[(df["split"] == val_split) & (df["domain"] == ALL_DOMAINS) & (df["metric"] == "acc")]
    if row.empty:
        raise ValueError(f"{metrics_csv}: no {val_split} accuracy to rank the ingredient by")
    return float(row["value"].iloc[0])


def main(argv: list[str] | None = None) -> int:
    job = parse_job("soup", argv)
    params, wc = job.params, job.wildcards
    data = PreparedDataset(job.inputs["data"])
    val_split = data.info.get("val_split", "id_val")
    model = model_from_config(params["models"][wc["model"]], data.num_classes, None).to(default_device()).eval()
    mean, std = normalization(model)
    inference = inference_options(params.get("evaluate"))

    paths, metrics = list(job.inputs["models"]), list(job.inputs["metrics"])
    scores = [id_val_accuracy(m, val_split) for m in metrics]
    order = sorted(range(len(paths)), key=lambda i: -scores[i])   # stable: ties keep the run order
    uniform: RunningMean | None = None

    def ingredients():
        # Each checkpoint is read once: the greedy pass also accumulates the uniform soup.
        nonlocal uniform
        for i in order:
            state = load_state(paths[i])
            uniform = RunningMean(state) if uniform is None else uniform.with_(state)
            yield state

    def score(state: State) -> float:
        model.load_state_dict(state, strict=True)
        return evaluate_model(model, data, mean, std, splits=[val_split], **inference).value(val_split)

    greedy, kept, greedy_val = greedy_soup(ingredients(), scores[order[0]], score)
    frames, predictions = [], {}
    for name, state, n in (("uniform_soup", uniform.state(), len(paths)), ("greedy_soup", greedy, sum(kept))):
        model.load_state_dict(state, strict=True)
        result = evaluate_model(model, data, mean, std, **inference)
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
