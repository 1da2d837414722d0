"""Preemption-safe fine-tuning: SIGTERM/SIGUSR1 checkpoint and resume bit for bit; SIGKILL loses nothing.

Every run is a real ``python -m pipeline finetune`` process receiving real signals;
the final weights are compared with an uninterrupted run's, tensor by tensor, for
exact equality (CPU, deterministic mode).
"""
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, tiny_params
from dataset_stages import load_weights, prepare_inputs

HP = "cutmix_alpha1_epochs3_lr0.0003_mixup_alpha0.4"   # the run's name spells its values (workdir's params)
RUN = ["--dataset", "digits", "--model", "tiny", "--method", "ft_adamw", "--hp", HP, "--seed", "0"]
RUN_DIR = Path(f"results/digits/tiny/ft_adamw/{HP}/seed0")
CKPT_DIR = Path(f"checkpoints/digits/tiny/ft_adamw/{HP}/seed0")
OUTPUTS = ("model.safetensors", "history.csv", "steps.csv", "run.json", "layers.csv")
STEPS = 3 * 7   # 3 epochs x 7 batches of 8 from 60 training images


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Prepared data and weights for a run with augmentation, dropout and mixup/CutMix (all draw random numbers;
    timm's Mixup from NumPy's global generator, which checkpoints save and restore)."""
    root = tmp_path_factory.mktemp("resume")
    cfg = tiny_params()
    cfg["experiment"]["methods"] = ["ft_adamw"]
    cfg["wise_ft"]["methods"] = ["ft_adamw"]
    cfg["datasets"]["digits"]["train_augment"] = {"crop_scale": [0.5, 1.0], "hflip": True}
    cfg["models"]["tiny"]["model_kwargs"] = {"drop_rate": 0.2}
    cfg["finetune"].update(epochs=3, batch_size=8, mixup_alpha=0.4, cutmix_alpha=1.0)
    prepare_inputs(root, cfg)
    return root


def finetune(root: Path, **env) -> subprocess.Popen:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PIPELINE_THREADS": "1", **env}
    return subprocess.Popen([PYTHON, "-m", "pipeline", "finetune", *RUN], cwd=root, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def clean(root: Path) -> None:
    for name in OUTPUTS:
        (root / RUN_DIR / name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def uninterrupted(workdir):
    proc = finetune(workdir)
    out, _ = proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    reference = load_weights(workdir / RUN_DIR / "model.safetensors")
    history = (workdir / RUN_DIR / "history.csv").read_text()
    steps = (workdir / RUN_DIR / "steps.csv").read_text()
    assert len(steps.splitlines()) == 1 + STEPS          # a row per optimizer step
    clean(workdir)
    return reference, history, steps


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_sigterm_at_random_steps_resumes_bit_for_bit(workdir, uninterrupted):
    reference, history, steps = uninterrupted
    stops = sorted(random.Random(0).sample(range(1, STEPS), 6))
    for step in stops:
        proc = finetune(workdir, PIPELINE_SIGNAL_AT_STEP=str(step))
        out, _ = proc.communicate()
        assert proc.returncode == 75, out[-3000:]                     # "run me again"
        assert f"at step {step}" in out and "checkpoint saved" in out
        assert not any((workdir / RUN_DIR / name).exists() for name in OUTPUTS)
        assert [p.name for p in (workdir / CKPT_DIR).iterdir()] == [f"step{step:09d}"]
    proc = finetune(workdir)
    out, _ = proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    assert "resuming from" in out
    assert_same_weights(load_weights(workdir / RUN_DIR / "model.safetensors"), reference)
    drop_time = lambda text: [line.split(",")[:5] for line in text.splitlines()]  # noqa: E731
    assert drop_time((workdir / RUN_DIR / "history.csv").read_text()) == drop_time(history)
    assert (workdir / RUN_DIR / "steps.csv").read_text() == steps    # every step's loss and rate, across the stops
    assert not (workdir / CKPT_DIR).exists()                          # removed once the outputs exist
    clean(workdir)


def test_sigusr1_from_outside_checkpoints_and_resumes(workdir, uninterrupted):
    """Slurm's warning signal, sent by another process while the run trains."""
    reference, _, _ = uninterrupted
    proc = finetune(workdir, PIPELINE_CHECKPOINT_SECONDS="0")
    while not (workdir / CKPT_DIR).exists() and proc.poll() is None:   # training has started
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate()
    assert proc.returncode == 75, out[-3000:]
    assert f"signal {int(signal.SIGUSR1)}" in out
    proc = finetune(workdir)
    out, _ = proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    assert_same_weights(load_weights(workdir / RUN_DIR / "model.safetensors"), reference)
    clean(workdir)


def latest_checkpoint_step(root: Path) -> int:
    names = [p.name for p in (root / CKPT_DIR).glob("step*")] if (root / CKPT_DIR).exists() else []
    return max((int(name[4:]) for name in names if name[4:].isdigit()), default=-1)


def test_sigkill_at_random_moments_leaves_no_finished_looking_output(workdir, uninterrupted):
    """Kills are placed by training progress, not wall time, so they happen on fast and slow machines alike."""
    reference, _, _ = uninterrupted
    rng = random.Random(1)
    kills = 0
    for target in sorted(rng.sample(range(2, STEPS - 1), 5)):
        proc = finetune(workdir, PIPELINE_CHECKPOINT_SECONDS="0")   # a checkpoint every step: kills land mid-write
        while latest_checkpoint_step(workdir) < target and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))                          # somewhere inside the next step or save
        if proc.poll() is not None:
            continue                                                # it finished first; nothing to check
        proc.kill()
        proc.wait()
        kills += 1
        present = [name for name in OUTPUTS if (workdir / RUN_DIR / name).exists()]
        # Outputs appear only by atomic rename, all at the end: a killed job has none or whole ones.
        if present:
            assert load_weights(workdir / RUN_DIR / "model.safetensors").keys() == reference.keys()
        assert not [p for p in (workdir / RUN_DIR).glob("*") if p.name.startswith(".tmp-") and p.name in OUTPUTS]
    assert kills >= 4
    proc = finetune(workdir)
    out, _ = proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    assert all((workdir / RUN_DIR / name).is_file() for name in OUTPUTS)
    assert_same_weights(load_weights(workdir / RUN_DIR / "model.safetensors"), reference)
    clean(workdir)


def test_a_checkpoint_from_other_settings_is_not_resumed(workdir, uninterrupted, tmp_path):
    from pipeline.training.checkpoint import Checkpointer

    proc = finetune(workdir, PIPELINE_SIGNAL_AT_STEP="5")
    assert proc.wait() == 75
    step_dir = next((workdir / CKPT_DIR).iterdir())
    state = step_dir / "state.json"
    state.write_text(state.read_text().replace('"config_hash": "', '"config_hash": "x', 1))
    assert Checkpointer(workdir / CKPT_DIR, "anything").latest() == step_dir
    proc = finetune(workdir)
    out, _ = proc.communicate()
    assert proc.returncode == 0 and "ignoring checkpoint" in out and "resuming" not in out
    assert_same_weights(load_weights(workdir / RUN_DIR / "model.safetensors"), uninterrupted[0])
    clean(workdir)
