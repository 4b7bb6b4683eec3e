"""The pieces every command's one-line summary is made of, so ingest, verify and harvest read alike."""

from __future__ import annotations

from collections.abc import Mapping


def format_counts(counts: Mapping) -> str:
    """``"corrupt 2, duplicate 1"``: counts by key, in key order.

    >>> format_counts({"duplicate": 1, "corrupt": 2})
    'corrupt 2, duplicate 1'
    """
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
