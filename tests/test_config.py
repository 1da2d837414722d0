"""params.yaml validation: one line naming the offending key, before anything runs."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ParamsError, config_hash, load_params, validate
from pipeline.training.settings import method_settings

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
    assert error_of(cfg) == ("params.yaml: experiment.methods[3]: unknown method 'ft_adamx' "
                             "(defined under methods: ft_adamw, ft_sgd, lpft)")


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
    del cfg["methods"]["lpft"]["lr"]
    assert error_of(cfg) == "params.yaml: methods.lpft.lr: required key is missing"


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
