"""The pieces every command's messages are made of, so ingest, verify and harvest read alike:
counts, plurals, and names made safe to print."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

# Characters that would move the cursor, end the line or rewrite the terminal if a file name
# holding them were printed raw: controls (C0, DEL, C1), line and paragraph separators, and the
# invisible format characters (bidirectional overrides that reorder what is shown).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    r"""``text`` with every control or invisible character escaped, so a name read from a folder
    or a database prints on one line, as itself, and cannot forge a second ``error:`` line or
    drive the terminal.  Backslashes are kept as they are; other characters (accents, CJK) too.

    Every line the command line prints goes through it (summaries, the lines around them,
    errors, warnings, the demo's steps), whatever names it quotes.

    >>> printable("a\nerror: forged")
    'a\\nerror: forged'
    >>> printable("bucket\x1b[2J\u202e.png"), printable("café")
    ('bucket\\x1b[2J\\u202e.png', 'café')
    """
    text = str(text)
    if text.isprintable():  # the common case, in C: nothing to escape
        return text
    out = []
    for char in text:
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif unicodedata.category(char) in _UNSAFE_CATEGORIES:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def plural(n: int, word: str, words: str | None = None) -> str:
    """``"1 tile"``, ``"2 tiles"``, ``"0 tiles"``: a count with its noun agreeing.

    >>> plural(1, "tile"), plural(3, "bucket"), plural(1, "fallback cell"), plural(2, "match", "matches")
    ('1 tile', '3 buckets', '1 fallback cell', '2 matches')
    """
    return f"{n} {word if n == 1 else (words or word + 's')}"


def format_counts(counts: Mapping) -> str:
    """``"corrupt 2, duplicate 1"``: counts by key, in key order.

    >>> format_counts({"duplicate": 1, "corrupt": 2})
    'corrupt 2, duplicate 1'
    """
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
