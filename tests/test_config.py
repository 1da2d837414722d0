"""params.yaml validation: one line naming the offending key, before anything runs."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ParamsError, config_hash, load_params, validate
from pipeline.config.settings import method_settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cfg():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def error_of(cfg) -> str:
    with pytest.raises(ParamsError) as info:
        validate(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_repo_params_are_valid():
    cfg = load_params(REPO / "params.yaml")
    assert set(cfg["experiment"]["methods"]) <= set(cfg["methods"])


def test_unknown_method_in_experiment(cfg):
    cfg["experiment"]["methods"].append("ft_adamx")
    n = len(cfg["experiment"]["methods"]) - 1
    assert error_of(cfg) == (f"params.yaml: experiment.methods[{n}]: unknown method 'ft_adamx' "
                             f"(defined under methods: {', '.join(sorted(cfg['methods']))})")


def test_unknown_optimizer(cfg):
    cfg["methods"]["ft_sgd"]["optimizer"] = "adamx"
    assert error_of(cfg).startswith("params.yaml: methods.ft_sgd.optimizer: 'adamx' is not one of")


def test_negative_learning_rate(cfg):
    cfg["methods"]["ft_adamw"]["lr"] = -0.1
    assert error_of(cfg) == "params.yaml: methods.ft_adamw.lr: -0.1 must be > 0"


def test_misspelled_key(cfg):
    cfg["finetune"]["epohcs"] = 3
    msg = error_of(cfg)
    assert msg.startswith("params.yaml: finetune.epohcs: unknown key (allowed:")
    assert "epochs" in msg


def test_misspelled_top_level_key(cfg):
    cfg["wise_fts"] = cfg.pop("wise_ft")
    assert error_of(cfg).startswith("params.yaml: wise_fts: unknown key")


def test_wrong_type(cfg):
    cfg["finetune"]["epochs"] = "four"
    assert error_of(cfg) == "params.yaml: finetune.epochs: 'four' is not an integer"


def test_missing_required_key(cfg):
    del cfg["methods"]["lpft"]["init"]
    assert error_of(cfg) == "params.yaml: methods.lpft.init: required key is missing"


def test_learning_rate_is_required_once(cfg):
    del cfg["methods"]["lpft"]["lr"]
    assert error_of(cfg) == "params.yaml: methods.lpft: set lr or effective_lr"
    cfg["methods"]["ft_sgd"]["lr"] = 0.001
    cfg["methods"]["lpft"]["lr"] = 1e-4
    assert error_of(cfg) == "params.yaml: methods.ft_sgd: set lr or effective_lr, not both"


@pytest.mark.parametrize("method, key, value, message", [
    ("ft_adamw", "momentum", 0.9, "methods.ft_adamw.momentum: not used by optimizer adamw (only by sgd, sgdp)"),
    ("ft_adamw", "effective_lr", 0.1, "methods.ft_adamw.effective_lr: not used by optimizer adamw"),
    ("ft_sgd", "spd_lambda", 0.5, "methods.ft_sgd.spd_lambda: not used by optimizer sgd (only by spd)"),
    ("spd", "wd_ratio", 0.1, "methods.spd.wd_ratio: not used by optimizer spd (only by adamp, sgdp)"),
])
def test_keys_of_another_optimizer_are_errors(cfg, method, key, value, message):
    cfg["methods"][method][key] = value
    assert message in error_of(cfg)


def test_grid_errors(cfg):
    cfg["methods"]["spd"]["grid"] = {"spd_lambda": [0.3, 1.5]}
    assert error_of(cfg) == "params.yaml: methods.spd.grid.spd_lambda[1]: 1.5 must be <= 1"
    cfg["methods"]["spd"]["grid"] = {"spd_lambda": [0.3], "lr": [1e-4]}
    assert error_of(cfg) == "params.yaml: methods.spd.lr: also swept in methods.spd.grid.lr; keep one"
    cfg["methods"]["spd"]["grid"] = {"betas": [[0.9, 0.99]]}
    assert error_of(cfg).startswith("params.yaml: methods.spd.grid.betas: unknown key")


def test_soups_and_wise_ft_methods_are_checked(cfg):
    bad = copy.deepcopy(cfg)
    bad["soups"]["methods"] = ["ft_adamw", "lpft"]
    assert "soups.methods: ingredients must share an initialisation" in error_of(bad)
    bad = copy.deepcopy(cfg)
    bad["wise_ft"]["methods"] = ["nope"]
    assert error_of(bad) == "params.yaml: wise_ft.methods[0]: 'nope' is not in experiment.methods"


def test_grid_points_and_run_names(cfg):
    from pipeline.config.settings import grid_points, hp_names

    cfg["methods"]["spd"]["grid"] = {"lr": [1e-4, 3e-5], "spd_lambda": [0.5, 1.0]}
    del cfg["methods"]["spd"]["lr"]
    validate(cfg)
    # the swept values and every other value of a named key that leaves its default (epochs: 2 in finetune)
    assert hp_names(cfg, "spd") == ["epochs2_lr0.0001_spd_lambda0.5", "epochs2_lr0.0001_spd_lambda1",
                                    "epochs2_lr3e-05_spd_lambda0.5", "epochs2_lr3e-05_spd_lambda1"]
    assert grid_points(cfg["methods"]["ft_adamw"]) == [{}] and hp_names(cfg, "ft_adamw") == ["epochs2_lr0.0003"]
    assert hp_names(cfg, "ft_sgd") == ["effective_lr0.01_epochs2"]   # momentum 0.9 is the default
    s = method_settings(cfg, "spd", "epochs2_lr3e-05_spd_lambda1")
    assert s["lr"] == 3e-5 and s["spd_lambda"] == 1.0 and "grid" not in s
    with pytest.raises(KeyError, match="epochs2_lr0.0001_spd_lambda0.5"):
        method_settings(cfg, "spd", "lr1")
    cfg["datasets"]["digits"]["finetune"] = {"epochs": 3}   # a dataset's own value is the run's value there
    assert hp_names(cfg, "ft_adamw", "digits") == ["epochs3_lr0.0003"]


def test_reserved_method_name(cfg):
    cfg["methods"]["lp"] = copy.deepcopy(cfg["methods"]["ft_adamw"])
    assert "methods" in error_of(cfg)


def test_invalid_yaml(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("experiment: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(p)


def test_cli_validate_one_line(tmp_path, cfg):
    cfg["methods"]["ft_adamw"]["lr"] = -1
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(p), "--write", str(tmp_path / "ok")],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: {p}: methods.ft_adamw.lr: -1 must be > 0"]
    assert not (tmp_path / "ok").exists()


def test_method_settings_layering(cfg):
    cfg["finetune"]["epochs"] = 7
    cfg["methods"]["lpft"]["epochs"] = 2
    assert method_settings(cfg, "ft_adamw")["epochs"] == 7
    assert method_settings(cfg, "lpft")["epochs"] == 2
    assert method_settings(cfg, "ft_sgd")["label_smoothing"] == 0.0  # built-in default


def test_config_hash_is_stable_and_sensitive():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_named_points_are_an_explicit_list_of_runs(cfg):
    """A random search (model soups' hparam_info.json) is a list of settings: each point is a run by its name."""
    from pipeline.config.settings import grid_points, hp_names
    from pipeline.stages.registry import STAGES_BY_NAME

    del cfg["methods"]["spd"]["lr"]
    cfg["methods"]["spd"]["grid"] = {"points": {"model_4": {"lr": 1e-4, "spd_lambda": 0.5, "epochs": 3},
                                                "model_5": {"lr": 1e-4, "spd_lambda": 0.5, "epochs": 3},
                                                "model_2": {"lr": 3e-5}}}
    validate(cfg)
    assert hp_names(cfg, "spd") == ["model_4", "model_5", "model_2"]   # written order, duplicates kept
    assert grid_points(cfg["methods"]["spd"])[2] == {"lr": 3e-5}
    s = method_settings(cfg, "spd", "model_2")
    assert (s["lr"], s["spd_lambda"], s["epochs"]) == (3e-5, 0.0, cfg["finetune"]["epochs"])  # unset: defaults
    assert method_settings(cfg, "spd", "model_4")["epochs"] == 3
    runs = [j["hp"] for j in STAGES_BY_NAME["finetune"].jobs(cfg) if j["method"] == "spd" and j["seed"] == "0"]
    assert runs == ["model_4", "model_5", "model_2"]


@pytest.mark.parametrize("points, message", [
    ({"model_1": {"lr": 1e-4}}, None),
    ({"model_1": {"lr": 1e-4, "mom": 0.9}}, "methods.spd.grid.points.model_1.mom: unknown key"),
    ({"model_1": {"lr": -1.0}}, "methods.spd.grid.points.model_1.lr: -1.0 must be > 0"),
    ({"default": {"lr": 1e-4}}, "methods.spd.grid.points.default: invalid name: 'default' is the name of a run"),
    ({"1st": {"lr": 1e-4}}, "methods.spd.grid.points.1st: invalid name"),
    ({"model_1": {"spd_lambda": 0.5}}, "methods.spd.grid.points.model_1: set lr or effective_lr"),
    ({"model_1": {"lr": 1e-4, "momentum": 0.9}},
     "methods.spd.grid.points.model_1.momentum: not used by optimizer spd"),
])
def test_named_points_errors(cfg, points, message):
    del cfg["methods"]["spd"]["lr"]
    cfg["methods"]["spd"]["grid"] = {"points": points}
    if message is None:
        validate(cfg)
    else:
        assert message in error_of(cfg)


def test_named_points_are_the_whole_grid(cfg):
    cfg["methods"]["spd"]["grid"] = {"points": {"a": {"spd_lambda": 0.5}}, "spd_lambda": [0.3]}
    assert error_of(cfg) == ("params.yaml: methods.spd.grid.spd_lambda: a grid of named points is the whole grid; "
                             "set spd_lambda in each point (or at the method level)")
    cfg["methods"]["spd"]["grid"] = {"points": {"a": {"lr": 1e-4}}}
    assert error_of(cfg) == "params.yaml: methods.spd.lr: also swept in methods.spd.grid.points.a.lr; keep one"


def test_a_dataset_may_override_a_method(cfg):
    """datasets.<d>.methods.<m>: the LP-FT code's ImageNet grids; keys replace, a grid replaces the grid."""
    from pipeline.config.settings import hp_names, method_config
    from pipeline.stages.registry import STAGES_BY_NAME

    cfg["datasets"]["digits"]["methods"] = {"spd": {"grid": {"lr": [1e-3, 1e-2]}, "batch_size": 16},
                                            "ft_adamw": {"lr": 1e-3}}
    cfg["methods"]["spd"]["grid"] = {"spd_lambda": [0.5]}
    cfg["methods"]["spd"]["epochs"] = 3
    validate(cfg)   # the dataset's grid.lr replaces the method's lr there
    assert hp_names(cfg, "spd") == ["epochs3_lr0.0003_spd_lambda0.5"]
    assert hp_names(cfg, "spd", "digits") == ["epochs3_lr0.001", "epochs3_lr0.01"]
    assert method_config(cfg, "spd", "digits")["grid"] == {"lr": [1e-3, 1e-2]}
    runs = {j["hp"] for j in STAGES_BY_NAME["finetune"].jobs(cfg) if j["method"] == "spd"}
    assert runs == {"epochs3_lr0.001", "epochs3_lr0.01"}
    s = method_settings(cfg, "spd", "epochs3_lr0.01", "digits")
    assert (s["lr"], s["batch_size"], s["epochs"], s["spd_lambda"]) == (1e-2, 16, 3, 0.0)
    assert method_settings(cfg, "ft_adamw", dataset="digits")["lr"] == 1e-3
    assert method_settings(cfg, "ft_adamw")["lr"] == 3e-4   # elsewhere the method's own


@pytest.mark.parametrize("override, message", [
    ({"nope": {"lr": 1e-3}}, "datasets.digits.methods.nope: no such method (defined under methods:"),
    ({"ft_adamw": {"init": "lp"}}, "datasets.digits.methods.ft_adamw.init: unknown key"),
    ({"ft_adamw": {"optimizer": "sgd"}}, "datasets.digits.methods.ft_adamw.optimizer: unknown key"),
    ({"ft_adamw": {"momentum": 0.9}}, "datasets.digits.methods.ft_adamw.momentum: not used by optimizer adamw"),
    ({"ft_adamw": {"lr": 1e-3, "grid": {"lr": [1e-3]}}},
     "datasets.digits.methods.ft_adamw.lr: also swept in datasets.digits.methods.ft_adamw.grid.lr; keep one"),
    ({"ft_adamw": {"grid": {"effective_lr": [1e-3]}}},
     "datasets.digits.methods.ft_adamw.grid.effective_lr: not used by optimizer adamw"),
    ({"ft_sgd": {"grid": {"lr": [1e-3]}}},
     "datasets.digits.methods.ft_sgd: set lr or effective_lr, not both"),
    ({"ft_adamw": {"lr": -1}}, "datasets.digits.methods.ft_adamw.lr: -1 must be > 0"),
    ({"ft_adamw": {}}, "datasets.digits.methods.ft_adamw: is empty: set at least 1 key"),
])
def test_method_override_errors(cfg, override, message):
    cfg["datasets"]["digits"]["methods"] = override
    assert message in error_of(cfg)


def test_a_dataset_that_trains_on_its_id_val_may_choose_nothing_on_it(cfg):
    """WiSE-FT trains on 100% of ImageNet (id_val_held_out: false): each rule that would choose on ID val is refused."""

    cfg["datasets"] = {"inet": {"source": "imagenet", "id_val_held_out": False}}
    cfg["experiment"].update(datasets=["inet"], methods=["ft_adamw", "spd"])
    cfg["wise_ft"]["methods"] = ["ft_adamw"]
    del cfg["soups"]
    why = "but datasets.inet trains on its ID-val images (id_val_held_out: false)"
    assert error_of(cfg) == (f"params.yaml: methods.spd.grid: 2 grid points would be chosen on ID val, {why}; "
                             "give one point")
    cfg["datasets"]["inet"]["methods"] = {"spd": {"grid": {"spd_lambda": [0.3, 1.0]}}}
    assert error_of(cfg).startswith("params.yaml: datasets.inet.methods.spd.grid: 2 grid points")
    cfg["datasets"]["inet"]["methods"] = {"spd": {"spd_lambda": 0.3}}
    del cfg["methods"]["spd"]["grid"]
    assert error_of(cfg) == (f"params.yaml: wise_ft.select: id_val chooses alpha on ID val, {why}; set "
                             "wise_ft.select: fixed (alpha report.wise_ft_alpha, and report.wise_ft_optimal for the "
                             "paper's oracle row)")
    cfg["wise_ft"].update(select="fixed", alphas=[0.0, 0.25, 1.0])
    assert "wise_ft.select: fixed reports alpha 0.5 (report.wise_ft_alpha), which is not in wise_ft.alphas" in \
        error_of(cfg)
    cfg["wise_ft"]["alphas"] = [0.0, 0.5, 1.0]
    cfg["soups"] = {"methods": ["ft_adamw"]}
    assert error_of(cfg) == f"params.yaml: soups.methods: the greedy soup chooses its ingredients on ID val, {why}"
    del cfg["soups"]
    assert error_of(cfg) == (f"params.yaml: linear_probe.num_C: 16 values of C would be chosen on ID val, {why}; "
                             "set num_C: 1 (C_min = C_max: one fixed C)")
    cfg["datasets"]["inet"]["linear_probe"] = {"solver": "sgd"}
    assert error_of(cfg) == (f"params.yaml: datasets.inet.linear_probe.select: best_id_val picks the epoch on ID val, "
                             f"{why}; set select: last")
    cfg["datasets"]["inet"]["linear_probe"]["select"] = "last"
    assert error_of(cfg) == (f"params.yaml: finetune.select (default): best_id_val picks the checkpoint on ID val, "
                             f"{why}; set select: last")
    cfg["finetune"]["select"] = "last"
    validate(cfg)
    cfg["datasets"]["inet"]["id_val_held_out"] = True   # held out: every choice is valid again
    cfg["methods"]["spd"]["grid"] = {"spd_lambda": [0.3, 1.0]}
    cfg["datasets"]["inet"]["methods"] = {}
    validate(cfg)


def test_storage_and_transform_keys(cfg):
    """The prepared-data keys (storage_size, encoding, jpeg_quality), the training crop's and a model's transform."""
    bad = copy.deepcopy(cfg)
    bad["datasets"]["digits"]["image_size"] = 40   # the key format 2 renamed
    assert error_of(bad).startswith("params.yaml: datasets.digits.image_size: renamed storage_size")
    for edit, message in [
        (lambda c: c["datasets"]["digits"].__setitem__("encoding", "png"), "datasets.digits.encoding: 'png' is not"),
        (lambda c: c["datasets"]["digits"].__setitem__("jpeg_quality", 20), "datasets.digits.jpeg_quality: 20 must"),
        (lambda c: c["datasets"]["digits"]["train_augment"].__setitem__("ratio", [1.5, 1.0]),
         "datasets.digits.train_augment.ratio: [1.5, 1.0] is not (min, max)"),
        (lambda c: c["datasets"]["digits"]["train_augment"].__setitem__("interpolation", "lanczos"),
         "datasets.digits.train_augment.interpolation: 'lanczos' is not one of bilinear, bicubic"),
        (lambda c: c["models"]["lite0"].__setitem__("crop_pct", 1.2), "models.lite0.crop_pct: 1.2 must be <= 1"),
        (lambda c: c["models"]["lite0"].__setitem__("crop_mode", "border"), "models.lite0.crop_mode: 'border'"),
    ]:
        bad = copy.deepcopy(cfg)
        edit(bad)
        assert error_of(bad).startswith(f"params.yaml: {message}")
    good = copy.deepcopy(cfg)
    good["models"]["lite0"].update(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], interpolation="bilinear")
    validate(good)   # a timm model's normalisation may be overridden too
