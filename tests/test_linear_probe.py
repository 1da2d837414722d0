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

    from pipeline.data.images import Storage
    from pipeline.data.shards import write_prepared
    from pipeline.stages.linear_probe import main

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
        for name, (_, lab, dom) in splits.items()}, {"classes": [str(k) for k in range(K)]}, Storage(2, "raw"))
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


@pytest.mark.parametrize("C", [0.01, 0.3, 5.0])
def test_binary_lp_is_sklearns_binary_logistic_regression_at_the_reported_C(C):
    """Two classes: scikit-learn fits one vector u at C (transfer_learning's log_reg_sk.py, converted to the
    rows [-u/2, u/2]: AnanyaKumar/transfer_learning@13c3e2b:unlabeled_extrapolation/baseline_train.py:229-240).
    The default binary_C (sklearn) reports that C; ``multinomial`` is scikit-learn at 2C."""
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(240, seed=1)
    keep = y < 2
    x, y = x[keep], y[keep]
    xv, yv = blobs(90, seed=2)
    xv, yv = xv[yv < 2], yv[yv < 2]
    mu, sigma = scalar_stats(x)
    xn, xvn = (normalise(t, mu, sigma, torch.float64).numpy() for t in (x, xv))

    def sklearn_fit(c: float) -> tuple[np.ndarray, float]:
        """Validation P(class 1), and scikit-learn's objective 1/2 ||u||^2 + C sum log(1 + exp(-s z)) at its optimum."""
        clf = LogisticRegression(C=c, tol=1e-12, max_iter=100_000).fit(xn, y.numpy())
        assert clf.coef_.shape == (1, D)   # one weight vector: the binary model
        u, b = clf.coef_[0], clf.intercept_[0]
        sign = np.where(y.numpy() == 1, 1.0, -1.0)
        return clf.predict_proba(xvn)[:, 1], float(0.5 * u @ u + c * np.logaddexp(0, -sign * (xn @ u + b)).sum())

    def ours(binary_C: str):
        res = sweep(x, y, xv, yv, 2, [C], max_iter=2000, tol=1e-10, dtype=torch.float64, binary_C=binary_C)
        z = xv.double() @ res.weight.double().T + res.bias.double()
        return res, torch.softmax(z, 1)[:, 1].numpy()

    res, prob = ours("sklearn")
    want, objective = sklearn_fit(C)
    assert res.C == C and res.rows[0].C == C
    np.testing.assert_allclose(prob, want, atol=2e-4)   # as the multinomial comparison above
    assert res.rows[0].objective == pytest.approx(objective, rel=1e-6)   # the same problem, at the same C
    torch.testing.assert_close(res.weight[0], -res.weight[1])   # the min-norm split [-u/2, u/2]
    res2, prob2 = ours("multinomial")
    want2, objective2 = sklearn_fit(2 * C)
    np.testing.assert_allclose(prob2, want2, atol=2e-4)
    assert res2.rows[0].objective == pytest.approx(objective2 / 2, rel=1e-6)
    assert np.abs(prob2 - prob).max() > 1e-3   # the two scales are told apart


def test_augmented_train_view_is_one_seeded_view_per_image(tmp_path):
    """transfer_learning's LP for LP-FT is fit on one pass of the train loader under the train transform
    (AnanyaKumar/transfer_learning@13c3e2b:scripts/run_adaptation_experiments.py:424; extract_features.py:
    154-163, 176-177). Here: the dataset's train_augment, views drawn in order from Generator(VIEW_SEED)."""
    from pipeline import compat

    compat.apply()
    import timm

    from pipeline.data.images import Storage
    from pipeline.data.shards import PreparedDataset, write_prepared
    from pipeline.data.sources import TRAIN_AUGMENT_DEFAULTS
    from pipeline.models.backbone import apply_overrides
    from pipeline.models.features import AUGMENTED, VIEW_SEED, TrainView, extract_features
    from pipeline.models.inference import predict_logits
    from pipeline.models.transforms import train_transform

    rng = np.random.default_rng(0)
    splits = {name: (rng.integers(0, 255, size=(n, 16, 16, 3), dtype=np.uint8),
                     pd.DataFrame({"label": np.arange(n) % K, "domain": "d", "group": "", "source": ""}))
              for name, n in (("train", 10), ("id_val", 4))}
    write_prepared(tmp_path / "data", splits, {"classes": [str(k) for k in range(K)]}, Storage(16, "raw"))
    data = PreparedDataset(tmp_path / "data")
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    model = apply_overrides(model, {"input_size": 16, "crop_pct": 1.0})
    augment = {**TRAIN_AUGMENT_DEFAULTS, "crop_scale": [0.3, 0.6], "hflip": True}
    tensors, _ = extract_features(model, data, batch_size=4, train_augment=augment, augmented=True)
    again, _ = extract_features(model, data, batch_size=4, train_augment=augment, augmented=True)
    plain, _ = extract_features(model, data, batch_size=4)
    assert AUGMENTED not in {k.split("/", 1)[1] for k in plain}
    assert torch.equal(tensors[f"train/{AUGMENTED}"], again[f"train/{AUGMENTED}"])   # seeded
    assert torch.equal(tensors["train/features"], plain["train/features"])           # the plain view unchanged
    # the run's train transform (the loop's TrainTransform) with the draws of Generator(VIEW_SEED), in order
    view = TrainView(train_transform(model, augment), torch.Generator().manual_seed(VIEW_SEED))
    want = predict_logits(model, data.split("train").images, view, batch_size=4)
    torch.testing.assert_close(tensors[f"train/{AUGMENTED}"], want)
    other = TrainView(train_transform(model, augment), torch.Generator().manual_seed(VIEW_SEED + 1))
    assert not torch.allclose(predict_logits(model, data.split("train").images, other, batch_size=4), want)
    assert not torch.allclose(want, plain["train/features"], atol=1e-3)


