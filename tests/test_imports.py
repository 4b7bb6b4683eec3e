"""The builder's module graph: folders by role whose imports go one way, and no import cycle,
counting every import (inside functions and ``if TYPE_CHECKING:`` blocks too, where a deferred
import would hide one).

The layers (a module may import its own layer and those listed)::

    cli       everything: the command line and the demo workflow on top
    acquire   assign, core       harvest, atlas, the fetch engine and ledger, sources/
    ops       assign, core       ingest, synthesize, verify, repair, recover, report
    mosaic    core               photomosaics
    publish   core               staging, Parquet, the card, push, restore
    assign    core               the card's pipeline: analysis, admission, commit
    core      (itself)           the library on disk and what reads it
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.paths import REPO

PACKAGE = REPO / "builder"
# Modules the CLI, the card and publish read without the heavy side: the standard library only.
STDLIB_ONLY = ("builder.core.errors", "builder.core.layout", "builder.core.db", "builder.core.tilefiles",
               "builder.core.store", "builder.core.lock", "builder.core.scratch", "builder.core.summary",
               "builder.core.quarantine", "builder.core.plans", "builder.core.redact", "builder.core.defaults",
               "builder.acquire.options", "builder.assign.admission")
# Each layer folder of builder/ and the layers its modules may import (their own included).
LAYERS = {
    "core": {"core"},
    "assign": {"core", "assign"},
    "acquire": {"core", "assign", "acquire"},
    "ops": {"core", "assign", "ops"},
    "mosaic": {"core", "mosaic"},
    "publish": {"core", "publish"},
    "cli": set(),  # filled below: everything
}
LAYERS["cli"] = set(LAYERS)
# The package's two root files: the errors re-export and ``python -m builder``.
ROOT_LAYER = {"builder": "core", "builder.__main__": "cli"}


def module_name(path: Path, package: Path) -> str:
    """``pkg.sub.mod`` of a file under the package folder ``package`` (``pkg.sub`` for an ``__init__.py``)."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: Path, modules: set[str]) -> dict[str, int]:
    """``{module: line}`` of the package's modules that ``path`` imports anywhere: at module level,
    inside functions and ``if TYPE_CHECKING:`` blocks alike (every node of the file).

    Importing ``a.b.c`` from outside ``a.b`` runs ``a/b/__init__.py`` first, so that package
    counts as imported too; from inside ``a.b`` it is already being imported and does not."""
    name = module_name(path, package)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for end in range(1, len(parts) + 1):  # the module and every package its import runs
                module = ".".join(parts[:end])
                inside = name == module or name.startswith(module + ".")
                if module in modules and (end == len(parts) or not inside):
                    found.setdefault(module, node.lineno)
    found.pop(name, None)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """Every module of ``package`` -> ``{imported module: line}`` (:func:`imports_of`)."""
    paths = sorted(package.rglob("*.py"))
    modules = {module_name(p, package) for p in paths}
    return {module_name(p, package): imports_of(p, package, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]] | dict[str, dict[str, int]]) -> list[str] | None:
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


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    """``a -> b (line 12 of a) -> a (line 40 of b)``: where each import of the cycle is."""
    steps = [cycle[0]]
    for a, b in zip(cycle, cycle[1:]):
        steps.append(f"{b} (line {graph[a][b]} of {a})")
    return " -> ".join(steps)


