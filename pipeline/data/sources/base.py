"""What every real dataset source provides: a manifest of its images, checked against its layout.

A source reads a dataset already on disk (placed by hand or by the ``download`` stage; it never downloads)
and lists every image once, as a :class:`Manifest`: one row per image with its
split, label, domain, group and where it lives. :mod:`pipeline.data.decode` turns
that list into the prepared image shards, so a source never decodes images itself.

Split names are the same for every dataset, so one ``params.yaml`` can mix them:
``train``, ``id_val``, ``id_test``, ``ood_val`` (optional: used only by the
labelled OOD-val oracle) and ``ood_test``. When a dataset's OOD score is a
metric on its ID test set (Waterbirds' worst group), ``ood_test`` is an alias
of ``id_test`` (``Manifest.aliases``), stored once.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SPLITS = ("train", "id_val", "id_test", "ood_val", "ood_test")
RECORD_COLUMNS = ["split", "label", "domain", "group", "source"]


class MissingDataError(FileNotFoundError):
    """The dataset is not where params.yaml says, or is incomplete.

    The message names the missing path, the expected layout and where the data comes from.
    """

    def __init__(self, dataset: str, missing: str | Path, layout: str, origin: str, detail: str = ""):
        self.missing = str(missing)
        text = (f"{dataset}: {detail or 'not found'}: {missing}\n"
                f"  expected layout:\n{_indent(layout.strip())}\n"
                f"  where it comes from: {origin.strip()}")
        super().__init__(text)


class CorruptImageError(OSError):
    """An image file exists but cannot be decoded; the message names it."""


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


@dataclass
class Manifest:
    """Every image of a prepared dataset, before decoding.

    ``records``: one row per image with :data:`RECORD_COLUMNS` (``source`` is what
    :attr:`open_image` takes: a file path, or any key the source understands), plus
    optional extra columns kept in ``metadata.csv`` (e.g. ``wilds_index``).
    ``classes``: class names, index = label. ``info``: extra ``info.json`` entries
    (e.g. ``class_subsets``, ``official_eval``). ``files``: small files copied into
    the prepared directory, ``{relative destination: source path}`` (e.g. the WILDS
    metadata its official evaluation reads). ``open_image``: ``source -> PIL image``.
    """

    records: pd.DataFrame
    classes: list[str]
    open_image: Callable[[str], Image.Image] = field(default=lambda s: Image.open(s))
    aliases: dict[str, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in RECORD_COLUMNS if c not in self.records]
        if missing:
            raise ValueError(f"manifest lacks columns {missing}")
        unknown = sorted(set(self.records["split"]) - set(SPLITS))
        if unknown:
            raise ValueError(f"manifest has unknown splits {unknown} (allowed: {', '.join(SPLITS)})")
        for alias, target in self.aliases.items():
            if alias not in SPLITS or target not in set(self.records["split"]):
                raise ValueError(f"split alias {alias!r} -> {target!r} is not valid")
        labels = self.records["label"].to_numpy()
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), got [{labels.min()}, {labels.max()}]")
        for split in ("train", "id_val"):
            if not (self.records["split"] == split).any():
                raise ValueError(f"manifest has no {split!r} images")

    def split_names(self) -> list[str]:
        """Physical splits in the canonical order."""
        present = set(self.records["split"])
        return [s for s in SPLITS if s in present]


def holdout(records: pd.DataFrame, fraction: float, seed: int, into: str, by: str = "label",
            keep: bool = False) -> pd.DataFrame:
    """Move a seeded, per-``by`` stratified ``fraction`` of ``records`` to split ``into``.

    Used where a dataset has no validation split of its own (DomainNet, CIFAR-10,
    ImageNet): the held-out images come out of the train split, so val and train
    never share an image, and the choice depends only on the seed and the file list.
    ``keep``: the images stay in their split too and ``into`` gets copies (appended, in the same
    order): the same ``into`` split, but not held out (train on everything, as WiSE-FT does).
    """
    out = records.copy()
    rng = np.random.default_rng(seed)
    pick: list[int] = []
    for _, idx in out.groupby(by, sort=True).groups.items():
        idx = np.sort(np.asarray(idx))
        k = int(round(fraction * len(idx)))
        pick += list(rng.choice(idx, size=min(k, len(idx)), replace=False))
    if keep:
        return pd.concat([out, out.loc[sorted(pick)].assign(split=into)], ignore_index=True)
    out.loc[pick, "split"] = into
    return out


def require(path: Path, dataset: str, layout: str, origin: str, what: str = "not found") -> Path:
    """``path`` if it exists, else a :class:`MissingDataError` naming it, the layout and the origin."""
    if not path.exists():
        raise MissingDataError(dataset, path, layout, origin, what)
    return path


def list_images(folder: Path, extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".JPEG")) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (a stable order across machines)."""
    ext = {e.lower() for e in extensions}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in ext)


def chosen_subset(name: str, key: str, chosen, allowed) -> list[str]:
    """``chosen`` as a list after checking it is a non-empty subset of ``allowed`` (e.g. the OOD sets)."""
    out = [str(c) for c in chosen]
    if not out or set(out) - set(allowed):
        raise ValueError(f"{name}: {key} must be a non-empty subset of {list(allowed)}, got {out}")
    return out
