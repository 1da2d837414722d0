"""Resumable training state: every tensor in safetensors, everything else in JSON, written atomically.

A checkpoint is a directory ``step<N>/`` holding ``tensors.safetensors`` (model
weights, the best epoch's weights so far, optimizer state, RNG states, the
epoch's data order) and ``state.json`` (loop counters, history, optimizer
hyperparameters, Python/NumPy RNG states, the config hash). Each one is
renamed into place complete, and older ones are deleted only after the newer
one exists, so a job killed at any moment leaves a loadable checkpoint or none.
Nothing is unpickled on load.

Restoring model, optimizer, every RNG and the position in the epoch's data order
makes the resumed run's updates the same as an uninterrupted run's, bit for bit
on CPU in deterministic mode.
"""
from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.io import atomic_path, save_tensors

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step(\d+)$")


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as (tensors by ``optim/<param index>/<key>``, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for pid, entries in rest["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    out = {"rng/torch": torch.get_rng_state(), "rng/data": generator.get_state()}
    if torch.cuda.is_available():
        out["rng/cuda"] = torch.cuda.get_rng_state()
    return out


def restore_rng(tensors: dict[str, torch.Tensor], generator: torch.Generator, py_np: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    generator.set_state(tensors["rng/data"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    version, internal, gauss = py_np["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = py_np["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


class Checkpointer:
    """Saves and finds the latest checkpoint of one run in ``root`` (not a pipeline output)."""

    def __init__(self, root: str | Path, config_hash: str):
        self.root = Path(root)
        self.config_hash = config_hash

    def latest(self) -> Path | None:
        if not self.root.is_dir():
            return None
        steps = sorted((int(m.group(1)), p) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name)))
        return steps[-1][1] if steps else None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
             best_state: dict[str, torch.Tensor], order: torch.Tensor | None, loop_state: dict) -> Path:
        tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tensors |= {f"best/{k}": v.contiguous() for k, v in best_state.items()}
        optim_tensors, optim_rest = _optimizer_split(optimizer)
        tensors |= optim_tensors | rng_tensors(generator)
        if order is not None:
            tensors["order"] = order.contiguous()
        np_state = np.random.get_state()
        state = {"config_hash": self.config_hash, "step": step, "loop": loop_state, "optimizer": optim_rest,
                 "rng": {"python": list(random.getstate()),
                         "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}}
        target = self.root / f"step{step:09d}"
        with atomic_path(target, is_dir=True) as tmp:
            save_tensors(tmp / "tensors.safetensors", tensors)
            (tmp / "state.json").write_text(json.dumps(state))
        for old in self.root.iterdir():   # only once the new one is complete
            if old != target and (_STEP_DIR.match(old.name) or old.name.startswith(".tmp-")):
                shutil.rmtree(old, ignore_errors=True)
        return target

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict | None:
        """Restore the latest checkpoint into model, optimizer and RNGs; returns its loop state, best
        weights and data order, or None (no checkpoint, or one written under other settings)."""
        from safetensors.torch import load_file

        path = self.latest()
        if path is None:
            return None
        state = json.loads((path / "state.json").read_text())
        if state["config_hash"] != self.config_hash:
            log.warning("ignoring checkpoint %s: written with config %s, this run is %s", path,
                        state["config_hash"], self.config_hash)
            return None
        tensors = load_file(str(path / "tensors.safetensors"))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, strict=True)
        optimizer.load_state_dict(_optimizer_join(tensors, state["optimizer"]))   # moves state to the params' device
        restore_rng(tensors, generator, state["rng"])
        log.info("resuming from %s (step %d)", path, state["step"])
        return {"loop": state["loop"], "best_state": {k[5:]: v for k, v in tensors.items() if k.startswith("best/")},
                "order": tensors.get("order")}

    def clear(self) -> None:
        """Remove every checkpoint of the run (after its outputs are written)."""
        shutil.rmtree(self.root, ignore_errors=True)
