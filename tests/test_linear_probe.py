"""Linear probe: torch L-BFGS against scikit-learn, C selection on val only, the un-normalised head, the stage."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.evaluation.metrics import COLUMNS
from pipeline.training.logistic import c_grid, fit_logistic, logits, normalise, scalar_stats, sweep, unnormalise

REPO = Path(__file__).resolve().parents[1]
K, D = 3, 12


def blobs(n: int, seed: int, spread: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes with a large common offset, like post-ReLU features."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(K, D, generator=torch.Generator().manual_seed(0)) * spread
    y = torch.arange(n) % K
    x = centres[y] + torch.randn(n, D, generator=g) * 2.0 + 4.0
    return x.float(), y


def sklearn_probs(x_norm: np.ndarray, y: np.ndarray, C: float, x_eval: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(x_norm, y)
    return clf.predict_proba(x_eval)


@pytest.mark.parametrize("C", [0.003, 0.1, 3.0])
def test_fixed_C_matches_sklearn(C):
    x, y = blobs(240, seed=1)
    xv, yv = blobs(90, seed=2)
    res = sweep(x, y, xv, yv, K, [C], max_iter=1000, tol=1e-9, dtype=torch.float64)
    mu, sigma = scalar_stats(x)
    ref = sklearn_probs(normalise(x, mu, sigma, torch.float64).numpy(), y.numpy(), C,
                        normalise(xv, mu, sigma, torch.float64).numpy())
    ours = torch.softmax(xv.double() @ res.weight.double().T + res.bias.double(), 1).numpy()
    # Probabilities are free of softmax's gauge (adding a vector to every class row), coefficients are not.
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    assert res.rows[0].iterations > 0


def test_default_settings_agree_with_sklearn_predictions():
    """At the stage's settings (float32, tol 1e-4, max_iter 100) predictions still agree."""
    x, y = blobs(300, seed=3)
    xv, yv = blobs(300, seed=4)
    res = sweep(x, y, xv, yv, K, [0.05])
    mu, sigma = scalar_stats(x)
    ref = sklearn_probs(normalise(x, mu, sigma, torch.float64).numpy(), y.numpy(), 0.05,
                        normalise(xv, mu, sigma, torch.float64).numpy())
    pred = (xv @ res.weight.T + res.bias).argmax(1).numpy()
    assert (pred == ref.argmax(1)).mean() >= 0.99


def test_bias_is_not_penalised():
    """Imbalanced classes, tiny C: W is ~0 but the bias still learns the class log-priors."""
    y = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    x = torch.randn(100, D, generator=torch.Generator().manual_seed(5))
    theta, _ = fit_logistic(x.double(), y, 1e-6, K, max_iter=500, tol=1e-10)
    prior = torch.log_softmax(theta[:, -1], 0).exp()
    torch.testing.assert_close(prior, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), atol=1e-3, rtol=0)
    assert theta[:, :-1].abs().max() < 1e-3


def test_scalar_normalisation_is_over_all_train_entries():
    x, _ = blobs(50, seed=12)
    mu, sigma = scalar_stats(x)
    assert mu == pytest.approx(float(x.numpy().astype(np.float64).mean()), rel=1e-9)
    assert sigma == pytest.approx(float(x.numpy().astype(np.float64).std()), rel=1e-9)  # population std
    res = sweep(x, torch.arange(50) % K, x, torch.arange(50) % K, K, [1.0])
    assert (res.mu, res.sigma) == (mu, sigma)


def test_unnormalised_head_gives_the_normalised_logits():
    x, y = blobs(200, seed=6)
    x = x * 3.0 + 7.0  # far from zero mean / unit std, so folding mu and sigma matters
    mu, sigma = scalar_stats(x)
    xn = normalise(x, mu, sigma, torch.float64)
    theta, _ = fit_logistic(xn, y, 0.5, K, max_iter=200)
    weight, bias = unnormalise(theta[:, :-1], theta[:, -1], mu, sigma)
    torch.testing.assert_close(x.double() @ weight.double().T + bias.double(), logits(theta, xn),
                               atol=2e-4, rtol=1e-5)
    # Without the bias correction the logits would be off by W 1 mu / sigma: make sure that is not tiny.
    assert (weight.double().sum(1) * mu).abs().max() > 1e-2


def disagreement_splits(seed: int = 7):
    """Train data plus val/test sets built so that val prefers the smallest C and test the largest.

    Val holds pool points where the two extreme models disagree, labelled with
    the small-C model's predictions; test holds the same points labelled with the
    large-C model's. A selection that looked at test would pick the largest C.
    """
    x, y = blobs(300, seed=seed, spread=0.6)
    pool, _ = blobs(3000, seed=seed + 1, spread=0.6)
    Cs = c_grid(1e-3, 10.0, 5)
    mu, sigma = scalar_stats(x)
    xn, pn = normalise(x, mu, sigma), normalise(pool, mu, sigma)
    small = logits(fit_logistic(xn, y, Cs[0], K, 200)[0], pn).argmax(1)
    large = logits(fit_logistic(xn, y, Cs[-1], K, 200)[0], pn).argmax(1)
    keep = small != large
    assert keep.sum() >= 30
    return Cs, x, y, pool[keep], small[keep], large[keep]


