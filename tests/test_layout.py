"""The package layout's import rules, read from every module's source: client never imports server or training,
training imports neither server nor client nor any web or database library, and the worker's modules import no
cycle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "service"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module this file imports, at any depth (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def _offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {name: sorted(i for i in imports if i.startswith(forbidden))
            for name, imports in MODULES.items()
            if name.startswith(package) and any(i.startswith(forbidden) for i in imports)}


def test_the_layout_is_the_documented_one():
    assert {"service.training", "service.server", "service.server.api", "service.client", "service.schemas",
            "service.cli"} <= set(MODULES)


def test_the_client_imports_no_server_or_training_code():
    assert _offenders("service.client", ("service.server", "service.training", "torch", "sqlalchemy",
                                         "fastapi")) == {}


@pytest.mark.parametrize("forbidden", [("service.server", "service.client", "service.cli"),
                                       ("sqlalchemy", "fastapi", "starlette", "httpx", "uvicorn", "alembic")])
def test_training_imports_no_server_client_database_or_http_code(forbidden):
    assert _offenders("service.training", forbidden) == {}


def test_service_modules_import_no_cycle():
    graph = {name: {i for i in imports if i in MODULES and i != name} for name, imports in MODULES.items()}
    # a package's __init__ re-exporting its own modules is not a cycle worth reporting
    graph = {name: {i for i in deps if not name.startswith(i + ".")} for name, deps in graph.items()}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for dep in sorted(graph[node]):
            if dep in on_path:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in done:
                visit(dep, [*path, dep], on_path | {dep}, done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name], {name}, done)
    assert cycles == []
