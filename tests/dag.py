"""Parse the job graphs that Snakemake and DVC print, into comparable node/edge sets."""
from __future__ import annotations

import re

from pipeline.stages.registry import STAGES_BY_NAME, flatten

_SNAKE_NODE = re.compile(r'^\s*(\d+)\[label = "([^"]*)"', re.M)
_SNAKE_EDGE = re.compile(r"^\s*(\d+) -> (\d+)", re.M)
_DVC_EDGE = re.compile(r'^\s*"?([^"\s]+)"?\s*->\s*"?([^"\s;]+)"?', re.M)
_DVC_NODE = re.compile(r'^\s*"?([A-Za-z][^"\s;\[]*)"?\s*(\[|;|$)', re.M)


def snakemake_dag(dot: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Nodes as registry job ids (``stage--wc...``), edges as (upstream, downstream).

    A node's label lists only the wildcards its dependencies do not already carry
    (Snakemake's ``new_wildcards``), so each job's full wildcards are recovered by
    adding those of its ancestors that its rule has.
    """
    labels = {}
    for num, label in _SNAKE_NODE.findall(dot):
        rule, *wc_lines = label.split("\\n")
        labels[num] = (rule, dict(line.split(": ", 1) for line in wc_lines))
    raw_edges = _SNAKE_EDGE.findall(dot)
    deps: dict[str, list[str]] = {n: [] for n in labels}
    for a, b in raw_edges:
        deps[b].append(a)

    full: dict[str, dict[str, str]] = {}

    def resolve(num: str) -> dict[str, str]:
        if num not in full:
            wc = {}
            for d in deps[num]:
                wc.update(resolve(d))
            wc.update(labels[num][1])
            full[num] = wc
        return full[num]

    ids = {}
    for num, (rule, _) in labels.items():
        if rule == "all":
            continue
        st = STAGES_BY_NAME[rule]
        wc = resolve(num)
        ids[num] = st.job_id({w: wc[w] for w in st.wildcards})
    edges = {(ids[a], ids[b]) for a, b in raw_edges if a in ids and b in ids}
    return set(ids.values()), edges


def dvc_dag(dot: str, skip: frozenset[str] = frozenset()) -> tuple[set[str], set[tuple[str, str]]]:
    body = dot[dot.index("{") + 1:dot.rindex("}")]
    edges = {(a, b) for a, b in _DVC_EDGE.findall(body)}
    nodes = {n for n in _DVC_NODE.findall(body) for n in [n[0]] if n not in ("node", "edge", "graph", "strict")}
    nodes |= {x for e in edges for x in e}
    return nodes - skip, {e for e in edges if not (set(e) & skip)}


def snakemake_pending(out: str) -> set[str]:
    """Registry job ids of the jobs a ``snakemake -n`` run lists (its ``rule``/``localrule`` blocks)."""
    jobs = set()
    # Snakemake 9 prints the blocks back to back (a timestamp line between them, no blank line)
    for block in re.split(r"^(?=(?:local)?rule \w+:)", out, flags=re.M):
        head = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not head or head.group(1) == "all":
            continue
        found = re.search(r"^\s*wildcards: (.*)$", block, re.M)
        wc = dict(kv.split("=", 1) for kv in found.group(1).split(", ")) if found else {}
        st = STAGES_BY_NAME[head.group(1)]
        jobs.add(st.job_id({w: wc[w] for w in st.wildcards}))
    return jobs


def users_and_downstream(cfg: dict, path: str) -> tuple[set[str], set[str]]:
    """Jobs whose code includes ``path``, and those plus every job downstream of them (registry paths)."""
    jobs = {st.job_id(wc): (st, wc) for st in STAGES_BY_NAME.values() for wc in st.jobs(cfg)}
    users = {j for j, (st, wc) in jobs.items() if path in st.code_files(cfg, wc)}
    produced = {p: j for j, (st, wc) in jobs.items() for p in st.output_paths(wc).values()}
    needs = {j: {produced[p] for p in flatten(st.inputs(cfg, wc)) if p in produced} for j, (st, wc) in jobs.items()}
    closure = set(users)
    while new := {j for j, ups in needs.items() if ups & closure} - closure:
        closure |= new
    return users, closure
