"""The papers' training protocols in the loop, each against its official rule (issue 19).

Checkpoint selection (transfer_learning never selects the initial weights; wise-ft and model-soups keep
the last epoch), the three learning-rate schedules (timm's per-step cosine; wise-ft's ``cosine_lr``,
transcribed below; transfer_learning's per-epoch ``CosineAnnealingLR``), and mixup / CutMix through
timm's ``Mixup``. A synthetic task keeps the loop fast: 8 px images whose class is their bright
channel, and a model (channel means -> linear) that starts out perfect.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pipeline import compat
from pipeline.config import ParamsError, validate
from pipeline.data.augment import EvalTransform, InputTransforms, TrainTransform
from pipeline.data.shards import SplitData
from pipeline.training.loop import LoopConfig, train
from pipeline.training.mixing import Criterion, MixSpec
from pipeline.training.schedule import build_schedule, cosine_annealing_per_epoch

compat.apply()
from timm.data import Mixup  # noqa: E402
from timm.loss import SoftTargetCrossEntropy  # noqa: E402

K = 3
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# the whole 8 px image, unresampled, in training and evaluation
TRANSFORMS = InputTransforms(TrainTransform(8, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
                             EvalTransform(8, MEAN, STD))


def split(n: int, seed: int, shift: int = 0) -> SplitData:
    """Images whose bright channel is the class; labels shifted by ``shift`` (a wrong labelling)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    images = rng.integers(10, 40, size=(n, 8, 8, 3), dtype=np.uint8)
    images[np.arange(n), :, :, y] = rng.integers(180, 220, size=(n, 8, 8), dtype=np.uint8)
    return SplitData(images, pd.DataFrame({"label": (y + shift) % K}))


def perfect_model() -> nn.Module:
    """Channel means -> classes, initialised to read the bright channel: ID-val accuracy 1 before training."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, K))
    with torch.no_grad():
        model[2].weight.copy_(torch.eye(K) * 4)
        model[2].bias.zero_()
    return model


def cfg(**kw) -> LoopConfig:
    base = dict(epochs=3, batch_size=6, warmup_epochs=0.0, label_smoothing=0.0, grad_clip=0.0, bn="eval", seed=0,
                num_classes=K)
    return LoopConfig(**{**base, **kw})


class LrRecorder:
    """A hook: the lr of every group at every optimizer step (it runs inside the step, before the update)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer, self.lrs = optimizer, []

    def after_backward(self) -> None:
        self.lrs.append([g["lr"] for g in self.optimizer.param_groups])


def run(loop_cfg: LoopConfig, shift: int = 1, lr: float = 0.5, groups: int = 1):
    torch.manual_seed(0)
    model = perfect_model()
    weight, bias = model.parameters()
    param_groups = ([{"params": [weight], "lr": lr}, {"params": [bias], "lr": lr * 0.1}] if groups == 2
                    else [{"params": [weight, bias], "lr": lr}])
    opt = torch.optim.SGD(param_groups, lr=lr, momentum=0.9)
    rec = LrRecorder(opt)
    result = train(model, opt, split(24, 1, shift), split(12, 2), TRANSFORMS, loop_cfg, hooks=[rec])
    return result, rec.lrs, model


# --- checkpoint selection ----------------------------------------------------------------------------------

def test_the_initial_weights_are_never_selected():
    """transfer_learning evaluates the initial model and only logs it: stats.tsv and the best checkpoint start
    with the first trained epoch (AnanyaKumar/transfer_learning@13c3e2b:unlabeled_extrapolation/baseline_train.py:
    614-623, 630, 687-698: ``if test_acc > best_acc`` after each epoch)."""
    result, _, _ = run(cfg(select="best_id_val"))   # wrong train labels: training only hurts
    accs = [h["id_val_acc"] for h in result.history]
    assert accs[0] == 1.0 and max(accs[1:]) < 1.0, accs   # the case: the initial weights are the best on ID val
    assert result.best_epoch >= 1
    trained = accs[1:]
    assert result.best_epoch == 1 + trained.index(max(trained))   # the first best trained epoch (strict >)
    assert result.best_val_acc == max(trained)


def test_last_keeps_the_final_epoch():
    """wise-ft returns the last epoch's checkpoint (mlfoundations/wise-ft@58b7a4b:src/models/finetune.py:106-120)."""
    result, _, model = run(cfg(select="last"))
    assert result.best_epoch == 3 and result.best_val_acc == result.history[-1]["id_val_acc"]
    assert all(torch.equal(result.best_state[k], v) for k, v in model.state_dict().items())


def test_a_good_run_selects_as_before():
    """With the right labels the best epoch is a trained one, as it was when epoch 0 was a candidate."""
    result, _, _ = run(cfg(select="best_id_val"), shift=0, lr=0.05)
    assert result.best_epoch >= 1 and result.best_val_acc == 1.0


