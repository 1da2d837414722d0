"""Planning a sweep costs time linear in its runs: answers per frozen config are computed once
(pipeline/config/frozen.py), and the runner is handed only the DAG's sinks as targets. Wall times are
bench/dag_scale.py's (--grid); here, that the memo gives the same plan and that the per-config work
is done once, whatever the grid's size."""
import copy

import pytest
import yaml
from conftest import REPO

from pipeline.config import load_params, validate
from pipeline.config import settings as settings_module
from pipeline.config.frozen import Frozen, freeze
from pipeline.stages.registry import STAGES, job_inputs, targets


def grid_config(n: int) -> dict:
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["experiment"] = {"datasets": ["digits"], "models": ["lite0"], "methods": ["ft_sgd", "spd"], "seeds": [0, 1]}
    lrs = [1e-5 * (i + 1) for i in range(n)]
    cfg["methods"]["ft_sgd"] = {"init": "random", "optimizer": "sgd", "grid": {"lr": lrs}}
    cfg["wise_ft"] = {"alphas": [0.0, 0.5, 1.0], "methods": ["ft_sgd", "spd"]}
    cfg["soups"] = {"methods": ["ft_sgd"]}
    cfg["report"].pop("baseline", None)
    return validate(cfg)


def plan(cfg: dict) -> dict:
    return {st.job_id(wc): (job_inputs(st, cfg, wc), st.param_values(cfg, wc), st.default_values(cfg, wc),
                            st.command(wc, cfg=cfg)) for st in STAGES for wc in st.jobs(cfg)}


def test_a_frozen_config_plans_exactly_as_the_plain_one():
    cfg = grid_config(7)
    assert plan(freeze(copy.deepcopy(cfg))) == plan(cfg)
    assert targets(freeze(cfg)) == targets(cfg)


def test_a_frozen_config_refuses_edits_and_copies_back_to_a_plain_one():
    cfg = freeze(load_params(REPO / "params.yaml"))
    assert isinstance(cfg["methods"]["spd"], Frozen)
    with pytest.raises(TypeError, match="frozen"):
        cfg["methods"]["spd"]["lr"] = 1.0
    with pytest.raises(TypeError, match="frozen"):
        cfg["experiment"].update(seeds=[0])
    copied = copy.deepcopy(cfg)
    assert copied == cfg and copied is not cfg


@pytest.mark.parametrize("n", [10, 200])
def test_per_config_work_is_done_once_whatever_the_grid_size(monkeypatch, n):
    calls = {"grid_points": 0}
    real = settings_module.grid_points

    def counting(method_cfg):
        calls["grid_points"] += 1
        return real(method_cfg)

    monkeypatch.setattr(settings_module, "grid_points", counting)
    cfg = freeze(grid_config(n))
    jobs = plan(cfg)
    assert len([j for j in jobs if j.startswith("finetune--digits--lite0--ft_sgd--")]) == 2 * n
    # once per method that has a grid, not once per job
    assert calls["grid_points"] <= len(cfg["methods"])


def test_the_targets_are_the_sinks_and_reach_every_job():
    cfg = freeze(load_params(REPO / "params.yaml"))
    every = {p for st in STAGES for wc in st.jobs(cfg) for p in st.output_paths(wc).values()}
    sinks = set(targets(cfg))
    assert "paper/main.pdf" in sinks and "results/report/results.csv" in sinks
    assert not any(p.endswith("/model.safetensors") for p in sinks)   # read by evaluate
    read = {p for st in STAGES for wc in st.jobs(cfg) for p in
            [x for v in st.inputs(cfg, wc).values() for x in (v if isinstance(v, list) else [v])]}
    assert every == sinks | (every & read)
