"""The dataset card's fenced code blocks, for the tests that run them (tests/test_card.py and others).

A card's Python blocks are found by a marker each (:data:`MARKERS`), so a test names the block it
runs ("load_bucket") and never keeps a hand copy of it.
"""

from __future__ import annotations

import ast
import re
from typing import NamedTuple

from builder.publish.card import CardStats, render_card

PYTHON_INFO = {"python", "py", "python3"}
NOT_PYTHON_INFO = {"", "text", "bash", "sh", "shell", "console", "yaml"}

# A marker that picks each Python block out of the card; every block must match exactly one.
MARKERS = {
    "load_dataset": "ds = load_dataset(",
    "metadata_config": '"metadata", split="train")',
    "streaming_filters": "streaming=True, filters=",
    "pyarrow_index": 'cache_type="none"',
    "duckdb": "register_filesystem(",
    "quick_queries": "HAVING n >=",
    "cluster_recipe": "MiniBatchKMeans(",
    "all_metadata": "Total tiles",
    "load_bucket": "def load_bucket(",
    "kdtree_query": "cKDTree(centroids)",
}


class Block(NamedTuple):
    info: str
    code: str


def code_blocks(markdown: str) -> list[Block]:
    """Every fenced block of ``markdown`` with its info string (``python``, ``""``, ...)."""
    fences = re.finditer(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", markdown, re.M | re.S)
    return [Block(m.group(1).strip(), m.group(2)) for m in fences]


def looks_like_python(code: str) -> bool:
    """Parses as Python and does something (imports or calls): a tree or a YAML line does not."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(node, (ast.Call, ast.Import, ast.ImportFrom)) for node in ast.walk(tree))


def python_block(card: str, name: str) -> str:
    found = [b.code for b in code_blocks(card) if b.info in PYTHON_INFO and MARKERS[name] in b.code]
    assert len(found) == 1, f"{name}: {len(found)} Python blocks of the card contain {MARKERS[name]!r}"
    return found[0]


def card_snippet(name: str) -> str:
    """Python block ``name`` of the card as ``build`` renders it for a default-cap library."""
    stats = CardStats(tiles=1, buckets_populated=1, buckets_full=0, cap=100, by_source={"earth": 1})
    return python_block(render_card(stats), name)
