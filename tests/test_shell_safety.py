"""Values from params.yaml (and its path) cannot inject shell commands into rule commands."""
import os
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, run_cli, tiny_params
from test_pipeline_e2e import copy_project

from pipeline.config import ParamsError, validate

BIN = Path(PYTHON).parent
EVIL = "x'; touch INJECTED; echo \"$(touch INJECTED2)\" `touch INJECTED3` ; '"


def test_values_and_params_path_with_quotes_spaces_and_semicolons_run_nothing(tmp_path):
    cfg = tiny_params()
    cfg["report"]["title"] = EVIL
    cfg["report"]["labels"]["ft_adamw"] = EVIL
    copy_project(tmp_path, cfg)
    params = "my params; touch INJECTED4 'q'.yaml"
    (tmp_path / params).write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    targets = ["results/analysis/lpft_theory.csv", "data/prepared/digits"]
    res = run_cli(str(BIN / "snakemake"), "--cores", "1", "-p", *targets, "--config", f"params={params}",
                  cwd=tmp_path, env=env)
    out = res.stdout + res.stderr
    assert (tmp_path / "results/analysis/lpft_theory.csv").is_file()
    assert (tmp_path / "data/prepared/digits/info.json").is_file()
    assert "--params 'my params; touch INJECTED4 '\"'\"'q'\"'\"'.yaml'" in out   # one quoted argument
    assert not list(tmp_path.glob("INJECTED*"))
    # and the title reached its LaTeX table as text, escaped, when rendered
    from pipeline.reporting.tables import latex_escape

    assert "touch INJECTED" in latex_escape(EVIL) and "\\$" in latex_escape(EVIL)


@pytest.mark.parametrize("section", ["datasets", "models", "methods"])
def test_names_that_become_paths_and_arguments_are_plain_words(section):
    cfg = tiny_params()
    listed = {"datasets": "digits", "models": "tiny", "methods": "ft_adamw"}[section]
    cfg[section]["a; rm -rf x"] = cfg[section][listed]
    with pytest.raises(ParamsError, match=rf"{section}\.a; rm -rf x: invalid name: use letters, digits and _"):
        validate(cfg)
