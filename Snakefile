# A thin view of the stage registry (pipeline/stages.py): one rule per stage,
# built in a loop. Stages are defined there, never here.
#   snakemake --cores 2                 run everything that is out of date
#   snakemake --profile profiles/slurm  submit to a Slurm cluster
import json
import sys

from pipeline.config import ParamsError, load_params
from pipeline.stages import STAGES, WILDCARD_PATTERNS, job_inputs

try:
    CFG = load_params(config.get("params", "params.yaml"))
except ParamsError as err:
    # One line naming the key, and nothing runs.
    sys.stderr.write(f"error: {err}\n")
    sys.exit(2)

wildcard_constraints:
    **WILDCARD_PATTERNS,


rule all:
    default_target: True
    input:
        [p for st in STAGES for wc in st.jobs(CFG) for p in st.output_paths(wc).values()],


def _inputs(st):
    return lambda wc: job_inputs(st, CFG, dict(wc.items()))


def _command(st):
    # Resolved per job; wildcard values are regex-constrained (no shell metacharacters).
    return lambda wc: st.command(dict(wc.items()))


def _params(st):
    # The resolved values of the keys the stage reads: Snakemake's params trigger
    # then re-runs exactly the jobs whose keys changed, as DVC's params deps do.
    return lambda wc: json.dumps(st.param_values(CFG, dict(wc.items())), sort_keys=True)


for st in STAGES:

    rule:
        name:
            st.name
        input:
            unpack(_inputs(st)),
        output:
            **{k: directory(v) if k in st.directories else v for k, v in st.outputs.items()},
        params:
            values=_params(st),
            cmd=_command(st),
        log:
            st.log,
        benchmark:
            st.benchmark
        threads: st.threads
        resources:
            gpu=st.gpu,
            runtime=st.runtime,
            mem_mb=st.mem_mb,
        shell:
            # (rule bodies are evaluated lazily: `st` must not appear here)
            "PIPELINE_THREADS={threads} {params.cmd} > {log} 2>&1"
