"""The stage registry: the one place where each pipeline stage is defined.

A :class:`Stage` names its command (``python -m pipeline <name> --<wildcard> ...``),
the wildcards it fans out over, its input and output path templates, the
``params.yaml`` keys it reads, the source files it depends on, and its resources.
The Snakefile builds one rule per stage from this list and ``dvc.yaml`` is
rendered from it (:mod:`pipeline.dvc_render`), so the two runners cannot drift.

This module must stay cheap to import (the Snakefile imports it): no torch.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import DEFAULT_PARAMS, lookup
from pipeline.config.settings import hp_names, method_settings
from pipeline.data.sources import PREPARE_KEYS, SOURCES
from pipeline.methods.registry import INITS, OPTIMIZERS, POLICIES, REGULARISERS
from pipeline.reporting.layouts import GRID_MACRO, HTML_TEMPLATE, LAYOUTS

# Wildcard -> the experiment list it ranges over, and the regex it must match
# (which also keeps any value out of reach of shell injection).
# ``hp`` (a method's grid point, see pipeline.config.settings) ranges over the grid of
# the job's method instead of an experiment list.
WILDCARDS = {"dataset": "datasets", "model": "models", "method": "methods", "hp": None, "seed": "seeds"}
WILDCARD_PATTERNS = {"dataset": r"[A-Za-z][A-Za-z0-9_]*", "model": r"[A-Za-z][A-Za-z0-9_]*",
                     "method": r"[A-Za-z][A-Za-z0-9_]*", "hp": r"[A-Za-z][A-Za-z0-9_.+-]*", "seed": r"\d+"}

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
ANALYSIS_DIR = "results/analysis"
REPORT_DIR = "results/report"
TEMPLATES = "paper/templates"
# Jinja templates of LaTeX tables (paper/templates/<name>.tex.j2 -> paper/tables/<name>.tex): the
# lpft_theory and costs stages render their own, the report every layout's (pipeline.reporting.layouts).
LPFT_THEORY_TEMPLATE = f"{TEMPLATES}/lpft_theory.tex.j2"
COSTS_TEMPLATE = f"{TEMPLATES}/costs.tex.j2"
REPORT_TABLES = "results/report/tables"
CAPTIONS = "paper/captions"

Inputs = Callable[[dict, dict], dict]
Select = Callable[[dict, dict], bool]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage; every job of it is one combination of its wildcards."""

    name: str
    module: str
    doc: str
    wildcards: tuple[str, ...]
    outputs: dict[str, str]
    inputs: Inputs
    # Dotted params.yaml keys (templates); ``a.b.*`` means every key under a.b but ``grid``
    # (a run's grid values are in its path, so growing a grid leaves existing runs valid).
    # The stage's code sees these keys only (pipeline.job.ParamsView).
    params: tuple[str, ...] = ()
    directories: frozenset[str] = frozenset()
    # Which wildcard combinations are jobs (e.g. WiSE-FT only for the methods listed).
    select: Select | None = None
    # Source and data files (repo-relative) a job reads besides the stage module's, per job:
    # e.g. the dataset's source module and the class lists it ships.
    extra_code: Callable[[dict, dict], list[str]] | None = None
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
    # Outputs in `snakemake --report report.html`: output name -> category; each has a caption,
    # paper/captions/<stage>/<output>.rst (reStructuredText).
    reported: dict[str, str] = field(default_factory=dict)

    def caption(self, output: str) -> str:
        return f"{CAPTIONS}/{self.name}/{output}.rst"

    def jobs(self, cfg: dict) -> list[dict[str, str]]:
        """Wildcard values of every job, in a stable order."""
        out: list[dict[str, str]] = [{}]
        for w in self.wildcards:
            if w == "hp":
                out = [{**wc, "hp": hp} for wc in out for hp in hp_names(cfg["methods"][wc["method"]])]
            else:
                out = [{**wc, w: str(v)} for wc in out for v in cfg["experiment"][WILDCARDS[w]]]
        return [wc for wc in out if _paired(cfg, wc) and (self.select is None or self.select(cfg, wc))]

    def job_id(self, wc: dict) -> str:
        """``finetune--digits--lite0--spd--lr0p001--seed0``: a valid DVC stage name ('.' becomes 'p')."""
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
                    keys += [f"{parent}.{k}" for k in lookup(cfg, parent) if k != "grid"]
            elif _has_key(cfg, key):
                keys.append(key)
        return keys

    def param_values(self, cfg: dict, wc: dict) -> dict:
        return {k: lookup(cfg, k) for k in self.param_keys(cfg, wc)}

    def code_files(self, cfg: dict | None = None, wc: dict | None = None) -> list[str]:
        """The stage's module and every pipeline module it imports (transitively), for one job.

        Plumbing (CLI, config loading, I/O helpers, this registry) is left out so
        that editing an error message does not invalidate every result.
        """
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


