"""The core: a library on disk and what reads it. Layout and limits, tiles.db, the commit
protocol and its journal, the writer lock, tile files, safe decoding, colour maths, the
thumbnail cache, quarantine, read-only statistics, colour queries and sampling plans.

Imports nothing above it (``tests/test_imports.py``).
"""
