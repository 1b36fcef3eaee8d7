"""The packages depend downwards only, and no two modules of a package import each other (directly or around a
cycle). Read from the source (every import statement, at module level or inside a function), not from a run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each package and the project packages it may import: the architecture, bottom up.
ALLOWED: dict[str, set[str]] = {
    "wire": set(),  # what crosses the wire: messages, error codes, image sniffing
    "adapters": {"wire"},  # the adapter store
    "diagrams": {"wire"},  # diagram sources drawn as pictures
    "checkpoints": {"wire", "adapters"},  # random checkpoints and adapters for the demo, tests and benchmarks
    # engines, the servers and their sessions; diagrams: /infer draws diagram sources (when the renderers are installed)
    "inference_worker": {"wire", "adapters", "checkpoints", "diagrams"},
    "playground": {"wire", "diagrams"},  # the UI and its client: it talks to a worker only over the wire
    # On top, the project's own tools: they start workers and talk to them with the one client (playground.client).
    "tools": {"wire", "adapters", "checkpoints", "inference_worker", "playground", "diagrams"},  # soak, stack, S3
    "bench": {"wire", "adapters", "checkpoints", "inference_worker", "playground", "tools"},  # the benchmarks
}


def imports(path: Path, package: str) -> set[str]:
    """The absolute module names ``path`` imports (relative imports resolved within ``package``)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    parts = module.split(".")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    else:
        parts = parts[:-1]  # a module's relative imports start from its package
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def imported_by_name(path: Path) -> set[str]:
    """The modules ``path`` imports by a literal name: ``importlib.import_module("...")`` and ``__import__("...")``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def modules(package: str) -> dict[str, Path]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_below_it(package):
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(package).values()
        for name in imports(path, package)
        if (top := name.split(".")[0]) in ALLOWED and top != package and top not in ALLOWED[package]
    )
    assert not wrong, wrong


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_cycle_between_the_modules_of_a_package(package):
    own = modules(package)
    graph = {
        name: {dep for dep in imports(path, package) if dep in own and dep != name and not name.startswith(dep + ".")}
        for name, path in own.items()
    }
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_package_imports_a_private_name_of_another(package):
    wrong = []
    for path in modules(package).values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            if node.module.split(".")[0] in set(ALLOWED) - {package}:
                private = [a.name for a in node.names if a.name.startswith("_")]
                private += [p for p in node.module.split(".") if p.startswith("_") and not p.startswith("__")]
                if private:
                    wrong.append(f"{path.relative_to(ROOT)}: from {node.module} import {', '.join(private)}")
    assert not wrong, wrong


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_package_imports_the_tests(package):
    """The tests use the packages, never the other way round (an import statement or ``importlib``)."""
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(package).values()
        for name in imports(path, package) | imported_by_name(path)
        if name.split(".")[0] == "tests"
    )
    assert not wrong, wrong


# Inside the worker: the request front and what it uses know no protocol; the WebSocket front sits above them.
PROTOCOL_FREE = ["inference_worker.service", "inference_worker.events", "inference_worker.connection",
                 "inference_worker.admission", "inference_worker.validation", "inference_worker.startup",
                 "inference_worker.adapter_registry"]
PROTOCOL_FRONTS = {"websockets", "inference_worker.session", "inference_worker.server"}


@pytest.mark.parametrize("module", PROTOCOL_FREE)
def test_the_request_front_imports_no_protocol_front(module):
    """Service.generate and the connection state import neither websockets nor the WebSocket session or server."""
    path = modules("inference_worker")[module]
    wrong = sorted(name for name in imports(path, "inference_worker")
                   if any(name == front or name.startswith(front + ".") for front in PROTOCOL_FRONTS))
    assert not wrong, wrong
