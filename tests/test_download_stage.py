"""The download library wired into the pipeline: the ``download`` stage, ``python -m pipeline fetch``, the backbone.

Everything is served from :class:`http_server.LoopbackServer` on 127.0.0.1: the shipped manifest's
CIFAR-10 and CIFAR-10.1 parts (their extract and layout specs kept) are pointed at fabricated
copies through ``$PIPELINE_DOWNLOAD_MANIFEST``, and huggingface_hub at the server through
``HF_ENDPOINT``. No test names a real host in a network call.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PYTHON, REPO, run_cli, tiny_params
from download_helpers import md5, pack_folder, sha256, write_manifest
from fabricate_images import fabricate_cifar10, fabricate_cifar10_1
from http_server import LoopbackServer
from safetensors.torch import load_file, save

from pipeline.config import load_params
from pipeline.download.errors import ManualDataError, MirrorsFailedError
from pipeline.download.manifest import MANIFEST_ENV, MANIFEST_PATH
from pipeline.stages import download as download_stage
from pipeline.stages.job import Declared
from pipeline.stages.registry import STAGES_BY_NAME

BIN = Path(PYTHON).parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"
C10 = {"source": "cifar10", "storage_size": 32, "id_val_fraction": 0.2, "ood": ["cifar10_1"]}
C101_FILES = ("cifar10.1_v6_data.npy", "cifar10.1_v6_labels.npy")


def project(root: Path, datasets: dict, models: dict | None = None) -> Path:
    """A working directory whose params.yaml runs the tiny config on ``datasets`` (and ``models``)."""
    cfg = tiny_params()
    cfg["datasets"].update(datasets)
    cfg["experiment"]["datasets"] = list(datasets)
    if models:
        cfg["models"] = models
        cfg["experiment"]["models"] = list(models)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def local_manifest(path: Path, server: LoopbackServer, files: dict[tuple[str, str], bytes],
                   published: set[str] = frozenset(), manual: tuple[str, ...] = ()) -> Path:
    """The shipped parts named in ``files``, each file served from ``server``, and the ``manual`` parts (no URLs).

    Files of parts in ``published`` keep a published checksum (the fabricated bytes' md5); the others
    have none, so the lock file pins them on their first download.
    """
    shipped = yaml.safe_load(MANIFEST_PATH.read_text())["parts"]
    parts = {name: shipped[name] for name in manual}
    assert all(p.get("manual") for p in parts.values())
    for (part, name), data in files.items():
        spec = parts.setdefault(part, json.loads(json.dumps(shipped[part])))
        (file,) = [f for f in spec["files"] if f["name"] == name]
        for key in ("size", "approx_size", "md5", "sha256", "checksum_source", "size_source"):
            file.pop(key, None)
        file["urls"] = [server.add(f"/{part}/{name}", data)]
        if part in published:
            file.update(size=len(data), md5=md5(data), checksum_source="the test that made the bytes")
    return write_manifest(path, parts)


def cifar_files(src: Path) -> dict[tuple[str, str], bytes]:
    fabricate_cifar10(src, "py")
    fabricate_cifar10_1(src)
    files = {("cifar10", "cifar-10-python.tar.gz"): pack_folder(src / "cifar-10-batches-py", "tar.gz")}
    return files | {("cifar10_1", n): (src / "cifar10.1" / n).read_bytes() for n in C101_FILES}


def serve_hub_checkpoint(server: LoopbackServer, timm_name: str) -> dict[str, torch.Tensor]:
    """A random state dict of ``timm_name`` where huggingface_hub looks for timm's ``model.safetensors``."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    state = {k: torch.randn_like(v) for k, v in timm.create_model(timm_name).state_dict().items()}
    data = save(state)
    server.add(f"/{cfg.hf_hub_id}/resolve/main/model.safetensors", data,
               headers={"X-Repo-Commit": COMMIT, "ETag": f'"{sha256(data)}"'})
    return state


def cli_env(tmp_path: Path, manifest: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, MANIFEST_ENV: str(manifest), "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO),
            "HF_HUB_DISABLE_TELEMETRY": "1", **extra}


def run_stage(monkeypatch, argv: list[str]):
    """The download stage's main in-process; returns its job (its params view recorded what it read)."""
    jobs = []
    real = download_stage.parse_job
    monkeypatch.setattr(download_stage, "parse_job", lambda *a: jobs.append(real(*a)) or jobs[-1])
    assert download_stage.main(argv) == 0
    return jobs[-1]


def test_fetch_then_the_stages_run_offline(server, tmp_path: Path, monkeypatch) -> None:
    """fetch downloads a dataset and a hub checkpoint; then download finds them with no request, prepare and
    backbone run on them, and the status file has the same bytes however the data got there."""
    from pipeline.stages.backbone import main as backbone_main
    from pipeline.stages.prepare_data import main as prepare_main

    manifest = local_manifest(tmp_path / "manifest.yaml", server, cifar_files(tmp_path / "src"), {"cifar10"})
    state = serve_hub_checkpoint(server, "test_vit")
    root = project(tmp_path / "proj", {"c10": C10, "c10b": {**C10, "root": "elsewhere"}},
                   {"vit": {"timm_name": "test_vit", "weights": "hub"}})
    # HF_HUB_OFFLINE=1, as exported for the stages: fetch turns it off for itself
    env = cli_env(tmp_path, manifest, HF_ENDPOINT=server.url(""), HF_HUB_OFFLINE="1")
    done = run_cli(PYTHON, "-m", "pipeline", "fetch", "--params", "params.yaml", "--datasets", "c10", cwd=root,
                   env=env)
    assert "c10: in place (cifar10: downloaded, cifar10_1: downloaded)" in done.stdout
    assert "vit: checkpoint in place at data/hub/test_vit.safetensors" in done.stdout
    assert not (root / "elsewhere").exists()   # --datasets c10 only
    lock = json.loads((root / "data/checksums.lock").read_text())
    assert set(lock) == {f"cifar10_1/{n}" for n in C101_FILES} | {"hub/test_vit"}   # cifar10 has a published md5
    assert (root / "data/raw/cifar-10-batches-py/data_batch_1").is_file()

    monkeypatch.chdir(root)
    monkeypatch.setenv(MANIFEST_ENV, str(manifest))   # any request would reach the loopback server
    server.reset()
    job = run_stage(monkeypatch, ["--dataset", "c10"])
    declared = Declared.of(STAGES_BY_NAME["download"], job.wildcards)
    assert job.params.reads and all(declared.whole(tuple(r.split("."))) for r in job.params.reads)
    status = (root / "data/download/c10.json").read_bytes()
    assert json.loads(status)["parts"]["cifar10_1"]["paths"] == [f"cifar10.1/{n}" for n in C101_FILES]
    shutil.rmtree(root / "data/raw/.downloaded")   # as if placed by hand: found through the layout
    run_stage(monkeypatch, ["--dataset", "c10"])
    assert (root / "data/download/c10.json").read_bytes() == status

    assert prepare_main(["--dataset", "c10"]) == 0
    info = json.loads((root / "data/prepared/c10/info.json").read_text())
    assert info["source"] == "cifar10" and len(info["classes"]) == 10
    assert backbone_main(["--model", "vit"]) == 0   # weights: hub, read from data/hub offline
    weights = load_file(root / "data/weights/vit.safetensors")
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    assert server.requests == []

    shutil.rmtree(root / "data/raw")   # the stage downloads it itself now: the same status bytes
    run_stage(monkeypatch, ["--dataset", "c10"])
    assert server.hits("/cifar10/cifar-10-python.tar.gz") == 1
    assert (root / "data/download/c10.json").read_bytes() == status


def test_backbone_without_a_fetched_checkpoint_says_to_fetch(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub
    import timm

    from pipeline.download.errors import DownloadError
    from pipeline.models.weights import resolve_weights

    if huggingface_hub.try_to_load_from_cache(timm.models.get_pretrained_cfg("test_vit").hf_hub_id,
                                              "model.safetensors"):
        pytest.skip("test_vit's checkpoint is in this machine's hub cache")
    monkeypatch.chdir(tmp_path)   # no data/hub here; HF_HUB_OFFLINE=1 (conftest)
    with pytest.raises(DownloadError) as err:
        resolve_weights("test_vit", "hub")
    assert "data/hub/test_vit.safetensors does not exist" in str(err.value)
    assert "python -m pipeline fetch" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["every mirror fails", "download: false"])
def test_a_download_error_is_one_line_naming_dataset_file_and_remedy(server, tmp_path: Path, case: str) -> None:
    if case == "every mirror fails":
        manifest = local_manifest(tmp_path / "manifest.yaml", server, cifar_files(tmp_path / "src"))
        server.routes["/cifar10/cifar-10-python.tar.gz"].status = 404
        root, dataset, code = project(tmp_path / "proj", {"c10": C10}), "c10", MirrorsFailedError.exit_code
        needed = ["c10: CIFAR-10", "cannot download cifar-10-python.tar.gz", "HTTP 404", "Place it by hand",
                  "cifar-10-batches-py/"]
    else:
        manifest = local_manifest(tmp_path / "manifest.yaml", server, {("waterbirds", "waterbirds_v1.0.tar.gz"): b""})
        wb = {"source": "waterbirds", "download": False}
        root, dataset, code = project(tmp_path / "proj", {"wb": wb}), "wb", ManualDataError.exit_code
        needed = ["wb: WILDS Waterbirds", "download is off", "waterbirds_v1.0.tar.gz",
                  "data/raw/waterbirds_v1.0/{RELEASE_v1.0.txt,metadata.csv", "or allow the download"]
    res = run_cli(PYTHON, "-m", "pipeline", "download", "--dataset", dataset, cwd=root,
                  env=cli_env(tmp_path, manifest), check=False)
    assert res.returncode == code != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert all(n in errors[0] for n in needed), errors[0]
    assert not (root / "data/download").exists()
    if case == "download: false":
        assert server.requests == []


# Which rules Snakemake runs where it runs itself (Workflow.is_local reads this set), then a dry run through
# the Slurm profile, in one process: each Snakemake start pays the Slurm plugin's probe of the cluster.
SNAKEMAKE_LOCALRULES_THEN_CLI = """
import sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.enums import Quietness
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow = api.workflow(ResourceSettings(), ConfigSettings(), snakefile=Path("Snakefile"))._workflow
    print("local rules:", " ".join(sorted(workflow._localrules)), flush=True)
from snakemake.cli import main
main(sys.argv[1:])
"""


def test_download_jobs_are_local_and_upstream_of_prepare(tmp_path: Path) -> None:
    """In the Slurm profile's dry run, a download job feeds the real dataset's prepare_data and its rule is a
    local rule (run on the submitting host); the embedded digits task has none (its DAG is the demo's)."""
    from test_pipeline_e2e import copy_project, snakemake_jobs
    from test_slurm import PROFILE_ENV

    assert STAGES_BY_NAME["download"].jobs(load_params(REPO / "params.yaml")) == []
    cfg = tiny_params()
    cfg["datasets"]["wb"] = {"source": "waterbirds", "storage_size": 32}
    cfg["experiment"].update(datasets=["digits", "wb"], methods=["ft_adamw"], seeds=[0])
    cfg["wise_ft"]["methods"] = []
    cfg.pop("soups")
    copy_project(tmp_path, cfg)
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    env = {**os.environ, **PROFILE_ENV, "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = run_cli(PYTHON, "-c", SNAKEMAKE_LOCALRULES_THEN_CLI, "--profile", "profiles/slurm", "-n", cwd=tmp_path,
                  env=env).stdout
    assert "local rules: download\n" in out
    assert snakemake_jobs(out)["download"] == 1 and snakemake_jobs(out)["prepare_data"] == 2
    blocks = [(m[1], m[2]) for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", out, re.M)]
    (download,) = [b for rule, b in blocks if rule == "download"]
    assert "output: data/download/wb.json" in download and "wildcards: dataset=wb" in download
    prepare = {re.search(r"wildcards: dataset=(\w+)", b)[1]: b for rule, b in blocks if rule == "prepare_data"}
    assert "input: data/download/wb.json" in prepare["wb"] and "data/download" not in prepare["digits"]


def test_fetch_reports_every_failure_and_exits_with_the_first_code(server, tmp_path: Path) -> None:
    manifest = local_manifest(tmp_path / "manifest.yaml", server, {("waterbirds", "waterbirds_v1.0.tar.gz"): b"",
                                                                   ("imagenet_r", "imagenet-r.tar"): b""},
                              manual=("imagenet",))
    root = project(tmp_path / "proj", {"wb": {"source": "waterbirds", "download": False},
                                       "in1k": {"source": "imagenet", "ood": ["imagenet_r"]}})
    res = subprocess.run([sys.executable, "-m", "pipeline", "fetch"], cwd=root, env=cli_env(tmp_path, manifest),
                         capture_output=True, text=True, timeout=120)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == ManualDataError.exit_code and len(errors) == 3, res.stderr
    assert errors[0].startswith("error: wb: WILDS Waterbirds") and "image-net.org" in errors[1]
    assert errors[2] == "error: 2 of 2 downloads failed (the lines above)"
    assert server.requests == []
