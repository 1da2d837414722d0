"""Class names and prompt templates for zero-shot heads, one YAML file per dataset source.

Each ``<source>.yaml`` holds ``classes`` (the class id the source labels, e.g. a wnid, a WILDS
label or a folder name -> the name put into the prompts, in the source's label order),
``templates`` (format strings with ``{c}``, the class name, and optionally ``{article_c}``,
"a"/"an" + the name with underscores as spaces, WiSE-FT's ``append_proper_article``) and
``provenance`` (where each list comes from; ``unverified`` says which choices are ours).

:func:`prompts_for` returns the names in the label order the dataset's source produces, so
row k of a zero-shot head built from them scores label k. Pure data and cheap to import:
the params check may call :func:`check_prompts` before any job runs.
"""
from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

PROMPTS_DIR = Path(__file__).resolve().parent
FIELDS = frozenset({"c", "article_c"})
BREEDS = ("living17", "entity30")


class NoClassNamesError(ValueError):
    """A dataset has no class names (or none that fit its labels) for a zero-shot head."""


@dataclass(frozen=True)
class PromptSet:
    """One source's prompt file: names by class id (label order), templates, provenance."""

    source: str
    names: dict[str, str]
    templates: tuple[str, ...]
    provenance: dict[str, str]
    extra: dict


def available() -> list[str]:
    """Sources that ship a prompt file."""
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))


def has_prompts(source: str) -> bool:
    return (PROMPTS_DIR / f"{source}.yaml").is_file()


@cache
def load_prompts(source: str) -> PromptSet:
    """The parsed, checked prompt file of ``source``; NoClassNamesError if there is none."""
    path = PROMPTS_DIR / f"{source}.yaml"
    if not path.is_file():
        raise NoClassNamesError(f"dataset source {source!r} has no class names for zero-shot prompts "
                                f"({path} missing; sources with prompts: {', '.join(available())})")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    names = {str(k): str(v) for k, v in (doc.get("classes") or {}).items()}
    templates = tuple(str(t) for t in doc.get("templates") or ())
    provenance = {str(k): str(v) for k, v in (doc.get("provenance") or {}).items()}
    if not names or not templates or not provenance.get("classes") or not provenance.get("templates"):
        raise ValueError(f"{path}: needs non-empty classes, templates, provenance.classes and provenance.templates")
    for t in templates:
        check_template(t, str(path))
    extra = {k: v for k, v in doc.items() if k not in ("source", "classes", "templates", "provenance")}
    return PromptSet(source, names, templates, provenance, extra)


def check_template(template: str, where: str = "template") -> None:
    """A template names the class through ``{c}`` or ``{article_c}`` and uses no other field."""
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    if not fields or fields - FIELDS:
        raise ValueError(f"{where}: template {template!r} must use {{c}} or {{article_c}} and no other field")


def article(name: str) -> str:
    """WiSE-FT's ``append_proper_article``: underscores as spaces, "an" before a vowel, else "a"."""
    name = name.replace("_", " ")
    return ("an " if name[:1] in "aeiou" else "a ") + name


def render(template: str, classname: str) -> str:
    """One prompt: ``template`` with the class name filled in."""
    return template.format(c=classname, article_c=article(classname))


def prompts_for(source: str, dataset_cfg: Mapping, classes: Sequence[str] | None = None, *,
                dataset: str | None = None) -> tuple[list[str], list[str]]:
    """(class names in label order, templates) for a ``datasets.<name>`` entry.

    ``classes``: the prepared dataset's class list (its ``info["classes"]``), if at hand; it
    then fixes the label order (ids are looked up in the prompt file). Without it the order is
    the one the source produces from ``dataset_cfg`` (and, for ImageNet, the class folders on
    disk). Raises NoClassNamesError (one line, naming the dataset) when names are missing.
    """
    label = f"datasets.{dataset or source}"
    prompts = load_prompts(source)
    ids = _class_ids(source, dataset_cfg, classes, label, prompts)
    if source in BREEDS:   # an override class list may name superclasses the shipped file lacks
        names = [prompts.names.get(i, i.split(",")[0].strip()) for i in ids]
    else:
        missing = [i for i in ids if i not in prompts.names]
        if missing:
            raise NoClassNamesError(f"{label}: {len(missing)} class(es) have no name in {PROMPTS_DIR / source}.yaml, "
                                    f"e.g. {missing[:3]}")
        names = [prompts.names[i] for i in ids]
    if classes is not None and len(names) != len(classes):
        raise NoClassNamesError(f"{label}: {len(names)} class names for the {len(classes)} prepared classes")
    return names, list(prompts.templates)


def check_prompts(dataset: str, dataset_cfg: Mapping) -> None:
    """Before any job runs: the dataset's source has a prompt file (one-line NoClassNamesError otherwise)."""
    source = str(dataset_cfg.get("source", dataset))
    if not has_prompts(source):
        raise NoClassNamesError(f"datasets.{dataset}.source: {source!r} has no class names for a zero-shot head "
                                f"(no {PROMPTS_DIR / source}.yaml; sources with prompts: {', '.join(available())})")


def _class_ids(source: str, cfg: Mapping, classes: Sequence[str] | None, label: str, prompts: PromptSet) -> list[str]:
    """Class ids in label order: the prepared classes, else what the source derives from its config."""
    if source == "imagenet":
        return _imagenet_ids(cfg, classes, label, prompts)
    if classes is not None:
        return [str(c) for c in classes]
    if source == "domainnet" and cfg.get("classes"):
        return [str(c) for c in cfg["classes"]]   # the source labels a subset in the order given
    if source in BREEDS:
        from pipeline.data.sources import DEFAULT_ROOT
        from pipeline.data.sources.breeds import class_list

        return [sc["name"] for sc in class_list(label, source, Path(cfg.get("root", DEFAULT_ROOT)))]
    return list(prompts.names)


def _imagenet_ids(cfg: Mapping, classes: Sequence[str] | None, label: str, prompts: PromptSet) -> list[str]:
    """ImageNet wnids in label order: the source sorts the wnid folders of ``imagenet/train``.

    Prepared classes are wnids, or human names when ``LOC_synset_mapping.txt`` was present; the
    latter (ambiguous: ImageNet has two "crane"s) are mapped through the folders on disk instead.
    """
    if classes is not None and all(str(c) in prompts.names for c in classes):
        return [str(c) for c in classes]
    from pipeline.data.sources import DEFAULT_ROOT
    from pipeline.data.sources.imagenet import class_folders

    train = Path(cfg.get("root", DEFAULT_ROOT)) / "imagenet" / "train"
    if train.is_dir():
        return list(class_folders(train))
    if classes is None or len(classes) == len(prompts.names):
        return list(prompts.names)   # the full ImageNet-1k in its standard (sorted wnid) order
    raise NoClassNamesError(f"{label}: the {len(classes)} prepared classes are not wnids and {train} is missing, "
                            "so their ImageNet names cannot be looked up")
