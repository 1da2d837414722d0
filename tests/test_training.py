"""The fine-tuning loop, optimizers and the finetune stage, on the tiny digits task."""
import json

import pandas as pd
import pytest
import torch

from pipeline.config import load_params
from pipeline.config.settings import default_settings, hp_names
from pipeline.data.shards import PreparedDataset
from pipeline.data.sources import TRAIN_AUGMENT_DEFAULTS
from pipeline.methods.assemble import assemble, init_head
from pipeline.models.backbone import apply_overrides, create_model, load_state
from pipeline.models.transforms import input_transforms
from pipeline.stages.backbone import main as backbone_main
from pipeline.stages.finetune import main as finetune_main
from pipeline.stages.prepare_data import main as prepare_main
from pipeline.training.loop import LoopConfig, NonFiniteLossError, set_bn_mode, train

RUN = "results/digits/tiny/ft_adamw/epochs1_lr0.0003/seed0"
FT_ARGS = ["--dataset", "digits", "--model", "tiny", "--method", "ft_adamw", "--hp", "epochs1_lr0.0003", "--seed", "0"]


@pytest.fixture
def prepared(tiny_workdir):
    prepare_main(["--dataset", "digits"])
    backbone_main(["--model", "tiny"])
    return tiny_workdir


def loop_cfg(**kw):
    base = dict(epochs=1, batch_size=16, warmup_epochs=0.5, label_smoothing=0.0, grad_clip=0.0, bn="eval", seed=0)
    return LoopConfig(**{**base, **kw})


def transforms_of(model):
    """The model's transforms at the tiny task's 32 px (the defaults' RandomResizedCrop)."""
    return input_transforms(apply_overrides(model, {"input_size": 32, "crop_pct": 1.0}), TRAIN_AUGMENT_DEFAULTS)


def build_optimizer(model, settings):
    method = assemble(model, {**default_settings(), **settings})
    return method.optimizer, method.facts


