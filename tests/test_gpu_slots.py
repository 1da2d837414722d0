"""pipeline.gpu_slots: concurrent local GPU jobs each get a different device (fake device counts)."""
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

from pipeline.gpu_slots import NoFreeGpu, claim_gpu, gpu_count

HOLDER = """
import sys, time
from pipeline.gpu_slots import claim_gpu
env = {}
slot = claim_gpu(n_gpus=int(sys.argv[2]), lock_dir=sys.argv[1], timeout=0, environ=env)
print(env["CUDA_VISIBLE_DEVICES"], flush=True)
time.sleep(60)
"""


def hold(lock_dir, n: int) -> tuple[subprocess.Popen, str]:
    """A separate process that claims a slot and keeps it; returns it and its device."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), str(n)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    return proc, proc.stdout.readline().strip()


def test_each_claim_gets_another_device(tmp_path):
    envs = [{} for _ in range(3)]
    slots = [claim_gpu(n_gpus=3, lock_dir=tmp_path, timeout=0, environ=e) for e in envs]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2"]
    assert [s.index for s in slots] == [0, 1, 2]
    with pytest.raises(NoFreeGpu):
        claim_gpu(n_gpus=3, lock_dir=tmp_path, timeout=0, environ={})
    slots[1].release()
    env = {}
    with claim_gpu(n_gpus=3, lock_dir=tmp_path, timeout=0, environ=env) as again:
        assert again.index == 1 and env["CUDA_VISIBLE_DEVICES"] == "1"
    for s in slots:
        s.release()


def test_processes_share_the_slots_and_a_killed_one_frees_its_own(tmp_path):
    first, dev = hold(tmp_path, 2)
    try:
        assert dev == "0"
        env = {}
        mine = claim_gpu(n_gpus=2, lock_dir=tmp_path, timeout=0, environ=env)
        assert env["CUDA_VISIBLE_DEVICES"] == "1"
        with pytest.raises(NoFreeGpu):
            claim_gpu(n_gpus=2, lock_dir=tmp_path, timeout=0.3, poll=0.1, environ={})
        first.send_signal(signal.SIGKILL)    # no clean-up runs: the kernel drops the lock
        first.wait()
        env = {}
        t0 = time.monotonic()
        slot = claim_gpu(n_gpus=2, lock_dir=tmp_path, timeout=5, poll=0.1, environ=env)
        assert env["CUDA_VISIBLE_DEVICES"] == "0" and time.monotonic() - t0 < 5
        slot.release()
        mine.release()
    finally:
        first.kill()
        first.wait()


def test_waits_for_a_slot_to_free_up(tmp_path):
    holder, dev = hold(tmp_path, 1)
    try:
        assert dev == "0"
        t0 = time.monotonic()
        killer = subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
        env = {}
        slot = claim_gpu(n_gpus=1, lock_dir=tmp_path, timeout=30, poll=0.1, environ=env)
        assert env["CUDA_VISIBLE_DEVICES"] == "0" and 0.5 < time.monotonic() - t0 < 30
        slot.release()
        killer.wait()
    finally:
        holder.kill()
        holder.wait()


def test_scheduler_choice_and_no_gpus_claim_nothing(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "3"}     # e.g. Slurm's --gpus=1
    assert claim_gpu(n_gpus=4, lock_dir=tmp_path, environ=env) is None and env["CUDA_VISIBLE_DEVICES"] == "3"
    env = {}
    assert claim_gpu(n_gpus=0, lock_dir=tmp_path, environ=env) is None and "CUDA_VISIBLE_DEVICES" not in env
    assert not any(tmp_path.iterdir())


def test_gpu_count_from_env_or_devices():
    assert gpu_count({"PIPELINE_GPUS": "4"}) == 4
    expected = sum(1 for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit())
    assert gpu_count({}) == expected
