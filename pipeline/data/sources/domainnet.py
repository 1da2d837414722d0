"""DomainNet (Peng et al., ICCV 2019): one ID domain -> OOD domains, from the official split files.

Layout (``root`` defaults to ``data/raw``), as unpacked from http://ai.bu.edu/M3SDA/:
:data:`LAYOUT`. Each line of a split file is ``<domain>/<class>/<file>.jpg <label>``.

Splits (``domain`` column = the DomainNet domain):

* ``train`` / ``id_val``: ``<id_domain>_train.txt``, with a seeded, per-class stratified
  ``id_val_fraction`` held out as ``id_val`` (DomainNet has no validation split);
* ``id_test``: ``<id_domain>_test.txt``;
* ``ood_val``: a seeded, per-class stratified ``ood_val_fraction`` of each OOD domain's
  ``_train.txt`` (the rest of those lists is not used);
* ``ood_test``: every OOD domain's ``_test.txt``.

Defaults and why:

* ``id_domain: sketch``, ``ood_domains: [real]``: the sketch -> real shift of LP-FT
  (Kumar et al. 2022) and freeze-embed, which is also WILDS' DomainNet default.
* ``classes``: every class the split files name (345). The LP-FT / freeze-embed runs use
  the 40-class SENTRY subset (Prabhu et al. 2021); give its names here (labels follow
  the order given). No subset is built in, so none is guessed.
* ``id_val_fraction: 0.1``: DomainNet has no validation split, so model selection holds
  out 10% of the ID train list (as the other sources without one do), leaving train
  close to the official list.
* ``ood_val_fraction: 0.1``: WILDS uses the target's whole train list as OOD val; here it
  only feeds the OOD-val oracle, for which a stratified tenth is plenty while decoding
  ten times fewer images.
* ``seed: 0``.

Labels: a class's label is its rank in the official label order, read from the split
files themselves (with all 345 classes it equals the official label). The official
order is not Python's ``sorted``: ``The_Eiffel_Tower`` comes between ``tent`` and
``tiger``, so it is never recomputed from the folder names. A class given two labels,
a label given two classes, a line of another domain, a missing split file, class
folder or listed image all stop preparation before anything is written.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import Manifest, MissingDataError, holdout, require

DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
DEFAULTS = {"id_domain": "sketch", "ood_domains": ["real"], "id_val_fraction": 0.1, "ood_val_fraction": 0.1,
            "seed": 0}
LAYOUT = """
<root>/domainnet/
    <domain>_train.txt             official split files, one line per image:
    <domain>_test.txt                <domain>/<class>/<file>.jpg <label>
    <domain>/<class>/<file>.jpg    e.g. sketch/aircraft_carrier/sketch_001_000001.jpg
