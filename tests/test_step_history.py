"""The loop's per-step history (``steps.csv``: what ``dvc plots`` draws training curves from).

A row per optimizer step with the rate that step was taken at and its loss, read back from the
device once per epoch; runs longer than ``MAX_STEP_POINTS`` steps log means over consecutive steps.
The synthetic task of test_protocols keeps the loop fast.
"""
from __future__ import annotations

import math

import pytest
from test_protocols import cfg, run

from pipeline.training import loop
from pipeline.training.loop import step_rows


def test_a_row_per_step_with_its_rate_and_the_epoch_loss_as_their_mean():
    result, lrs, _ = run(cfg(epochs=3, batch_size=6, warmup_epochs=0.5))   # 24 images: 4 steps per epoch
    steps = result.steps
    assert [s["step"] for s in steps] == list(range(1, 13))
    assert [s["epoch"] for s in steps] == [1] * 4 + [2] * 4 + [3] * 4
    # the rate each step was taken at, as a hook inside the step sees it (warmup, then cosine)
    assert [s["lr"] for s in steps] == pytest.approx([x[0] for x in lrs])
    assert steps[0]["lr"] < steps[2]["lr"]
    for epoch in (1, 2, 3):
        losses = [s["train_loss"] for s in steps if s["epoch"] == epoch]
        assert sum(losses) / 4 == pytest.approx(result.history[epoch]["train_loss"], rel=1e-6)
    assert all(math.isfinite(s["train_loss"]) for s in steps)
    again, _, _ = run(cfg(epochs=3, batch_size=6, warmup_epochs=0.5))
    assert again.steps == steps   # no timings: the same bytes on a re-run


def test_long_runs_log_means_over_consecutive_steps(monkeypatch):
    monkeypatch.setattr(loop, "MAX_STEP_POINTS", 5)     # 12 steps -> a row every 3 steps and at each epoch's end
    result, _, _ = run(cfg(epochs=3, batch_size=6))
    assert [s["step"] for s in result.steps] == [3, 4, 6, 8, 9, 12]
    monkeypatch.undo()
    full, _, _ = run(cfg(epochs=3, batch_size=6))
    loss = {s["step"]: s["train_loss"] for s in full.steps}
    thinned = {s["step"]: s["train_loss"] for s in result.steps}
    assert thinned[3] == pytest.approx((loss[1] + loss[2] + loss[3]) / 3)
    assert thinned[4] == pytest.approx(loss[4]) and thinned[6] == pytest.approx((loss[5] + loss[6]) / 2)


def test_step_rows():
    rows = step_rows(2, 10, [1.0, 2.0, 3.0, 4.0, 5.0], [0.1, 0.2, 0.3, 0.4, 0.5], every=2)
    assert rows == [{"step": 12, "epoch": 2, "lr": 0.2, "train_loss": 1.5},
                    {"step": 14, "epoch": 2, "lr": 0.4, "train_loss": 3.5},
                    {"step": 15, "epoch": 2, "lr": 0.5, "train_loss": 5.0}]
    assert [r["step"] for r in step_rows(1, 0, [0.0] * 3, [0.0] * 3, every=1)] == [1, 2, 3]
