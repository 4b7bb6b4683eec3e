"""The test suite's own layout: fixtures in ``tests/conftest.py``, everything shared in
``tests/support/``, test modules that import no other test module.

Checked on the source (every import statement, deferred ones included) of ``tests/`` and
``bench/``:

- the only modules directly in ``tests/`` are ``conftest.py`` and ``test_*.py`` (helpers live in
  ``tests/support/``, which ``bench/`` imports too);
- nothing imports a test module or ``tests.conftest`` (or, bare, a sibling file of ``tests/``
  that pytest's ``rootdir`` insertion would make importable);
- ``tests.*`` imports name ``tests.support`` only;
- no fixture is defined in ``tests/support/`` (so none can be imported by name) and no
  ``noqa: F811`` marks a fixture imported into a module and redefined by a parameter.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

from tests.support.paths import REPO

ALLOWED_IN_TESTS = re.compile(r"^(conftest|test_\w+)\.py$")


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every absolute import in ``tree``; ``from tests import a`` counts
    as importing ``tests.a`` (``tests`` is a namespace package: its members are modules)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module == "tests":
            found += [(node.lineno, f"tests.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.lineno, node.module))
    return found


def comments(text: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every comment in a Python source (not ``#`` inside strings)."""
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return [(tok.start[0], tok.string) for tok in tokens if tok.type == tokenize.COMMENT]


def is_fixture(decorator: ast.expr) -> bool:
    """``@pytest.fixture``, ``@pytest.fixture(...)``, ``@fixture`` or ``@fixture(...)``."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Attribute) and target.attr == "fixture") or (
        isinstance(target, ast.Name) and target.id == "fixture")


def import_problem(name: str, siblings: set[str]) -> str | None:
    """Why importing ``name`` breaks the layout, or None."""
    parts = name.split(".")
    if parts[0] in siblings:
        return f"imports {name} as a top-level module (import it as tests.support...)"
    if parts[0] != "tests" or len(parts) == 1:
        return None
    if parts[1] == "conftest":
        return f"imports {name} (fixtures are requested by name, helpers live in tests.support)"
    if parts[1].startswith("test_"):
        return f"imports the test module {'.'.join(parts[:2])} (move what it shares into tests.support)"
    if parts[1] != "support":
        return f"imports {'.'.join(parts[:2])}, outside tests.support"
    return None


def layout_problems(root: Path) -> list[str]:
    """Every breach of the module docstring's rules in ``root/tests`` and ``root/bench``."""
    tests, problems = root / "tests", []
    siblings = {p.stem for p in tests.glob("*.py")}  # importable bare: pytest puts tests/ on sys.path
    problems += [f"tests/{p.name}: a module beside the tests (move it into tests/support/)"
                 for p in sorted(tests.glob("*.py")) if not ALLOWED_IN_TESTS.match(p.name)]
    files = sorted(tests.rglob("*.py")) + sorted((root / "bench").rglob("*.py"))
    for path in files:
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for line, name in imported_modules(tree):
            if problem := import_problem(name, siblings):
                problems.append(f"{rel}:{line}: {problem}")
        problems += [f"{rel}:{line}: noqa: F811 (a fixture imported by name and redefined by a parameter)"
                     for line, comment in comments(text) if re.search(r"noqa:[^#]*\bF811", comment)]
        if rel.startswith("tests/support/"):
            problems += [f"{rel}:{node.lineno}: fixture {node.name} outside tests/conftest.py"
                         for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                         and any(is_fixture(d) for d in node.decorator_list)]
    return problems


def test_the_suite_keeps_its_layout():
    assert (REPO / "tests" / "conftest.py").is_file() and (REPO / "tests" / "support" / "cli.py").is_file()
    assert layout_problems(REPO) == []


def test_the_layout_check_finds_each_planted_breach(tmp_path):
    planted = {
        "tests/conftest.py": "import pytest\n",
        "tests/test_a.py": (
            "from tests.test_b import helper\n"
            "from tests.conftest import REPO\n"
            "from tests.support.cli import run_cli\n"
            "from tests.support.libraries import earth  # noqa: F401, F811\n"
            "def test_x(earth):  # noqa: F811 - the imported fixture, by name\n"
            "    import tests.test_b\n"
            "    from helpers import X\n"
            "    from tests import test_b\n"
        ),
        "tests/test_b.py": "def helper():\n    pass\n",
        "tests/helpers.py": "X = 1\n",
        "tests/support/__init__.py": "",
        "tests/support/cli.py": "def run_cli():\n    pass\n",
        "tests/support/tileserver.py": "class TileServer:\n    pass\n",
        "tests/support/libraries.py": "import pytest\n@pytest.fixture(scope='session')\ndef earth():\n    pass\n",
        "bench/run.py": "from tests.helpers import X\nfrom tests.support.tileserver import TileServer\nimport test_b\n",
    }
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = layout_problems(tmp_path)
    expected = [
        "tests/helpers.py: a module beside the tests",
        "tests/test_a.py:1: imports the test module tests.test_b",
        "tests/test_a.py:2: imports tests.conftest",
        "tests/test_a.py:4: noqa: F811",
        "tests/test_a.py:5: noqa: F811",
        "tests/test_a.py:6: imports the test module tests.test_b",
        "tests/test_a.py:7: imports helpers as a top-level module",
        "tests/test_a.py:8: imports the test module tests.test_b",
        "tests/support/libraries.py:3: fixture earth outside tests/conftest.py",
        "bench/run.py:1: imports tests.helpers, outside tests.support",
        "bench/run.py:3: imports test_b as a top-level module",
    ]
    assert len(found) == len(expected), "\n".join(found)
    for want in expected:
        assert sum(line.startswith(want) for line in found) == 1, (want, found)
