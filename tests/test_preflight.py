"""Bad model inputs are caught before any job runs, each as one line naming the key (pipeline.tools.preflight)."""
import subprocess
import sys

import pytest
from conftest import REPO, tiny_params

from pipeline.config import ParamsError, validate
from pipeline.tools.preflight import check


def error_of(cfg: dict) -> str:
    validate(cfg)
    with pytest.raises(ParamsError) as info:
        check(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # no prepared data here: sizes come from the config alone
    return tiny_params()


def test_the_demo_and_the_papers_configs(monkeypatch):
    import yaml

    monkeypatch.chdir(REPO)
    for name in ("params.yaml", "configs/freeze_embed.yaml", "configs/wise_ft.yaml", "configs/soups.yaml"):
        check(validate(yaml.safe_load((REPO / name).read_text()), name), name)
    # the LP-FT config names the MoCo checkpoints timm does not ship: the user places them
    lpft = validate(yaml.safe_load((REPO / "configs/lpft.yaml").read_text()), "configs/lpft.yaml")
    with pytest.raises(ParamsError, match=r"^configs/lpft.yaml: models.moco_v2_r50.weights: file not found: "
                                          r"data/checkpoints/moco_v2_800ep_pretrain.pth.tar"):
        check(lpft, "configs/lpft.yaml")


def test_unknown_timm_model(cfg):
    cfg["models"]["tiny"]["timm_name"] = "vit_bse_patch16_224"
    msg = error_of(cfg)
    assert msg.startswith("params.yaml: models.tiny.timm_name: unknown timm model 'vit_bse_patch16_224'")
    assert "vit_base_patch16_224" in msg   # a close name


def test_missing_weights_file(cfg):
    cfg["models"]["tiny"]["weights"] = "checkpoints/moco_v2_800ep_pretrain.pth.tar"
    assert error_of(cfg).startswith("params.yaml: models.tiny.weights: file not found: "
                                    "checkpoints/moco_v2_800ep_pretrain.pth.tar")


def test_unknown_packaged_weights(cfg):
    cfg["models"]["tiny"]["weights"] = "packaged:efficientnet_lite9"
    assert "models.tiny.weights: unknown packaged weights 'efficientnet_lite9'" in error_of(cfg)


def test_input_size_a_vit_cannot_take_and_the_fix(cfg):
    cfg["models"]["tiny"] = {"timm_name": "vit_tiny_patch16_224", "weights": "none"}
    check(cfg)   # its own input size (224, from its pretrained config) fits
    cfg["models"]["tiny"]["input_size"] = 48
    msg = error_of(cfg)
    assert msg.startswith("params.yaml: models.tiny.input_size: 48 px inputs do not fit models.tiny")
    assert "leave input_size to the model's pretrained config" in msg and "img_size: 48" in msg
    cfg["models"]["tiny"]["model_kwargs"] = {"img_size": 48}   # adapt: position embeddings resampled
    check(cfg)
    del cfg["models"]["tiny"]["input_size"]   # img_size alone sets the input size too
    check(cfg)
    cfg["models"]["tiny"]["model_kwargs"] = {"dynamic_img_size": True}
    cfg["models"]["tiny"]["input_size"] = 48
    check(cfg)


def test_batch_larger_than_the_training_split(cfg):
    cfg["finetune"]["batch_size"] = 61   # 6 per class x 10 classes = 60 training images
    assert error_of(cfg) == ("params.yaml: finetune.batch_size: 61 is larger than the training split of digits "
                             "(60 images; method ft_adamw)")
    cfg["finetune"]["batch_size"] = 16
    cfg["methods"]["lpft"]["batch_size"] = 64
    assert error_of(cfg).startswith("params.yaml: methods.lpft.batch_size: 64 is larger than")


def test_a_prepared_split_decides_the_size(cfg, tmp_path):
    import json

    cfg["datasets"]["digits"] = {"source": "cifar10"}
    prepared = tmp_path / "data/prepared/digits"
    prepared.mkdir(parents=True)
    (prepared / "info.json").write_text(json.dumps({"splits": {"train": 20, "id_val": 5}, "train_split": "train"}))
    cfg["finetune"]["batch_size"] = 32
    assert "32 is larger than the training split of digits (20 images" in error_of(cfg)


def test_warmup_as_long_as_training(cfg):
    cfg["finetune"]["warmup_epochs"] = 1
    with pytest.raises(ParamsError, match=r"params.yaml: finetune.warmup_epochs: 1 is not shorter than training "
                                          r"\(1 epochs; method ft_adamw, dataset digits\)"):
        validate(cfg)


def test_freeze_policy_matching_no_layers(cfg):
    cfg["models"]["tiny"]["timm_name"] = "mobilenetv3_small_050"   # a family without layer groups
    cfg["methods"]["ft_adamw"]["freeze"] = "embed"
    msg = error_of(cfg)
    assert msg.startswith("params.yaml: methods.ft_adamw.freeze: matches no layers of models.tiny")
    assert "MobileNetV3" in msg
    cfg["methods"]["ft_adamw"]["freeze"] = "none"
    cfg["methods"]["ft_adamw"]["embed_lr_multiplier"] = 0.2   # needs the embedding groups too
    assert error_of(cfg).startswith("params.yaml: methods.ft_adamw.embed_lr_multiplier: matches no layers")


def test_too_many_frozen_groups(cfg):
    cfg["methods"]["ft_adamw"]["freeze"] = 99
    assert "methods.ft_adamw.freeze: 99 layer groups asked, but models.tiny" in error_of(cfg)


def test_cli_deep_validation_is_one_line(cfg, tmp_path):
    import yaml

    cfg["models"]["tiny"]["timm_name"] = "resnet_nope"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "pipeline", "validate", "--deep"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "models.tiny.timm_name" in res.stderr
    plain = subprocess.run([sys.executable, "-m", "pipeline", "validate"], cwd=tmp_path, capture_output=True,
                           text=True)
    assert plain.returncode == 0   # the cheap check (every job, every parse) does not import timm
