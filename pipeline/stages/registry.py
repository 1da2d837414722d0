"""The stage registry: the one place where each pipeline stage is defined.

A :class:`Stage` names its command (``python -m pipeline <name> --<wildcard> ...``, whose code is
``pipeline/stages/<name>.py``), the wildcards it fans out over, its input and output path templates,
the ``params.yaml`` keys it reads, the registry defaults and the source files it depends on
(:mod:`pipeline.stages.code`), and its resources. The Snakefile builds one rule per stage from this
list and ``dvc.yaml`` is rendered from it (:mod:`pipeline.tools.dvc_render`), so the two runners
cannot drift.

This module must stay cheap to import (the Snakefile imports it): no torch.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import DEFAULT_PARAMS, lookup
from pipeline.config import defaults as registry_defaults
from pipeline.config.frozen import remember
from pipeline.config.settings import HP_PATTERN, PLAN_KEYS, hp_names, method_settings, named_keys, runs_on
from pipeline.data.sources import PREPARE_KEYS, SOURCES
from pipeline.methods.registry import INITS, used
from pipeline.reporting.layouts import GRID_MACRO, HTML_TEMPLATE, LAYOUTS, TEMPLATES
from pipeline.stages.code import PACKAGE_ROOT, digest, source_files

# Wildcard -> the experiment list it ranges over, and the regex it must match
# (which also keeps any value out of reach of shell injection).
# ``hp`` (a method's grid point, see pipeline.config.settings) ranges over the grid of
# the job's method instead of an experiment list.
WILDCARDS = {"dataset": "datasets", "model": "models", "method": "methods", "hp": None, "seed": "seeds"}
WILDCARD_PATTERNS = {"dataset": r"[A-Za-z][A-Za-z0-9_]*", "model": r"[A-Za-z][A-Za-z0-9_]*",
                     "method": r"[A-Za-z][A-Za-z0-9_]*", "hp": HP_PATTERN.strip("^$"), "seed": r"\d+"}

PREPARED = "data/prepared/{dataset}"
# The download stage's status: which parts of a dataset lie where under its root (same bytes however they got there).
DOWNLOAD_STATUS = "data/download/{dataset}.json"
# The dataset keys the download reads: where and whether to fetch, and which parts a source needs (its OOD
# sets, its DomainNet domains: pipeline.download.datasets.parts_for).
DOWNLOAD_KEYS = ("source", "root", "download", "ood", "id_domain", "ood_domains")
DOWNLOAD_MANIFEST = "pipeline/download/manifest.yaml"
WEIGHTS = "data/weights/{model}.safetensors"
FEATURES = "results/{dataset}/{model}/features.safetensors"
LP_DIR = "results/{dataset}/{model}/lp"
ZEROSHOT_DIR = "results/{dataset}/{model}/zeroshot"
PROMPTS = "pipeline/data/prompts/{source}.yaml"
RUN_DIR = "results/{dataset}/{model}/{method}/{hp}/seed{seed}"
# A fine-tune's resumable state while it runs (not an output; removed once the run's outputs exist).
CHECKPOINT_DIR = "checkpoints/{dataset}/{model}/{method}/{hp}/seed{seed}"
# Optional live training curves (PIPELINE_LIVE=1, dvclive; not an output).
LIVE_DIR = "logs/live/{dataset}/{model}/{method}/{hp}/seed{seed}"
SOUP_DIR = "results/{dataset}/{model}/soup/seed{seed}"
GRAD_NORMS = "results/{dataset}/{model}/grad_norms.csv"
# Domain similarity of a target to the similarity source (analysis.similarity), one tidy row.
SIMILARITY = "results/{dataset}/{model}/similarity.csv"
ANALYSIS_DIR = "results/analysis"
REPORT_DIR = "results/report"
# The config's recipe card, resolved (the recipe stage), which the report renders.
RECIPE = f"{REPORT_DIR}/recipe.json"
# Jinja templates of LaTeX tables (paper/templates/<name>.tex.j2 -> paper/tables/<name>.tex): the
# lpft_theory and costs stages render their own, the report every layout's (pipeline.reporting.layouts).
LPFT_THEORY_TEMPLATE = f"{TEMPLATES}/lpft_theory.tex.j2"
COSTS_TEMPLATE = f"{TEMPLATES}/costs.tex.j2"
# The claims section (pipeline.reporting.claims, findings): LaTeX for the paper, HTML for the report.
CLAIMS_TEMPLATES = (f"{TEMPLATES}/claims.tex.j2", f"{TEMPLATES}/claims.html.j2")
REPORT_TABLES = "results/report/tables"
CAPTIONS = "paper/captions"

Inputs = Callable[[dict, dict], dict]
Select = Callable[[dict, dict], bool]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage; every job of it is one combination of its wildcards."""

    name: str
    doc: str
    wildcards: tuple[str, ...]
    outputs: dict[str, str]
    inputs: Inputs
    # Dotted params.yaml keys (templates); ``a.b.*`` means every key under a.b but a method's plan keys
    # (``grid``, ``models``, ``datasets``: a run's grid values are in its path, so growing a grid or a
    # method's list of models leaves existing runs valid).
    # The stage's code sees these keys only (pipeline.job.ParamsView).
    params: tuple[str, ...] = ()
    # Keys whose values the job's path spells (a run's name: pipeline.config.settings.run_name): readable
    # under a ``.*`` entry but not tracked, since another value is another path. So turning a value into a
    # grid that holds it, or moving it between levels, changes no tracked value and re-runs nothing.
    path_keys: frozenset[str] = frozenset()
    directories: frozenset[str] = frozenset()
    # Which wildcard combinations are jobs (e.g. WiSE-FT only for the methods listed).
    select: Select | None = None
    # Source and data files (repo-relative) a job reads besides the stage module's, per job:
    # e.g. the dataset's source module and the class lists it ships.
    extra_code: Callable[[dict, dict], list[str]] | None = None
    # Registry defaults a job resolves where params.yaml is silent, as dotted keys of the defaults
    # tree (pipeline.config.defaults): tracked like params, one by one.
    defaults: Callable[[dict, dict], list[str]] | None = None
    # One thread by default: on a small machine two 1-thread jobs beat one 2-thread
    # job; a cluster profile raises it per stage (set-threads).
    threads: int = 1
    gpu: int = 0
    runtime: int = 10
    mem_mb: int = 2000
    # Processes per job (data-parallel ranks, one GPU each); more than one runs under torchrun.
    processes: Callable[[dict, dict], int] | None = None
    # Outputs that measure the job (speed, memory) and differ between runs: no result depends on
    # them, and DVC does not track them as outputs, so re-running a job never makes DVC re-run it
    # or its downstream (the stages that read them list them as plain deps).
    measured: frozenset[str] = frozenset()
    # Outputs derived from measurements (the cost table, the paper that includes it). Every output
    # that is neither is the same bytes for the same inputs.
    volatile: frozenset[str] = frozenset()
    # Run on the host that runs Snakemake, never submitted to a cluster (Snakemake's `localrule`):
    # downloads need the network, which compute nodes often lack.
    local: bool = False
    # Its ``dataset`` wildcard also takes the similarity source (``analysis.similarity.source``) when that
    # dataset is not an experiment dataset: it is downloaded, prepared and its features extracted, but
    # never probed, fine-tuned or reported (the stages without this flag never see it).
    similarity_source: bool = False
    # Outputs in `snakemake --report report.html`: output name -> category; each has a caption,
    # paper/captions/<stage>/<output>.rst (reStructuredText).
    reported: dict[str, str] = field(default_factory=dict)

    @property
    def module(self) -> str:
        """The stage's entry point: ``pipeline/stages/<name>.py``, whose ``main(argv)`` runs one job."""
        return f"pipeline.stages.{self.name}"

    def caption(self, output: str) -> str:
        return f"{CAPTIONS}/{self.name}/{output}.rst"

    def jobs(self, cfg: dict) -> list[dict[str, str]]:
        """Wildcard values of every job, in a stable order (computed once per frozen config: do not edit)."""
        return remember(cfg, ("jobs", self.name), lambda: self._jobs(cfg))

    def _jobs(self, cfg: dict) -> list[dict[str, str]]:
        out: list[dict[str, str]] = [{}]
        for w in self.wildcards:
            if w == "hp":
                out = [{**wc, "hp": hp} for wc in out for hp in hp_names(cfg, wc["method"], wc.get("dataset"))]
            else:
                values = list(cfg["experiment"][WILDCARDS[w]])
                if w == "dataset" and self.similarity_source:
                    values += similarity_sources(cfg)
                out = [{**wc, w: str(v)} for wc in out for v in values]
        return [wc for wc in out if _paired(cfg, wc) and (self.select is None or self.select(cfg, wc))]

    def job_id(self, wc: dict) -> str:
        """``finetune--digits--lite0--spd--epochs2_lr0p001--seed0``: a valid DVC stage name ('.' becomes 'p').

        Still one id per job: a run name's '.' always stands between two digits, and no key it spells has a
        'p' there (tests/test_run_names.py checks it over random values).
        """
        parts = [self.name] + [f"seed{wc[w]}" if w == "seed" else wc[w] for w in self.wildcards]
        return "--".join(parts).replace(".", "p")

    def output_paths(self, wc: dict) -> dict[str, str]:
        return {k: v.format(**wc) for k, v in self.outputs.items()}

    def param_keys(self, cfg: dict, wc: dict) -> list[str]:
        """Dotted params.yaml keys this job reads (those present in the file)."""
        keys: list[str] = []
        for template in self.params:
            key = template.format(**wc)
            if key.endswith(".*"):
                parent = key[:-2]
                if _has_key(cfg, parent):
                    keys += [f"{parent}.{k}" for k in lookup(cfg, parent)
                             if k not in PLAN_KEYS and k not in self.path_keys]
            elif _has_key(cfg, key):
                keys.append(key)
        return keys

    def param_values(self, cfg: dict, wc: dict) -> dict:
        return {k: lookup(cfg, k) for k in self.param_keys(cfg, wc)}

    def default_keys(self, cfg: dict, wc: dict) -> list[str]:
        """Dotted keys of the registry defaults this job resolves (:mod:`pipeline.config.defaults`)."""
        return self.defaults(cfg, wc) if self.defaults is not None else []

    def default_values(self, cfg: dict, wc: dict) -> dict[str, Any]:
        return registry_defaults.values(self.default_keys(cfg, wc))

    def code_files(self, cfg: dict | None = None, wc: dict | None = None) -> list[str]:
        """The stage's module and every pipeline module it runs (:mod:`pipeline.stages.code`), for one job."""
        files = list(source_files(self.module))
        if self.extra_code is not None and cfg is not None and wc is not None:
            files += [f for f in self.extra_code(cfg, wc) if f not in files]
        return files

    def ranks(self, cfg: dict, wc: dict) -> int:
        return self.processes(cfg, wc) if self.processes is not None else 1

    def gpus(self, cfg: dict, wc: dict) -> int:
        """GPUs one job asks the scheduler for: one per rank for GPU stages."""
        return self.gpu * self.ranks(cfg, wc)

    def command(self, wc: dict | None = None, params_file: str = DEFAULT_PARAMS, cfg: dict | None = None) -> str:
        """Shell command; with ``wc=None``, Snakemake ``{wildcards.x}`` placeholders.

        Wildcard values match :data:`WILDCARD_PATTERNS` (no shell metacharacters) and the
        params path is quoted, so nothing from params.yaml can inject a shell command.
        """
        args = " ".join(f"--{w} {{wildcards.{w}}}" if wc is None else f"--{w} {wc[w]}" for w in self.wildcards)
        if params_file != DEFAULT_PARAMS:
            args += f" --params {shlex.quote(params_file)}"
        ranks = self.ranks(cfg, wc) if cfg is not None and wc is not None else 1
        # python -m torch.distributed.run is torchrun, from the same interpreter as the jobs
        launcher = f"python -m torch.distributed.run --standalone --nproc_per_node {ranks}" if ranks > 1 else "python"
        return f"{launcher} -m pipeline {self.name} {args}".rstrip()

    @property
    def log(self) -> str:
        return f"logs/{self.name}/" + ("/".join(f"{{{w}}}" for w in self.wildcards) or "all") + ".log"

    @property
    def benchmark(self) -> str:
        return f"benchmarks/{self.name}/" + ("/".join(f"{{{w}}}" for w in self.wildcards) or "all") + ".tsv"


