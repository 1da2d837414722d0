"""Run names: injective (no grid point vanishes) and a function of the run's values only (no run is re-trained
under a new name when a fixed value becomes a grid that holds it)."""
import copy
import math
import random
import re
import struct
from pathlib import Path

import pytest
import yaml

from pipeline.config import validate
from pipeline.config.frozen import freeze
from pipeline.config.settings import (
    NAME_LIMIT,
    default_settings,
    format_value,
    hp_names,
    named_keys,
    run_name,
    run_points,
)
from pipeline.stages.registry import STAGES, STAGES_BY_NAME, WILDCARD_PATTERNS, code_digest
from pipeline.tools.dvc_render import render

REPO = Path(__file__).resolve().parent.parent
RUN_STAGES = [st for st in STAGES if "hp" in st.wildcards]


@pytest.fixture
def cfg():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def random_floats(rng: random.Random, n: int) -> list[float]:
    """Floats of every magnitude, their next neighbours, and values equal to 6 significant digits."""
    out = []
    for _ in range(n):
        x = 10 ** rng.uniform(-12, 20) * rng.random()
        out += [x, math.nextafter(x, math.inf), float(f"{x:.6g}"), float(f"{x:.6g}") * (1 + 1e-9),
                struct.unpack("d", struct.pack("Q", rng.getrandbits(63)))[0]]
    return [x for x in out if math.isfinite(x)] + [0.0, 1.0, 2.0, 1e16, 1e-5, 0.1 + 0.2, 0.3]


def read_back(spelled: str) -> float | int:
    return int(spelled) if spelled.lstrip("-").isdigit() else float(spelled)


def test_values_spell_exactly_and_injectively():
    rng = random.Random(0)
    values = random_floats(rng, 2000) + [rng.randrange(0, 10 ** 20) for _ in range(500)] + list(range(50))
    spelled: dict[str, float | int] = {}
    for v in values:
        s = format_value(v)
        assert re.fullmatch(r"[0-9][0-9.e-]*", s), s
        assert read_back(s) == v   # the very number, not a rounding of it
        assert spelled.setdefault(s, v) == v, (s, spelled[s], v)   # one spelling, one value
    assert format_value(1) == format_value(1.0) == "1" and format_value(3e-4) == "0.0003"
    assert format_value(1e16) == "1e16" and format_value(0.30000000000000004) != format_value(0.3)


def non_default(values: dict) -> dict:
    base = default_settings()
    return {k: v for k, v in values.items() if k not in base or base[k] != v}


def test_names_are_injective_over_random_floats():
    rng = random.Random(1)
    keys = sorted(named_keys())
    seen: dict[str, dict] = {}
    for x in random_floats(rng, 3000):
        values = {k: x if rng.random() < 0.5 else rng.choice([0.0, 0.1, 2, 5e-7]) for k in rng.sample(keys, 3)}
        name = run_name(values)
        assert len(name) <= NAME_LIMIT and re.fullmatch(WILDCARD_PATTERNS["hp"], name), name
        assert seen.setdefault(name, non_default(values)) == non_default(values), name   # one name, one run
    assert len(seen) > 10_000


def test_a_grid_of_values_that_print_alike_is_one_run_each(cfg):
    """The bug: 30 learning rates equal to 6 significant digits got 27 names, and 3 fine-tunes vanished."""
    lrs = [3e-4 * (1 + i * 1e-9) for i in range(30)]
    assert len({f"{x:g}" for x in lrs}) == 1
    cfg["methods"]["ft_adamw"]["grid"] = {"lr": lrs}
    del cfg["methods"]["ft_adamw"]["lr"]
    validate(cfg)
    runs = [wc for wc in STAGES_BY_NAME["finetune"].jobs(cfg) if wc["method"] == "ft_adamw"]
    assert len(runs) == 30 * len(cfg["experiment"]["seeds"])
    assert len({wc["hp"] for wc in runs}) == 30
    for st in RUN_STAGES:   # DVC stage names ('.' -> 'p') and output paths stay one per job
        jobs = st.jobs(cfg)
        assert len({st.job_id(wc) for wc in jobs}) == len(jobs)
        assert len({p for wc in jobs for p in st.output_paths(wc).values()}) == len(jobs) * len(st.outputs)


