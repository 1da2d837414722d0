"""The whole DAG on a tiny config, through the real Snakemake and DVC.

Checks, in order on one project: a full run ends in paper/main.pdf; afterwards neither runner
has anything to do; changing one method's setting re-runs exactly that method's jobs and
their downstream, in Snakemake and in `dvc repro` alike, and so does editing a stage's code;
forcing every job to run again rewrites byte-identical outputs, so DVC sees nothing to do;
editing a model's ``model_kwargs`` re-runs the backbone and everything downstream in both
runners; a DVC experiment (``dvc exp run -S``) re-runs exactly the affected stages and shows up
in ``python -m pipeline exps``. Apart: a malformed params.yaml stops both runners with one line
and runs nothing.
"""
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from browser import colours, dom, ink, screenshot
from conftest import PYTHON, REPO, run_cli, tiny_params
from dag import snakemake_pending, users_and_downstream

BIN = Path(PYTHON).parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("latexmk") is None, reason="latexmk not installed (make setup)")]


def copy_project(dst: Path, cfg: dict) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "tables", "figures", "main.pdf", "build")
    for name in ("pipeline", "paper", "envs", "vendor"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    for name in ("Snakefile", ".dvcignore", ".gitignore"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, dst / name)
    (dst / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", dst / ".dvc" / "config")
    (dst / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def snakemake_jobs(out: str) -> Counter:
    """Job counts per rule from a dry run's 'Job stats' table."""
    table = out.split("Job stats:", 1)[1] if "Job stats:" in out else ""
    counts = Counter()
    for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M):
        if rule not in ("all", "total"):
            counts[rule] = int(n)
    return counts


def dvc_ran(out: str) -> Counter:
    return Counter(name.split("--")[0] for name in re.findall(r"Running stage '([^']+)'", out))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    cfg = tiny_params(model="tf_efficientnet_lite0", weights="packaged:efficientnet_lite0")
    # a per-method value that run names do not spell: the targeted-rerun test changes it
    cfg["methods"]["ft_adamw"]["grad_clip"] = 1.0
    copy_project(root, cfg)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost"}
    run_cli("git", "init", "-q", cwd=root)
    run_cli(PYTHON, "-m", "pipeline", "export-dvc", cwd=root, env=env)
    # as on a clone: the project committed, its outputs and dvc.lock not (DVC experiments need a commit)
    run_cli("git", "add", "-A", cwd=root, env=env)
    run_cli("git", "commit", "-q", "-m", "project", cwd=root, env=env)
    return root, env, cfg


def output_hashes(root: Path, cfg: dict) -> dict[str, str]:
    """sha256 of every result file of every job (directory outputs expanded; measurements left out)."""
    from pipeline.tools.dvc_commit import output_files

    cwd = Path.cwd()
    try:
        os.chdir(root)
        files = output_files(cfg, results_only=True)
    finally:
        os.chdir(cwd)
    return {str(f): hashlib.sha256((root / f).read_bytes()).hexdigest() for f in files}


def all_jobs(cfg: dict, skip: tuple[str, ...] = ()) -> Counter:
    from pipeline.stages.registry import STAGES

    return Counter({st.name: len(st.jobs(cfg)) for st in STAGES if st.name not in skip and st.jobs(cfg)})


def test_full_run_then_nothing_to_do_then_targeted_reruns(project):
    root, env, cfg = project
    snake = [str(BIN / "snakemake"), "--cores", "2"]
    run_cli(*snake, cwd=root, env=env)
    assert (root / "paper/main.pdf").stat().st_size > 10_000
    results = pd.read_csv(root / "results/report/results.csv")
    assert set(results["method"]) == {"lp", "ft_adamw", "lpft", "uniform_soup", "greedy_soup"}
    assert set(results["seed"]) == {0, 1}
    assert results["config_hash"].str.len().eq(12).all()
    assert (root / "logs/finetune/digits/tiny/lpft/epochs1_lr0.0001/0.log").is_file()
    assert (root / "benchmarks/finetune/digits/tiny/lpft/epochs1_lr0.0001/0.tsv").is_file()

    # nothing to do, for either runner
    assert "Nothing to be done" in run_cli(*snake, "-n", cwd=root, env=env).stdout
    run_cli("make", "-f", str(REPO / "Makefile"), "dvc-commit", f"VENV={BIN.parent}", cwd=root, env=env)
    assert "up to date" in run_cli(str(BIN / "dvc"), "status", cwd=root, env=env).stdout
    assert "Nothing to be done" in run_cli(*snake, "-n", cwd=root, env=env).stdout
    assert dvc_ran(run_cli(str(BIN / "dvc"), "repro", cwd=root, env=env).stdout) == Counter()

    # one method's setting changes (one its run names do not spell): only its jobs and their downstream re-run
    cfg["methods"]["ft_adamw"]["grad_clip"] = 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    expected = Counter({"finetune": 2, "evaluate": 2, "wise_ft": 2, "soup": 2, "report": 1, "costs": 1, "paper": 1})
    assert snakemake_jobs(run_cli(*snake, "-n", cwd=root, env=env).stdout) == expected
    ran = dvc_ran(run_cli("make", "-f", str(REPO / "Makefile"), "repro", f"VENV={BIN.parent}", cwd=root,
                          env=env).stdout)
    assert ran == expected + Counter({"check_params": 1})
    assert "up to date" in run_cli(str(BIN / "dvc"), "status", cwd=root, env=env).stdout
    # `make repro` = dvc repro + snakemake --touch: Snakemake accepts DVC's outputs
    after = run_cli(*snake, "-n", cwd=root, env=env).stdout
    assert "Nothing to be done" in after, after[-2000:]

    # editing a stage's code re-runs that stage and its downstream (touching it without an edit does not)
    soup_code = root / "pipeline/ensembling/soup.py"
    os.utime(soup_code)
    assert "Nothing to be done" in run_cli(*snake, "-n", cwd=root, env=env).stdout
    soup_code.write_text(soup_code.read_text() + "\n# an edit\n")
    expected = Counter({"soup": 2, "report": 1, "paper": 1})
    assert snakemake_jobs(run_cli(*snake, "-n", cwd=root, env=env).stdout) == expected
    assert "soup--digits--tiny--seed0" in run_cli(str(BIN / "dvc"), "status", cwd=root, env=env).stdout


def report_json(html: str, name: str):
    """A ``var <name> = {...};`` of the snakemake --report page."""
    return json.loads(re.search(rf"^\s*var {name} = (\{{.*\}});\s*$", html, re.M).group(1))


def showing(html: str, path: str) -> str:
    """The report page opening ``path`` once loaded, as a click on it in the results list does."""
    head, body, tail = html.rpartition("</body>")
    click = f"new ToggleViewManager(app).handleSelectedResult({json.dumps(path)})"
    return head + f"<script>setTimeout(() => {click}, 100);</script>" + body + tail


def test_snakemake_report_and_dvc_plots(project, tmp_path):
    """The ecosystem's own viewers: `snakemake --report` and `dvc plots show` on the finished run."""
    root, env, cfg = project
    report = tmp_path / "report.html"
    run_cli(str(BIN / "snakemake"), "--report", str(report), cwd=root, env=env)
    html = report.read_text()
    assert len(html) > 200_000   # self-contained: every table and figure is embedded
    for name in ("results.html", "freeze_embed.html", "lpft.html", "wise_ft.html", "effective_robustness.png",
                 "id_vs_ood.png", "grad_norms.png", "layers.png", "claims.html", "claims.csv", "summary.csv",
                 "main.pdf"):
        assert name in html, name
    # captions (paper/captions) and categories reach the report
    assert "logit-linear fit" in html and "Effective robustness" in html and "Tables" in html
    assert "headline claim" in html and "Claims" in report_json(html, "categories")
    # every figure is a PNG, and draws when opened in the report (a PDF there shows nothing in a browser)
    results = report_json(html, "results")
    figures = [path for path in results if path.startswith("paper/figures/")]
    assert sorted(Path(f).name for f in figures) == ["effective_robustness.png", "grad_norms.png", "id_vs_ood.png",
                                                     "layers.png", "li2020_elr.png", "li2020_similarity.png"]
    drawn = []
    for path in figures:
        assert results[path]["mime_type"] == "image/png", path
        page = tmp_path / f"open_{Path(path).stem}.html"
        page.write_text(showing(html, path))
        image = screenshot(page, tmp_path / f"{Path(path).stem}.png")
        if Path(path).stem.startswith("li2020_"):
            # this experiment has no momentum-SGD grid and no similarity stage: the figure is its one-line notice
            assert 0.0005 < ink(image, (450, 0, 1400, 1000)) < 0.01, path
        else:
            assert ink(image, (450, 0, 1400, 1000)) > 0.01 and colours(image) > 30, path
            drawn.append(colours(image[:, 450:]))
    blank = screenshot(report, tmp_path / "report.png")   # nothing opened: the content pane shows no figure
    assert colours(blank[:, 450:]) < max(drawn)
    # the embedded tables are the report stage's HTML files
    table = (root / "results/report/tables/results.html").read_bytes()
    assert base64.b64encode(table)[:2000].decode() in html

    # dvc plots: the plots: definitions of the rendered dvc.yaml, read from the workspace
    shown = json.loads(run_cli(str(BIN / "dvc"), "plots", "show", "--json", cwd=root, env=env).stdout)["data"]

    def values(plot_id: str) -> list[dict]:
        return [v for p in shown[plot_id] for v in p["content"]["data"]["values"]]

    # both seeds' steps.csv, a point per optimizer step (60 images in batches of 16: 3 steps), and history.csv
    curve = values("training curves: digits/tiny/ft_adamw")
    fields = {"/".join(v["filename::field"].split("/")[-2:]) for v in curve}
    assert fields == {f"seed{s}/{f}" for s in (0, 1) for f in ("steps.csv::train_loss", "history.csv::id_val_acc")}
    loss = [v for v in curve if v["filename::field"].endswith("seed0/steps.csv::train_loss")]
    assert [v["step"] for v in loss] == ["1", "2", "3"]
    scatter = values("results/report/id_vs_ood.csv")
    assert {v["field"] for v in scatter} == {"ood_acc", "ood_fit"} and "lpft" in {v["row"] for v in scatter}
    assert {f"paper/figures/{f}.png" for f in ("id_vs_ood", "effective_robustness", "grad_norms", "layers")} <= set(
        shown)

    # the plots page draws offline (Vega inlined: .dvc/config's template), one canvas per Vega plot
    run_cli(str(BIN / "dvc"), "plots", "show", "-o", str(tmp_path / "plots"), cwd=root, env=env)
    page = tmp_path / "plots/index.html"
    vega_plots = [k for k in shown if not k.endswith(".png")]
    assert len(re.findall(r'<canvas[^>]*class="marks"', dom(page))) == len(vega_plots) == 3
    image = screenshot(page, tmp_path / "plots.png", size=(1400, 1400))
    assert ink(image, (0, 0, 700, 500)) > 0.02 and colours(image) > 30


def test_forced_rerun_writes_the_same_bytes(project):
    root, env, cfg = project
    snake = [str(BIN / "snakemake"), "--cores", "2"]
    run_cli(*snake, cwd=root, env=env)   # catch up with the code edit of the test before
    run_cli("make", "-f", str(REPO / "Makefile"), "dvc-commit", f"VENV={BIN.parent}", cwd=root, env=env)
    before = output_hashes(root, cfg)
    assert len(before) > 40
    run_cli(*snake, "--forceall", cwd=root, env=env)
    after = output_hashes(root, cfg)
    changed = sorted(f for f in before if before[f] != after.get(f))
    assert not changed, f"re-running with the same inputs changed {changed}"
    # a retried job's results are the recorded ones: DVC re-runs nothing but the cost table (new
    # measurements) and the paper that shows it
    status = json.loads(run_cli(str(BIN / "dvc"), "status", "--json", cwd=root, env=env).stdout)
    assert set(status) <= {"costs", "paper"}, status
    assert dvc_ran(run_cli(str(BIN / "dvc"), "repro", cwd=root, env=env).stdout) <= Counter({"costs": 1, "paper": 1})


def test_the_cache_sees_package_inits_and_parts_and_ignores_new_registry_entries(project):
    """Dry runs after three edits, each undone: a constant in a package ``__init__`` (the report's default
    tables) and a method part's code re-run exactly the jobs that use them (Snakemake: and their
    downstream; DVC: the changed stages); a new method part and dataset source re-run nothing."""
    root, env, cfg = project

    def pending() -> tuple[set[str], set[str]]:
        snake = snakemake_pending(run_cli(str(BIN / "snakemake"), "-n", cwd=root, env=env).stdout)
        return snake, set(json.loads(run_cli(str(BIN / "dvc"), "status", "--json", cwd=root, env=env).stdout))

    def edited(path: str, old: str, new: str) -> tuple[set[str], set[str]]:
        file = root / path
        text = file.read_text()
        assert old in text
        file.write_text(text.replace(old, new, 1))
        try:
            return pending()
        finally:
            file.write_text(text)

    assert pending()[0] == set()
    dvc_before = pending()[1]     # the cost table and the paper may wait on new measurements (test above)

    layouts = "pipeline/reporting/layouts/__init__.py"
    users, closure = users_and_downstream(cfg, layouts)
    assert users == {"report"}
    snake, dvc = edited(layouts, 'DEFAULT_TABLES = ("results",)', 'DEFAULT_TABLES = ("results", "lpft")')
    assert closure == {"report", "paper"} and {"report"} <= snake <= closure
    assert dvc - dvc_before == users | {"check_params"}   # validation reads the layouts too

    part = "pipeline/methods/init_lp.py"
    users, closure = users_and_downstream(cfg, part)
    assert users == {f"{st}--digits--tiny--lpft--epochs1_lr0p0001--seed{s}" for st in ("finetune", "wise_ft")
                     for s in (0, 1)}
    snake, dvc = edited(part, '"""', '"""An edit. ')
    assert snake == closure and dvc - dvc_before == users

    registry_py, sources_py = root / "pipeline/methods/registry.py", root / "pipeline/data/sources/__init__.py"
    texts = registry_py.read_text(), sources_py.read_text()
    (root / "pipeline/methods/knob.py").write_text("def apply(model, settings, lr_scale):\n    return {}\n")
    registry_py.write_text(texts[0].replace(
        "KEYS: dict[str, Key] = {", 'KEYS: dict[str, Key] = {\n    "knob": Key(1.0, _POSITIVE, "a new key"),').replace(
        "COMPONENTS: tuple[Component, ...] = (",
        'COMPONENTS: tuple[Component, ...] = (\n    Component("policy", "knob", _M + "knob", "k", "new", ("knob",)),'))
    sources_py.write_text(texts[1].replace(
        "SOURCES: dict[str, SourceSpec] = {",
        'SOURCES: dict[str, SourceSpec] = {\n    "mine": SourceSpec("pipeline.data.sources.cifar", _IMAGE, "new"),'))
    try:
        dvc_yaml = (root / "dvc.yaml").read_text()
        run_cli(PYTHON, "-m", "pipeline", "export-dvc", cwd=root, env=env)
        assert (root / "dvc.yaml").read_text() == dvc_yaml          # no job changed; only the defaults file
        assert "knob" in (root / "params.defaults.yaml").read_text()
        snake, dvc = pending()
        assert snake == set() and dvc - dvc_before == {"check_params"}
    finally:
        registry_py.write_text(texts[0])
        sources_py.write_text(texts[1])
        (root / "pipeline/methods/knob.py").unlink()
        run_cli(PYTHON, "-m", "pipeline", "export-dvc", cwd=root, env=env)
    assert pending()[0] == set()


def test_model_kwargs_edit_reruns_backbone_and_downstream_in_both_runners(project):
    root, env, cfg = project
    snake = [str(BIN / "snakemake"), "--cores", "2"]
    cfg["models"]["tiny"]["model_kwargs"] = {"drop_rate": 0.1}
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    expected = all_jobs(cfg, skip=("prepare_data", "lpft_theory"))
    assert expected["backbone"] == 1 and expected["finetune"] == 4
    assert snakemake_jobs(run_cli(*snake, "-n", cwd=root, env=env).stdout) == expected
    ran = dvc_ran(run_cli("make", "-f", str(REPO / "Makefile"), "repro", f"VENV={BIN.parent}", cwd=root,
                          env=env).stdout)
    assert ran == expected + Counter({"check_params": 1})
    assert "Nothing to be done" in run_cli(*snake, "-n", cwd=root, env=env).stdout


def test_dvc_experiment_reruns_the_affected_stages_and_is_tabulated(project):
    root, env, cfg = project
    dvc = str(BIN / "dvc")
    lr = cfg["methods"]["lpft"]["lr"] * 3
    run_cli(dvc, "exp", "save", "--force", "--name", "demo", cwd=root, env=env)   # as `make demo` ends
    # exp-run: dvc exp run -S, with dvc.yaml rendered for the new value first (the run's name spells lr)
    out = run_cli(PYTHON, "-m", "pipeline", "exp-run", "-n", "lpft_lr", "-S", f"methods.lpft.lr={lr}", cwd=root,
                  env=env).stdout
    ran = dvc_ran(out) + Counter(name.split("--")[0] for name in re.findall(r"Restored stage '([^']+)'", out))
    assert ran == Counter({"finetune": 2, "evaluate": 2, "wise_ft": 2, "report": 1, "costs": 1, "paper": 1,
                           "check_params": 1})
    shown = json.loads(run_cli(dvc, "exp", "show", "--json", cwd=root, env=env).stdout)
    exps = [r for e in shown for x in e.get("experiments") or [] for r in x["revs"]]
    mine = next(r for r in exps if r["name"] == "lpft_lr")
    assert mine["data"]["params"]["params.yaml"]["data"]["methods"]["lpft"]["lr"] == pytest.approx(lr)
    assert "digits" in mine["data"]["metrics"]["results/report/metrics.json"]["data"]   # read through its dvc.lock
    table = run_cli(PYTHON, "-m", "pipeline", "exps", cwd=root, env=env).stdout
    header, _, *rows = table.strip().splitlines()
    assert "methods.lpft.lr" in header and sorted(row.split("|")[1].strip() for row in rows) == ["demo", "lpft_lr"]
    assert "digits.tiny.lp.id_acc" not in header   # only what differs between experiments (the LP never does)
    full = run_cli(PYTHON, "-m", "pipeline", "exps", "--all", "--csv", cwd=root, env=env).stdout
    row = next(r for r in csv.DictReader(io.StringIO(full)) if r["experiment"] == "lpft_lr")
    lpft = mine["data"]["metrics"]["results/report/metrics.json"]["data"]["digits"]["tiny"]["lpft"]
    assert float(row["digits.tiny.lpft.id_acc"]) == pytest.approx(100 * lpft["id_acc"], abs=0.05)


@pytest.mark.parametrize("edit, key", [
    (lambda c: c["experiment"]["methods"].append("nope"), "experiment.methods[2]"),
    (lambda c: c["methods"]["lpft"].__setitem__("lr", -1.0), "methods.lpft.lr"),
    (lambda c: c["finetune"].__setitem__("epohcs", 2), "finetune.epohcs"),
    # caught by the deep check (tools/preflight.py) before the first job: Snakemake's onstart, DVC's check_params
    (lambda c: c["models"]["tiny"].__setitem__("timm_name", "vit_bse_patch16_224"), "models.tiny.timm_name"),
    (lambda c: c["models"].__setitem__("tiny", {"timm_name": "vit_tiny_patch16_224", "weights": "none",
                                                 "input_size": 48}), "models.tiny.input_size"),
])
def test_malformed_params_run_nothing(tmp_path, edit, key):
    cfg = tiny_params()
    copy_project(tmp_path, cfg)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    run_cli("git", "init", "-q", cwd=tmp_path)
    run_cli(PYTHON, "-m", "pipeline", "export-dvc", cwd=tmp_path, env=env)
    edit(cfg)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    res = run_cli(str(BIN / "snakemake"), "--cores", "1", cwd=tmp_path, env=env, check=False)
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"params.yaml: {key}" in errors[0]
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()

    res = run_cli(str(BIN / "dvc"), "repro", cwd=tmp_path, env=env, check=False)
    assert res.returncode != 0
    assert f"params.yaml: {key}" in res.stdout + res.stderr
    assert not (tmp_path / "data").exists()
    assert not any(p.is_file() for p in (tmp_path / "results").rglob("*")) if (tmp_path / "results").exists() else True
