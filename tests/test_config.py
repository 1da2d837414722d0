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
    assert error_of(cfg) == "params.yaml: finetune.epochs: 'four' is not of type integer"


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
    assert hp_names(cfg["methods"]["spd"]) == ["lr0.0001_spd_lambda0.5", "lr0.0001_spd_lambda1",
                                               "lr3e-05_spd_lambda0.5", "lr3e-05_spd_lambda1"]
    assert grid_points(cfg["methods"]["ft_adamw"]) == [{}] and hp_names(cfg["methods"]["ft_adamw"]) == ["default"]
    s = method_settings(cfg, "spd", "lr3e-05_spd_lambda1")
    assert s["lr"] == 3e-5 and s["spd_lambda"] == 1.0 and "grid" not in s
    with pytest.raises(KeyError, match="lr0.0001_spd_lambda0.5"):
        method_settings(cfg, "spd", "lr1")


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
