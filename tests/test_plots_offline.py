"""``dvc plots show`` renders without network: the vendored Vega template, through the real DVC and Chromium.

The project's ``.dvc/config`` points DVC at ``vendor/vega/dvc_plots.html`` (Vega inlined,
:mod:`pipeline.tools.vega`). A training run's per-step history (the loop's ``steps``, as the finetune
stage writes it) is plotted by the real ``dvc plots show`` and opened in headless Chromium with no
network: the page draws its curve, a point per step. DVC's default page, which loads Vega from a
CDN, stays blank under the same conditions (the check can fail).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from browser import colours, dom, ink, screenshot
from conftest import PYTHON, REPO, run_cli
from test_protocols import cfg, run

from pipeline.tools import vega

DVC = str(Path(PYTHON).parent / "dvc")
MARKS = re.compile(r'<canvas[^>]*class="marks"')


def test_the_committed_template_holds_the_pinned_builds():
    template = (REPO / vega.TEMPLATE).read_text()
    vega.check(template)
    assert "cdn.jsdelivr" not in template and "{plot_divs}" in template and "{scripts}" not in template
    config = (REPO / ".dvc/config").read_text()
    path = re.search(r"html_template\s*=\s*(\S+)", config).group(1)
    assert (REPO / ".dvc" / path).resolve() == (REPO / vega.TEMPLATE).resolve()
    spec = vega.PACKAGES[0].spec
    edited = template.replace(f'data-package="{spec}">\n', f'data-package="{spec}">\n;', 1)   # one byte more
    from_cdn = template.replace('<script data-package="vega-embed',
                                '<script src="https://cdn.example/x.js"></script><script data-package="vega-embed', 1)
    for bad in (edited, from_cdn):
        with pytest.raises(vega.VendorError):
            vega.check(bad)


@pytest.fixture(scope="module")
def plots(tmp_path_factory):
    """A DVC project with the project's .dvc/config and vendor/, plotting a real run's step history."""
    root = tmp_path_factory.mktemp("plots")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run_cli("git", "init", "-q", cwd=root)
    run_cli(DVC, "init", "-q", cwd=root, env=env)
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")
    shutil.copytree(REPO / "vendor", root / "vendor")
    result, _, _ = run(cfg(epochs=3, batch_size=6))
    pd.DataFrame(result.steps).to_csv(root / "steps.csv", index=False)
    pd.DataFrame(result.history).to_csv(root / "history.csv", index=False)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{"training curves": {
        "x": "step", "y": {"steps.csv": ["train_loss"], "history.csv": ["id_val_acc"]}}}]}))
    return root, env, result


def test_dvc_plots_show_a_point_per_step(plots):
    root, env, result = plots
    shown = json.loads(run_cli(DVC, "plots", "show", "--json", cwd=root, env=env).stdout)["data"]
    values = [v for p in shown["training curves"] for v in p["content"]["data"]["values"]]
    loss = [v for v in values if v["filename::field"].endswith("train_loss") or v.get("field") == "train_loss"]
    assert len(loss) == len(result.steps) == 12
    assert sorted(int(v["step"]) for v in loss) == list(range(1, 13))


def test_dvc_plots_render_offline_in_chromium(plots, tmp_path):
    root, env, _ = plots
    run_cli(DVC, "plots", "show", "-o", "plots_html", cwd=root, env=env)
    page = root / "plots_html/index.html"
    assert "cdn.jsdelivr" not in page.read_text()
    assert len(MARKS.findall(dom(page))) == 1          # vega-embed drew the plot's canvas
    image = screenshot(page, tmp_path / "plots.png", size=(900, 700))
    assert ink(image, (0, 0, 500, 400)) > 0.02 and colours(image) > 20   # axes, grid, curves, legend

    # DVC's own page (the CDN's scripts) under the same conditions: nothing is drawn
    bare = tmp_path / "bare"
    shutil.copytree(root, bare, ignore=shutil.ignore_patterns("plots_html"))
    config = (bare / ".dvc/config").read_text()
    (bare / ".dvc/config").write_text(config.split("[plots]")[0])
    run_cli(DVC, "plots", "show", "-o", "plots_html", cwd=bare, env=env)
    page = bare / "plots_html/index.html"
    assert "cdn.jsdelivr" in page.read_text() and not MARKS.findall(dom(page))