def _has_key(cfg: dict, dotted: str) -> bool:
    try:
        lookup(cfg, dotted)
        return True
    except (KeyError, TypeError):
        return False


def _paired(cfg: dict, wc: dict) -> bool:
    """A dataset runs with the models it lists (``datasets.<d>.models``), else with every model; a method
    on the models and datasets it lists (``methods.<m>.models``, ``methods.<m>.datasets``), else on all."""
    if "dataset" in wc and "model" in wc:
        listed = cfg["datasets"][wc["dataset"]].get("models")
        if listed is not None and wc["model"] not in listed:
            return False
    return "method" not in wc or runs_on(cfg, wc["method"], wc.get("dataset"), wc.get("model"))


def similarity_source(cfg: dict) -> str | None:
    """``analysis.similarity.source``: the dataset every target's domain similarity is measured to (or None)."""
    return ((cfg.get("analysis") or {}).get("similarity") or {}).get("source")


def similarity_sources(cfg: dict) -> list[str]:
    """The similarity source when it is not one of the experiment's datasets (its data-only jobs)."""
    source = similarity_source(cfg)
    return [source] if source is not None and source not in cfg["experiment"]["datasets"] else []


def _similarity_targets(cfg: dict, wc: dict) -> bool:
    """Every experiment dataset but the source itself, with the models the source runs with too."""
    source = similarity_source(cfg)
    return source is not None and wc["dataset"] != source and _paired(cfg, {"dataset": source, "model": wc["model"]})