# --- schedules ---------------------------------------------------------------------------------------------

def wiseft_cosine_lr(optimizer, base_lrs, warmup_length, steps):
    """mlfoundations/wise-ft@58b7a4b:src/models/utils.py:11-32, transcribed (assign_learning_rate,
    _warmup_lr, cosine_lr); the training loop calls ``scheduler(step)`` before every optimizer step
    (mlfoundations/wise-ft@58b7a4b:src/models/finetune.py:74-75), step = i + epoch * num_batches."""
    def assign_learning_rate(param_group, new_lr):
        param_group["lr"] = new_lr

    def _warmup_lr(base_lr, warmup_length, step):
        return base_lr * (step + 1) / warmup_length

    if not isinstance(base_lrs, list):
        base_lrs = [base_lrs for _ in optimizer.param_groups]
    assert len(base_lrs) == len(optimizer.param_groups)

    def _lr_adjuster(step):
        for param_group, base_lr in zip(optimizer.param_groups, base_lrs):
            if step < warmup_length:
                lr = _warmup_lr(base_lr, warmup_length, step)
            else:
                e = step - warmup_length
                es = steps - warmup_length
                lr = 0.5 * (1 + np.cos(np.pi * e / es)) * base_lr
            assign_learning_rate(param_group, lr)
    return _lr_adjuster


def scratch_optimizer(lrs: list[float]) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs], lr=lrs[0])


def test_cosine_lr_is_wiseft_s_to_the_bit():
    epochs, per_epoch, warmup = 3, 4, 5   # warmup_steps: 5 of 12 steps
    result, lrs, _ = run(cfg(schedule="cosine_lr", warmup_steps=warmup, epochs=epochs), groups=2)
    official = scratch_optimizer([0.5, 0.05])
    adjust = wiseft_cosine_lr(official, [0.5, 0.05], warmup, epochs * per_epoch)
    want = []
    for step in range(epochs * per_epoch):
        adjust(step)
        want.append([g["lr"] for g in official.param_groups])
    assert lrs == want   # exact floats, every step and group
    assert lrs[0][0] == 0.5 / warmup   # the first step is not at lr 0 (timm's warmup starts there)


def test_cosine_per_epoch_is_torch_s_cosine_annealing_stepped_per_epoch():
    """transfer_learning: CosineAnnealingLR(T_max=epochs), scheduler.step() once after every epoch, no warmup
    (AnanyaKumar/transfer_learning@13c3e2b:unlabeled_extrapolation/baseline_train.py:604-607, 659-660)."""
    epochs, per_epoch = 3, 4
    result, lrs, _ = run(cfg(schedule="cosine_per_epoch", epochs=epochs), groups=2)
    official = scratch_optimizer([0.5, 0.05])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(official, T_max=epochs)
    want = []
    for _ in range(epochs):
        want += [[g["lr"] for g in official.param_groups]] * per_epoch
        official.step()
        sched.step()
    assert lrs == want
    assert [h["lr"] for h in result.history[1:]] == [cosine_annealing_per_epoch(0.5, epochs)[e] for e in (1, 2, 3)]


def test_cosine_is_timms_scheduler_as_before():
    from timm.scheduler import CosineLRScheduler

    result, lrs, _ = run(cfg(warmup_epochs=0.5))
    official = scratch_optimizer([0.5])
    sched = CosineLRScheduler(official, t_initial=12 - 2, warmup_t=2, warmup_prefix=True, warmup_lr_init=0.0,
                              lr_min=0.0, t_in_epochs=False)
    want = []
    for step in range(12):
        want.append([official.param_groups[0]["lr"]])
        sched.step_update(step + 1)
    assert lrs == want and lrs[0] == [0.0]


def test_per_epoch_schedule_has_no_warmup_and_warmup_steps_must_end():
    opt = scratch_optimizer([0.1])
    with pytest.raises(ValueError, match="cosine_per_epoch has no warmup"):
        build_schedule(opt, "cosine_per_epoch", 2, 4, warmup=1)
    with pytest.raises(ValueError, match="warmup_steps 12 is not shorter than training"):
        run(cfg(warmup_steps=12))


# --- mixup / CutMix ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [MixSpec(mixup_alpha=0.8), MixSpec(cutmix_alpha=1.0),
                                  MixSpec(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, mode="elem")])
