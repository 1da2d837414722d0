"""Fetch the pretrained checkpoint of a timm model (``weights: hub``) or of an OpenCLIP tag into a local file.

Where timm would download at model creation (``pretrained=True``), this fetches the same file
ahead of time, on a machine with network (a login node), into ``data/hub/<timm_name>.safetensors``,
a timm-layout state dict the backbone stage can read offline like any checkpoint path.

It follows timm's own resolution: the model's pretrained config (``timm.models.get_pretrained_cfg``)
names a Hugging Face repo (``hf_hub_id``, optionally ``@revision``) and file; without a custom
``hf_hub_filename`` timm prefers ``model.safetensors`` over ``pytorch_model.bin``. The download
itself is ``huggingface_hub.hf_hub_download`` (its cache, resume and ``HF_ENDPOINT`` /
``HF_HUB_OFFLINE`` / ``HF_HOME`` settings apply). A ``model.safetensors`` of a timm repo is
already in timm's layout and is copied; any other file is loaded through timm (its checkpoint
filters remap it) and saved as safetensors. The SHA-256 of the downloaded file is pinned in the
checksum lock file under ``hub/<timm_name>`` like any unpublished checksum, and only once the file
has been read (a safetensors header, or the state dict loaded with ``weights_only=True``) and the
local checkpoint written: a file that fails leaves the lock file as it was.

An OpenCLIP entry's ``weights: hub:<tag>`` follows open_clip's resolution the same way: the tag's
pretrained config names a Hugging Face repo (``hf_hub``) and file, a ``.safetensors`` twin of a
``.bin`` preferred; the file lands in ``data/hub/open_clip/<arch>/<tag>.safetensors`` (open_clip's
layout, the whole CLIP model) and is pinned under ``hub/open_clip/<arch>/<tag>``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline.download.errors import DownloadError
from pipeline.download.manifest import Expected
from pipeline.download.paths import DEFAULT_HUB_DIR, hub_checkpoint_path, openclip_checkpoint_path
from pipeline.download.verify import DEFAULT_LOCK, ChecksumLock, file_digest, pin, verify
from pipeline.io import atomic_path, save_tensors

_TIMM_FILES = ("model.safetensors", "pytorch_model.bin")   # timm's order when the config names no file


def fetch_hub_checkpoint(timm_name: str, out_dir: str | Path = DEFAULT_HUB_DIR, *,
                         lock: str | Path | None = DEFAULT_LOCK, log: logging.Logger | None = None,
                         endpoint: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """The local checkpoint of ``timm_name``, downloaded unless it is already there (then no network).

    ``endpoint``: a Hub endpoint other than ``HF_ENDPOINT``'s. Raises :class:`DownloadError` (one
    line) when timm has no hub weights for the name, the Hub cannot be reached (or
    ``HF_HUB_OFFLINE=1`` and nothing is cached), or the file differs from the lock file's entry.
    """
    log = log or logging.getLogger("pipeline.download")
    dest = hub_checkpoint_path(timm_name, out_dir)
    if dest.is_file():
        log.info("%s: checkpoint in place at %s", timm_name, dest)
        return dest
    from pipeline import compat

    compat.apply()   # before timm: the CPU torchvision shim
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None or not cfg.hf_hub_id:
        raise DownloadError(f"{timm_name}: timm {timm.__version__} names no Hugging Face checkpoint for it "
                            "(no pretrained_cfg.hf_hub_id); set models.<model>.weights to a checkpoint file instead")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _TIMM_FILES
    path, filename, url = _download(timm_name, repo, revision or None, filenames, endpoint, cache_dir)
    with _pinned(timm_name, f"hub/{timm_name}", url, path, dest, lock):
        if filename == "model.safetensors":
            _copy_safetensors(timm_name, path, url, dest)
        else:
            _save_in_timm_layout(timm_name, path, url, dest)
    log.info("%s: checkpoint %s/%s saved to %s", timm_name, repo, filename, dest)
    return dest


def fetch_openclip_checkpoint(arch: str, tag: str, out_dir: str | Path = DEFAULT_HUB_DIR, *,
                              lock: str | Path | None = DEFAULT_LOCK, log: logging.Logger | None = None,
                              endpoint: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """The local checkpoint of OpenCLIP ``arch`` with pretrained tag ``tag``, downloaded unless already there.

    Raises :class:`DownloadError` (one line) when open_clip names no Hugging Face file for the tag,
    the Hub cannot be reached, or the file differs from the lock file's entry.
    """
    log = log or logging.getLogger("pipeline.download")
    what = f"OpenCLIP {arch} {tag}"
    dest = openclip_checkpoint_path(arch, tag, out_dir)
    if dest.is_file():
        log.info("%s: checkpoint in place at %s", what, dest)
        return dest
    from pipeline import compat

    compat.apply()   # before open_clip (it imports torchvision): the CPU torchvision shim
    import open_clip
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives  # open_clip's own .safetensors-first rule

    hf_hub = open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "")
    if not hf_hub:
        raise DownloadError(f"{what}: open_clip {open_clip.__version__} names no Hugging Face checkpoint for this "
                            "tag; set models.<model>.weights to a checkpoint file instead")
    # open_clip's convention: "org/repo/" means its default file name, "org/repo/file" that file
    repo, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    names = (*_get_safe_alternatives(filename), filename)
    path, filename, url = _download(what, repo, None, names, endpoint, cache_dir)
    with _pinned(what, f"hub/open_clip/{arch}/{tag}", url, path, dest, lock):
        if filename.endswith(".safetensors"):
            _copy_safetensors(what, path, url, dest)
        else:
            _save_state_dict(what, path, url, dest, {"open_clip": arch, "tag": tag, "source": "hub"})
    log.info("%s: checkpoint %s/%s saved to %s", what, repo, filename, dest)
    return dest


def _download(what: str, repo: str, revision: str | None, filenames: tuple[str, ...], endpoint: str | None,
              cache_dir: str | Path | None) -> tuple[Path, str, str]:
    """(cached path, file name, URL) of the first of ``filenames`` the repo has, through ``hf_hub_download``."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    base = (endpoint or constants.ENDPOINT).rstrip("/")
    for filename in filenames:
        try:
            path = Path(hf_hub_download(repo, filename, revision=revision, endpoint=endpoint, cache_dir=cache_dir))
        except RemoteEntryNotFoundError:
            continue   # the library's own fallback: the next file name
        except Exception as e:   # HTTP, connection, offline mode: all mean "not fetched"; say why in one line
            offline = " (HF_HUB_OFFLINE=1 is set: use HF_HUB_OFFLINE=0 where there is network)" \
                if constants.HF_HUB_OFFLINE else ""
            raise DownloadError(f"{what}: cannot fetch {filename} of {repo} from {base}{offline}: "
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; run the fetch on "
                                "a machine with network (a login node), or set weights: to a checkpoint file") from None
        return path, filename, f"{base}/{repo}/resolve/{revision or 'main'}/{filename}"
    raise DownloadError(f"{what}: {repo} on {base} has none of {list(filenames)}")


