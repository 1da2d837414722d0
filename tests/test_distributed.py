"""Several GPUs for one fine-tune: torchrun + DDP, tested on CPU with the gloo backend and 2 processes."""
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PYTHON, tiny_params
from dataset_stages import load_weights, prepare_inputs

from pipeline.config import load_params
from pipeline.stages.registry import STAGES_BY_NAME

WC = {"dataset": "digits", "model": "tiny", "method": "ft_adamw", "hp": "epochs2_lr0.0003", "seed": "0"}
MODEL = Path("results/digits/tiny/ft_adamw/epochs2_lr0.0003/seed0/model.safetensors")


def params(gpus: int) -> dict:
    cfg = tiny_params()
    cfg["experiment"]["methods"] = ["ft_adamw"]
    cfg["wise_ft"]["methods"] = ["ft_adamw"]
    cfg["datasets"]["digits"]["train_augment"] = {"crop_scale": [0.5, 1.0], "hflip": True}
    cfg["finetune"].update(epochs=2, batch_size=8)
    cfg["methods"]["ft_adamw"]["gpus"] = gpus
    return cfg


def run(root: Path, command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PIPELINE_THREADS": "1",
           "PATH": f"{Path(PYTHON).parent}:{os.environ['PATH']}"}
    res = subprocess.run(command, shell=True, cwd=root, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def single_and_ddp(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    prepare_inputs(root, params(gpus=1))
    st = STAGES_BY_NAME["finetune"]
    cfg = load_params(root / "params.yaml")
    single_cmd = st.command(WC, cfg=cfg)
    run(root, single_cmd)
    single = load_weights(root / MODEL)
    (root / MODEL).unlink()
    (root / "params.yaml").write_text(yaml.safe_dump(params(gpus=2), sort_keys=False))
    cfg = load_params(root / "params.yaml")
    ddp_cmd = st.command(WC, cfg=cfg)
    res = run(root, ddp_cmd)
    return single_cmd, ddp_cmd, single, load_weights(root / MODEL), res, st.gpus(cfg, WC)


def test_two_processes_are_launched_by_torchrun_and_ask_for_two_gpus(single_and_ddp):
    single_cmd, ddp_cmd, _, _, _, gpus = single_and_ddp
    assert single_cmd.startswith("python -m pipeline finetune")
    assert ddp_cmd.startswith("python -m torch.distributed.run --standalone --nproc_per_node 2 -m pipeline finetune")
    assert gpus == 2


def test_ddp_takes_the_same_steps_as_one_process(single_and_ddp):
    _, _, single, ddp, _, _ = single_and_ddp
    assert single.keys() == ddp.keys()
    moved = [k for k in single if single[k].is_floating_point()]
    for k in moved:   # equal up to the order of the gradient sums
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-5, msg=k)


def test_both_ranks_ran(single_and_ddp):
    res = single_and_ddp[4]
    assert (res.stdout + res.stderr).count("finetune dataset=digits model=tiny") == 2   # one per rank


def test_batch_must_split_over_ranks():
    from pipeline.training.distributed import Dist

    assert Dist(1, 2).shard(8) == slice(4, 8)
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        Dist(0, 3).shard(8)
