"""Batched device-side crop/flip/normalise (pipeline.data.augment) against a per-image reference."""
import pytest
import torch
import torch.nn.functional as F

from pipeline.data.augment import Augment, Crops, draw_crops, normalize, resized_crop

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PIXELS = ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))   # mean/std that leave values in grey levels
SIZES = [(32, 32), (40, 40), (37, 53), (64, 31), (5, 5), (1, 7), (96, 96)]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def reference(images: torch.Tensor, crops: Crops) -> torch.Tensor:
    """One image at a time: crop, ``F.interpolate`` in float (bilinear, align_corners=False), flip."""
    h, w = images.shape[1:3]
    out = []
    for i in range(len(images)):
        s, t, left = int(crops.side[i]), int(crops.top[i]), int(crops.left[i])
        crop = images[i, t:t + s, left:left + s].permute(2, 0, 1).float()[None]
        y = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
        out.append(y.flip(-1) if crops.flip[i] else y)
    return torch.stack(out)


def batch(n: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", SIZES)
def test_matches_per_image_reference(size):
    gen = torch.Generator().manual_seed(sum(size))
    x = batch(48, size)
    crops = draw_crops(48, size, (0.01, 1.0), True, gen)
    got = resized_crop(x, crops, *PIXELS)
    torch.testing.assert_close(got, reference(x, crops), atol=0.01, rtol=0)   # of 255 grey levels
    normed = resized_crop(x, crops, MEAN, STD)
    want = (reference(x, crops) / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normed, want, atol=2e-4, rtol=0)


def test_extreme_boxes():
    """1-pixel boxes, boxes in every corner, the whole image: exactly the interpolate semantics."""
    h = w = 24
    x = batch(8, (h, w), seed=1)
    crops = Crops(side=torch.tensor([1, 1, 2, 23, 23, 24, 24, 12]), top=torch.tensor([0, 23, 22, 0, 1, 0, 0, 6]),
                  left=torch.tensor([23, 0, 22, 1, 0, 0, 0, 5]),
                  flip=torch.tensor([False, True, False, True, False, False, True, True]))
    torch.testing.assert_close(resized_crop(x, crops, *PIXELS), reference(x, crops), atol=0.01, rtol=0)


def test_identity_is_exact_and_skips_resampling(monkeypatch):
    x = batch(16, (40, 40))
    g_new, g_old = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    monkeypatch.setattr(F, "grid_sample", None)   # would fail if called
    got = Augment(MEAN, STD)(x, g_new)
    assert torch.equal(got, normalize(x, MEAN, STD))
    draw_crops(16, (40, 40), (1.0, 1.0), False, g_old)
    assert torch.equal(g_new.get_state(), g_old.get_state())   # the draws still happen


def test_flips_are_exact():
    x = batch(16, (32, 32))
    gen = torch.Generator().manual_seed(4)
    flip_only = draw_crops(16, (32, 32), (1.0, 1.0), True, gen)
    assert flip_only.flip.any() and not flip_only.flip.all()
    want = torch.where(flip_only.flip.view(-1, 1, 1, 1), x.flip(2), x)
    assert torch.equal(resized_crop(x, flip_only, MEAN, STD), normalize(want, MEAN, STD))
    crops = draw_crops(16, (32, 32), (0.1, 0.9), False, gen)
    mirrored = Crops(crops.side, crops.top, crops.left, torch.ones(16, dtype=torch.bool))
    assert torch.equal(resized_crop(x, mirrored, MEAN, STD), resized_crop(x, crops, MEAN, STD).flip(-1))


def test_same_generator_state_same_output_and_resume():
    x = batch(24, (40, 40))
    aug = Augment(MEAN, STD, scale=(0.08, 1.0), hflip=True)
    gen = torch.Generator().manual_seed(0)
    aug(x, gen)
    saved = gen.get_state()   # a checkpoint after step 1
    run = [aug(x, gen) for _ in range(3)]
    gen.set_state(saved)
    resumed = [aug(x, gen) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(run, resumed))


def test_draws_do_not_depend_on_the_images():
    """The generator advances by the batch size alone: n uniform + 3n rand draws (2n without flips)."""
    for hflip, calls in [(True, 3), (False, 2)]:
        gen, twin = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        Augment(MEAN, STD, scale=(0.3, 1.0), hflip=hflip)(batch(10, (32, 32)), gen)
        torch.empty(10).uniform_(0.3, 1.0, generator=twin)
        for _ in range(calls):
            torch.rand(10, generator=twin)
        assert torch.equal(gen.get_state(), twin.get_state())


def test_ddp_slices_of_the_global_draws():
    x = batch(16, (32, 32))
    crops = draw_crops(16, (32, 32), (0.2, 1.0), True, torch.Generator().manual_seed(2))
    whole = resized_crop(x, crops, MEAN, STD)
    assert torch.equal(resized_crop(x[8:], crops[8:], MEAN, STD), whole[8:])


def test_dtype_memory_format_and_layout():
    x = batch(8, (32, 32))
    crops = draw_crops(8, (32, 32), (0.2, 1.0), True, torch.Generator().manual_seed(6))
    ref = resized_crop(x, crops, MEAN, STD)
    assert ref.shape == (8, 3, 32, 32) and ref.dtype == torch.float32 and ref.is_contiguous()
    out = resized_crop(x, crops, MEAN, STD, dtype=torch.bfloat16, memory_format=torch.channels_last)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, ref.to(torch.bfloat16))   # computed in float32, rounded once
    nchw = x.permute(0, 3, 1, 2).contiguous()
    assert torch.equal(resized_crop(nchw, crops, MEAN, STD, layout="NCHW"), ref)
    ev = normalize(nchw, MEAN, STD, layout="NCHW", dtype=torch.bfloat16, memory_format=torch.channels_last)
    assert ev.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ev, normalize(x, MEAN, STD).to(torch.bfloat16))
    aug = Augment(MEAN, STD, layout="NCHW", dtype=torch.float16)
    assert aug.size(nchw) == (32, 32) and aug.eval(nchw).dtype == torch.float16


def test_normalize_exact():
    x = batch(4, (16, 16))
    got = normalize(x, MEAN, STD)
    want = (x.permute(0, 3, 1, 2).double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)   # a few float32 ulps


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(2, 8, 8, 3), MEAN, STD)
    crops = draw_crops(3, (8, 8), (0.5, 1.0), False, torch.Generator())
    with pytest.raises(ValueError, match="3 crops for 2 images"):
        resized_crop(batch(2, (8, 8)), crops, MEAN, STD)


@CUDA
def test_cuda_matches_cpu_and_never_syncs():
    x = batch(32, (40, 40))
    aug = Augment(MEAN, STD, scale=(0.08, 1.0), hflip=True, dtype=torch.bfloat16, memory_format=torch.channels_last)
    g_cpu, g_gpu = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    want = aug(x, g_cpu)
    xd = x.cuda()
    aug(xd, torch.Generator().manual_seed(0))   # warm-up: constants cached, pinned blocks allocated
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = aug(xd, g_gpu)
        ev = aug.eval(xd)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(g_cpu.get_state(), g_gpu.get_state())
    torch.testing.assert_close(got.float().cpu(), want.float(), atol=0.02, rtol=0.01)   # bf16 rounding
    torch.testing.assert_close(ev.float().cpu(), aug.eval(x).float(), atol=1e-2, rtol=1e-2)
