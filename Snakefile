# A thin view of the stage registry (pipeline/stages/registry.py): one rule per stage,
# built in a loop. Stages are defined there, never here.
#   snakemake --cores 2                 run everything that is out of date
#   snakemake --profile profiles/slurm  submit to a Slurm cluster
#   snakemake --config params=configs/freeze_embed.yaml   another experiment config
#   snakemake --config params=configs/lpft.yaml datasets=cifar10,fmow   only these datasets' jobs (no report)
#   snakemake --report report.html      the tables and figures as one self-contained HTML page
import json
import sys

from pipeline.config import ParamsError, load_params
from pipeline.config.frozen import freeze
from pipeline.stages.registry import STAGES, WILDCARD_PATTERNS, code_digest, job_inputs, targets

PARAMS = str(config.get("params", "params.yaml"))
try:
    # Frozen: planning answers (a run's settings, a stage's jobs) are computed once per config.
    CFG = freeze(load_params(PARAMS))
except ParamsError as err:
    # One line naming the key, and nothing runs.
    sys.stderr.write(f"error: {err}\n")
    sys.exit(2)

wildcard_constraints:
    **WILDCARD_PATTERNS,


report: "paper/captions/workflow.rst"


# `datasets=a,b` narrows the default target to those datasets' jobs; the report and
# paper summarise the whole experiment, so they run only without it.
ONLY = [d for d in str(config.get("datasets", "")).split(",") if d]
for d in ONLY:
    if d not in CFG["experiment"]["datasets"]:
        sys.stderr.write(f"error: --config datasets: {d!r} is not in experiment.datasets of {PARAMS}\n")
        sys.exit(2)


def _wanted(wc):
    return not ONLY or wc.get("dataset") in ONLY


onstart:
    # Checks that need torch and timm (pipeline/tools/preflight.py), once, before the first job
    # (not on dry runs): unknown models, missing weights, image sizes, freeze policies, batch sizes.
    from pipeline.tools.preflight import check

    try:
        check(CFG, PARAMS)
    except ParamsError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)


rule all:
    default_target: True
    input:
        targets(CFG, _wanted),


def _inputs(st):
    # Source files are tracked by content through the `code` param (pipeline.stages.registry.code_digest).
    return lambda wc: job_inputs(st, CFG, dict(wc.items()), code=False)


def _command(st):
    # Resolved per job; wildcard values are regex-constrained (no shell metacharacters).
    return lambda wc: st.command(dict(wc.items()), PARAMS, CFG)


def _gpus(st):
    return lambda wc: st.gpus(CFG, dict(wc.items()))


def _params(st):
    # The values of the keys the stage reads, and of the registry defaults it resolves where params.yaml
    # is silent (pipeline/config/defaults.py): Snakemake's params trigger then re-runs exactly the jobs
    # whose values changed, as DVC's params deps (params.yaml, params.defaults.yaml) do.
    return lambda wc: json.dumps({"params": st.param_values(CFG, dict(wc.items())),
                                  "defaults": st.default_values(CFG, dict(wc.items()))}, sort_keys=True)


def _code(st):
    return lambda wc: code_digest(st, CFG, dict(wc.items()))


def _output(st, name, path):
    # Tables and figures go into `snakemake --report`, each with its caption.
    if name in st.reported:
        return report(path, caption=st.caption(name), category=st.reported[name])
    return directory(path) if name in st.directories else path


for st in STAGES:

    rule:
        name:
            st.name
        # Download jobs run where Snakemake runs (the login node), never on compute nodes.
        localrule: st.local
        input:
            unpack(_inputs(st)),
        output:
            **{k: _output(st, k, v) for k, v in st.outputs.items()},
        params:
            values=_params(st),
            code=_code(st),
            cmd=_command(st),
        log:
            st.log,
        benchmark:
            st.benchmark
        conda:
            "envs/pipeline.yaml"
        threads: st.threads
        resources:
            gpu=_gpus(st),
            runtime=st.runtime,
            mem_mb=st.mem_mb,
        shell:
            # (rule bodies are evaluated lazily: `st` must not appear here)
            "PIPELINE_THREADS={threads} {params.cmd} > {log} 2>&1"
