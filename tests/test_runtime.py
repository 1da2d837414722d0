"""Accelerator settings of a run: precision, gradient accumulation, activation checkpointing, no host syncs."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pipeline import compat
from pipeline.config.settings import default_settings
from pipeline.data.augment import EvalTransform, InputTransforms, TrainTransform
from pipeline.data.shards import SplitData
from pipeline.methods.assemble import assemble
from pipeline.methods.registry import OPTIMIZERS
from pipeline.training.loop import LoopConfig, train
from pipeline.training.runtime import Runtime, resolve

compat.apply()
import timm  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
LR = {"adamw": 1e-3, "sgd": 1e-2, "adamp": 1e-3, "sgdp": 1e-2, "spd": 1e-3}


def split(n: int = 32, size: int = 32, classes: int = 3, seed: int = 0) -> SplitData:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return SplitData(images, pd.DataFrame({"label": rng.integers(0, classes, n)}))


def model(name: str = "test_efficientnet", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    kw = {"img_size": 32} if "vit" in name else {}
    return timm.create_model(name, pretrained=False, num_classes=3, **kw)


def loop_cfg(**kw) -> LoopConfig:
    base = dict(epochs=1, batch_size=8, warmup_epochs=0.0, label_smoothing=0.0, grad_clip=0.0, bn="eval", seed=0)
    return LoopConfig(**{**base, **kw})


def run(net, settings: dict, runtime: Runtime, cfg: LoopConfig, data: SplitData):
    method = assemble(net, {**default_settings(), **settings}, ("classifier.weight", "classifier.bias"))
    mean, std = (0.5,) * 3, (0.25,) * 3
    size = data.images.sizes[0, 0]
    transforms = InputTransforms(TrainTransform(size, mean, std, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
                                 EvalTransform(size, mean, std))
    return train(net, method.optimizer, data, data, transforms, cfg, hooks=method.hooks, runtime=runtime)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("extra", [{}, {"l2sp_alpha": 0.1, "l2sp_beta": 0.01}, {"freeze": "embed"}],
                         ids=["plain", "l2sp", "freeze"])
def test_bf16_autocast_trains_every_method_close_to_fp32(optimizer, extra):
    data = split()
    settings = {"optimizer": optimizer, "lr": LR[optimizer], "spd_lambda": 0.5, **extra}
    if optimizer == "spd":
        settings.pop("weight_decay", None)
    cpu = torch.device("cpu")
    weights = {}
    for precision in ("fp32", "bf16"):
        net = model()
        result = run(net, settings, Runtime(cpu, precision), loop_cfg(epochs=2), data)
        weights[precision] = {k: v for k, v in net.state_dict().items() if v.is_floating_point()}
        assert all(torch.isfinite(v).all() for v in weights[precision].values())
        assert all(v.dtype == torch.float32 for v in weights[precision].values())   # weights stay fp32
        assert len(result.history) == 3
    start = {k: v for k, v in model().state_dict().items() if v.is_floating_point()}
    moved = sum(float((weights["fp32"][k] - start[k]).norm()) for k in start)
    gap = sum(float((weights["bf16"][k] - weights["fp32"][k]).norm()) for k in start)
    assert moved > 0 and gap < 0.25 * moved, (gap, moved)


def test_fp16_optimizers_and_regularisers_see_unscaled_gradients():
    cpu = torch.device("cpu")
    assert resolve({**default_settings(), "precision": "fp16"}, cpu, model()).scaler is not None
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 3))
    # a scale that does not overflow this tiny net's fp16 backward (the default 2^16 would: see below)
    runtime = Runtime(cpu, "fp16", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))
    method = assemble(net, {**default_settings(), "optimizer": "sgd", "lr": 1e-2, "l2sp_alpha": 0.0})
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    reference = copy.deepcopy(net)
    F.cross_entropy(reference(x), y).backward()
    with runtime.autocast():
        loss = F.cross_entropy(net(x), y)
    runtime.backward(loss)
    scaled = {n: p.grad.clone() for n, p in net.named_parameters()}
    runtime.unscale(method.optimizer)
    for (n, p), q in zip(net.named_parameters(), reference.parameters()):
        # unscaled: fp32's gradient up to fp16 rounding, not 2^16 times it
        torch.testing.assert_close(p.grad, q.grad, atol=2e-3, rtol=0.1), n
        if float(q.grad.abs().max()) > 1e-3:
            assert float(scaled[n].abs().max()) > 100 * float(p.grad.abs().max())


def test_fp16_overflow_skips_the_step_and_lowers_the_scale():
    cpu = torch.device("cpu")
    net = model()
    runtime = resolve({**default_settings(), "precision": "fp16"}, cpu, net)
    method = assemble(net, {**default_settings(), "optimizer": "adamw", "lr": 1e-3})
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    scale = runtime.scaler.get_scale()
    with runtime.autocast():
        loss = F.cross_entropy(net(torch.randn(4, 3, 32, 32) * 1e4), torch.tensor([0, 1, 2, 0]))
    runtime.backward(loss * 1e4)
    runtime.unscale(method.optimizer)
    runtime.step(method.optimizer)
    assert runtime.scaler.get_scale() < scale
    assert all(torch.equal(before[n], p) for n, p in net.named_parameters())   # the step was skipped


def test_accumulated_micro_batches_equal_one_step_on_the_whole_batch():
    """Frozen BatchNorm statistics, no dropout: k micro-batches give the gradient of the whole batch."""
    data = split(32)
    cpu = torch.device("cpu")
    states = []
    for k in (1, 2, 4):
        net = model()
        run(net, {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}, Runtime(cpu), loop_cfg(batch_size=16,
                                                                                               accumulate=k), data)
        states.append(net.state_dict())
    for other in states[1:]:
        for key, value in states[0].items():
            if value.is_floating_point():
                torch.testing.assert_close(other[key], value, atol=1e-5, rtol=1e-4), key
    with pytest.raises(ValueError, match="accumulate 3 does not split a batch of 16"):
        run(model(), {"optimizer": "sgd", "lr": 0.05}, Runtime(cpu), loop_cfg(batch_size=16, accumulate=3), data)


def test_activation_checkpointing_changes_memory_not_gradients():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    grads = []
    for on in (False, True):
        net = model("test_vit").train()
        runtime = resolve({**default_settings(), "grad_checkpointing": on}, torch.device("cpu"), net)
        from pipeline.training.runtime import prepare

        prepare(net, runtime)
        assert all(getattr(m, "grad_checkpointing", on) == on for m in [net])
        F.cross_entropy(net(x), torch.tensor([0, 1])).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, atol=1e-6, rtol=1e-5)


def test_defaults_resolve_per_device():
    net = model()
    cpu = resolve(default_settings(), torch.device("cpu"), net)
    assert (cpu.precision, cpu.channels_last, cpu.compile, cpu.deterministic) == ("fp32", False, False, True)
    assert cpu.scaler is None


@CUDA
def test_no_host_sync_inside_a_training_step_on_cuda():
    """torch.cuda.set_sync_debug_mode("error") around every step (LoopConfig.sync_debug): a sync would raise."""
    data = split(64)
    device = torch.device("cuda")
    net = model().to(device)
    runtime = resolve(default_settings(), device, net)
    result = run(net, {"optimizer": "adamw", "lr": 1e-3}, runtime,
                 loop_cfg(batch_size=16, epochs=2, check_every=10_000, log_every_s=1e9, sync_debug=True), data)
    assert len(result.history) == 3


def test_progress_lines_and_live_curves(tmp_path, monkeypatch, caplog):
    from pipeline.training.monitor import LIVE_ENV, Monitor

    monkeypatch.setenv(LIVE_ENV, "1")
    cpu = torch.device("cpu")
    monitor = Monitor("live", cpu, every_s=0.0, live_dir=tmp_path / "live")
    with caplog.at_level("INFO", logger="pipeline.training.monitor"):
        result = run(model(), {"optimizer": "adamw", "lr": 1e-3}, Runtime(cpu), loop_cfg(epochs=2, log_every_s=0.0),
                     split())
        # run() builds its own monitor; this one is driven by hand, as the loop does
        for step in (1, 2, 3):
            monitor.step(step, 8, torch.tensor(0.5 * step), 1e-3)
        monitor.close()
    lines = [r.getMessage() for r in caplog.records if "img/s" in r.getMessage()]
    assert lines and all("loss" in line and "lr" in line and "MiB" in line for line in lines)
    curve = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert curve[0].split("\t")[:2] == ["step", "loss"] and len(curve) == 4
    cost = result.cost
    assert cost["images_per_s"] > 0 and cost["peak_memory_bytes"] > 0 and cost["gpu_hours"] == 0.0