@contextlib.contextmanager
def _pinned(what: str, key: str, url: str, path: Path, dest: Path, lock: str | Path | None) -> Iterator[None]:
    """Verify ``path`` against the lock file, let the body read it and write ``dest``, then pin it.

    The pin is the last step: a file that fails (the lock entry, or the body: unreadable) leaves
    the lock file as it was and no ``dest``, and is deleted from huggingface_hub's cache, which
    would otherwise hand the same bytes to the re-run. The body raises :class:`DownloadError`
    saying what is wrong with the file; this adds what happened and what to do.
    """
    checksums = ChecksumLock(lock) if lock is not None else None
    kept = "huggingface_hub's copy was deleted and nothing was put in place"
    digest = file_digest(path)
    try:
        unpinned = verify(what, key, url, digest, Expected(None, None, None, None), checksums, kept=kept)
        try:
            yield
        except DownloadError as e:
            raise DownloadError(f"{e}; {kept} or pinned: re-run to fetch it again, and report {url} if it fails "
                                "again") from None
        if unpinned and checksums is not None:
            pin(what, key, url, digest, checksums, kept=kept)
    except BaseException as e:
        dest.unlink(missing_ok=True)
        if isinstance(e, DownloadError):
            _drop_cached(path)
        raise


def _drop_cached(path: Path) -> None:
    """Delete a file from huggingface_hub's cache: its snapshot entry and the blob that entry links to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _copy_safetensors(what: str, path: Path, url: str, dest: Path) -> None:
    """Copy a safetensors file into place once its header reads (an HTML page or a cut file does not)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as e:
        raise DownloadError(f"{what}: {path.name} from {url} is not a readable safetensors file ({type(e).__name__}: "
                            f"{e})") from None
    with atomic_path(dest) as tmp:
        shutil.copyfile(path, tmp)


def _save_state_dict(what: str, path: Path, url: str, dest: Path, metadata: dict[str, str]) -> None:
    """A plain state-dict file (``torch.load(weights_only=True)``: no code runs) saved as safetensors."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DownloadError(f"{what}: {path.name} from {url} is not a plain state dict ({type(e).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DownloadError(f"{what}: {path.name} from {url} does not hold a state dict of tensors")
    save_tensors(dest, state, metadata)   # sorted metadata: the same file for the same weights


def _save_in_timm_layout(timm_name: str, path: Path, url: str, dest: Path) -> None:
    """Load ``path`` as timm would (its checkpoint filter remaps foreign layouts) and save the state dict."""
    import timm

    try:
        model = timm.create_model(timm_name, pretrained=True,
                                  pretrained_cfg_overlay={"file": str(path), "source": ""})
    except Exception as e:   # timm reads it with weights_only=True: an HTML page, a cut or foreign file
        first = str(e).splitlines()[0] if str(e) else ""
        raise DownloadError(f"{timm_name}: {path.name} from {url} does not load as a {timm_name} checkpoint "
                            f"({type(e).__name__}: {first})") from None
    save_tensors(dest, {k: v.detach().clone() for k, v in model.state_dict().items()},
                 {"timm_name": timm_name, "source": "hub"})