def all_runs(cfg: dict) -> list[dict[str, str]]:
    return STAGES_BY_NAME["finetune"].jobs(cfg)


def _wise_ft_selected(cfg: dict, wc: dict) -> bool:
    listed = cfg["wise_ft"].get("methods")
    return listed is None or wc["method"] in listed


def _soups_enabled(cfg: dict, wc: dict) -> bool:
    """A soup for every (dataset, model, seed) that has runs of ``soups.methods`` to pool."""
    return bool((cfg.get("soups") or {}).get("methods")) and bool(soup_ingredients(cfg, wc))


def soup_ingredients(cfg: dict, wc: dict) -> list[dict[str, str]]:
    """Runs pooled into the soups of one (dataset, model, seed): every grid point of ``soups.methods``."""
    def pools() -> dict[tuple[str, str, str], list[dict[str, str]]]:
        methods = (cfg.get("soups") or {}).get("methods", [])
        out: dict[tuple[str, str, str], list[dict[str, str]]] = {}
        for r in all_runs(cfg):
            if r["method"] in methods:
                out.setdefault((r["dataset"], r["model"], r["seed"]), []).append(r)
        return out

    return remember(cfg, "soup_pools", pools).get((wc["dataset"], wc["model"], wc["seed"]), [])


def _finetune_ranks(cfg: dict, wc: dict) -> int:
    return int(method_settings(cfg, wc["method"], wc["hp"], wc["dataset"])["gpus"])


