"""The builder's module graph: no import cycle at module level, and the library core stays below
the pipeline (``builder.library`` never imports assignment or ingest, so they can import it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

PACKAGE = REPO / "builder"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.Module, everywhere: bool) -> list[ast.stmt]:
    """The statements run on import (into ``if``/``try``, not ``if TYPE_CHECKING:`` or bodies of
    functions), or every node of the file."""
    if everywhere:
        return list(ast.walk(tree))
    todo, run = list(tree.body), []
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.If):
            if not _is_type_checking(node):
                todo[:0] = node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo[:0] = node.body + [n for h in node.handlers for n in h.body] + node.orelse + node.finalbody
        else:
            run.append(node)
    return run


def imports_of(path: Path, modules: set[str], everywhere: bool = False) -> set[str]:
    """Builder modules ``path`` imports when it is imported, or ``everywhere`` (deferred imports too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _statements(ast.parse(path.read_text()), everywhere):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def import_graph(everywhere: bool = False) -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules, everywhere) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_level_import_cycle_among_builder_modules():
    graph = import_graph()
    assert "builder.store" in graph and graph["builder.library"]  # the parser saw the real modules
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_library_depends_on_neither_assignment_nor_ingest():
    """Not even through a deferred import inside a method (``Library.ingest`` once closed a
    circle library -> ingest -> assign -> library that way)."""
    graph = import_graph(everywhere=True)
    below = reachable(graph, "builder.library")
    assert {"builder.store", "builder.db", "builder.layout", "builder.tilefiles"} <= below
    assert not below & {"builder.assign", "builder.ingest", "builder.harvest"}, sorted(below)
    # And at run time: importing the library loads none of them.
    code = "import sys, builder.library; print(sorted(m for m in sys.modules if m.startswith('builder.')))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "builder.assign" not in loaded and "builder.ingest" not in loaded, loaded


def test_layout_db_tilefiles_and_store_need_only_the_standard_library():
    code = ("import sys; import builder.layout, builder.db, builder.tilefiles, builder.store; "
            "print(sorted(m for m in ('numpy', 'PIL', 'scipy') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