for the ID domain and each OOD domain (clipart, infograph, painting, quickdraw, real, sketch)
"""
ORIGIN = ("DomainNet (Peng et al., ICCV 2019), http://ai.bu.edu/M3SDA/: unzip each domain's archive "
          "into <root>/domainnet/ and place its <domain>_train.txt and <domain>_test.txt beside it")
LIST_COLUMNS = ["path", "class_name", "official_label", "list_file", "line"]


def manifest(name: str, cfg: dict) -> Manifest:
    """Every image of the ID and OOD domains, checked against the split files before anything is decoded."""
    cfg = {**DEFAULTS, **cfg}
    id_domain, ood_domains = str(cfg["id_domain"]), [str(d) for d in cfg["ood_domains"]]
    _check_domains(name, id_domain, ood_domains)
    base = require(Path(cfg.get("root", DEFAULT_ROOT)) / "domainnet", name, LAYOUT, ORIGIN,
                   "DomainNet folder not found")
    wanted = [(d, part) for d in [id_domain, *ood_domains] for part in ("train", "test")]
    for domain, part in wanted:  # every split file up front: a missing one is reported before any is parsed
        require(base / f"{domain}_{part}.txt", name, LAYOUT, ORIGIN, "split file not found")
    lists = {(d, part): _read_list(name, base / f"{d}_{part}.txt", d) for d, part in wanted}

    classes = _select_classes(name, _official_order(name, list(lists.values())), cfg.get("classes"))
    index = {c: i for i, c in enumerate(classes)}
    seed, frames = int(cfg["seed"]), []
    for (domain, part), rows in lists.items():
        rows = rows[rows["class_name"].isin(index)].reset_index(drop=True)
        rows = rows.assign(label=rows["class_name"].map(index).astype(int), domain=domain, group=domain)
        if domain == id_domain and part == "train":
            rows = holdout(rows.assign(split="train"), float(cfg["id_val_fraction"]), seed, into="id_val")
        elif domain == id_domain:
            rows = rows.assign(split="id_test")
        elif part == "train":
            rows = holdout(rows.assign(split="unused"), float(cfg["ood_val_fraction"]), seed, into="ood_val")
            rows = rows[rows["split"] == "ood_val"]
        else:
            rows = rows.assign(split="ood_test")
        frames.append(rows)
    records = pd.concat(frames, ignore_index=True)
    _check_images(name, base, records)
    records["source"] = [str(base / p) for p in records["path"]]
    return Manifest(records=records.drop(columns=LIST_COLUMNS), classes=classes)


def _check_domains(name: str, id_domain: str, ood_domains: list[str]) -> None:
    unknown = sorted({id_domain, *ood_domains} - set(DOMAINS))
    if unknown:
        raise ValueError(f"{name}: unknown DomainNet domains {unknown} (known: {', '.join(DOMAINS)})")
    if not ood_domains or id_domain in ood_domains:
        raise ValueError(f"{name}: ood_domains must be non-empty and exclude the ID domain {id_domain!r}")


def _broken(name: str, where: str, detail: str) -> MissingDataError:
    return MissingDataError(name, where, LAYOUT, ORIGIN, detail)


def _read_list(name: str, path: Path, domain: str) -> pd.DataFrame:
    """One row per line of a split file: relative path, class, official label, where it was read."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rel, label = line.rsplit(maxsplit=1)
            line_domain, class_name, _ = rel.split("/")
            official = int(label)
        except ValueError:
            raise _broken(name, f"{path}:{lineno}", f"malformed line {line!r} in split file") from None
        if line_domain != domain:
            raise _broken(name, f"{path}:{lineno}", f"line of domain {line_domain!r} in the {domain!r} split file")
        rows.append((rel, class_name, official, str(path), lineno))
    if not rows:
        raise _broken(name, path, "split file lists no images")
    return pd.DataFrame(rows, columns=LIST_COLUMNS)


def _official_order(name: str, lists: list[pd.DataFrame]) -> list[str]:
    """Class names ordered by their official label; one label per class folder and one class per label."""
    first_of_class: dict[str, tuple[int, str, int]] = {}
    first_of_label: dict[int, tuple[str, str, int]] = {}
    for rows in lists:
        pairs = rows.drop_duplicates(["class_name", "official_label"])
        for cls, label, where, lineno in pairs[["class_name", "official_label", "list_file", "line"]].itertuples(
                index=False):
            seen_label, seen_file, seen_line = first_of_class.setdefault(cls, (label, where, lineno))
            if seen_label != label:
                raise _broken(name, f"{where}:{lineno}", f"label {label} disagrees with the class folder {cls!r}, "
                                                         f"labelled {seen_label} at {seen_file}:{seen_line}")
            seen_cls, seen_file, seen_line = first_of_label.setdefault(label, (cls, where, lineno))
            if seen_cls != cls:
                raise _broken(name, f"{where}:{lineno}", f"label {label} of class folder {cls!r} already names "
                                                         f"class {seen_cls!r} at {seen_file}:{seen_line}")
    return [cls for cls, _ in sorted(first_of_class.items(), key=lambda kv: kv[1][0])]


def _select_classes(name: str, official: list[str], subset: list[str] | None) -> list[str]:
    """The classes to keep, in the order their labels take: the subset as given, else all in official order."""
    if not subset:
        return official
    known = set(official)
    unknown = [c for c in subset if c not in known]
    if unknown:
        raise ValueError(f"{name}: classes {unknown} are not in the DomainNet split files "
                         f"(class names are the folder names, e.g. {official[:3]})")
    return [str(c) for c in subset]


def _check_images(name: str, base: Path, records: pd.DataFrame) -> None:
    """Every listed image that will be decoded exists: one directory listing per class folder, not one stat each."""
    folders = records["path"].str.rsplit("/", n=1).str[0]
    for folder, rows in records.groupby(folders, sort=True):
        directory = base / folder
        if not directory.is_dir():
            raise _broken(name, directory, f"class folder listed in {rows['list_file'].iloc[0]} not found")
        present = set(os.listdir(directory))
        absent = rows[~rows["path"].str.rsplit("/", n=1).str[1].isin(present)]
        if len(absent):
            first = absent.iloc[0]
            raise _broken(name, base / first["path"],
                          f"image listed in {first['list_file']} (line {first['line']}) not found "
                          f"({len(absent)} of the {len(rows)} images listed in {folder}/ are missing)")