def _source_code(cfg: dict, wc: dict) -> list[str]:
    spec = SOURCES[cfg["datasets"][wc["dataset"]]["source"]]
    return [*source_files(spec.module), *spec.data_files]


def _source_defaults(keys: tuple[str, ...]) -> Callable[[dict, dict], list[str]]:
    """The defaults of the dataset's source that a stage reading ``keys`` of the entry resolves."""
    return lambda cfg, wc: registry_defaults.dataset_defaults(cfg["datasets"][wc["dataset"]], keys)


def _method_code(cfg: dict, wc: dict) -> list[str]:
    """A run's method parts, loaded by name from the method registry: its optimizer, its head
    initialisation, and the regularisers and policies its settings switch on."""
    settings = method_settings(cfg, wc["method"], wc["hp"], wc["dataset"])
    return list(dict.fromkeys(f for c in used(settings) for f in source_files(c.module)))


def _run_defaults(cfg: dict, wc: dict) -> list[str]:
    settings = method_settings(cfg, wc["method"], wc["hp"], wc["dataset"])
    return [*registry_defaults.run_defaults(cfg, wc["method"], wc["dataset"], settings),
            *registry_defaults.augment_defaults(cfg["datasets"][wc["dataset"]])]


def _zeroshot_pairs(cfg: dict, wc: dict) -> bool:
    """OpenCLIP models on datasets whose source ships class names and templates."""
    source = cfg["datasets"][wc["dataset"]]["source"]
    return "open_clip" in cfg["models"][wc["model"]] and (PACKAGE_ROOT / PROMPTS.format(source=source)).is_file()


def _prompt_files(cfg: dict, wc: dict) -> list[str]:
    return [PROMPTS.format(source=cfg["datasets"][wc["dataset"]]["source"])]


def _layout_code(cfg: dict, wc: dict) -> list[str]:
    """The table layouts' modules (the report loads them by name from the layout registry)."""
    return list(dict.fromkeys(f for x in LAYOUTS.values() for f in source_files(x.module)))


def _init_code(cfg: dict, wc: dict) -> list[str]:
    return source_files(INITS[cfg["methods"][wc["method"]]["init"]].module)


def _recipe_set(cfg: dict, wc: dict) -> bool:
    return bool((cfg.get("report") or {}).get("recipe"))


