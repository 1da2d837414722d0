"""The ``similarity`` stage and the report's Li et al. (2020) layouts, through the real stages.

The embedded demo's backbone (the packaged EfficientNet-Lite0) on the digits task as the target and a
fabricated ImageNet (tests/fabricate_imagenet.py, real on-disk layout) as the similarity source, which
is not an experiment dataset: prepare_data, backbone, features (both datasets), similarity, and a small
SGD grid over lr x momentum x weight decay (fine-tune, evaluate, linear probe, gradient norms), then the
report with the Li et al. layouts and figures. Each stage runs through its ``main(argv)``.
"""
from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, tiny_params
from fabricate_imagenet import fabricate_imagenet

from pipeline.analysis import domain_features
from pipeline.analysis.domain_features import capped_rows, domain_class_means
from pipeline.analysis.similarity import class_means, domain_similarity, emd
from pipeline.config import ParamsError, load_params
from pipeline.config.settings import run_points
from pipeline.io import save_tensors
from pipeline.stages.registry import STAGES_BY_NAME

SOURCE = "inet"
GRID = {"lr": [0.01, 0.005], "momentum": [0.9, 0.0]}   # four of Table 2's points (weight decay 0.0001)


def write_features(path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """A features file in the features stage's format."""
    import json

    import torch

    tensors = {}
    for name, (x, y) in splits.items():
        tensors[f"{name}/features"] = torch.as_tensor(x, dtype=torch.float32)
        tensors[f"{name}/labels"] = torch.as_tensor(y, dtype=torch.int64)
        tensors[f"{name}/domain"] = torch.zeros(len(y), dtype=torch.int64)
    save_tensors(path, tensors, {"splits": json.dumps(list(splits)), "domains": json.dumps(["d"]),
                                 "num_classes": "5", "train_split": "train", "val_split": "id_val"})


def random_splits(rng, n_train=300, n_val=40, d=6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    y_train = rng.choice(5, n_train, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    y_val = rng.integers(0, 5, n_val)
    return {"train": (rng.normal(size=(n_train, d)) + y_train[:, None], y_train),
            "id_val": (rng.normal(size=(n_val, d)), y_val),
            "id_test": (rng.normal(size=(9, d)) + 100, rng.integers(0, 5, 9))}   # never part of the domain


def test_class_means_from_a_features_file_are_those_of_train_and_id_val(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    splits = random_splits(rng)
    write_features(tmp_path / "f.safetensors", splits)
    x = np.concatenate([splits["train"][0], splits["id_val"][0]]).astype(np.float32).astype(np.float64)
    y = np.concatenate([splits["train"][1], splits["id_val"][1]])
    direct = class_means(x, y)
    monkeypatch.setattr(domain_features, "CHUNK_ROWS", 7)   # many chunks, one straddling the two splits
    got, n = domain_class_means(tmp_path / "f.safetensors")
    assert n == 340 and got.classes.tolist() == direct.classes.tolist()
    np.testing.assert_allclose(got.means, direct.means, rtol=1e-12)
    np.testing.assert_allclose(got.weights, direct.weights, rtol=1e-15)
    only_train, n_train = domain_class_means(tmp_path / "f.safetensors", splits=["train"])
    x_train = splits["train"][0].astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(only_train.means, class_means(x_train, splits["train"][1]).means, rtol=1e-12)
    assert n_train == 300


def test_the_per_class_cap_draws_a_seeded_sample_and_keeps_the_class_frequencies(tmp_path):
    rng = np.random.default_rng(1)
    splits = random_splits(rng)
    write_features(tmp_path / "f.safetensors", splits)
    y = np.concatenate([splits["train"][1], splits["id_val"][1]])
    x = np.concatenate([splits["train"][0], splits["id_val"][0]]).astype(np.float32).astype(np.float64)
    capped, n = domain_class_means(tmp_path / "f.safetensors", max_per_class=20, seed=3)
    classes, index, counts = np.unique(y, return_inverse=True, return_counts=True)
    assert n == sum(min(c, 20) for c in counts)
    np.testing.assert_allclose(capped.weights, counts / counts.sum())   # the full frequencies, not the capped
    # each class's sample: numpy's default_rng([seed, label]) choosing 20 of the class's rows in file order
    for k, label in enumerate(classes):
        rows = np.flatnonzero(y == label)
        pick = rows if len(rows) <= 20 else np.random.default_rng([3, int(label)]).choice(rows, 20, replace=False)
        np.testing.assert_allclose(capped.means[k], x[pick].mean(0), rtol=1e-12)
    assert capped_rows(index, classes, 20, 3).tolist() == capped_rows(index, classes, 20, 3).tolist()
    other, _ = domain_class_means(tmp_path / "f.safetensors", max_per_class=20, seed=4)
    assert not np.allclose(other.means, capped.means)
    # a class's draw depends on its own rows only: dropping another class leaves it unchanged
    keep = y != classes[0]
    alone = capped_rows(index[keep] - 1, classes[1:], 20, 3)
    assert alone.tolist() == capped_rows(index, classes, 20, 3)[keep].tolist()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The demo backbone on digits (target) and a fabricated ImageNet (source only), every stage run."""
    root = tmp_path_factory.mktemp("li2020")
    raw = fabricate_imagenet(root / "raw", variants=("imagenet_v2",))
    cfg = tiny_params(model="tf_efficientnet_lite0", weights="packaged:efficientnet_lite0")
    cfg["experiment"] = {"datasets": ["digits"], "models": ["tiny"], "methods": ["sgd"], "seeds": [0]}
    cfg["datasets"][SOURCE] = {"source": "imagenet", "root": str(raw), "ood": ["imagenet_v2"], "download": False,
                               "id_val_fraction": 0.2, "storage_size": 32}
    cfg["methods"] = {"sgd": {"init": "random", "optimizer": "sgd", "weight_decay": 0.0001, "grid": GRID}}
    cfg["finetune"].update(epochs=2, batch_size=16, warmup_epochs=0, schedule="multistep", milestones=[1])
    cfg["wise_ft"] = {"alphas": [0.0, 1.0], "methods": []}
    cfg.pop("soups")
    cfg["analysis"]["similarity"] = {"source": SOURCE, "max_per_class": 6, "seed": 0}
    cfg["report"].update(baseline="sgd", labels={"sgd": "SGD"},
                         tables=["li2020_momentum", "li2020_similarity", "li2020_hpo", "li2020_elr"])
    shutil.copytree(REPO / "paper", root / "paper", ignore=shutil.ignore_patterns("tables", "figures", "main.pdf"))
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cfg = load_params("params.yaml")
        jobs = {st: STAGES_BY_NAME[st].jobs(cfg) for st in ("prepare_data", "backbone", "features", "similarity",
                                                             "linear_probe", "grad_norms", "finetune", "evaluate")}
        for st, stage_jobs in jobs.items():
            module = __import__(f"pipeline.stages.{st}", fromlist=["main"])
            for wc in stage_jobs:
                assert module.main([a for k, v in wc.items() for a in (f"--{k}", v)]) == 0, (st, wc)
        from pipeline.stages import report

        assert report.main([]) == 0
        yield {"root": root, "cfg": cfg, "jobs": jobs}
    finally:
        os.chdir(cwd)


def test_the_source_is_prepared_and_featurised_but_never_fine_tuned(project):
    jobs = project["jobs"]
    data_jobs = {j["dataset"] for st in ("prepare_data", "features") for j in jobs[st]}
    assert data_jobs == {"digits", SOURCE}
    assert {j["dataset"] for st in ("linear_probe", "grad_norms", "finetune", "evaluate") for j in jobs[st]} == \
        {"digits"}
    assert jobs["similarity"] == [{"dataset": "digits", "model": "tiny"}]
    assert len(jobs["finetune"]) == 4   # the grid: 2 lr x 2 momentum


def test_similarity_row_is_the_direct_computation_on_the_features(project):
    from pipeline.models.features import load_features

    root = project["root"]
    row = pd.read_csv(root / "results/digits/tiny/similarity.csv").iloc[0]
    src, _ = load_features(root / f"results/{SOURCE}/tiny/features.safetensors")
    tgt, _ = load_features(root / "results/digits/tiny/features.safetensors")

    def domain(s):
        return (np.concatenate([s["train"]["features"].double().numpy(), s["id_val"]["features"].double().numpy()]),
                np.concatenate([s["train"]["labels"].numpy(), s["id_val"]["labels"].numpy()]))

    # the fabricated source has 10 training images per class (8 train + 2 id val): the cap of 6 bites
    xs, ys = domain(src)
    keep = capped_rows(np.unique(ys, return_inverse=True)[1], np.unique(ys), 6, 0)
    capped = class_means(xs[keep], ys[keep])
    full = class_means(xs, ys)
    capped = type(capped)(capped.means, full.weights, capped.classes)
    expected = emd(capped, class_means(*domain(tgt)))
    # (the CSV holds 6 significant digits, as every tidy output)
    assert row["emd"] == pytest.approx(expected, rel=1e-5)
    assert row["similarity"] == pytest.approx(math.exp(-0.01 * expected), rel=1e-5)
    assert (row["source"], row["source_classes"], row["target_classes"], row["source_images"]) == (SOURCE, 4, 10, 24)
    # without the cap it is the library's domain_similarity on the whole training sets
    assert domain_similarity(xs, ys, *domain(tgt))["emd"] != pytest.approx(expected, rel=1e-6)


def test_an_unknown_similarity_source_is_one_params_line(tmp_path):
    cfg = tiny_params()
    cfg["analysis"]["similarity"] = {"source": "imagenet"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ParamsError, match=r"analysis.similarity.source: 'imagenet' is not a dataset under datasets"):
        load_params(tmp_path / "p.yaml")


def test_the_li2020_layouts_show_our_runs(project):
    from pipeline.reporting.cells import Cell, cell_tex
    from pipeline.reporting.hyperparams import elr_value, point_label

    root = project["root"]
    momentum = (root / "paper/tables/li2020_momentum.tex").read_text()
    results = pd.concat([pd.read_csv(p) for p in root.glob("results/digits/tiny/sgd/*/seed0/metrics.csv")])
    test = results[(results["split"] == "id_test") & (results["domain"] == "all") & (results["metric"] == "acc")]
    points = run_points(project["cfg"], "sgd", "digits")
    name_of = {(p["momentum"], p["lr"]): name for name, p in points.items()}
    for m, lr in ((0.9, 0.01), (0.9, 0.005), (0.0, 0.01), (0.0, 0.005)):
        acc = float(test.loc[test["hp"] == name_of[(m, lr)], "value"].iloc[0])
        line = next(ln for ln in momentum.splitlines() if ln.startswith(point_label(m, lr, 1e-4) + " & "))
        assert line.split(" & ")[1].startswith(f"{100 * (1 - acc):.2f}")   # the error, as the paper prints it
    val = results[(results["split"] == "id_val") & (results["domain"] == "all") & (results["metric"] == "acc")]
    best = val.sort_values("value", ascending=False, kind="stable")["hp"].iloc[0]
    lr, m = points[best]["lr"], points[best]["momentum"]
    similarity = (root / "paper/tables/li2020_similarity.tex").read_text()
    row = next(ln for ln in similarity.splitlines() if ln.startswith("digits & ")).split(" & ")
    sim = pd.read_csv(root / "results/digits/tiny/similarity.csv")["similarity"].iloc[0]
    assert row[1] == cell_tex(Cell("number", value=sim, scale=1.0, digits=3))
    assert row[2].removesuffix(r" \\") == f"{elr_value(lr, m):g}"
    assert r"\textbf{Source: inet}" in similarity
    for name in ("li2020_elr", "li2020_similarity"):
        assert (root / f"paper/figures/{name}.png").stat().st_size > 10_000
