"""Stage ``similarity``: the domain similarity of one target to the similarity source, under one backbone.

Cui et al. (CVPR 2018, section 4.1), as Li et al. (ICLR 2020, section 4 and Table 4) use it: each domain
is its classes' mean features from the pretrained backbone (the ``features`` stage's pooled penultimate
features), weighted by class frequency; their distance is the Earth Mover's Distance with Euclidean
ground distance (:mod:`pipeline.analysis.similarity`, POT's exact ``ot.emd2``); similarity =
``exp(-gamma * EMD)``. Both domains are their training images: the train and ID-val splits of the
features file (ID val is a held-out part of the training set, so together they are the whole of it).

Inputs: ``results/{dataset}/{model}/features.safetensors`` (the target) and
``results/{source}/{model}/features.safetensors`` (the source: ``analysis.similarity.source``, a dataset
under ``datasets:``; when it is not an experiment dataset its download, preparation and features are
the only jobs it gets: pipeline.stages.registry.similarity_sources).
Output: ``results/{dataset}/{model}/similarity.csv``, one tidy row: source, dataset, model, emd,
similarity, gamma, source/target classes and images, max_per_class, seed, config_hash.
Params: ``analysis.similarity``: ``source``; ``gamma`` (default 0.01); ``max_per_class`` (default null:
every source image; else at most that many per source class, drawn as
:mod:`pipeline.analysis.domain_features` says, seeded by ``seed``, default 0). The cap applies to the
source only: the targets are small.
"""
from __future__ import annotations

import logging

import pandas as pd

from pipeline.analysis.domain_features import domain_class_means
from pipeline.analysis.similarity import GAMMA, emd, similarity_from_emd
from pipeline.io import write_csv
from pipeline.stages.job import parse_job

log = logging.getLogger(__name__)

DEFAULTS = {"gamma": GAMMA, "max_per_class": None, "seed": 0}
COLUMNS = ["source", "dataset", "model", "emd", "similarity", "gamma", "source_classes", "target_classes",
           "source_images", "target_images", "max_per_class", "seed", "config_hash"]


def main(argv: list[str] | None = None) -> int:
    job = parse_job("similarity", argv)
    cfg = {**DEFAULTS, **job.params["analysis"]["similarity"]}
    source, n_source = domain_class_means(job.inputs["source"], max_per_class=cfg["max_per_class"],
                                          seed=int(cfg["seed"]))
    target, n_target = domain_class_means(job.inputs["target"])
    distance = emd(source, target)
    row = {"source": cfg["source"], "dataset": job.wildcards["dataset"], "model": job.wildcards["model"],
           "emd": distance, "similarity": similarity_from_emd(distance, float(cfg["gamma"])),
           "gamma": float(cfg["gamma"]), "source_classes": len(source.classes), "target_classes": len(target.classes),
           "source_images": n_source, "target_images": n_target, "max_per_class": cfg["max_per_class"],
           "seed": int(cfg["seed"]), "config_hash": job.config_hash}
    write_csv(job.outputs["similarity"], pd.DataFrame([row], columns=COLUMNS))
    log.info("%s -> %s (%s): EMD %.4f, similarity %.4f (%d source images of %d classes, %d target images of %d)",
             cfg["source"], row["dataset"], row["model"], distance, row["similarity"], n_source,
             row["source_classes"], n_target, row["target_classes"])
    return 0