def _downloads(cfg: dict, wc: dict) -> bool:
    """The dataset's source reads files that may be fetched (every source but the embedded digits)."""
    return SOURCES[cfg["datasets"][wc["dataset"]]["source"]].reads_files


def _manifest_file(cfg: dict, wc: dict) -> list[str]:
    return [DOWNLOAD_MANIFEST]


def report_templates() -> list[str]:
    """The templates the report renders: each layout's (LaTeX, and HTML where it has its own), the grid macro
    they share, the HTML page."""
    own = [x.html for x in LAYOUTS.values() if x.html]
    return [*(x.template for x in LAYOUTS.values()), *own, GRID_MACRO, HTML_TEMPLATE, *CLAIMS_TEMPLATES]


def table_output(template: str) -> str:
    """``paper/templates/<name>.tex.j2`` -> ``paper/tables/<name>.tex``."""
    return f"paper/tables/{Path(template).name.removesuffix('.tex.j2')}.tex"


# --- input functions: (cfg, wildcards) -> {name: path or [paths]} -----------------------------

def _init_inputs(cfg: dict, wc: dict) -> dict:
    """Extra inputs of the run's head initialisation (e.g. LP-FT's linear-probe head)."""
    init = INITS[cfg["methods"][wc["method"]]["init"]]
    return {name: STAGES_BY_NAME[st].outputs[out].format(**wc) for name, (st, out) in init.inputs.items()}


def _prepare_inputs(cfg, wc):
    # The download job's status orders preparation after it (datasets that have one).
    return {"download": DOWNLOAD_STATUS.format(**wc)} if _downloads(cfg, wc) else {}


def _data_and_weights(cfg, wc):
    return {"data": PREPARED.format(**wc), "weights": WEIGHTS.format(**wc)}


def _similarity_inputs(cfg, wc):
    source = similarity_source(cfg)
    return {"target": FEATURES.format(**wc), "source": FEATURES.format(dataset=source, model=wc["model"])}


def _lp_inputs(cfg, wc):
    return {"features": FEATURES.format(**wc), "data": PREPARED.format(**wc)}


def _finetune_inputs(cfg, wc):
    return {**_data_and_weights(cfg, wc), **_init_inputs(cfg, wc)}


def _evaluate_inputs(cfg, wc):
    return {"data": PREPARED.format(**wc), "model": f"{RUN_DIR}/model.safetensors".format(**wc)}


def _wise_ft_inputs(cfg, wc):
    # alpha = 1 is the fine-tuned model itself: its scores come from `evaluate`.
    return {**_finetune_inputs(cfg, wc), "model": f"{RUN_DIR}/model.safetensors".format(**wc),
            "metrics": f"{RUN_DIR}/metrics.csv".format(**wc), "predictions": f"{RUN_DIR}/predictions.npz".format(**wc)}


def _soup_inputs(cfg, wc):
    runs = soup_ingredients(cfg, wc)
    # soups.include_lp: the LP model itself (pretrained backbone + LP head) is an ingredient too
    lp = {"weights": WEIGHTS.format(**wc), "lp_head": f"{LP_DIR}/head.safetensors".format(**wc),
          "lp_metrics": f"{LP_DIR}/metrics.csv".format(**wc)} if (cfg.get("soups") or {}).get("include_lp") else {}
    return {"data": PREPARED.format(**wc),
            "models": [f"{RUN_DIR}/model.safetensors".format(**r) for r in runs],
            "metrics": [f"{RUN_DIR}/metrics.csv".format(**r) for r in runs], **lp}


def _report_inputs(cfg, wc):
    pairs = STAGES_BY_NAME["linear_probe"].jobs(cfg)   # the experiment's pairs (features also has the source's)
    runs = all_runs(cfg)
    predictions = [STAGES_BY_NAME[name].output_paths(j)["predictions"]
                   for name in ("linear_probe", "zeroshot", "evaluate", "wise_ft", "soup")
                   for j in STAGES_BY_NAME[name].jobs(cfg)]
    return {
        "lp": [f"{LP_DIR}/metrics.csv".format(**p) for p in pairs],
        "zeroshot": [f"{ZEROSHOT_DIR}/metrics.csv".format(**p) for p in STAGES_BY_NAME["zeroshot"].jobs(cfg)],
        "evaluate": [f"{RUN_DIR}/metrics.csv".format(**r) for r in runs],
        "wise_ft": [f"{RUN_DIR}/wise_ft.csv".format(**r) for r in STAGES_BY_NAME["wise_ft"].jobs(cfg)],
        "soup": [f"{SOUP_DIR}/metrics.csv".format(**j) for j in STAGES_BY_NAME["soup"].jobs(cfg)],
        "runs": [f"{RUN_DIR}/run.json".format(**r) for r in runs],
        "layers": [f"{RUN_DIR}/layers.csv".format(**r) for r in runs],
        "grad_norms": [GRAD_NORMS.format(**p) for p in pairs],
        "similarity": [SIMILARITY.format(**j) for j in STAGES_BY_NAME["similarity"].jobs(cfg)],
        "predictions": predictions,
        "templates": report_templates(),
        "reference": list((cfg.get("report") or {}).get("reference") or []),
        "recipe": [RECIPE] if _recipe_set(cfg, wc) else [],
    }