PACKAGE_ROOT = Path(__file__).resolve().parent.parent
PLUMBING = frozenset({"pipeline", "pipeline.cli", "pipeline.job", "pipeline.config", "pipeline.config.load",
                      "pipeline.config.schema", "pipeline.io", "pipeline.stages", "pipeline.compat",
                      "pipeline.dvc_render", "pipeline.dvc_commit", "pipeline.gpu_slots"})


@functools.cache
def source_files(module: str) -> list[str]:
    """Repo-relative paths of ``module`` and the non-plumbing pipeline modules it imports."""
    seen: list[str] = []
    todo = [module]
    while todo:
        mod = todo.pop(0)
        if mod in seen:
            continue
        seen.append(mod)
        path = _module_path(mod)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith("pipeline.") and name not in PLUMBING and _module_path(name, must=False):
                    todo.append(name)
    return [str(_module_path(m).relative_to(PACKAGE_ROOT)) for m in seen]


def _module_path(module: str, must: bool = True) -> Path | None:
    base = PACKAGE_ROOT.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file() and cand.name != "__init__.py":
            return cand
    if must:
        raise FileNotFoundError(f"no source file for module {module}")
    return None


def _has_key(cfg: dict, dotted: str) -> bool:
    try:
        lookup(cfg, dotted)
        return True
    except (KeyError, TypeError):
        return False


def _paired(cfg: dict, wc: dict) -> bool:
    """A dataset runs with the models it lists (``datasets.<d>.models``), else with every model."""
    if "dataset" not in wc or "model" not in wc:
        return True
    listed = cfg["datasets"][wc["dataset"]].get("models")
    return listed is None or wc["model"] in listed


def all_runs(cfg: dict) -> list[dict[str, str]]:
    return STAGES_BY_NAME["finetune"].jobs(cfg)


def _wise_ft_selected(cfg: dict, wc: dict) -> bool:
    listed = cfg["wise_ft"].get("methods")
    return listed is None or wc["method"] in listed


def _soups_enabled(cfg: dict, wc: dict) -> bool:
    return bool((cfg.get("soups") or {}).get("methods"))


def soup_ingredients(cfg: dict, wc: dict) -> list[dict[str, str]]:
    """Runs pooled into the soups of one (dataset, model, seed): every grid point of ``soups.methods``."""
    methods = (cfg.get("soups") or {}).get("methods", [])
    return [r for r in all_runs(cfg) if r["method"] in methods and
            all(r[k] == wc[k] for k in ("dataset", "model", "seed"))]


def _finetune_ranks(cfg: dict, wc: dict) -> int:
    return int(method_settings(cfg, wc["method"], wc["hp"], wc["dataset"])["gpus"])


def _source_code(cfg: dict, wc: dict) -> list[str]:
    spec = SOURCES[cfg["datasets"][wc["dataset"]]["source"]]
    return [*source_files(spec.module), *spec.data_files]


def _method_code(cfg: dict, wc: dict) -> list[str]:
    """A run's method parts, loaded by name from the method registry: its optimizer, its head
    initialisation, and every regulariser and policy (each decides from the settings whether it acts)."""
    settings = method_settings(cfg, wc["method"], wc["hp"], wc["dataset"])
    parts = [OPTIMIZERS[settings["optimizer"]], INITS[settings["init"]], *REGULARISERS.values(), *POLICIES.values()]
    return list(dict.fromkeys(f for c in parts for f in source_files(c.module)))


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


def _downloads(cfg: dict, wc: dict) -> bool:
    """The dataset's source reads files that may be fetched (every source but the embedded digits)."""
    return "download" in SOURCES[cfg["datasets"][wc["dataset"]]["source"]].keys


def _manifest_file(cfg: dict, wc: dict) -> list[str]:
    return [DOWNLOAD_MANIFEST]