def test_selection_uses_val_and_never_test():
    Cs, x, y, xs, val_labels, test_labels = disagreement_splits()
    res = sweep(x, y, xs, val_labels, K, Cs)
    val_accs = [r.val_acc for r in res.rows]
    assert res.selected == int(np.argmax(val_accs))  # first maximum: ties go to the smaller C
    assert res.selected < len(Cs) - 1 and Cs[-1] > res.C
    test_acc = float(((xs @ res.weight.T + res.bias).argmax(1) == test_labels).double().mean())
    assert test_acc < 0.5  # the largest C would score ~1 on test


def test_ties_go_to_the_smaller_C():
    x, y = blobs(150, seed=9, spread=6.0)  # separable: every C gets val accuracy 1
    res = sweep(x, y, x, y, K, c_grid(0.1, 10.0, 3))
    assert [r.val_acc for r in res.rows] == [1.0, 1.0, 1.0]
    assert res.selected == 0


def write_features(path: Path, splits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                   domains: list[str]) -> None:
    """A features file in the format of :mod:`pipeline.models.features`."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (feats, labels, dom) in splits.items():
        # clone: safetensors refuses splits that share storage (val and test below do)
        tensors.update({f"{name}/features": feats.float().clone(), f"{name}/labels": labels.long().clone(),
                        f"{name}/domain": dom.long()})
    meta = {"splits": json.dumps(list(splits)), "domains": json.dumps(domains), "num_classes": str(K),
            "train_split": "train", "val_split": "id_val"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def test_stage_end_to_end(tmp_path, monkeypatch):
    from safetensors import safe_open

    from pipeline.data.shards import write_prepared
    from pipeline.training.linear_probe import main

    # Roles swapped from the test above: here id_val prefers the largest C, id_test the smallest.
    Cs, x, y, xs, test_labels, val_labels = disagreement_splits()
    ood, ood_y = blobs(60, seed=11)
    m = len(xs)
    splits = {"train": (x, y, torch.zeros(len(y))), "id_val": (xs, val_labels, torch.zeros(m)),
              "id_test": (xs, test_labels, torch.zeros(m)), "ood_test": (ood, ood_y, torch.arange(60) % 2 + 1)}
    domains = ["mnist", "svhn", "usps"]
    write_features(tmp_path / "results/digits/lite0/features.safetensors", splits, domains)
    # The prepared dataset the features came from (its metadata scores the head; images unused).
    write_prepared(tmp_path / "data/prepared/digits", {
        name: (np.zeros((len(lab), 2, 2, 3), np.uint8),
               pd.DataFrame({"label": lab.numpy(), "domain": [domains[int(d)] for d in dom], "group": "",
                             "source": ""}))
        for name, (_, lab, dom) in splits.items()}, {"classes": [str(k) for k in range(K)]})
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["linear_probe"] = {"C_min": float(Cs[0]), "C_max": float(Cs[-1]), "num_C": len(Cs), "max_iter": 100}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)

    assert main(["--dataset", "digits", "--model", "lite0"]) == 0

    lp = tmp_path / "results/digits/lite0/lp"
    with safe_open(str(lp / "head.safetensors"), framework="pt") as f:
        head = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    assert set(head) == {"weight", "bias"} and head["weight"].shape == (K, D) and head["bias"].shape == (K,)
    assert set(meta) >= {"C", "config_hash"}

    sweep_df = pd.read_csv(lp / "sweep.csv")
    assert list(sweep_df.columns) == ["C", "train_acc", "id_val_acc", "iterations", "selected"]   # no timings
    np.testing.assert_allclose(sweep_df["C"], Cs, rtol=1e-5)
    chosen = sweep_df[sweep_df["selected"]]
    assert len(chosen) == 1 and float(chosen["C"].iloc[0]) == pytest.approx(float(meta["C"]), rel=1e-5)
    assert float(chosen["C"].iloc[0]) > Cs[0]  # id_val chose it, not id_test
    assert chosen.index[0] == sweep_df["id_val_acc"].idxmax()

    metrics = pd.read_csv(lp / "metrics.csv", keep_default_na=False)
    assert list(metrics.columns) == COLUMNS
    assert set(metrics["split"]) == {"id_val", "id_test", "ood_test"}  # every split but train
    assert set(metrics.loc[metrics["split"] == "ood_test", "domain"]) == {"all", "svhn", "usps"}
    assert set(metrics["method"]) == {"lp"} and set(metrics["dataset"]) == {"digits"}
    val_all = metrics[(metrics["split"] == "id_val") & (metrics["domain"] == "all")]["value"].astype(float)
    assert float(val_all.iloc[0]) == pytest.approx(float(chosen["id_val_acc"].iloc[0]), abs=1e-6)
    # The saved head applies to raw features: its id_test accuracy is what metrics.csv reports.
    test_acc = float(((xs @ head["weight"].T + head["bias"]).argmax(1) == test_labels).double().mean())
    test_all = metrics[(metrics["split"] == "id_test") & (metrics["domain"] == "all")]["value"].astype(float)
    assert float(test_all.iloc[0]) == pytest.approx(test_acc, abs=1e-6)