def _costs_inputs(cfg, wc):
    runs = all_runs(cfg)
    # run.json orders the stage after the fine-tunes in DVC, which does not track cost.json as an output
    return {"costs": [f"{RUN_DIR}/cost.json".format(**r) for r in runs],
            "runs": [f"{RUN_DIR}/run.json".format(**r) for r in runs], "template": COSTS_TEMPLATE}


def _paper_inputs(cfg, wc):
    report = STAGES_BY_NAME["report"].outputs
    return {"main": "paper/main.tex", "lpft_theory": STAGES_BY_NAME["lpft_theory"].outputs["table"],
            "costs": STAGES_BY_NAME["costs"].outputs["table"],
            **{k: v for k, v in report.items() if v.startswith("paper/") and v.endswith((".tex", ".pdf"))}}


RUN = ("dataset", "model", "method", "hp", "seed")

STAGES: tuple[Stage, ...] = (
    Stage("download",
          "Fetch, verify and unpack a dataset's public files into its root, or check they are in place.",
          ("dataset",), {"status": DOWNLOAD_STATUS}, lambda cfg, wc: {},
          params=tuple(f"datasets.{{dataset}}.{k}" for k in DOWNLOAD_KEYS), select=_downloads,
          extra_code=_manifest_file, defaults=_source_defaults(DOWNLOAD_KEYS), runtime=600, mem_mb=2000, local=True,
          similarity_source=True),
    Stage("prepare_data",
          "Build or decode a dataset once into image shards (aspect kept, JPEG or raw) + index + metadata.csv.",
          ("dataset",), {"data": PREPARED}, _prepare_inputs,
          params=tuple(f"datasets.{{dataset}}.{k}" for k in PREPARE_KEYS), directories=frozenset({"data"}),
          extra_code=_source_code, defaults=_source_defaults(PREPARE_KEYS), threads=4, runtime=240, mem_mb=8000,
          similarity_source=True),
    Stage("backbone",
          "Convert the configured pretrained weights into one timm-layout safetensors file.",
          ("model",), {"weights": WEIGHTS}, lambda cfg, wc: {}, params=("models.{model}",), mem_mb=4000),
    Stage("features",
          "Pooled penultimate features of every split (eval mode), cached for LP and LP-FT.",
          ("dataset", "model"), {"features": FEATURES}, _data_and_weights,
          params=("models.{model}", "features", "linear_probe.train_augment", "datasets.{dataset}.train_augment",
                  "datasets.{dataset}.linear_probe.train_augment"),
          defaults=lambda cfg, wc: registry_defaults.lp_defaults(cfg, wc["dataset"], ("train_augment",)),
          gpu=1, runtime=60, mem_mb=8000, similarity_source=True),
    Stage("similarity",
          "Domain similarity of a target to analysis.similarity.source (Cui et al. 2018): EMD between the "
          "frequency-weighted class means of their train + ID-val features, exp(-gamma EMD).",
          ("dataset", "model"), {"similarity": SIMILARITY}, _similarity_inputs, params=("analysis.similarity",),
          select=_similarity_targets, runtime=30, mem_mb=4000),
    Stage("linear_probe",
          "Linear probe on frozen features: L2 logistic regression with C swept (warm-started L-BFGS), or the "
          "LP-FT code's SGD probe; chosen on ID val.",
          ("dataset", "model"),
          {"head": f"{LP_DIR}/head.safetensors", "sweep": f"{LP_DIR}/sweep.csv", "metrics": f"{LP_DIR}/metrics.csv",
           "predictions": f"{LP_DIR}/predictions.npz"},
          _lp_inputs, params=("linear_probe", "datasets.{dataset}.linear_probe"),
          defaults=lambda cfg, wc: registry_defaults.lp_defaults(cfg, wc["dataset"]), mem_mb=4000),
    Stage("zeroshot",
          "Zero-shot head of an OpenCLIP model from its text tower (class names x prompt templates), and its scores.",
          ("dataset", "model"), {"head": f"{ZEROSHOT_DIR}/head.safetensors", "metrics": f"{ZEROSHOT_DIR}/metrics.csv",
                              "predictions": f"{ZEROSHOT_DIR}/predictions.npz"},
          _data_and_weights,
          params=("models.{model}", *(f"datasets.{{dataset}}.{k}" for k in PREPARE_KEYS), "evaluate"),
          select=_zeroshot_pairs, extra_code=_prompt_files, defaults=_source_defaults(PREPARE_KEYS), gpu=1,
          runtime=30, mem_mb=8000),
    Stage("grad_norms",
          "Per-layer gradient norms at the start of fine-tuning (embedding vs the rest), for freeze-embed.",
          ("dataset", "model"), {"grad_norms": GRAD_NORMS}, _data_and_weights,
          params=("analysis.grad_norms", "models.{model}"), mem_mb=8000),
    Stage("finetune",
          "Fine-tune one method at one grid point and seed: warmup + cosine, checkpoint chosen on ID val.",
          RUN,
          {"model": f"{RUN_DIR}/model.safetensors", "history": f"{RUN_DIR}/history.csv", "run": f"{RUN_DIR}/run.json",
           "layers": f"{RUN_DIR}/layers.csv", "cost": f"{RUN_DIR}/cost.json",
           "steps": f"{RUN_DIR}/steps.csv"},
          _finetune_inputs, params=("finetune.*", "methods.{method}.*", "models.{model}",
                                    "datasets.{dataset}.train_augment", "datasets.{dataset}.finetune.*",
                                    "datasets.{dataset}.methods.{method}.*",
                                    # a named point's values: its name does not spell them
                                    "methods.{method}.grid.points.{hp}",
                                    "datasets.{dataset}.methods.{method}.grid.points.{hp}"),
          path_keys=named_keys(), extra_code=_method_code, defaults=_run_defaults, gpu=1, runtime=240, mem_mb=16000,
          processes=_finetune_ranks,
          measured=frozenset({"cost"})),
    Stage("evaluate",
          "Accuracy of the fine-tuned model on every split and domain.",
          RUN, {"metrics": f"{RUN_DIR}/metrics.csv", "predictions": f"{RUN_DIR}/predictions.npz"}, _evaluate_inputs,
          params=("evaluate", "models.{model}"),
          gpu=1, runtime=30, mem_mb=8000),
    Stage("wise_ft",
          "WiSE-FT: evaluate (1-a) pretrained + a fine-tuned over the alpha grid; a chosen on ID val or fixed.",
          RUN, {"curve": f"{RUN_DIR}/wise_ft.csv", "predictions": f"{RUN_DIR}/wise_ft_predictions.npz"},
          _wise_ft_inputs,
          params=("wise_ft.alphas", "wise_ft.select", "evaluate", "models.{model}", "methods.{method}.init"),
          select=_wise_ft_selected, extra_code=_init_code, gpu=1, runtime=60, mem_mb=8000),
    Stage("soup",
          "Uniform and greedy model soups (Wortsman et al. 2022) of one seed's runs, greedy order by ID val.",
          ("dataset", "model", "seed"), {"metrics": f"{SOUP_DIR}/metrics.csv", "soup": f"{SOUP_DIR}/soup.json",
                                         "predictions": f"{SOUP_DIR}/predictions.npz"},
          _soup_inputs, params=("soups", "evaluate", "models.{model}"),
          select=_soups_enabled, gpu=1, runtime=60, mem_mb=8000),
    Stage("lpft_theory",
          "LP vs FT vs LP-FT on the two-layer linear network of Kumar et al. 2022 (ID/OOD error table).",
          (), {"results": f"{ANALYSIS_DIR}/lpft_theory.csv", "table": table_output(LPFT_THEORY_TEMPLATE)},
          lambda cfg, wc: {"template": LPFT_THEORY_TEMPLATE}, params=("analysis.lpft_theory",)),
    Stage("recipe",
          "The config's recipe card: per setting a paper fixes, ours as the stages resolve it, the official value "
          "and its source.",
          (), {"card": RECIPE}, lambda cfg, wc: {"card": cfg["report"]["recipe"]},
          params=("report", "experiment", "finetune", "methods", "datasets", "models", "linear_probe", "wise_ft",
                  "soups"),
          select=_recipe_set, runtime=10, mem_mb=2000),
    Stage("report",
          "Tidy results with intervals, the paper's tables and figures, and metrics.json for `dvc metrics`.",
          (), {"results": f"{REPORT_DIR}/results.csv", "summary": f"{REPORT_DIR}/summary.csv",
               "effective_robustness": f"{REPORT_DIR}/effective_robustness.csv",
               "scatter": f"{REPORT_DIR}/id_vs_ood.csv", "metrics": f"{REPORT_DIR}/metrics.json",
               **{f"table_{name}": table_output(x.template) for name, x in LAYOUTS.items()},
               **{f"html_{name}": f"{REPORT_TABLES}/{name}.html" for name in LAYOUTS},
               "tables": "paper/tables/tables.tex",
               "figure": "paper/figures/id_vs_ood.pdf", "figure_png": "paper/figures/id_vs_ood.png",
               "er_figure": "paper/figures/effective_robustness.pdf",
               "er_figure_png": "paper/figures/effective_robustness.png",
               "grad_norms": "paper/figures/grad_norms.pdf", "layers": "paper/figures/layers.pdf",
               "li2020_elr": "paper/figures/li2020_elr.pdf", "li2020_elr_png": "paper/figures/li2020_elr.png",
               "li2020_similarity": "paper/figures/li2020_similarity.pdf",
               "li2020_similarity_png": "paper/figures/li2020_similarity.png",
               "grad_norms_png": "paper/figures/grad_norms.png", "layers_png": "paper/figures/layers.png",
               "claims": f"{REPORT_DIR}/claims.csv", "claims_tex": "paper/tables/claims.tex",
               "claims_html": f"{REPORT_TABLES}/claims.html"},
          _report_inputs, params=("report", "experiment"), extra_code=_layout_code, runtime=60, mem_mb=8000,
          reported={"claims_html": "Claims", **{f"html_{name}": "Tables" for name in LAYOUTS},
                    "figure_png": "Figures", "er_figure_png": "Figures", "grad_norms_png": "Figures",
                    "layers_png": "Figures", "li2020_elr_png": "Figures", "li2020_similarity_png": "Figures",
                    "summary": "Data", "effective_robustness": "Data", "claims": "Data"}),
    Stage("costs",
          "What each method's runs cost: GPU-hours, images/s, peak memory (measured; varies between runs).",
          (), {"costs": f"{REPORT_DIR}/costs.csv", "table": table_output(COSTS_TEMPLATE)}, _costs_inputs,
          params=("report.labels", "experiment.methods"), volatile=frozenset({"costs", "table"})),
    Stage("paper",
          "Compile paper/main.tex with latexmk.",
          (), {"pdf": "paper/main.pdf"}, _paper_inputs, mem_mb=2000, volatile=frozenset({"pdf"}),
          reported={"pdf": "Paper"}),
)

