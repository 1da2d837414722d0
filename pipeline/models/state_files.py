"""Checkpoint files read safely, and refused in one line naming the file and the first bad key.

A checkpoint is read as tensors only: safetensors, or a torch file through ``torch.load(weights_only=True)``
(no pickled code runs; TorchScript archives, whose loading runs their code, are refused). What cannot
serve as weights is a :class:`CheckpointError`: a truncated or tampered file, a text file, pickled
objects, non-finite values (every feature computed downstream would be NaN), or tensors that do not
fit the architecture. No message suggests loading a file unsafely (torch's own does: it is not shown).
"""
from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from pipeline.io import InputError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".ckpt")


class CheckpointError(InputError):
    """A checkpoint that cannot serve as weights; ``str(err)`` is one line naming the file and the first bad key."""


def _first_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (loading one runs its code)."""
    try:
        return zipfile.is_zipfile(path) and any(n.endswith("constants.pkl") or "/code/" in n
                                                for n in zipfile.ZipFile(path).namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _read_torch(path: Path) -> object:
    if is_torchscript(path):
        raise CheckpointError(f"{path}: a TorchScript archive, which is not loaded (loading runs its code); use a "
                              "state-dict file of the same weights (.safetensors or .pth)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # torch raises anything from KeyError to EOFError on what is not a checkpoint
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:   # pickled objects: torch's message goes on to suggest loading them unsafely, so it is not shown
            raise CheckpointError(f"{path}: holds pickled objects ({found.group(1).rstrip('.,')}), which are never "
                                  "loaded: a checkpoint must hold tensors only (a state dict, or .safetensors)"
                                  ) from None
        raise CheckpointError(f"{path}: not a checkpoint of tensors ({type(e).__name__}); expected .safetensors, "
                              "or a .pth/.bin/.pt state dict saved by torch.save") from None


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (``{"state_dict" or "model": ...}`` unwrapped), checked: tensors, finite."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(path))
        except Exception as e:   # safetensors' own error type, or OSError
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)}): truncated, "
                                  "tampered with, or not safetensors") from None
    else:
        state = _read_torch(path)
    for wrapper in ("state_dict", "model"):   # the usual checkpoint layouts: {"state_dict": ..., "epoch": ...}
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict (a mapping of names to "
                              "tensors)")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {key}: a {type(value).__name__}, not a tensor: not a state dict")
    out = {str(k): v for k, v in state.items()}
    check_finite(out, path)
    return out


def check_finite(state: Mapping[str, torch.Tensor], where: str | Path) -> None:
    """Refuse a state holding NaN or infinite values, naming the first such tensor."""
    for key, value in state.items():
        if (value.is_floating_point() or value.is_complex()) and value.device.type != "meta":
            bad = value.numel() - int(torch.isfinite(value).sum())
            if bad:
                raise CheckpointError(f"{where}: {key}: {bad} of {value.numel()} values are NaN or infinite; a "
                                      "broken checkpoint is not used (every feature computed from it would be NaN)")


def check_fits(state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor], where: str | Path,
               arch: str, optional: Iterable[str] = ()) -> None:
    """Refuse a state whose keys or shapes are not the model's (``optional``: keys the state may lack)."""
    optional = set(optional)
    missing = [k for k in model_state if k not in state and k not in optional
               and not k.endswith("num_batches_tracked")]
    # the model's order for its keys; the file's foreign keys by name, statistics last (file order follows dtypes)
    unexpected = sorted((k for k in state if k not in model_state), key=lambda k: (k.endswith("_tracked"), k))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's {len(model_state)} tensors are missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} of the file's are not the model's (first: {unexpected[0]})")
        raise CheckpointError(f"{where} does not fit {arch}: {'; '.join(parts)}: a checkpoint of another "
                              "architecture?")
    for key, value in state.items():
        if tuple(value.shape) != tuple(model_state[key].shape):
            raise CheckpointError(f"{where} does not fit {arch}: {key} has shape {tuple(value.shape)} in the file, "
                                  f"{tuple(model_state[key].shape)} in the model (a checkpoint of another size?)")


def summarise_load_error(error: BaseException) -> str:
    """torch's multi-line ``load_state_dict`` error as one line naming the first bad key."""
    text = str(error)
    if m := re.search(r"size mismatch for ([^:]+): copying a param with shape torch.Size\((\[[^]]*\])\) from "
                      r"checkpoint, the shape in current model is torch.Size\((\[[^]]*\])\)", text):
        return f"{m.group(1)} has shape {m.group(2)} in the file, {m.group(3)} in the model"
    if m := re.search(r'(Missing|Unexpected) key\(s\) in state_dict: "([^"]+)"', text):
        return f"{m.group(1).lower()} key {m.group(2)}"
    return _first_line(text)