def reachable(graph: dict[str, set[str]] | dict[str, dict[str, int]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A package ``pkg`` under ``root`` made of ``files`` (paths relative to ``pkg/``)."""
    for relative, text in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_checker_finds_a_cycle_hidden_in_a_function_and_a_type_checking_block(tmp_path):
    """``a`` imports ``b`` inside a function, ``b`` imports ``a`` only for type checking: Python
    runs both, and the checker sees the circle; without the second import there is none."""
    files = {
        "__init__.py": "",
        "a.py": """
            def f():
                from . import b
                return b
            """,
        "b.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from .a import f
            """,
        "c.py": "import pkg.a\n",
    }
    package = write_package(tmp_path, files)
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.b": 3} and graph["pkg.b"] == {"pkg.a": 4} and graph["pkg.c"] == {"pkg.a": 1}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert describe(find_cycle(graph), graph) == "pkg.a -> pkg.b (line 3 of pkg.a) -> pkg.a (line 4 of pkg.b)"
    (package / "b.py").write_text("from typing import TYPE_CHECKING\n")
    assert find_cycle(import_graph(package)) is None


def test_the_checker_finds_a_cycle_through_a_package_init(tmp_path):
    """``c`` imports ``sub.y``, which runs ``sub/__init__.py``, which imports ``sub.x``, which imports
    ``c``: no file imports the file that imports it, yet Python fails on it; the checker counts the
    package's ``__init__`` and finds the circle.  A sibling inside ``sub`` does not run it again."""
    files = {
        "__init__.py": "",
        "c.py": "from .sub.y import Y\nC = 1\n",
        "sub/__init__.py": "from .x import X\n",
        "sub/x.py": "from ..c import C\nX = C\n",
        "sub/y.py": "from .x import X\nY = X\n",
    }
    package = write_package(tmp_path, files)
    graph = import_graph(package)
    assert graph["pkg.c"] == {"pkg.sub": 1, "pkg.sub.y": 1} and graph["pkg.sub.y"] == {"pkg.sub.x": 1}
    assert find_cycle(graph) == ["pkg.c", "pkg.sub", "pkg.sub.x", "pkg.c"]
    run = subprocess.run([sys.executable, "-c", "import pkg.c"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0 and "partially initialized module 'pkg.c'" in run.stderr  # Python agrees


def layer_of(module: str) -> str | None:
    """The layer folder a module of ``builder`` lives in (``None`` for a module outside every layer)."""
    if module in ROOT_LAYER:
        return ROOT_LAYER[module]
    folder = module.split(".")[1]
    return folder if folder in LAYERS else None


def layer_breaches(graph: dict[str, dict[str, int]]) -> list[str]:
    """``importer:line -> imported`` for every import that goes up or sideways between layers."""
    return [f"{module}:{line} -> {target}"
            for module, targets in sorted(graph.items()) for target, line in sorted(targets.items())
            if layer_of(target) not in LAYERS.get(layer_of(module), set())]


def dangling_imports(path: Path, text: str | None = None, package: Path = PACKAGE) -> list[str]:
    """``file:line -> module`` for every import in ``path`` (or in ``text`` read as that file) of a
    ``builder`` module that does not exist, deferred ones included: a function that would fail
    only when it runs."""
    modules = {module_name(p, package) for p in package.rglob("*.py")}
    here = ""
    if package in path.parents:
        here = module_name(path, package)
        here = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = here.split(".")
            targets = [".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))]
        elif isinstance(node, ast.ImportFrom):
            targets = [node.module or ""]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno} -> {target}" for target in targets
                  if target.split(".")[0] == package.name and target not in modules]
    return found


def test_every_import_of_a_builder_module_names_one_that_exists():
    files = [*PACKAGE.rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py"),
             REPO / "mosaic_library.py"]
    assert [line for path in files for line in dangling_imports(path)] == []
    # A deferred import of a module's old home (before the folders by role) is found, with its line.
    stats = PACKAGE / "cli" / "stats.py"
    text = stats.read_text() + "\n\ndef planted():\n    from ..library import Library\n    from builder.harvest import harvest\n"
    line = text.count("\n")  # the last line's number
    assert dangling_imports(stats, text) == [f"builder/cli/stats.py:{line - 1} -> builder.library",
                                             f"builder/cli/stats.py:{line} -> builder.harvest"]


def test_every_module_lives_in_a_layer_folder():
    graph = import_graph()
    assert {m for m in graph if layer_of(m) is None} == set()
    assert {m.split(".")[1] for m in graph if m not in ROOT_LAYER} == set(LAYERS)
    assert [p.name for p in sorted(PACKAGE.glob("*.py"))] == ["__init__.py", "__main__.py"]


def test_imports_go_one_way_between_layers_deferred_imports_counted():
    graph = import_graph()
    # The graph holds the deferred imports: the CLI imports its commands' modules inside run().
    assert "builder.ops.verify" in graph["builder.cli.verify"] and "builder.acquire.harvest" in graph["builder.cli.harvest"]
    assert layer_breaches(graph) == []


def test_the_layer_check_finds_a_planted_breach_in_real_files(tmp_path):
    """A deferred import inside a function of the core (the colour maths reaching up to verify)
    and a module-level import sideways (publish reading the mosaic) are both found, with their lines."""
    import shutil

    package = tmp_path / "builder"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    color = package / "core" / "color.py"
    color.write_text(color.read_text() + "\n\ndef planted():\n    from ..ops import verify\n    return verify\n")
    line = color.read_text().count("\n") - 1
    card = package / "publish" / "card.py"
    card.write_text("from ..mosaic import render  # planted\n" + card.read_text())
    breaches = layer_breaches(import_graph(package))
    assert f"builder.core.color:{line} -> builder.ops.verify" in breaches
    assert "builder.publish.card:1 -> builder.mosaic.render" in breaches
    assert "builder.publish.card:1 -> builder.mosaic" in breaches  # the package's __init__ runs too
    assert len(breaches) == 4, breaches  # and builder.ops, run by `from ..ops import verify`


def test_no_import_cycle_among_builder_modules_deferred_imports_counted():
    graph = import_graph()
    # The parser saw the real modules and their deferred imports: the CLI imports its commands'
    # modules inside run().
    assert "builder.core.store" in graph and graph["builder.core.library"]
    assert "builder.ops.verify" in graph["builder.cli.verify"]
    assert "builder.mosaic" in graph["builder.cli.mosaic"]  # through `from ..mosaic import ...` in run()
    cycle = find_cycle(graph)
    assert cycle is None, describe(cycle, graph)


def test_library_depends_on_neither_assignment_nor_ingest_nor_the_fetching_side():
    """Not even through a deferred import inside a method (``Library.ingest`` once closed a
    circle library -> ingest -> assign -> library that way; ``Library.stats`` reached the ledger,
    the sources and requests)."""
    below = reachable(import_graph(), "builder.core.library")
    assert {"builder.core.store", "builder.core.db", "builder.core.layout", "builder.core.tilefiles", "builder.core.stats"} <= below
    assert not below & {"builder.assign.pipeline", "builder.ops.ingest", "builder.acquire.harvest", "builder.acquire.ledger", "builder.acquire.sources",
                        "builder.mosaic"}, sorted(below)
    # And at run time: importing the library loads none of them.
    code = "import sys, builder.core.library; print(sorted(m for m in sys.modules if m.startswith('builder.')))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "builder.assign.pipeline" not in loaded and "builder.ops.ingest" not in loaded and "builder.acquire.ledger" not in loaded, loaded


def test_the_write_path_and_the_checks_do_not_depend_on_the_mosaic_nor_publish_on_the_fetching_side():
    graph = import_graph()
    for module in ("builder.assign.pipeline", "builder.ops.report", "builder.ops.verify", "builder.ops.repair", "builder.ops.recover"):
        assert not {m for m in reachable(graph, module) if m.startswith("builder.mosaic")}, module
    assert "builder.publish.restore" not in reachable(graph, "builder.ops.recover")
    publish = {m for m in graph if m.startswith("builder.publish")}
    beyond = set().union(*(reachable(graph, m) for m in publish))
    assert not beyond & {"builder.acquire.tiles", "builder.acquire.sources", "builder.acquire.sources.http", "builder.acquire.harvest"}, sorted(beyond)


def test_the_light_modules_need_only_the_standard_library():
    code = (f"import sys; import {', '.join(STDLIB_ONLY)}; "
            "print(sorted(m for m in ('numpy', 'PIL', 'scipy', 'requests', 'mercantile') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