STAGES_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    if name not in STAGES_BY_NAME:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES_BY_NAME)}")
    return STAGES_BY_NAME[name]


def targets(cfg: dict, wanted: Callable[[dict], bool] = lambda wc: True) -> list[str]:
    """Every output of the wanted jobs that no wanted job reads: the DAG's sinks, whose build runs every
    wanted job (fewer targets for the runner to match than every output: planning a sweep stays fast)."""
    jobs = [(st, wc) for st in STAGES for wc in st.jobs(cfg) if wanted(wc)]
    read = {p for st, wc in jobs for p in flatten(st.inputs(cfg, wc))}
    return [p for st, wc in jobs for p in st.output_paths(wc).values() if p not in read]


def job_inputs(st: Stage, cfg: dict, wc: dict, code: bool = True) -> dict[str, str | list[str]]:
    """All inputs of one job: data inputs plus (``code=True``) the stage's source files."""
    inputs = st.inputs(cfg, wc)
    return {**inputs, "code": st.code_files(cfg, wc)} if code else inputs


def code_digest(st: Stage, cfg: dict, wc: dict) -> str:
    """Content hash of a job's source files.

    The Snakefile tracks code through this param instead of listing the files as
    inputs: same re-runs (an edit changes the hash), but Snakemake need not ask every
    rule whether it produces each source file, which dominates DAG building on
    sweeps of thousands of jobs. DVC lists the files as deps (``dvc.yaml``).
    """
    return digest(tuple(st.code_files(cfg, wc)))


def flatten(paths: dict[str, str | list[str]]) -> list[str]:
    out: list[str] = []
    for v in paths.values():
        out.extend(v if isinstance(v, list) else [v])
    return out
