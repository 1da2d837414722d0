"""The step schedule (schedule: multistep), step for step against torch's MultiStepLR stepped once per epoch."""
import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_params

from pipeline.config import ParamsError, load_params
from pipeline.training.multistep import multistep_scheduler

EPOCHS, STEPS, MILESTONES, FACTOR = 12, 5, [4, 9], 0.1


def optimizer(lrs=(0.1, 0.02)) -> torch.optim.SGD:
    """Two groups at different lrs, as layer-wise factors make them."""
    return torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs], lr=lrs[0],
                           momentum=0.9)


def torch_per_epoch(lrs, epochs=EPOCHS, milestones=MILESTONES, factor=FACTOR) -> list[list[float]]:
    """The lrs of every epoch under torch's MultiStepLR, stepped after each epoch (Li et al.'s schedule)."""
    opt = optimizer(lrs)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=factor)
    out = []
    for _ in range(epochs):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def run_steps(opt, sched, total: int, start: int = 0) -> list[list[float]]:
    """The lrs steps ``start..total-1`` run at, as the loop drives the schedule (step_update(k) after step k)."""
    out = []
    for k in range(start, total):
        out.append([g["lr"] for g in opt.param_groups])
        sched.step_update(k + 1)
    return out


def test_every_step_runs_at_torchs_per_epoch_multisteplr():
    lrs = (0.1, 0.02)
    opt = optimizer(lrs)
    got = run_steps(opt, multistep_scheduler(opt, MILESTONES, FACTOR, EPOCHS, STEPS), EPOCHS * STEPS)
    want = [lr for lr in torch_per_epoch(lrs) for _ in range(STEPS)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the drops land on the first step of epochs 4 and 9, not one step early (timm's own convention)
    assert got[4 * STEPS - 1][0] == pytest.approx(0.1) and got[4 * STEPS][0] == pytest.approx(0.01)
    assert got[9 * STEPS][1] == pytest.approx(0.02 * 0.01)


def test_li_et_al_schedule_300_epochs():
    got = run_steps(opt := optimizer((0.01,)), multistep_scheduler(opt, [150, 250], 0.1, 300, 2), 600)
    assert [got[2 * e][0] for e in (0, 149, 150, 249, 250, 299)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])


def test_a_warmup_ramps_then_follows_the_milestones():
    opt = optimizer((0.1,))
    got = run_steps(opt, multistep_scheduler(opt, MILESTONES, FACTOR, EPOCHS, STEPS, warmup=4), EPOCHS * STEPS)
    assert [g[0] for g in got[:5]] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    np.testing.assert_allclose(got[5:], [lr for lr in torch_per_epoch((0.1,)) for _ in range(STEPS)][5:], rtol=1e-12)


def test_a_restored_optimizer_resumes_at_the_same_lr():
    """The schedule is a function of the step: a fresh scheduler on the restored optimizer continues it."""
    opt = optimizer()
    sched = multistep_scheduler(opt, MILESTONES, FACTOR, EPOCHS, STEPS)
    run_steps(opt, sched, 23)
    state = opt.state_dict()
    fresh = optimizer()
    sched2 = multistep_scheduler(fresh, MILESTONES, FACTOR, EPOCHS, STEPS)   # built before the restore, as the loop
    fresh.load_state_dict(state)
    sched2.step_update(23)
    rest = run_steps(fresh, sched2, EPOCHS * STEPS, start=23)
    np.testing.assert_allclose(rest, [lr for lr in torch_per_epoch((0.1, 0.02)) for _ in range(STEPS)][23:],
                               rtol=1e-12)


@pytest.mark.parametrize("milestones", [[4, 4], [9, 4], [0, 4], [4, 12]])
def test_bad_milestones_are_refused(milestones):
    with pytest.raises(ValueError, match="milestones"):
        multistep_scheduler(optimizer(), milestones, FACTOR, EPOCHS, STEPS)


def test_the_loop_logs_the_step_schedule(tiny_workdir):
    """train() through the finetune stage: the lr after each epoch is torch's for the next one."""
    import json

    import pandas as pd

    from pipeline.stages.backbone import main as backbone_main
    from pipeline.stages.finetune import main as finetune_main
    from pipeline.stages.prepare_data import main as prepare_main

    cfg = tiny_params()
    cfg["finetune"].update(epochs=3, warmup_epochs=0, schedule="multistep", milestones=[1, 2],
                           milestone_factor=0.5)
    (tiny_workdir / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert prepare_main(["--dataset", "digits"]) == 0 and backbone_main(["--model", "tiny"]) == 0
    from pipeline.config import load_params
    from pipeline.config.settings import hp_names

    hp = hp_names(load_params(tiny_workdir / "params.yaml"), "ft_sgd", "digits")[0]   # the one run
    assert finetune_main(["--dataset", "digits", "--model", "tiny", "--method", "ft_sgd", "--hp", hp,
                          "--seed", "0"]) == 0
    run = tiny_workdir / f"results/digits/tiny/ft_sgd/{hp}/seed0"
    lr = json.loads((run / "run.json").read_text())["lr"]
    history = pd.read_csv(run / "history.csv")
    # after epoch e the optimizer holds the lr of epoch e (0-based: e = 1, 2 after milestones 1 and 2), and 3
    assert history["lr"].tolist()[1:] == pytest.approx([lr * 0.5, lr * 0.25, lr * 0.25])


@pytest.mark.parametrize("finetune, match", [
    ({"milestones": [1]}, "only schedule multistep reads milestones"),
    ({"schedule": "multistep", "milestones": [2]}, "must be increasing epochs before the last of 2"),
    ({"schedule": "multistep", "milestone_factor": 0}, "milestone_factor: 0 must be > 0"),
])
def test_params_refuse_a_bad_step_schedule(tmp_path, finetune, match):
    cfg = tiny_params()
    cfg["finetune"].update(epochs=2, **finetune)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ParamsError, match=match) as info:
        load_params(tmp_path / "p.yaml")
    assert "\n" not in str(info.value) and "finetune." in str(info.value)