def test_job_ids_stay_unique_over_random_values(cfg):
    rng = random.Random(2)
    cfg["methods"]["spd"]["grid"] = {"spd_lambda": sorted({rng.random() for _ in range(40)}),
                                     "lr": sorted({x for x in random_floats(rng, 6) if x > 0})[:12]}
    del cfg["methods"]["spd"]["lr"]
    validate(cfg)
    st = STAGES_BY_NAME["finetune"]
    jobs = st.jobs(cfg)
    names = [wc["hp"] for wc in jobs if wc["method"] == "spd"]
    assert len(set(names)) * len(cfg["experiment"]["seeds"]) == len(names) > 400
    assert len({st.job_id(wc) for wc in jobs}) == len(jobs)


def test_long_names_end_in_a_hash_and_stay_distinct():
    values = {k: 0.123456789012345 + i for i, k in enumerate(sorted(named_keys()))}
    other = {**values, "wd_ratio": math.nextafter(values["wd_ratio"], 1)}
    a, b = run_name(values), run_name(other)
    assert a != b and len(a) <= NAME_LIMIT and len(b) <= NAME_LIMIT and "__" in a
    first = sorted(named_keys())[0]
    assert a.startswith(f"{first}0.123456789012345_")   # the name keeps its first segments, then the hash


def job_view(cfg: dict, method: str) -> dict:
    """What both runners see of every job of ``method``'s runs: paths, command, tracked values, code."""
    out = {}
    for st in RUN_STAGES:
        for wc in st.jobs(cfg):
            if wc["method"] == method:
                out[st.job_id(wc)] = (st.output_paths(wc), st.command(wc, cfg=cfg), st.param_values(cfg, wc),
                                      st.default_values(cfg, wc), code_digest(st, cfg, wc))
    return out


def dvc_stages(cfg: dict) -> dict:
    return yaml.safe_load(render(cfg))["stages"]


@pytest.mark.parametrize("change", ["lr_into_grid", "epochs_into_grid", "default_written_out", "spd_grid_at_default"])
def test_a_value_made_a_grid_keeps_its_run(cfg, change):
    """The bug: ``lr: 3e-4`` -> ``grid: {lr: [1e-4, 3e-4]}`` re-trained the run under a new name and left an orphan."""
    before = copy.deepcopy(cfg)
    method = {"lr_into_grid": "ft_adamw", "epochs_into_grid": "ft_adamw", "default_written_out": "ft_sgd",
              "spd_grid_at_default": "spd"}[change]
    m = cfg["methods"][method]
    if change == "lr_into_grid":
        m["grid"] = {"lr": [1e-4, m.pop("lr")]}
    elif change == "epochs_into_grid":   # from the shared finetune level into one method's grid
        m["grid"] = {"epochs": [cfg["finetune"].pop("epochs"), 4, 6]}
        for name, other in cfg["methods"].items():
            if name != method:
                other["epochs"] = 2   # and the others set the same value at their own level
    elif change == "default_written_out":   # ft_sgd's momentum 0.9 is the default: spelled out or not, one run
        m.pop("momentum")
        m["weight_decay"] = 0.0
    else:   # spd_lambda's default is 0: a grid that adds it next to 0.3 and 1.0 keeps those two
        m["grid"]["spd_lambda"] = [0.0, *m["grid"]["spd_lambda"]]
    validate(cfg)
    old, new = job_view(before, method), job_view(cfg, method)
    assert old and set(old) <= set(new)
    for job_id, seen in old.items():
        assert new[job_id] == seen, job_id
    old_dvc, new_dvc = dvc_stages(before), dvc_stages(cfg)
    assert all(new_dvc[job_id] == old_dvc[job_id] for job_id in old)   # dvc repro re-runs none of them
    if change == "epochs_into_grid":   # the other methods keep their runs too
        for other in before["experiment"]["methods"]:
            assert other == method or job_view(cfg, other) == job_view(before, other)


