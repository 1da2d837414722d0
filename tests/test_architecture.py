"""Imports point one way, down the layers (entry, tools, stages wing, config, library, base); no loops."""
import ast
import functools
import importlib
import re
from collections import defaultdict
from pathlib import Path

from conftest import REPO

from pipeline.stages.registry import STAGES

PACKAGE = REPO / "pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def imports() -> dict[str, set[str]]:
    """Every pipeline module and the pipeline modules it imports (``from a import b``: a.b if b is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    out = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("pipeline")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
                found |= subs or {node.module}
        out[name] = found
    return out


def unit(module: str) -> str:
    """What a module belongs to: its folder (``data`` for pipeline.data.sources.wilds), or itself at the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else parts[-1]


# Top to bottom: an import may point down or sideways, never up. The library folders form a DAG among
# themselves (each __init__ names what it imports); the root modules at the bottom import no other unit.
LAYERS = (("__main__", "cli"), ("tools",), ("stages",), ("config",),
          ("reporting", "ensembling", "analysis", "training", "evaluation", "methods", "models", "download", "data"),
          ("io", "compat", "gpu_slots", "pipeline"))
RANK = {u: i for i, layer in enumerate(LAYERS) for u in layer}


def unit_graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for mod, targets in imports().items():
        for t in targets:
            a, b = unit(mod), unit(t)
            if a != b:
                graph[a].add(b)
    return graph


def upward_imports() -> list[tuple[str, str]]:
    return sorted((m, t) for m, targets in imports().items() for t in targets if RANK[unit(t)] < RANK[unit(m)])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_only_the_entry_point_imports_the_cli():
    users = {m for m, targets in imports().items() if "pipeline.cli" in targets}
    assert users == {"pipeline.__main__"}


def test_every_unit_has_a_layer_and_no_import_points_up():
    units = {unit(m) for m in imports()}
    assert units <= set(RANK), f"modules or folders in no layer: {sorted(units - set(RANK))}"
    assert upward_imports() == []


def test_each_stage_is_one_module_of_the_stages_wing_and_only_stages_use_the_job_contract():
    stage_files = {p.stem for p in (PACKAGE / "stages").glob("*.py")} - {"__init__", "registry", "job", "code"}
    assert stage_files == {st.name for st in STAGES}
    for st in STAGES:
        assert hasattr(importlib.import_module(st.module), "main"), st.module
    users = {m for m, targets in imports().items() if "pipeline.stages.job" in targets}
    assert users <= {st.module for st in STAGES} | {"pipeline.cli"}, sorted(users)


def test_library_folders_import_nothing_from_the_stages_wing():
    library = set(LAYERS[4])
    reach_up = sorted((m, t) for m, targets in imports().items() for t in targets
                      if unit(m) in library and unit(t) in ("stages", "tools", "cli", "config"))
    assert reach_up == []


def test_no_import_cycles_between_units_or_modules():
    assert find_cycle(unit_graph()) is None
    graph = {m: {t for t in targets if t in imports()} for m, targets in imports().items()}
    assert find_cycle(graph) is None


def test_each_folder_states_its_role_and_its_dependencies():
    graph = unit_graph()
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        name = init.parent.name
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"pipeline/{name}/__init__.py: no docstring stating the folder's role"
        documented = set(re.findall(r":mod:`~?pipeline\.(\w+)", doc)) - {name}
        folders = {u for u in graph.get(name, set()) if (PACKAGE / u).is_dir()}
        assert folders <= documented, \
            f"pipeline/{name} imports {sorted(folders - documented)} but its docstring does not say so"


def test_config_resolution_lives_with_the_config_code():
    assert not (PACKAGE / "training" / "settings.py").exists()
    users = {m for m, targets in imports().items() if "pipeline.config.settings" in targets}
    # the config itself, the stages that resolve a run's settings, the tools that check them
    assert all(unit(m) in ("config", "stages", "tools") for m in users), users