def test_mixing_is_timms_mixup_and_soft_target_loss(spec):
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    crit = Criterion(spec, label_smoothing=0.1, num_classes=K)
    np.random.seed(3)
    mixed, target = crit.mix(x.clone(), y)
    np.random.seed(3)
    official = Mixup(mixup_alpha=spec.mixup_alpha, cutmix_alpha=spec.cutmix_alpha, prob=spec.prob,
                     switch_prob=spec.switch_prob, mode=spec.mode, label_smoothing=0.1, num_classes=K)
    ref_x, ref_t = official(x.clone(), y)
    assert torch.equal(mixed, ref_x) and torch.equal(target, ref_t) and not torch.equal(mixed, x)
    logits = torch.randn(6, K, generator=torch.Generator().manual_seed(1))
    assert torch.equal(crit.loss(logits, target), SoftTargetCrossEntropy()(logits, ref_t))


def test_label_smoothing_is_applied_once_with_mixing():
    """With mixing on, the smoothing is Mixup's ((1 - s) onehot + s / K), and the loss does not smooth again."""
    crit = Criterion(MixSpec(mixup_alpha=1.0, prob=0.0), label_smoothing=0.3, num_classes=K)   # never mixes
    y = torch.tensor([0, 1, 2, 0])
    _, target = crit.mix(torch.zeros(4, 3, 8, 8), y)
    torch.testing.assert_close(target, torch.nn.functional.one_hot(y, K) * 0.7 + 0.1)
    logits = torch.randn(4, K, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(crit.loss(logits, target), nn.functional.cross_entropy(logits, y, label_smoothing=0.3))
    plain = Criterion(MixSpec(), label_smoothing=0.3, num_classes=K)
    assert plain.mix(torch.zeros(4, 3), y)[1] is y


def test_training_with_mixup_is_reproducible_and_differs():
    spec = MixSpec(mixup_alpha=0.4, cutmix_alpha=1.0)
    np.random.seed(0)
    first, _, _ = run(cfg(mix=spec, epochs=2), shift=0, lr=0.05)
    np.random.seed(0)
    again, _, _ = run(cfg(mix=spec, epochs=2), shift=0, lr=0.05)
    plain, _, _ = run(cfg(epochs=2), shift=0, lr=0.05)
    assert all(torch.equal(first.best_state[k], again.best_state[k]) for k in first.best_state)
    assert [h["train_loss"] for h in first.history[1:]] != [h["train_loss"] for h in plain.history[1:]]
    with pytest.raises(ValueError, match="is odd"):
        run(cfg(mix=spec, batch_size=5))


# --- the settings refuse what a protocol cannot run --------------------------------------------------------

@pytest.fixture
def params():
    import yaml
    from conftest import REPO

    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_protocol_settings_are_validated(params):
    params["methods"]["lpft"]["select"] = "best"
    with pytest.raises(ParamsError, match=r"methods\.lpft\.select: 'best' is not one of best_id_val, last"):
        validate(params)
    params["methods"]["lpft"]["select"] = "last"
    params["methods"]["lpft"]["schedule"] = "cosine_per_epoch"
    with pytest.raises(ParamsError, match=r"finetune\.warmup_epochs: schedule cosine_per_epoch .* has no warmup"):
        validate(params)
    params["methods"]["lpft"]["warmup_epochs"] = 0
    validate(params)
    params["methods"]["lpft"]["mixup_alpha"] = 0.2
    params["methods"]["lpft"]["batch_size"] = 30
    params["methods"]["lpft"]["accumulate"] = 2
    with pytest.raises(ParamsError, match=r"methods\.lpft\.batch_size: mixup/CutMix pairs images, but 30"):
        validate(params)
    params["methods"]["lpft"]["batch_size"] = 32
    validate(params)
    params["finetune"]["randaugment"] = "rand9"
    with pytest.raises(ParamsError, match=r"finetune\.randaugment: 'rand9'"):
        validate(params)


def test_randaugment_is_parsed_by_timm_and_refused_until_applied(params):
    from pipeline.tools.preflight import _check_randaugment, parse_randaugment

    assert parse_randaugment("rand-m9-n2-mstd0.5")["num_layers"] == 2
    assert parse_randaugment("rand-m17-n0")["magnitude"] == 17
    for bad in ("rand-x9", "rand-m9-nX"):
        with pytest.raises(ParamsError, match=rf"methods\.m\.randaugment: '{bad}' is not a timm RandAugment string"):
            _check_randaugment(bad, "methods.m.randaugment", "params.yaml")
    with pytest.raises(ParamsError, match="parses .2 ops per image, magnitude 9. but RandAugment is not applied"):
        _check_randaugment("rand-m9-n2", "methods.m.randaugment", "params.yaml")


def test_history_still_logs_the_initial_model():
    result, _, _ = run(cfg())
    assert result.history[0]["epoch"] == 0 and result.history[0]["id_val_acc"] == 1.0
    assert math.isnan(result.history[0]["train_loss"])