def test_another_value_is_another_run(cfg):
    before = hp_names(cfg, "ft_adamw", "digits")
    cfg["methods"]["ft_adamw"]["lr"] = 1e-3
    assert hp_names(cfg, "ft_adamw", "digits") == ["epochs2_lr0.001"] != before
    cfg["finetune"]["label_smoothing"] = 0.1
    assert hp_names(cfg, "ft_adamw", "digits") == ["epochs2_label_smoothing0.1_lr0.001"]


def test_grid_index_is_built_once_per_frozen_config_and_follows_edits_of_a_plain_one(cfg):
    frozen = freeze(copy.deepcopy(cfg))
    first = run_points(frozen, "spd", "digits")
    assert run_points(frozen, "spd", "digits") is first   # planning: one dict per method and dataset
    assert run_points(cfg, "spd", "digits") == first
    cfg["methods"]["spd"]["grid"]["spd_lambda"].append(0.5)   # a plain config is never memoised: edits are seen
    assert list(run_points(cfg, "spd", "digits")) == [*first, "epochs2_lr0.0003_spd_lambda0.5"]


def test_the_report_names_a_grid_point_by_what_its_grid_sweeps(cfg):
    from pipeline.reporting.tables import swept_part

    cfg["methods"]["l2sp"]["grid"] = {"l2sp_alpha": [0.01, 0.1], "lr": [1e-5, 3e-4]}
    del cfg["methods"]["l2sp"]["lr"]
    names = hp_names(cfg, "l2sp", "digits")
    assert names[0] == "epochs2_l2sp_alpha0.01_lr1e-05"
    assert [swept_part(n, names) for n in names] == ["l2sp_alpha0.01_lr1e-05", "l2sp_alpha0.01_lr0.0003",
                                                     "l2sp_alpha0.1_lr1e-05", "l2sp_alpha0.1_lr0.0003"]
    assert swept_part("epochs2_lr0.0003", ["epochs2_lr0.0003"]) == "epochs2_lr0.0003"


def test_an_experiment_on_a_value_that_names_runs_re_renders_dvc_yaml(tmp_path, monkeypatch, capsys):
    """``dvc exp run -S methods.lpft.lr=...`` would meet a dvc.yaml of the old run names (DVC reads it before -S
    applies, and its check stage refuses it): ``python -m pipeline exp-run`` sets the value as -S does, renders
    dvc.yaml for it, then runs ``dvc exp run`` (here a stand-in that does nothing)."""
    from conftest import tiny_params
    from dvc.utils.hydra import apply_overrides

    from pipeline.cli import main as cli
    from pipeline.config import load_params
    from pipeline.tools.dvc_render import stale

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    assert cli(["export-dvc"]) == 0
    assert "finetune--digits--tiny--lpft--epochs1_lr0p0001--seed0" in (tmp_path / "dvc.yaml").read_text()
    text = (tmp_path / "params.yaml").read_text()
    apply_overrides("params.yaml", ["methods.lpft.lr=0.0003"])   # what dvc exp run -S does, then its check stage:
    assert "python -m pipeline exp-run -S key=value" in stale(load_params("params.yaml"), "params.yaml")
    (tmp_path / "params.yaml").write_text(text)
    assert cli(["exp-run", "-S", "methods.lpft.lr=0.0003", "-n", "lr3", "--dvc", "true"]) == 0
    assert load_params("params.yaml")["methods"]["lpft"]["lr"] == 0.0003
    assert stale(load_params("params.yaml"), "params.yaml") is None   # DVC's check stage passes
    rendered = (tmp_path / "dvc.yaml").read_text()
    assert "lpft--epochs1_lr0p0003--seed0" in rendered and "lpft--epochs1_lr0p0001" not in rendered
    capsys.readouterr()
    assert cli(["exp-run", "-S", "methods.lpft.lr=-1", "--dvc", "true"]) == 2   # a bad value changes nothing
    assert capsys.readouterr().err == "error: params.yaml: methods.lpft.lr: -1 must be > 0\n"
    assert load_params("params.yaml")["methods"]["lpft"]["lr"] == 0.0003
