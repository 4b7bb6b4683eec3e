"""The ``tiles`` table contract in one place (``builder.core.db``): every entry point that opens a
``tiles.db`` gives the same message for a file without the table or without the card's columns,
and the shared helpers (select list, bucket counts, table names) work on real SQLite files."""

from __future__ import annotations

import sqlite3

import pytest

from builder.core import db
from builder.core.errors import LibraryError
from builder.core.library import Library
from builder.publish.restore import shipped_db_agrees
from builder.publish.rows import open_tiles_db

NO_TABLE = "has no 'tiles' table: not a Mosaic Library database"
NO_COLUMNS = ("table 'tiles' lacks the card's columns phash, mean_l, mean_a, mean_b "
              "(it needs id, bucket_id, filepath, phash, mean_l, mean_a, mean_b): not a Mosaic Library database")


def _replace_db(root, script: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        (root / f"tiles.db{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(root / "tiles.db")
    conn.executescript(script)
    conn.close()


@pytest.fixture
def broken(tmp_path):
    """Factory: a library whose tiles.db was replaced by ``script``'s database."""

    def make(name: str, script: str):
        root = tmp_path / name
        Library.create(root).close()
        _replace_db(root, script)
        return root

    return make


ENTRY_POINTS = {
    "reader": lambda root: Library.open(root, readonly=True).close(),
    "writer": lambda root: Library.open(root).close(),
    "build": lambda root: open_tiles_db(root / "tiles.db").close(),
    "readonly": lambda root: db.open_readonly(root / "tiles.db").close(),
}


NOT_A_LIBRARY = {  # a tiles.db that is not a library's: the script that makes it, the message every entry gives
    "no_table": ("CREATE TABLE other (x);", NO_TABLE),
    "few_columns": ("CREATE TABLE tiles (id TEXT PRIMARY KEY, bucket_id INTEGER, filepath TEXT);", NO_COLUMNS),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("case", list(NOT_A_LIBRARY))
def test_a_db_without_the_tiles_table_or_the_cards_columns_gets_one_message_everywhere(broken, case, entry):
    script, expected = NOT_A_LIBRARY[case]
    root = broken(case, script)
    with pytest.raises(LibraryError) as info:
        ENTRY_POINTS[entry](root)
    message = str(info.value)
    assert message.endswith(expected) and "tiles.db" in message, message


def test_migrate_names_the_file_it_refuses(tmp_path):
    path = tmp_path / "tiles.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE other (x)")
    with pytest.raises(LibraryError) as info:
        db.migrate(conn)
    conn.close()
    assert str(info.value) == f"{path.resolve()} {NO_TABLE}"


def test_restore_reports_a_shipped_db_that_fails_the_check(broken, tmp_path):
    root = broken("shipped", "CREATE TABLE other (x);")
    restored = sqlite3.connect(":memory:")
    assert shipped_db_agrees(root / "tiles.db", restored) == f"shipped tiles.db unusable ({root / 'tiles.db'} {NO_TABLE})"


def test_a_file_that_is_not_sqlite_is_one_message_for_readers_and_writers(tmp_path):
    root = tmp_path / "lib"
    Library.create(root).close()
    (root / "tiles.db").write_bytes(b"this is not a database, only text" * 200)
    for open_it in (lambda: Library.open(root, readonly=True), lambda: Library.open(root),
                    lambda: open_tiles_db(root / "tiles.db")):
        with pytest.raises(LibraryError, match="tiles.db is not a usable SQLite database"):
            open_it().close()


def test_card_schema_reads_with_null_provenance_and_counts_buckets(make_library):
    """An old, card-only tiles.db: the select list fills provenance with NULL; bucket counts
    report every stored value, invalid ones included, and a subset on request."""
    lib = make_library()
    root = lib.root
    lib.close()
    _replace_db(root, """
        CREATE TABLE tiles (id TEXT PRIMARY KEY, bucket_id INTEGER, filepath TEXT, phash TEXT,
                            mean_l REAL, mean_a REAL, mean_b REAL);
        INSERT INTO tiles VALUES ('a', 3, 'f', 'p', 1, 2, 3), ('b', 3, 'f', 'q', 1, 2, 3),
                                 ('c', 7, 'f', 'r', 1, 2, 3), ('d', 'x', 'f', 's', 1, 2, 3);
    """)
    conn = db.open_readonly(root / "tiles.db")
    try:
        assert db.table_names(conn) == {"tiles"}
        select = db.select_list(conn, ("id", "bucket_id", "source", "z"))
        assert select == "id, bucket_id, NULL AS source, NULL AS z"
        assert conn.execute(f"SELECT {select} FROM tiles WHERE id = 'c'").fetchone() == ("c", 7, None, None)
        assert db.bucket_counts(conn) == {3: 2, 7: 1, "x": 1}
        assert db.bucket_counts(conn, {3, 9}) == {3: 2}
        assert db.bucket_counts(conn, []) == {}
    finally:
        conn.close()
    with Library.open(root, readonly=True) as reader:  # a reader never migrates
        counts = reader.bucket_counts()
        assert (counts[3], counts[7], int(counts.sum())) == (2, 1, 3)  # the damaged row is verify's
        assert reader.stats()["by_region"] == {"(none)": 4}
    with Library.open(root) as writer:  # a writer migrates: provenance columns added as NULL
        assert db.table_columns(writer.conn, "tiles") == list(db.TILE_COLUMNS)
        assert {"fetched", "meta", "tiles"} <= db.table_names(writer.conn)


# The schema as version 2 wrote it (tiles: card + provenance; fetched: the ledger's columns).
V2_SCRIPT = """
CREATE TABLE tiles (id TEXT PRIMARY KEY, bucket_id INTEGER, filepath TEXT, phash TEXT, mean_l REAL,
    mean_a REAL, mean_b REAL, source TEXT, z INTEGER, x INTEGER, y INTEGER, lon REAL, lat REAL, region TEXT,
    harvested_at TEXT);
CREATE INDEX idx_bucket ON tiles(bucket_id);
CREATE INDEX idx_phash ON tiles(bucket_id, phash);
CREATE TABLE fetched (source TEXT NOT NULL, z INTEGER NOT NULL, x INTEGER NOT NULL, y INTEGER NOT NULL,
    status TEXT NOT NULL, region TEXT, tried_at TEXT, PRIMARY KEY (source, z, x, y));
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO tiles (id, bucket_id, filepath, phash, mean_l, mean_a, mean_b, source)
    VALUES ('0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a', 7, 'x', '8000000000000000', 50, 0, 0, 'ingest');
INSERT INTO fetched VALUES ('earth', 6, 1, 2, 'accepted', 'r', '2026-01-01T00:00:00+00:00');
PRAGMA user_version = 2;
"""


def test_a_version_2_library_migrates_to_3_keeping_its_rows_real(broken):
    root = broken("v2", V2_SCRIPT)
    with Library.open(root) as lib:
        assert lib.conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION == 3
        assert db.table_columns(lib.conn, "tiles") == list(db.TILE_COLUMNS)
        assert db.TILE_COLUMNS[-2:] == db.SYNTHETIC_COLUMNS == ("synthetic", "derived_from")
        assert lib.conn.execute("SELECT synthetic, derived_from FROM tiles").fetchall() == [(0, None)]
        fetched = db.table_columns(lib.conn, "fetched")
        assert fetched == [name for name, _type in db.LEDGER_TYPES] + list(db.FETCH_OUTCOME_COLUMNS)
        assert lib.conn.execute("SELECT status, predicted_bucket, bucket_id, mean_l FROM fetched").fetchall() == [
            ("accepted", None, None, None)]
        # The flag is NOT NULL with a default: a row inserted without it is real.
        lib.conn.execute("INSERT INTO tiles (id, bucket_id) VALUES ('a', 1)")
        assert lib.conn.execute("SELECT synthetic FROM tiles WHERE id = 'a'").fetchone() == (0,)
        with pytest.raises(sqlite3.IntegrityError):
            lib.conn.execute("INSERT INTO tiles (id, bucket_id, synthetic) VALUES ('b', 1, NULL)")


def test_tile_row_orders_values_and_fills_defaults():
    row = db.tile_row({"derived_from": "src", "id": "t", "synthetic": 1, "unknown": "ignored"})
    assert len(row) == len(db.TILE_COLUMNS)
    values = dict(zip(db.TILE_COLUMNS, row))
    assert (values["id"], values["synthetic"], values["derived_from"], values["source"]) == ("t", 1, "src", None)
    assert dict(zip(db.TILE_COLUMNS, db.tile_row({})))["synthetic"] == 0