# --- the SGD probe (the LP-FT code's ImageNet LP) ---------------------------------------------------------

def official_probe(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, num_classes: int,
                   seed: int, lr: float, epochs: int, batch_size: int) -> tuple[list[float], dict]:
    """The LP-FT code's ImageNet probe, transcribed (AnanyaKumar/transfer_learning@13c3e2b):

    ``baseline_train.py:831-834`` seeds torch; ``:216`` -> ``models/clip_model.py:180-183`` builds a fresh
    ``nn.Linear`` with torch's default init; ``:171-176`` a shuffled DataLoader (last batch kept);
    ``configs/adaptation/resnet50_transfer.yaml:13-23`` SGD momentum 0.9, wd 0, CrossEntropyLoss(mean);
    ``configs/adaptation/imagenet.yaml:8,15-18`` batch 128, CosineAnnealingLR(T_max=epochs);
    ``baseline_train.py:374-424`` the step; ``:659-660`` the scheduler steps once per epoch; ``:687-698``
    after each epoch keep the head if val accuracy is strictly higher (the initial head is never kept,
    ``:614-623``); ``scripts/run_adaptation_experiments.py:1616-1618, 1632-1638``: 5 epochs, lr 0.1, seed 0.
    The official process also draws from the global stream to build CLIP and for each of its evaluation
    loaders; here evaluation is a plain forward pass, so both sides see the same stream.
    """
    torch.manual_seed(seed)
    net = torch.nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    criterion = torch.nn.CrossEntropyLoss(reduction="mean")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    best_acc, best, val_accs = None, None, []
    for _epoch in range(epochs):
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss = criterion(net(inputs), labels)
            loss.backward()
            optimizer.step()
        scheduler.step()
        with torch.no_grad():
            acc = int((net(xv).argmax(1) == yv).sum()) / len(yv)   # as its Accumulator: a mean of 0/1 values
        val_accs.append(acc)
        if best_acc is None or acc > best_acc:
            best_acc, best = acc, {k: v.detach().clone() for k, v in net.state_dict().items()}
    return val_accs, best


@pytest.mark.parametrize("n, batch_size, epochs", [(300, 128, 5), (256, 64, 3)])
def test_sgd_probe_is_the_official_rule(n, batch_size, epochs):
    """Bit for bit the transcribed official loop: init, shuffle, last partial batch, step, per-epoch cosine, pick."""
    from pipeline.training.sgd_probe import train_probe

    x, y = blobs(n, seed=5, spread=0.8)
    xv, yv = blobs(120, seed=6, spread=0.8)
    state = torch.random.get_rng_state()
    try:
        val_accs, best = official_probe(x, y, xv, yv, K, seed=0, lr=0.1, epochs=epochs, batch_size=batch_size)
    finally:
        torch.random.set_rng_state(state)
    before = torch.random.get_rng_state()
    res = train_probe(x, y, xv, yv, K, lr=0.1, epochs=epochs, batch_size=batch_size, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)   # its own stream: the global one is untouched
    assert [r.val_acc for r in res.rows] == val_accs
    assert torch.equal(res.weight, best["weight"]) and torch.equal(res.bias, best["bias"])
    lrs = [r.lr for r in res.rows]   # per-epoch cosine: epoch e (0-based) at lr (1 + cos(pi e / E)) / 2
    np.testing.assert_allclose(lrs, [0.1 * (1 + np.cos(np.pi * e / epochs)) / 2 for e in range(epochs)])
    assert res.selected == int(np.argmax(val_accs)) and 1 <= res.rows[res.selected].epoch <= epochs