def test_sgd_is_heavy_ball_with_effective_lr():
    model = create_model("test_efficientnet", 3, None)
    opt, info = build_optimizer(model, {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4})
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["nesterov"] is False and g["momentum"] == 0.9 for g in opt.param_groups)
    assert info["effective_lr"] == pytest.approx(0.1)
    # timm's param groups: no weight decay on biases and norm parameters
    decays = {g["weight_decay"] for g in opt.param_groups}
    assert decays == {0.0, 1e-4}
    no_wd = [p for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert all(p.ndim <= 1 for p in no_wd)


def test_adamw_settings_are_explicit():
    model = create_model("test_efficientnet", 3, None)
    opt, info = build_optimizer(model, {"optimizer": "adamw", "lr": 1e-3, "betas": [0.8, 0.99], "weight_decay": 0.0})
    assert isinstance(opt, torch.optim.AdamW) and info["effective_lr"] is None
    assert opt.param_groups[0]["betas"] == (0.8, 0.99) and opt.param_groups[0]["foreach"] is True


def test_bn_eval_mode_freezes_statistics(prepared):
    data = PreparedDataset("data/prepared/digits")
    model = create_model("test_efficientnet", 10, "data/weights/tiny.safetensors")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    opt, _ = build_optimizer(model, {"optimizer": "adamw", "lr": 1e-3, "betas": [0.9, 0.999]})
    res = train(model, opt, data.split("train"), data.split("id_val"), transforms_of(model), loop_cfg(bn="eval"))
    after = res.best_state if res.best_epoch else model.state_dict()
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    model.train()
    set_bn_mode(model, "train")
    assert any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert after is not None


def test_nan_loss_stops_with_step_and_method(prepared):
    data = PreparedDataset("data/prepared/digits")
    model = create_model("test_efficientnet", 10, "data/weights/tiny.safetensors")
    opt, _ = build_optimizer(model, {"optimizer": "sgd", "lr": 1e30, "momentum": 0.9})
    with pytest.raises(NonFiniteLossError, match=r"exploding: loss is (nan|inf) at step \d+ \(epoch 1\)"):
        train(model, opt, data.split("train"), data.split("id_val"), transforms_of(model),
              loop_cfg(epochs=3, warmup_epochs=0.0, bn="train", name="exploding"))


def test_nan_loss_writes_no_results(prepared):
    cfg_text = (prepared / "params.yaml").read_text().replace("lr: 0.0003", "lr: 1.0e+30")
    (prepared / "params.yaml").write_text(cfg_text)
    import yaml
    cfg = yaml.safe_load(cfg_text)
    assert cfg["methods"]["ft_adamw"]["lr"] == 1e30
    cfg["finetune"]["epochs"] = 3
    cfg["finetune"]["bn"] = "train"
    cfg["methods"]["ft_adamw"]["optimizer"] = "sgd"
    cfg["methods"]["ft_adamw"]["momentum"] = 0.9
    (prepared / "params.yaml").write_text(yaml.safe_dump(cfg))
    hp = "epochs3_lr1e30"   # the run's name spells its values
    with pytest.raises(NonFiniteLossError, match="ft_adamw"):
        finetune_main([*FT_ARGS[:7], hp, *FT_ARGS[8:]])
    run = RUN.replace("epochs1_lr0.0003", hp)
    assert not (prepared / run).exists() or not any((prepared / run).iterdir())


def test_lp_head_initialisation(prepared, tmp_path):
    from pipeline.models.backbone import save_state

    model = create_model("test_efficientnet", 10, None)
    w = torch.randn(10, model.num_features)
    save_state({"weight": w, "bias": torch.arange(10.0)}, tmp_path / "head.safetensors")
    init_head(model, "lp", {"lp_head": str(tmp_path / "head.safetensors")})
    assert torch.equal(model.classifier.weight.data, w)
    init_head(model, "random", {})
    assert model.classifier.weight.std() < 0.05 and torch.count_nonzero(model.classifier.bias) == 0
    save_state({"weight": torch.zeros(3, 7), "bias": torch.zeros(3)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        init_head(model, "lp", {"lp_head": str(tmp_path / "bad.safetensors")})


def test_finetune_stage_main_and_selection(prepared):
    assert finetune_main(FT_ARGS) == 0
    run = json.loads((prepared / RUN / "run.json").read_text())
    hist = pd.read_csv(prepared / RUN / "history.csv")
    assert run["selected_epoch"] in (0, 1) and len(run["config_hash"]) == 12
    # the kept weights are those of the best ID-val epoch (ties keep the earlier one)
    assert run["selected_id_val_acc"] == pytest.approx(hist["id_val_acc"].max(), abs=1e-6)
    assert hist["id_val_acc"].iloc[run["selected_epoch"]] == pytest.approx(run["selected_id_val_acc"], abs=1e-6)
    assert set(hist["config_hash"]) == {run["config_hash"]}
    assert "conv_stem.weight" in load_state(prepared / RUN / "model.safetensors")


def test_finetune_is_deterministic(prepared):
    args = ["--dataset", "digits", "--model", "tiny", "--method", "ft_adamw", "--hp", "epochs1_lr0.0003", "--seed", "1"]
    finetune_main(args)
    first = load_state(prepared / "results/digits/tiny/ft_adamw/epochs1_lr0.0003/seed1/model.safetensors")
    finetune_main(args)
    second = load_state(prepared / "results/digits/tiny/ft_adamw/epochs1_lr0.0003/seed1/model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def run_method(method: str, hp: str, seed: int = 0) -> str:
    assert finetune_main(["--dataset", "digits", "--model", "tiny", "--method", method, "--hp", hp,
                          "--seed", str(seed)]) == 0
    return f"results/digits/tiny/{method}/{hp}/seed{seed}"


def test_freeze_embed_run_keeps_the_embedding_pretrained(prepared):
    run = run_method("freeze_embed", "effective_lr0.01_epochs1")
    info = json.loads((prepared / run / "run.json").read_text())
    assert info["frozen_groups"] == ["stem", "blocks.0"] and 0 < info["frozen_fraction"] < 0.5
    assert info["effective_lr"] == pytest.approx(0.01) and info["lr"] == pytest.approx(0.001)
    pretrained, tuned = load_state(prepared / "data/weights/tiny.safetensors"), load_state(prepared / run /
                                                                                           "model.safetensors")
    layers = pd.read_csv(prepared / run / "layers.csv")
    frozen = layers[layers["frozen"]]
    assert set(frozen["group"]) == {"stem", "blocks.0"} and (frozen["delta_norm"] == 0).all()
    assert all(torch.equal(tuned[n], pretrained[n]) for n in frozen["param"])
    if info["selected_epoch"] > 0:   # the rest moved
        assert (layers.loc[~layers["frozen"], "delta_norm"] > 0).any()


@pytest.mark.parametrize("method, hp", [
    ("spd", "epochs1_lr0.0003_spd_lambda0.3"), ("adamp", "epochs1_lr0.0003"), ("sgdp", "effective_lr0.01_epochs1"),
    ("l2sp", "epochs1_l2sp_alpha0.1_lr0.0003"), ("ft_sgd", "effective_lr0.01_epochs1")])
def test_every_method_runs_through_the_stage(prepared, method, hp):
    run = run_method(method, hp)
    info = json.loads((prepared / run / "run.json").read_text())
    assert info["hp"] == hp and info["optimizer"] == json.loads(
        json.dumps(info["settings"]))["optimizer"]
    layers = pd.read_csv(prepared / run / "layers.csv")
    assert set(layers["method"]) == {method} and set(layers["hp"]) == {hp}
    # SPD records, per tensor of the backbone, how often its projection applied; others record nothing.
    spd = layers["spd_projected"]
    if method == "spd":
        body = layers[~layers["param"].str.startswith("classifier")]
        assert body["spd_projected"].between(0, 1).all() and spd.notna().sum() == len(body)
    else:
        assert spd.isna().all()


def test_unknown_grid_point_is_a_params_error(prepared):
    from pipeline.config import ParamsError

    with pytest.raises(ParamsError, match=r"methods.spd: no grid point 'spd_lambda0.5' \(its runs: "
                                          r"epochs1_lr0.0003_spd_lambda0.3"):
        finetune_main(["--dataset", "digits", "--model", "tiny", "--method", "spd", "--hp", "spd_lambda0.5",
                       "--seed", "0"])


def test_the_lpft_run_never_selects_epoch_0(prepared):
    """transfer_learning only logs the initial model; its best checkpoint is over trained epochs
    (AnanyaKumar/transfer_learning@13c3e2b:unlabeled_extrapolation/baseline_train.py:614-623, 687-698). Here the
    LP head is the best there is on ID val and LP-FT at a destructive lr only loses accuracy: the run must
    still keep a fine-tuned epoch, not hand back the LP."""
    import yaml

    from pipeline.stages.features import main as features_main
    from pipeline.stages.linear_probe import main as lp_main

    cfg = yaml.safe_load((prepared / "params.yaml").read_text())
    cfg["methods"]["lpft"].update(lr=0.3, epochs=2, warmup_epochs=0)
    (prepared / "params.yaml").write_text(yaml.safe_dump(cfg))
    features_main(["--dataset", "digits", "--model", "tiny"])
    lp_main(["--dataset", "digits", "--model", "tiny"])
    run = run_method("lpft", hp_names(load_params(prepared / "params.yaml"), "lpft", "digits")[0])
    hist = pd.read_csv(prepared / run / "history.csv")
    info = json.loads((prepared / run / "run.json").read_text())
    assert hist["id_val_acc"].iloc[0] > hist["id_val_acc"].iloc[1:].max()   # the case: the LP head is best
    assert info["selected_epoch"] >= 1 and info["settings"]["select"] == "best_id_val"
    assert info["selected_id_val_acc"] == pytest.approx(hist["id_val_acc"].iloc[1:].max(), abs=1e-6)
