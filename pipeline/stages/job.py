"""The job contract: what a stage's ``main(argv)`` receives, and the params view that enforces it.

:func:`parse_job` parses a stage's argv (its wildcards and ``--params``), validates params.yaml,
and resolves the job from the stage registry: input and output paths, the grid point, and a
:class:`ParamsView` of the config restricted to the keys the stage declares
(:attr:`pipeline.stages.Stage.params`). Those keys are also what decides re-runs (Snakemake's
params, DVC's params deps) and the job's config hash, so a stage that read anything else would
serve stale results after an edit: reading an undeclared key fails at once, naming the stage
and the key.
"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ParamsError, config_hash, load_params
from pipeline.config.settings import PLAN_KEYS, run_points
from pipeline.io import setup_logging
from pipeline.stages.registry import Stage, job_inputs, stage

log = logging.getLogger("pipeline")


class UndeclaredParamError(LookupError):
    """A stage read a params.yaml key it does not declare (not a KeyError: ``.get`` must not swallow it)."""


@dataclass(frozen=True)
class Declared:
    """A stage's declared keys as paths; ``star`` entries cover every child but a method's plan keys
    (:data:`~pipeline.config.settings.PLAN_KEYS`: ``grid``, ``models``, ``datasets``)."""

    stage: str
    entries: tuple[tuple[tuple[str, ...], bool], ...]

    @classmethod
    def of(cls, st: Stage, wc: Mapping[str, str]) -> Declared:
        entries = []
        for template in st.params:
            key = template.format(**wc)
            star = key.endswith(".*")
            entries.append((tuple((key[:-2] if star else key).split(".")), star))
        return cls(st.name, tuple(entries))

    def whole(self, path: tuple[str, ...]) -> bool:
        """``path`` lies inside a declared key: readable as a whole."""
        for prefix, star in self.entries:
            n = len(prefix)
            if path[:n] == prefix and (not star or (len(path) > n and path[n] not in PLAN_KEYS)):
                return True
        return False

    def partial(self, path: tuple[str, ...]) -> bool:
        """``path`` leads to a declared key (or is a star entry's node): only declared children are readable."""
        return any(prefix[:len(path)] == path and (len(prefix) > len(path) or star) for prefix, star in self.entries)

    def leads_into(self, path: tuple[str, ...], value: Any) -> bool:
        """``path`` is a star entry's node, or ``value`` holds the next step to a declared key (so a node
        that only a declared key below it makes readable is listed only where that key can be)."""
        for prefix, star in self.entries:
            if prefix[:len(path)] != path:
                continue
            if len(prefix) == len(path) and star:
                return True
            if len(prefix) > len(path) and isinstance(value, Mapping) and prefix[len(path)] in value:
                return True
        return False


class ParamsView(Mapping):
    """Read-only view of the config that only yields a stage's declared keys.

    Reading a key outside the declaration raises :class:`UndeclaredParamError` (also through
    ``get``, ``in`` and iteration, which skips undeclared children). ``reads`` collects the
    dotted paths read, for the test that checks declarations against use.
    """

    def __init__(self, data: Mapping, declared: Declared, path: tuple[str, ...] = (),
                 reads: set[str] | None = None):
        self._data, self._declared, self._path = data, declared, path
        self.reads: set[str] = set() if reads is None else reads

    def _child(self, key: str) -> tuple[tuple[str, ...], bool]:
        path = (*self._path, str(key))
        if self._declared.whole(path):
            return path, True
        if self._declared.partial(path):
            return path, False
        raise UndeclaredParamError(f"stage {self._declared.stage} reads params key {'.'.join(path)}, which it does "
                                   f"not declare (add it to the stage's params in pipeline/stages.py)")

    def __getitem__(self, key: str) -> Any:
        path, whole = self._child(key)
        value = self._data[key]   # KeyError if absent: the caller's default applies
        if whole:
            self.reads.add(".".join(path))
        if isinstance(value, Mapping):
            return ParamsView(value, self._declared, path, self.reads)
        return value

    def _visible(self) -> Iterator[str]:
        for key, value in self._data.items():
            path = (*self._path, str(key))
            if self._declared.whole(path) or self._declared.leads_into(path, value):
                yield key

    def __iter__(self) -> Iterator[str]:
        return self._visible()

    def __len__(self) -> int:
        return sum(1 for _ in self._visible())

    def __repr__(self) -> str:
        return f"ParamsView({self._declared.stage}: {'.'.join(self._path) or '<root>'})"


@dataclass(frozen=True)
class Job:
    """One job of a stage, resolved against params.yaml."""

    stage: Stage
    params: ParamsView            # the config, restricted to the stage's declared keys
    wildcards: dict[str, str]
    inputs: dict
    outputs: dict[str, str]
    config_hash: str
    point: dict = field(default_factory=dict)   # the grid point's values (jobs with an ``hp`` wildcard)

    @property
    def seed(self) -> int:
        return int(self.wildcards.get("seed", 0))


def resolve_job(st: Stage, cfg: dict, wc: dict[str, str], source: str = "params.yaml") -> Job:
    """The job of stage ``st`` with wildcards ``wc`` under the (validated) config ``cfg``."""
    for w, section in (("dataset", "datasets"), ("model", "models"), ("method", "methods")):
        if w in wc and wc[w] not in cfg[section]:
            raise ParamsError(f"{source}: {section}.{wc[w]}: not defined (--{w} {wc[w]})")
    point: dict = {}
    if "hp" in wc:
        points = run_points(cfg, wc["method"], wc.get("dataset"))
        if wc["hp"] not in points:
            raise ParamsError(f"{source}: methods.{wc['method']}: no grid point {wc['hp']!r} "
                              f"(its runs: {', '.join(points)})")
        point = dict(points[wc["hp"]])
    values = st.param_values(cfg, wc)
    return Job(st, ParamsView(cfg, Declared.of(st, wc)), dict(wc), job_inputs(st, cfg, wc), st.output_paths(wc),
               config_hash({"stage": st.name, "wildcards": wc, "params": values}), point)


def parse_job(stage_name: str, argv: list[str] | None) -> Job:
    """Parse a stage's argv, validate params.yaml and resolve the job."""
    st = stage(stage_name)
    parser = argparse.ArgumentParser(prog=f"python -m pipeline {st.name}", description=st.doc)
    for w in st.wildcards:
        parser.add_argument(f"--{w}", required=True)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_params(args.params)
    job = resolve_job(st, cfg, {w: str(getattr(args, w)) for w in st.wildcards}, args.params)
    set_threads()
    log.info("%s %s config_hash=%s", st.name, " ".join(f"{k}={v}" for k, v in job.wildcards.items()),
             job.config_hash)
    return job


def set_threads() -> int:
    """Use the threads the scheduler granted (PIPELINE_THREADS), else every core."""
    n = int(os.environ.get("PIPELINE_THREADS", 0) or os.cpu_count() or 1)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    return n