def test_sgd_probe_selection_rules():
    from pipeline.training.sgd_probe import train_probe

    Cs, x, y, xs, val_labels, _ = disagreement_splits()
    best = train_probe(x, y, xs, val_labels, K, epochs=4, batch_size=32)
    accs = [r.val_acc for r in best.rows]
    assert best.selected == accs.index(max(accs))       # the first maximum: ties keep the earlier epoch
    last = train_probe(x, y, xs, val_labels, K, epochs=4, batch_size=32, select="last")
    assert last.selected == 3 and [r.val_acc for r in last.rows] == accs   # same run, another pick
    other = train_probe(x, y, xs, val_labels, K, epochs=4, batch_size=32, seed=1)
    assert not torch.equal(other.weight, last.weight)   # the seed draws the head and the order


def test_sgd_probe_stage(tmp_path, monkeypatch):
    """datasets.<d>.linear_probe: {solver: sgd} runs the SGD probe for that dataset; its sweep.csv is per epoch."""
    from safetensors import safe_open

    from pipeline.data.images import Storage
    from pipeline.data.shards import write_prepared
    from pipeline.stages.linear_probe import main
    from pipeline.training.sgd_probe import train_probe

    x, y = blobs(200, seed=7)
    xv, yv = blobs(60, seed=8)
    splits = {"train": (x, y, torch.zeros(len(y))), "id_val": (xv, yv, torch.zeros(60)),
              "id_test": (xv, yv, torch.zeros(60))}
    write_features(tmp_path / "results/digits/lite0/features.safetensors", splits, ["mnist"])
    write_prepared(tmp_path / "data/prepared/digits", {
        name: (np.zeros((len(lab), 2, 2, 3), np.uint8),
               pd.DataFrame({"label": lab.numpy(), "domain": "mnist", "group": "", "source": ""}))
        for name, (_, lab, _dom) in splits.items()}, {"classes": [str(k) for k in range(K)]}, Storage(2, "raw"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["digits"]["linear_probe"] = {"solver": "sgd", "epochs": 3, "batch_size": 50, "lr": 0.05}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)

    assert main(["--dataset", "digits", "--model", "lite0"]) == 0
    lp = tmp_path / "results/digits/lite0/lp"
    ref = train_probe(x, y, xv, yv, K, epochs=3, batch_size=50, lr=0.05)   # defaults: momentum 0.9, seed 0
    with safe_open(str(lp / "head.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor("weight"), ref.weight) and torch.equal(f.get_tensor("bias"), ref.bias)
        assert f.metadata()["epoch"] == str(ref.rows[ref.selected].epoch)
    table = pd.read_csv(lp / "sweep.csv")
    assert list(table.columns) == ["epoch", "lr", "train_loss", "train_acc", "id_val_acc", "selected"]
    assert list(table["epoch"]) == [1, 2, 3] and table["selected"].sum() == 1
    metrics = pd.read_csv(lp / "metrics.csv", keep_default_na=False)
    assert set(metrics["hp"]) == {f"epoch{ref.rows[ref.selected].epoch}"}


@pytest.mark.parametrize("probe, message", [
    ({"solver": "sgd", "C_min": 1e-3}, "linear_probe.C_min: not used by solver sgd (only by lbfgs)"),
    ({"C_min": 1e-3, "C_max": 1.0, "num_C": 3, "lr": 0.1}, "linear_probe.lr: not used by solver lbfgs (only by sgd)"),
    ({"C_min": 1e-3, "num_C": 3}, "linear_probe.C_max: required key is missing (solver lbfgs)"),
    ({"solver": "sgd", "select": "best"}, "linear_probe.select: 'best' is not one of best_id_val, last"),
])
def test_probe_keys_are_the_solvers(probe, message):
    from pipeline.config import ParamsError, validate

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for where in ("top", "dataset"):
        cfg = yaml.safe_load(yaml.safe_dump(params))
        if where == "top":
            cfg["linear_probe"] = probe
        else:
            cfg["datasets"]["digits"]["linear_probe"] = probe
        with pytest.raises(ParamsError) as info:
            validate(cfg)
        assert message in str(info.value)
        assert where == "top" or "datasets.digits.linear_probe." in str(info.value)
