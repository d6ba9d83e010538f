"""The project's promises about itself: the README's commands, settings and public names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from trace_ext.config import TraceExt

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    blocks = re.findall(r"```\n(.*?)\n```", README, re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_command


def test_readme_documents_every_setting():
    for name in TraceExt.class_traits(config=True):
        assert f"| `{name}` |" in README, name


def test_public_names():
    import trace_ext

    assert set(trace_ext.__all__) == {
        "__version__", "flush", "load_ipython_extension", "observe", "span", "unload_ipython_extension",
    }
    assert all(hasattr(trace_ext, name) for name in trace_ext.__all__)


def _imports() -> dict[str, set[str]]:
    """Each trace_ext module and the trace_ext modules it imports: every import
    statement counts, function-local and ``TYPE_CHECKING`` ones included."""
    package = ROOT / "trace_ext"
    modules: dict[str, Path] = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    # ``from . import x`` imports module x; ``from .m import x`` imports m.
                    found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    graph = _imports()
    assert len(graph) > 20 and graph["trace_ext._extension"], "the import graph was not read"
    assert _cycles(graph) == []


def test_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_live_in_subpackages_with_a_docstring_of_what_they_own():
    package = ROOT / "trace_ext"
    top = {p.name for p in package.glob("*.py")}
    # Only the public modules and leaves every package shares stay at the top.
    assert top <= {"__init__.py", "__main__.py", "config.py", "_extension.py", "_log.py", "_otlp.py",
                   "_redact.py", "_version.py"}, top
    for path in package.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 40, f"{path.relative_to(ROOT)} says nothing of what it owns"
    for init in package.glob("*/__init__.py"):
        assert "May import" in init.read_text(), f"{init.relative_to(ROOT)} does not say what it may import"
