"""The input transforms (pipeline.data.augment, resample) against torchvision, timm and open_clip, on real photos.

Bounds (the issue's): within 1 grey level on average and 8 on any pixel of the reference, for the
training crop (torchvision.transforms.v2's ``resized_crop``, fixed boxes), the eval transform of timm
models (``create_transform(**resolve_data_config(model))``, PIL) and open_clip's preprocess, on
non-square photographs of several sizes, with both resampling executors (``loop``: the CPU path;
``matmul``: the CUDA path, run here on the CPU). The crop draws follow ``RandomResizedCrop.get_params``.
"""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import compat

compat.apply()
from scipy import stats  # noqa: E402
from torchvision.transforms import InterpolationMode, RandomResizedCrop  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from pipeline.data.augment import ATTEMPTS, Crops, EvalTransform, TrainTransform, draw_crops, normalize  # noqa: E402
from pipeline.data.loader import layout  # noqa: E402
from pipeline.data.resample import Images, Plan, resample  # noqa: E402

PIXELS = ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))   # mean/std that leave values in grey levels
METHODS = ["loop", "matmul"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Real photographs (scikit-learn's and scikit-image's), non-square, landscape and portrait, 120-640 px."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images                        # 427 x 640
    coffee, chelsea, rocket = skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()
    small = np.asarray(Image.fromarray(rocket).resize((180, 120), Image.Resampling.BICUBIC))
    return [china, flower[:, 100:433], coffee, chelsea[:, 50:350], small, rocket[:, :300]]


def batch_of(images: list[np.ndarray], device: str = "cpu") -> Images:
    """The padded batch the loader builds (portrait images transposed)."""
    sizes = np.array([a.shape[:2] for a in images])
    stored, transposed, pad = layout(sizes)
    data = torch.zeros((len(images), *pad, 3), dtype=torch.uint8)
    for j, a in enumerate(images):
        h, w = stored[j]
        data[j, :h, :w] = torch.from_numpy(a.transpose(1, 0, 2) if transposed[j] else a)
    return Images(data.to(device), torch.from_numpy(stored), torch.from_numpy(transposed))


def gap(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    d = (got.double() - want.double()).abs()
    return float(d.mean()), float(d.max())


def assert_close_pixels(got: torch.Tensor, want: torch.Tensor) -> None:
    mean, worst = gap(got, want)
    assert mean <= 1.0 and worst <= 8.0, f"mean {mean:.3f}, max {worst:.1f} grey levels"


def fixed_crops(shapes: list[tuple[int, int]]) -> Crops:
    """Boxes of every kind per image: most of it, a corner sliver, a small one, the whole image; some flipped."""
    rows = []
    for k, (h, w) in enumerate(shapes):
        boxes = [(h // 7, w // 5, h - h // 4, w - w // 3), (h - 9, 0, 9, 13), (h // 3, w // 2, h // 5 + 1, w // 6 + 1),
                 (0, 0, h, w)]
        rows.append(boxes[k % len(boxes)])
    t = torch.tensor(rows, dtype=torch.int64)
    return Crops(t[:, 0], t[:, 1], t[:, 2], t[:, 3], torch.arange(len(rows)) % 2 == 1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_train_crop_equals_torchvision_resized_crop(photos, method, mode):
    images = photos * 4   # every box kind on every photo
    crops = fixed_crops([a.shape[:2] for a in images])
    got = TrainTransform(224, *PIXELS, interpolation=mode, method=method).apply(batch_of(images), crops)
    assert got.shape == (len(images), 3, 224, 224) and got.dtype == torch.float32
    for j, a in enumerate(images):
        want = TF.resized_crop(torch.from_numpy(a).permute(2, 0, 1), int(crops.top[j]), int(crops.left[j]),
                               int(crops.height[j]), int(crops.width[j]), [224, 224],
                               interpolation=InterpolationMode(mode), antialias=True)
        assert_close_pixels(got[j], want.flip(-1) if crops.flip[j] else want)


def test_the_two_executors_agree(photos):
    """The CPU loop and the batched matmul compute one function: a run's inputs are the same on any device."""
    crops = fixed_crops([a.shape[:2] for a in photos])
    for mode in ("bilinear", "bicubic"):
        a, b = (TrainTransform(96, *PIXELS, interpolation=mode, method=m).apply(batch_of(photos), crops)
                for m in METHODS)
        mean, worst = gap(a, b)
        assert mean < 0.05 and worst <= 2, (mode, mean, worst)


def timm_models():
    """timm models with different eval transforms: crop_pct 0.875 / 0.9 / 0.95 / 1, bilinear / bicubic, 224 / 384 px."""
    import timm

    names = ["resnet18.tv_in1k", "deit_tiny_patch16_224.fb_in1k", "resnet18.a1_in1k",
             "vit_tiny_patch16_384.augreg_in21k_ft_in1k"]
    with torch.device("meta"):   # the config only: no weights, no memory
        return {n: timm.create_model(n, pretrained=False) for n in names}


@pytest.mark.parametrize("method", METHODS)
def test_eval_transform_equals_timm(photos, method):
    from timm.data import create_transform, resolve_data_config

    from pipeline.models.transforms import eval_transform

    seen = set()
    for model in timm_models().values():
        ours = replace(eval_transform(model), method=method)
        seen.add((ours.crop_pct, ours.interpolation, ours.size))
        reference = create_transform(**resolve_data_config({}, model=model))
        got = ours(batch_of(photos))
        std = torch.tensor(ours.std).view(3, 1, 1) * 255
        for j, a in enumerate(photos):
            want = reference(Image.fromarray(a))   # normalised float CHW, from PIL
            assert_close_pixels(got[j] * std, want * std)
    assert len(seen) == 4   # four different transforms were compared


@pytest.mark.parametrize("entry", [{"open_clip": "ViT-B-16", "weights": "hub:openai"},            # shortest
                                   {"open_clip": "ViT-L-14-CLIPA", "weights": "hub:datacomp1b"}],   # squash, bilinear
                         ids=["shortest", "squash"])
def test_eval_transform_equals_open_clip_preprocess(photos, entry):
    """The classifier's transform against open_clip's own preprocess for the same config and tag."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    from pipeline.models.backbone import model_from_config
    from pipeline.models.openclip import create_clip, parse_weights
    from pipeline.models.transforms import eval_transform

    with torch.device("meta"):
        model = model_from_config(entry, 0, None)
        clip = create_clip(entry)
    tag = open_clip.get_pretrained_cfg(entry["open_clip"], parse_weights(entry["weights"])[1])
    cfg = merge_preprocess_dict(clip.visual.preprocess_cfg, tag)   # what create_model_and_transforms merges
    reference = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    ours = eval_transform(model)
    assert ours.crop_mode == {"shortest": "center", "squash": "squash"}[cfg["resize_mode"]]
    for method in METHODS:
        got = replace(ours, method=method)(batch_of(photos))
        std = torch.tensor(ours.std).view(3, 1, 1) * 255
        for j, a in enumerate(photos):
            assert_close_pixels(got[j] * std, reference(Image.fromarray(a)) * std)


def test_model_entry_overrides_the_eval_transform():
    import timm

    from pipeline.models.backbone import apply_overrides
    from pipeline.models.transforms import eval_transform, train_transform

    with torch.device("meta"):
        model = timm.create_model("resnet18.tv_in1k", pretrained=False)
    assert eval_transform(model) == EvalTransform(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875, "center",
                                                  "bilinear")
    apply_overrides(model, {"input_size": 96, "crop_pct": 1.0, "interpolation": "bicubic", "mean": [0.5] * 3,
                            "std": [0.25] * 3, "crop_mode": "squash"})
    ev = eval_transform(model)
    assert (ev.size, ev.resize, ev.interpolation, ev.mean, ev.std, ev.crop_mode) == (
        96, 96, "bicubic", (0.5,) * 3, (0.25,) * 3, "squash")
    tr = train_transform(model, {"crop_scale": [0.5, 1.0], "ratio": [0.9, 1.1], "hflip": True,
                                 "interpolation": "bilinear"})
    assert (tr.size, tr.scale, tr.ratio, tr.hflip, tr.mean) == (96, (0.5, 1.0), (0.9, 1.1), True, (0.5,) * 3)


def test_eval_resize_and_centre_crop_geometry():
    """torchvision's Resize(int): the longer side truncated; CenterCrop: offsets rounded half to even."""
    ev = EvalTransform(224, *PIXELS, crop_pct=0.875)
    plan = ev.plan(torch.tensor([[427, 640], [640, 427], [256, 256], [257, 300]]))
    assert ev.resize == 256
    assert plan.resized.tolist() == [[256, 383], [383, 256], [256, 256], [256, 298]]
    assert plan.first.tolist() == [[16, 80], [80, 16], [16, 16], [16, 37]]
    assert EvalTransform(224, *PIXELS, crop_pct=0.9).resize == 248


@pytest.mark.parametrize("shape", [(256, 341), (341, 256), (256, 256), (64, 640)])
def test_crop_distribution_matches_get_params(shape):
    """Area fraction, log aspect ratio and box centre follow RandomResizedCrop.get_params (two-sample KS tests),
    and so does the fallback (the 64 x 640 image often exhausts the ten attempts)."""
    n, scale, ratio = 3000, (0.08, 1.0), (3 / 4, 4 / 3)
    h, w = shape
    crops = draw_crops(torch.tensor([shape] * n), scale, ratio, False, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    img = torch.empty(3, h, w)
    ref = torch.tensor([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])

    def features(top, left, height, width):
        top, left, height, width = (torch.as_tensor(v, dtype=torch.float64) for v in (top, left, height, width))
        return {"area": height * width / (h * w), "log_ratio": (width / height).log(),
                "centre_y": (top + height / 2) / h, "centre_x": (left + width / 2) / w}

    ours = features(crops.top, crops.left, crops.height, crops.width)
    theirs = features(ref[:, 0], ref[:, 1], ref[:, 2], ref[:, 3])
    for key in ours:
        p = stats.ks_2samp(ours[key].numpy(), theirs[key].numpy()).pvalue
        assert p > 1e-3, f"{key}: KS p = {p:.2g}"
    assert (crops.top >= 0).all() and (crops.left >= 0).all()
    assert (crops.top + crops.height <= h).all() and (crops.left + crops.width <= w).all()
    # the fallback (centre crop of the clamped ratio) happens as often
    fell = ((crops.height == h) & (crops.top == 0)).double().mean()
    fell_ref = ((ref[:, 2] == h) & (ref[:, 0] == 0)).double().mean()
    assert abs(float(fell - fell_ref)) < 0.03


def test_fallback_is_torchvisions_centre_crop():
    """No box of scale 1 and ratio 1 fits a 300 x 400 image: the centre 300 x 300 square (resize + centre crop)."""
    crops = draw_crops(torch.tensor([[300, 400], [400, 300], [300, 300]]), (1.0, 1.0), (1.0, 1.0), False,
                       torch.Generator().manual_seed(0))
    assert crops.top.tolist() == [0, 50, 0] and crops.left.tolist() == [50, 0, 0]
    assert crops.height.tolist() == [300, 300, 300] and crops.width.tolist() == [300, 300, 300]


def test_draws_are_a_fixed_sequence_of_generator_calls():
    """The documented calls, whatever the image sizes: the generator's state after a batch is device-independent."""
    shapes = torch.tensor([[256, 341], [64, 640], [300, 300]])
    g, ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    crops = draw_crops(shapes, (0.08, 1.0), (3 / 4, 4 / 3), True, g)
    torch.empty((3, ATTEMPTS), dtype=torch.float64).uniform_(0.08, 1.0, generator=ref)
    torch.empty((3, ATTEMPTS), dtype=torch.float64).uniform_(math.log(3 / 4), math.log(4 / 3), generator=ref)
    torch.rand(3, dtype=torch.float64, generator=ref)
    torch.rand(3, dtype=torch.float64, generator=ref)
    flips = torch.rand(3, generator=ref) < 0.5
    assert torch.equal(g.get_state(), ref.get_state()) and torch.equal(crops.flip, flips)
    again = draw_crops(torch.tensor([[32, 32]] * 3), (0.08, 1.0), (3 / 4, 4 / 3), True,
                       torch.Generator().manual_seed(5))
    assert torch.equal(again.flip, crops.flip)   # sizes change the boxes, never the draws
    assert len(crops[1:]) == 2 and crops[1:].height.tolist() == crops.height[1:].tolist()


def test_normalize_and_identity_resize_are_exact():
    x = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    want = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x, mean, std), want, atol=1e-6, rtol=0)
    images = Images.stack(x.permute(0, 2, 3, 1).contiguous())
    for method in METHODS:   # the digits demo: 40 px stored, 40 px input, crop_pct 1
        out = EvalTransform(40, mean, std, method=method)(images)
        torch.testing.assert_close(out, want, atol=1e-6, rtol=0)


def test_plan_of_a_flip_reads_columns_backwards():
    x = torch.arange(2 * 5 * 7 * 3, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(2, 5, 7, 3)
    plan = Plan(torch.zeros((2, 2), dtype=torch.int64), torch.tensor([[5, 7]] * 2), torch.tensor([[5, 7]] * 2),
                torch.zeros((2, 2), dtype=torch.int64), torch.tensor([False, True]), (5, 7))
    for method in METHODS:
        out = resample(Images.stack(x), plan, "bilinear", method).to(torch.uint8)
        assert torch.equal(out[0], x[0].permute(2, 0, 1)) and torch.equal(out[1], x[1].permute(2, 0, 1).flip(-1))


@CUDA
def test_cuda_matches_cpu(photos):
    crops = fixed_crops([a.shape[:2] for a in photos])
    for mode in ("bilinear", "bicubic"):
        cpu = TrainTransform(224, *PIXELS, interpolation=mode).apply(batch_of(photos), crops)
        gpu = TrainTransform(224, *PIXELS, interpolation=mode).apply(batch_of(photos, "cuda"), crops)
        mean, worst = gap(cpu, gpu.cpu())
        assert mean < 0.05 and worst <= 2, (mode, mean, worst)
        ev = EvalTransform(224, *PIXELS, crop_pct=0.875, interpolation=mode)
        mean, worst = gap(ev(batch_of(photos)), ev(batch_of(photos, "cuda")).cpu())
        assert mean < 0.05 and worst <= 2, (mode, mean, worst)
