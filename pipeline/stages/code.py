"""What code a job runs: the source files both runners track as the job's dependencies.

A job depends on its stage's module (``pipeline/stages/<name>.py``), every pipeline module that
imports reach from it, the package ``__init__`` modules Python executes on the way (a name
imported from a package's ``__init__`` is code like any other), and the files its stage adds per
job (a dataset's source module, a run's method parts; :attr:`~pipeline.stages.registry.Stage.extra_code`).

Left out, as :data:`PLUMBING`: modules whose edits cannot change a result's bytes, or change it
only through what is tracked otherwise. The CLI and the job contract; the stage registry (paths and
declared keys are tracked as outputs and params); params.yaml loading and its schema (validation
only); and the registries of methods and dataset sources with the settings resolution: a job takes
from them only the parts it uses, tracked one by one (the component and source modules it loads,
and the defaults it resolves, :mod:`pipeline.config.defaults`), so adding an entry re-runs nothing.

Cheap to import (the Snakefile reads it): the standard library only.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent

PLUMBING = frozenset({
    "pipeline",                        # the package's docstring and version
    "pipeline.cli", "pipeline.__main__",
    "pipeline.stages", "pipeline.stages.registry", "pipeline.stages.job", "pipeline.stages.code",
    "pipeline.config", "pipeline.config.load", "pipeline.config.schema", "pipeline.config.settings",
    "pipeline.config.defaults",
    "pipeline.methods.registry", "pipeline.data.sources",
    "pipeline.compat",                 # makes torchvision importable on a CPU torch; computes nothing
    "pipeline.gpu_slots",              # which GPU a job gets: plumbing, not a result
})


def module_path(module: str) -> Path | None:
    """The file of a pipeline module or package (its ``__init__.py``); None if there is none."""
    base = PACKAGE_ROOT.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imported(path: Path) -> list[str]:
    """Pipeline module names an import statement of ``path`` may execute (``from a import b``: a, and a.b)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in names if n == "pipeline" or n.startswith("pipeline.")]


def _with_parents(module: str) -> list[str]:
    """``pipeline.data.sources.cifar`` -> its packages (which Python imports first) and itself."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@functools.cache
def source_files(module: str) -> tuple[str, ...]:
    """Repo-relative paths of ``module`` and every non-plumbing pipeline module its imports execute."""
    seen: list[str] = []
    todo = _with_parents(module)
    while todo:
        mod = todo.pop(0)
        if mod in seen:
            continue
        seen.append(mod)
        path = module_path(mod)
        if path is None or mod in PLUMBING:   # not a module (``from pkg import name``), or not followed
            continue
        for name in _imported(path):
            todo += [m for m in _with_parents(name) if m not in seen]
    return tuple(str(module_path(m).relative_to(PACKAGE_ROOT)) for m in seen
                 if m not in PLUMBING and module_path(m) is not None)


@functools.cache
def digest(files: tuple[str, ...]) -> str:
    """Content hash of source files (16 hex digits)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode() + b"\0" + (PACKAGE_ROOT / f).read_bytes() + b"\0")
    return h.hexdigest()[:16]
