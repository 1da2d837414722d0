"""Imports point one way: folders form a DAG as their ``__init__`` documents it; only the CLI entry imports cli."""
import ast
import functools
import re
from collections import defaultdict
from pathlib import Path

from conftest import REPO

from pipeline.stages import STAGES

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


def folder(module: str) -> str | None:
    """The subpackage a module lives in (``data`` for pipeline.data.sources.wilds); None at the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else None


def folder_graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for mod, targets in imports().items():
        for t in targets:
            a, b = folder(mod), folder(t)
            if a and b and a != b:
                graph[a].add(b)
    return graph


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


def test_only_stage_modules_import_the_job_contract():
    stage_modules = {st.module for st in STAGES}
    plumbing = {"pipeline.cli", "pipeline.job"}
    users = {m for m, targets in imports().items() if "pipeline.job" in targets}
    assert users <= stage_modules | plumbing, sorted(users - stage_modules - plumbing)


def test_no_import_cycles_between_folders_or_modules():
    assert find_cycle(folder_graph()) is None
    graph = {m: {t for t in targets if t in imports()} for m, targets in imports().items()}
    assert find_cycle(graph) is None


def test_each_folder_states_its_role_and_its_dependencies():
    graph = folder_graph()
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        name = init.parent.name
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"pipeline/{name}/__init__.py: no docstring stating the folder's role"
        documented = set(re.findall(r":mod:`~?pipeline\.(\w+)", doc)) - {name}
        assert graph.get(name, set()) <= documented, \
            f"pipeline/{name} imports {sorted(graph[name] - documented)} but its docstring does not say so"


def test_config_resolution_lives_with_the_config_code():
    assert not (PACKAGE / "training" / "settings.py").exists()
    users = {m for m, targets in imports().items() if "pipeline.config.settings" in targets}
    # the registry, the job contract and the stages that resolve a run's settings; nothing reaches up to training
    assert all(folder(m) in (None, "config", "training", "methods") for m in users), users
