"""``weights: hub`` checkpoints fetched ahead of time, with huggingface_hub pointed at a loopback server.

The server answers the Hub's ``/<repo>/resolve/<revision>/<file>`` requests the way
``hf_hub_download`` needs (``X-Repo-Commit``, ``ETag``, ``Content-Length``) with a random
``test_vit`` state dict; the fetch runs in its own process so that ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE=0`` apply to that process only (huggingface_hub reads them at import).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from download_helpers import sha256
from http_server import LoopbackServer
from safetensors.torch import load_file, save

REPO = Path(__file__).resolve().parent.parent
FETCH = ("import sys; from pipeline.download.hub import fetch_hub_checkpoint; "
         "print(fetch_hub_checkpoint(sys.argv[1], sys.argv[2], lock=sys.argv[3]))")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    return {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONPATH": str(REPO)}


def test_hub_checkpoint_is_fetched_into_a_local_file(tmp_path: Path) -> None:
    import timm

    cfg = timm.models.get_pretrained_cfg("test_vit")
    state = {k: torch.randn_like(v) for k, v in timm.create_model("test_vit").state_dict().items()}
    data = save(state)
    out, lock = tmp_path / "data/hub", tmp_path / "data/checksums.lock"
    with LoopbackServer() as server:
        path = f"/{cfg.hf_hub_id}/resolve/main/model.safetensors"
        server.add(path, data, headers={"X-Repo-Commit": COMMIT, "ETag": f'"{sha256(data)}"'})
        done = subprocess.run([sys.executable, "-c", FETCH, "test_vit", str(out), str(lock)], cwd=tmp_path,
                              env=hub_env(tmp_path, server.url("")), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert {r.path for r in server.requests} == {path} and server.hits(path) >= 1
        assert any(r.method == "GET" for r in server.requests)

        local = out / "test_vit.safetensors"
        assert done.stdout.strip().endswith(str(local))
        loaded = load_file(local)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
        entry = json.loads(lock.read_text())["hub/test_vit"]
        assert entry["sha256"] == sha256(data) and entry["url"].endswith(path)
        # The pipeline builds the model from the local file, offline, as from any checkpoint path.
        model = timm.create_model("test_vit", pretrained=True, pretrained_cfg_overlay={"file": str(local)})
        assert torch.equal(model.state_dict()["pos_embed"], state["pos_embed"])

        # In place: no request at all (the file is there; huggingface_hub is not even imported).
        server.reset()
        again = subprocess.run([sys.executable, "-c", FETCH, "test_vit", str(out), str(lock)], cwd=tmp_path,
                               env=hub_env(tmp_path, server.url("")), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and server.requests == []


def test_hub_unreachable_is_one_line(tmp_path: Path) -> None:
    from pipeline.download.errors import DownloadError

    with LoopbackServer() as server:   # answers 404 for every path: no such repo here
        done = subprocess.run([sys.executable, "-c", FETCH, "test_vit", str(tmp_path / "hub"),
                               str(tmp_path / "lock")], cwd=tmp_path, env=hub_env(tmp_path, server.url("")),
                              capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and not (tmp_path / "hub").exists()
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{DownloadError.__module__}.DownloadError: test_vit: cannot fetch model.safetensors")
    assert "login node" in last


def test_hub_file_that_does_not_read_is_not_pinned(tmp_path: Path) -> None:
    """An HTML page where the checkpoint should be: one line, no local file, the lock file as it was; the real
    file, once served, is fetched and pinned (issue 22, class 1)."""
    import timm

    cfg = timm.models.get_pretrained_cfg("test_vit")
    page = b"<!DOCTYPE html><html><body>Service unavailable</body></html>"
    out, lock = tmp_path / "data/hub", tmp_path / "data/checksums.lock"
    with LoopbackServer() as server:
        path = f"/{cfg.hf_hub_id}/resolve/main/model.safetensors"
        server.add(path, page, headers={"X-Repo-Commit": COMMIT, "ETag": f'"{sha256(page)}"'})
        args = [sys.executable, "-c", FETCH, "test_vit", str(out), str(lock)]
        done = subprocess.run(args, cwd=tmp_path, env=hub_env(tmp_path, server.url("")), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode != 0 and not lock.exists() and not (out / "test_vit.safetensors").exists()
        last = done.stderr.strip().splitlines()[-1]
        assert "test_vit: model.safetensors from" in last and "is not a readable safetensors file" in last, last
        assert "huggingface_hub's copy was deleted and nothing was put in place or pinned: re-run" in last
        assert not list((tmp_path / "hf").rglob("model.safetensors"))   # so the re-run fetches it again

        data = save({k: torch.randn_like(v) for k, v in timm.create_model("test_vit").state_dict().items()})
        server.routes[path].body = data
        server.routes[path].headers["ETag"] = f'"{sha256(data)}"'
        done = subprocess.run(args, cwd=tmp_path, env=hub_env(tmp_path, server.url("")), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(lock.read_text())["hub/test_vit"]["sha256"] == sha256(data)


def test_hub_falls_back_to_the_pytorch_file_and_saves_timm_layout(tmp_path: Path) -> None:
    """No model.safetensors in the repo: timm's fallback file, loaded through timm, saved as safetensors."""
    import io

    import timm

    cfg = timm.models.get_pretrained_cfg("test_vit")
    state = {k: torch.randn_like(v) for k, v in timm.create_model("test_vit").state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    out = tmp_path / "hub"
    with LoopbackServer() as server:
        base = f"/{cfg.hf_hub_id}/resolve/main"
        server.add(f"{base}/model.safetensors", b"", status=404,
                   headers={"X-Repo-Commit": COMMIT, "X-Error-Code": "EntryNotFound"})
        server.add(f"{base}/pytorch_model.bin", data, headers={"X-Repo-Commit": COMMIT, "ETag": f'"{sha256(data)}"'})
        done = subprocess.run([sys.executable, "-c", FETCH, "test_vit", str(out), str(tmp_path / "lock")],
                              cwd=tmp_path, env=hub_env(tmp_path, server.url("")), capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = load_file(out / "test_vit.safetensors")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("name", ["vit_base_patch16_clip_224.openai", "convnext_base.fb_in22k",
                                  "vit_base_patch16_224.augreg_in21k", "vit_base_patch16_224.dino",
                                  "resnetv2_50x1_bit.goog_in21k"])
def test_paper_backbones_have_hub_checkpoints(name: str) -> None:
    """The configs' ``weights: hub`` models all resolve to a Hugging Face repo (what the fetch needs)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg is not None and cfg.hf_hub_id


# A tiny OpenCLIP model and a pretrained tag naming a Hub repo, registered the way open_clip lists its
# own tags ("org/repo/": open_clip's default file name, its .safetensors twin tried first).
CLIP_CONFIG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                                               "patch_size": 8},
               "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
CLIP_SCRIPT = """
import sys
from pipeline import compat
compat.apply()
import open_clip
from safetensors.torch import save_file
from pipeline.download.hub import fetch_openclip_checkpoint
from pipeline.models.openclip import register_config, resolve_weights
config, what = sys.argv[1:3]
entry = {"open_clip": "pipeline-hub-clip", "config": config, "weights": "hub:test"}
register_config(entry)
open_clip.pretrained._PRETRAINED["pipeline-hub-clip"] = {"test": {"hf_hub": "pipeline/tiny-clip/"}}
if what == "fetch":
    print(fetch_openclip_checkpoint("pipeline-hub-clip", "test", "data/hub", lock="data/checksums.lock"))
else:   # the backbone stage's path: offline, from the fetched file
    save_file(resolve_weights(entry, "clip"), "resolved.safetensors")
"""


@pytest.mark.parametrize("served", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_openclip_tag_is_fetched_then_read_offline(tmp_path: Path, served: str) -> None:
    import io

    from pipeline import compat

    compat.apply()
    import open_clip

    config = tmp_path / "pipeline-hub-clip.json"
    config.write_text(json.dumps(CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) for k, v in open_clip.create_model("pipeline-hub-clip").state_dict().items()}
    if served.endswith(".bin"):
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
    else:
        data = save(state)
    base = "/pipeline/tiny-clip/resolve/main"
    with LoopbackServer() as server:
        if served.endswith(".bin"):   # no safetensors twin in this repo: open_clip's file name then
            server.add(f"{base}/open_clip_model.safetensors", b"", status=404,
                       headers={"X-Repo-Commit": COMMIT, "X-Error-Code": "EntryNotFound"})
        server.add(f"{base}/{served}", data, headers={"X-Repo-Commit": COMMIT, "ETag": f'"{sha256(data)}"'})
        env = hub_env(tmp_path, server.url(""))
        done = subprocess.run([sys.executable, "-c", CLIP_SCRIPT, str(config), "fetch"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        local = tmp_path / "data/hub/open_clip/pipeline-hub-clip/test.safetensors"
        assert done.stdout.strip().endswith(str(Path("data/hub/open_clip/pipeline-hub-clip/test.safetensors")))
        assert server.hits(f"{base}/{served}") >= 1
        entry = json.loads((tmp_path / "data/checksums.lock").read_text())["hub/open_clip/pipeline-hub-clip/test"]
        assert entry["sha256"] == sha256(data) and entry["url"].endswith(f"{base}/{served}")

        # The backbone stage, offline: the fetched file, no request at all.
        server.reset()
        done = subprocess.run([sys.executable, "-c", CLIP_SCRIPT, str(config), "load"], cwd=tmp_path,
                              env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert server.requests == []
    for path in (local, tmp_path / "resolved.safetensors"):
        loaded = load_file(path)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_fetch_lists_the_configs_hub_models() -> None:
    """``fetch`` covers timm's ``weights: hub`` and OpenCLIP's ``hub:<tag>`` entries of a config."""
    from pipeline.config import load_params
    from pipeline.tools.fetch import _hub_models, _openclip_tag

    wise = load_params(str(REPO / "configs/wise_ft.yaml"))
    assert _hub_models(wise) == ["clip_vit_b16"] and _openclip_tag(wise["models"]["clip_vit_b16"]) == "openai"
    freeze = load_params(str(REPO / "configs/freeze_embed.yaml"))
    assert set(_hub_models(freeze)) == set(freeze["experiment"]["models"])
    assert not any(_openclip_tag(freeze["models"][m]) for m in freeze["experiment"]["models"])