def report_templates() -> list[str]:
    """The templates the report renders: each layout's, the grid macro they share, the HTML page."""
    return [*(x.template for x in LAYOUTS.values()), GRID_MACRO, HTML_TEMPLATE]


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
    return {"data": PREPARED.format(**wc),
            "models": [f"{RUN_DIR}/model.safetensors".format(**r) for r in runs],
            "metrics": [f"{RUN_DIR}/metrics.csv".format(**r) for r in runs]}


def _report_inputs(cfg, wc):
    pairs = STAGES_BY_NAME["features"].jobs(cfg)
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
        "predictions": predictions,
        "templates": report_templates(),
        "reference": list((cfg.get("report") or {}).get("reference") or []),
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
    Stage("download", "pipeline.download.stage",
          "Fetch, verify and unpack a dataset's public files into its root, or check they are in place.",
          ("dataset",), {"status": DOWNLOAD_STATUS}, lambda cfg, wc: {},
          params=tuple(f"datasets.{{dataset}}.{k}" for k in DOWNLOAD_KEYS), select=_downloads,
          extra_code=_manifest_file, runtime=600, mem_mb=2000, local=True),
    Stage("prepare_data", "pipeline.data.prepare",
          "Build or decode a dataset once into uint8 shards + metadata.csv.",
          ("dataset",), {"data": PREPARED}, _prepare_inputs,
          params=tuple(f"datasets.{{dataset}}.{k}" for k in PREPARE_KEYS), directories=frozenset({"data"}),
          extra_code=_source_code, threads=4, runtime=240, mem_mb=8000),
    Stage("backbone", "pipeline.models.weights",
          "Convert the configured pretrained weights into one timm-layout safetensors file.",
          ("model",), {"weights": WEIGHTS}, lambda cfg, wc: {}, params=("models.{model}",), mem_mb=4000),
    Stage("features", "pipeline.models.features",
          "Pooled penultimate features of every split (eval mode), cached for LP and LP-FT.",
          ("dataset", "model"), {"features": FEATURES}, _data_and_weights,
          params=("models.{model}", "features"),
          gpu=1, runtime=60, mem_mb=8000),
    Stage("linear_probe", "pipeline.training.linear_probe",
          "L2-regularised multinomial logistic regression, C swept (warm-started L-BFGS), chosen on ID val.",
          ("dataset", "model"),
          {"head": f"{LP_DIR}/head.safetensors", "sweep": f"{LP_DIR}/sweep.csv", "metrics": f"{LP_DIR}/metrics.csv",
           "predictions": f"{LP_DIR}/predictions.npz"},
          _lp_inputs, params=("linear_probe",), mem_mb=4000),
    Stage("zeroshot", "pipeline.evaluation.zeroshot",
          "Zero-shot head of an OpenCLIP model from its text tower (class names x prompt templates), and its scores.",
          ("dataset", "model"), {"head": f"{ZEROSHOT_DIR}/head.safetensors", "metrics": f"{ZEROSHOT_DIR}/metrics.csv",
                              "predictions": f"{ZEROSHOT_DIR}/predictions.npz"},
          _data_and_weights,
          params=("models.{model}", *(f"datasets.{{dataset}}.{k}" for k in PREPARE_KEYS), "evaluate"),
          select=_zeroshot_pairs, extra_code=_prompt_files, gpu=1, runtime=30, mem_mb=8000),
    Stage("grad_norms", "pipeline.analysis.grad_norms",
          "Per-layer gradient norms at the start of fine-tuning (embedding vs the rest), for freeze-embed.",
          ("dataset", "model"), {"grad_norms": GRAD_NORMS}, _data_and_weights,
          params=("analysis.grad_norms", "models.{model}"), mem_mb=8000),
    Stage("finetune", "pipeline.training.finetune",
          "Fine-tune one method at one grid point and seed: warmup + cosine, checkpoint chosen on ID val.",
          RUN,
          {"model": f"{RUN_DIR}/model.safetensors", "history": f"{RUN_DIR}/history.csv", "run": f"{RUN_DIR}/run.json",
           "layers": f"{RUN_DIR}/layers.csv", "cost": f"{RUN_DIR}/cost.json"},
          _finetune_inputs, params=("finetune", "methods.{method}.*", "models.{model}",
                                    "datasets.{dataset}.train_augment", "datasets.{dataset}.finetune"),
          extra_code=_method_code, gpu=1, runtime=240, mem_mb=16000, processes=_finetune_ranks,
          measured=frozenset({"cost"})),
    Stage("evaluate", "pipeline.evaluation.evaluate",
          "Accuracy of the fine-tuned model on every split and domain.",
          RUN, {"metrics": f"{RUN_DIR}/metrics.csv", "predictions": f"{RUN_DIR}/predictions.npz"}, _evaluate_inputs,
          params=("evaluate", "models.{model}"),
          gpu=1, runtime=30, mem_mb=8000),
    Stage("wise_ft", "pipeline.ensembling.wise_ft",
          "WiSE-FT: evaluate (1-a) pretrained + a fine-tuned over the alpha grid; a chosen on ID val.",
          RUN, {"curve": f"{RUN_DIR}/wise_ft.csv", "predictions": f"{RUN_DIR}/wise_ft_predictions.npz"},
          _wise_ft_inputs,
          params=("wise_ft.alphas", "evaluate", "models.{model}", "methods.{method}.init"),
          select=_wise_ft_selected, extra_code=_init_code, gpu=1, runtime=60, mem_mb=8000),
    Stage("soup", "pipeline.ensembling.soup",
          "Uniform and greedy model soups (Wortsman et al. 2022) of one seed's runs, greedy order by ID val.",
          ("dataset", "model", "seed"), {"metrics": f"{SOUP_DIR}/metrics.csv", "soup": f"{SOUP_DIR}/soup.json",
                                         "predictions": f"{SOUP_DIR}/predictions.npz"},
          _soup_inputs, params=("soups", "evaluate", "models.{model}"),
          select=_soups_enabled, gpu=1, runtime=60, mem_mb=8000),
    Stage("lpft_theory", "pipeline.analysis.lpft_theory",
          "LP vs FT vs LP-FT on the two-layer linear network of Kumar et al. 2022 (ID/OOD error table).",
          (), {"results": f"{ANALYSIS_DIR}/lpft_theory.csv", "table": table_output(LPFT_THEORY_TEMPLATE)},
          lambda cfg, wc: {"template": LPFT_THEORY_TEMPLATE}, params=("analysis.lpft_theory",)),
    Stage("report", "pipeline.reporting.report",
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
               "grad_norms": "paper/figures/grad_norms.pdf", "layers": "paper/figures/layers.pdf"},
          _report_inputs, params=("report", "experiment"), extra_code=_layout_code, runtime=60, mem_mb=8000,
          reported={**{f"html_{name}": "Tables" for name in LAYOUTS}, "figure_png": "Figures",
                    "er_figure_png": "Figures", "grad_norms": "Figures", "layers": "Figures", "summary": "Data",
                    "effective_robustness": "Data"}),
    Stage("costs", "pipeline.reporting.costs",
          "What each method's runs cost: GPU-hours, images/s, peak memory (measured; varies between runs).",
          (), {"costs": f"{REPORT_DIR}/costs.csv", "table": table_output(COSTS_TEMPLATE)}, _costs_inputs,
          params=("report.labels", "experiment.methods"), volatile=frozenset({"costs", "table"})),
    Stage("paper", "pipeline.reporting.paper", "Compile paper/main.tex with latexmk.",
          (), {"pdf": "paper/main.pdf"}, _paper_inputs, mem_mb=2000, volatile=frozenset({"pdf"}),
          reported={"pdf": "Paper"}),
)

STAGES_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    if name not in STAGES_BY_NAME:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES_BY_NAME)}")
    return STAGES_BY_NAME[name]


def job_inputs(st: Stage, cfg: dict, wc: dict, code: bool = True) -> dict[str, str | list[str]]:
    """All inputs of one job: data inputs plus (``code=True``) the stage's source files."""
    inputs = st.inputs(cfg, wc)
    return {**inputs, "code": st.code_files(cfg, wc)} if code else inputs


@functools.cache
def _digest(files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode() + b"\0" + (PACKAGE_ROOT / f).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def code_digest(st: Stage, cfg: dict, wc: dict) -> str:
    """Content hash of a job's source files.

    The Snakefile tracks code through this param instead of listing the files as
    inputs: same re-runs (an edit changes the hash), but Snakemake need not ask every
    rule whether it produces each source file, which dominates DAG building on
    sweeps of thousands of jobs. DVC lists the files as deps (``dvc.yaml``).
    """
    return _digest(tuple(st.code_files(cfg, wc)))


def flatten(paths: dict[str, str | list[str]]) -> list[str]:
    out: list[str] = []
    for v in paths.values():
        out.extend(v if isinstance(v, list) else [v])
    return out
