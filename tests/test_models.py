"""Backbone weights: the packaged EfficientNet-Lite0 and the local-file timm path."""
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from pipeline.models.backbone import (
    convert_packaged,
    create_model,
    load_state,
    model_from_config,
    model_skeleton,
    normalization,
    remap_by_order,
    save_state,
)
from pipeline.models.state_files import CheckpointError
from pipeline.models.weights import resolve_weights
from pipeline.stages.backbone import main as backbone_main


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "lite0.safetensors"
    save_state(convert_packaged("efficientnet_lite0", "tf_efficientnet_lite0"), path)
    return path


def test_packaged_lite0_predicts_imagenet_classes(lite0_file):
    """Real pretrained weights: the sample photo of a flower is a daisy (ImageNet class 985)."""
    model = create_model("tf_efficientnet_lite0", 1000, lite0_file).eval()
    mean, std = normalization(model)
    flower = load_sample_images().images[1]
    x = torch.tensor(np.asarray(Image.fromarray(flower).resize((224, 224)))).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert model(x).argmax(1).item() == 985


def test_local_file_path_loads_identical_backbone(lite0_file):
    state = load_state(lite0_file)
    model = create_model("tf_efficientnet_lite0", 10, lite0_file)
    for k, v in model.state_dict().items():
        if not k.startswith("classifier"):
            assert torch.equal(v, state[k]), k
    assert model.state_dict()["classifier.weight"].shape == (10, 1280)


def test_remap_by_order_checks_shapes():
    src = {"a.w": torch.zeros(2, 3), "a.num_batches_tracked": torch.tensor(0), "b": torch.zeros(4)}
    assert set(remap_by_order(src, {"x": torch.ones(2, 3), "y": torch.ones(4)})) == {"x", "y"}
    with pytest.raises(ValueError, match="shape mismatch"):
        remap_by_order(src, {"x": torch.ones(3, 2), "y": torch.ones(4)})
    with pytest.raises(ValueError, match="has 2 tensors, model has 1"):
        remap_by_order(src, {"x": torch.ones(2, 3)})


def test_user_checkpoint_must_fit_architecture(tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_state({**create_model("test_efficientnet", 3, None).state_dict(), "conv_stem.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match=r"bad.safetensors does not fit test_efficientnet: conv_stem.weight has "
                                              r"shape \(1,\) in the file, \(24, 3, 3, 3\) in the model"):
        resolve_weights("test_efficientnet", str(bad))
    good = create_model("test_efficientnet", 3, None).state_dict()
    del good["conv_stem.weight"]
    save_state(good, bad)
    with pytest.raises(CheckpointError, match=r"does not fit test_efficientnet: 1 of the model's \d+ tensors are "
                                              r"missing \(first: conv_stem.weight\)"):
        resolve_weights("test_efficientnet", str(bad))
    with pytest.raises(FileNotFoundError, match="weights file not found: .*missing.pth"):
        resolve_weights("test_efficientnet", str(tmp_path / "missing.pth"))


def test_user_pth_checkpoint_roundtrip(tmp_path):
    model = create_model("test_efficientnet", 5, None)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ck.pth")
    state = resolve_weights("test_efficientnet", str(tmp_path / "ck.pth"))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_backbone_stage_main(tiny_workdir):
    assert backbone_main(["--model", "tiny"]) == 0
    state = load_state(tiny_workdir / "data/weights/tiny.safetensors")
    assert "conv_stem.weight" in state


@pytest.mark.parametrize("name, fallback", [("test_vit", False), ("swin_tiny_patch4_window7_224", True)])
def test_skeleton_with_a_loaded_state_is_the_model_with_that_state(name, fallback):
    """model_skeleton + a strict load gives what build + load gives, bit for bit; a model with buffers no state
    dict holds (Swin's relative position index, non-persistent) is built the ordinary way."""
    entry = {"timm_name": name, "weights": "none"}
    torch.manual_seed(0)
    built = model_from_config(entry, 3, None).eval()
    state = {k: v.clone() for k, v in built.state_dict().items()}
    torch.manual_seed(1)
    before = torch.get_rng_state()
    skeleton = model_skeleton(entry, 3)
    assert torch.equal(torch.get_rng_state(), before) != fallback   # no random init drawn, unless it fell back
    skeleton.load_state_dict(state, strict=True)
    skeleton.eval()
    for (n, a), (_, b) in zip(built.named_buffers(), skeleton.named_buffers()):
        assert torch.equal(a, b), n   # non-persistent buffers too
    x = torch.randn(2, *built.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(built(x), skeleton(x))
