"""The SQLite catalogue: the single source of truth of what the index holds.

Schema changes are numbered migrations; each runs in one transaction together with the row that
records it. The database runs in WAL mode so readers see a committed snapshot while one writer works.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from typing import Callable

from indexer.errors import CorruptIndexError, IndexFormatError

CATALOGUE_NAME = "catalogue.sqlite"


def _m1_initial(db: sqlite3.Connection) -> None:
    db.executescript(
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE documents (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            path       BLOB NOT NULL UNIQUE,      -- exact file-system bytes (os.fsencode)
            display    TEXT NOT NULL,             -- printable path, undecodable bytes as U+FFFD
            size       INTEGER,
            mtime      REAL,
            sha256     TEXT,
            page_count INTEGER NOT NULL DEFAULT 0,
            status     TEXT NOT NULL CHECK (status IN ('indexed', 'failed')),
            error      TEXT,
            added_at   REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX documents_sha256 ON documents (sha256);
        CREATE TABLE shards (
            id             INTEGER PRIMARY KEY AUTOINCREMENT,
            kind           TEXT NOT NULL CHECK (kind IN ('multi', 'single')),
            file           TEXT NOT NULL UNIQUE,  -- name inside shards/
            committed_rows INTEGER NOT NULL DEFAULT 0  -- watermark: rows past it are torn tails
        );
        CREATE TABLE pages (
            page_id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
            document_id  INTEGER NOT NULL REFERENCES documents (id),
            page_number  INTEGER NOT NULL,                   -- from 1
            width        INTEGER,
            height       INTEGER,
            multi_shard  INTEGER NOT NULL REFERENCES shards (id),
            multi_offset INTEGER NOT NULL,                   -- first row in the shard
            n_tokens     INTEGER NOT NULL,
            single_shard INTEGER NOT NULL REFERENCES shards (id),
            single_row   INTEGER NOT NULL,
            crc32        INTEGER NOT NULL,                   -- of the page's multi then single bytes
            UNIQUE (document_id, page_number)
        );
        CREATE INDEX pages_multi ON pages (multi_shard, multi_offset);
        CREATE TABLE runs (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at  REAL NOT NULL,
            finished_at REAL,
            arguments   TEXT,
            summary     TEXT
        );
        """
    )


def _m2_partial_documents(db: sqlite3.Connection) -> None:
    # A long document commits in chunks; until its last page is in, complete = 0 and searches skip it.
    if "complete" not in {r[1] for r in db.execute("PRAGMA table_info(documents)").fetchall()}:
        db.executescript("ALTER TABLE documents ADD COLUMN complete INTEGER NOT NULL DEFAULT 1;")


# Migration 3: the patch grid of a page image (heatmaps). NULL for pages stored without one (older
# indexes, embeddings brought without a grid). grid_offset/rows/cols: rows*cols patch tokens sit at
# multi rows [grid_offset, grid_offset + rows*cols), row-major. box_*: the part of the encoded image
# showing the page (fractions; less than 0..1 where the renderer padded the page).
GRID_COLUMNS = ("grid_offset", "grid_rows", "grid_cols", "box_x0", "box_y0", "box_x1", "box_y1")


def _m3_patch_grid(db: sqlite3.Connection) -> None:
    # Only the columns the table lacks: a catalogue whose migration record has a gap (2 undone,
    # 3 recorded) is migrated again from the gap, and must not fail on columns it already has.
    have = {r[1] for r in db.execute("PRAGMA table_info(pages)").fetchall()}
    kinds = {"grid_offset": "INTEGER", "grid_rows": "INTEGER", "grid_cols": "INTEGER"}
    db.executescript("".join(f"ALTER TABLE pages ADD COLUMN {c} {kinds.get(c, 'REAL')};\n"
                             for c in GRID_COLUMNS if c not in have))


MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "initial", _m1_initial),
    (2, "partial documents", _m2_partial_documents),
    (3, "patch grid", _m3_patch_grid),
]
REQUIRED_TABLES = ("meta", "documents", "shards", "pages", "runs")
SCHEMA_VERSION = MIGRATIONS[-1][0]


def connect(path: str, *, writable: bool) -> sqlite3.Connection:
    """A connection in autocommit mode: transactions are opened explicitly with ``transaction``.

    Readers open the file read-only (``mode=ro``): a search never writes the catalogue, and works on
    a full disk. Where SQLite cannot even create its shared-memory file (a read-only file system),
    the reader falls back to ``immutable=1``: nobody can be writing there."""
    if writable:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")  # a commit survives power loss, not only kill -9
        db.execute("PRAGMA foreign_keys = ON")
        return db
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    last: sqlite3.Error | None = None
    for suffix in ("", "&immutable=1"):
        try:
            db = sqlite3.connect(uri + suffix, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opening is lazy: touch the file now
            return db
        except sqlite3.OperationalError as exc:
            last = exc
            text = str(exc).lower()
            if not any(w in text for w in ("unable to open", "readonly", "read-only", "disk", "i/o")):
                raise
    assert last is not None
    raise last


def read_older_schema(db: sqlite3.Connection) -> None:
    """A reader may open a catalogue a writer has not migrated yet: temp views (which shadow the
    main tables for unqualified names) give it the newest columns with their defaults."""
    if "complete" not in _columns(db, "documents"):
        db.execute("CREATE TEMP VIEW documents AS SELECT *, 1 AS complete FROM main.documents")
    missing = [c for c in GRID_COLUMNS if c not in _columns(db, "pages")]
    if missing:  # pages stored before grids were recorded: no grid (their heatmaps ask for a re-index)
        nulls = ", ".join(f"NULL AS {c}" for c in missing)
        db.execute(f"CREATE TEMP VIEW pages AS SELECT *, {nulls} FROM main.pages")


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA main.table_info({table})").fetchall()}


def check_schema(db: sqlite3.Connection) -> int:
    """The catalogue's schema version, after checking that it holds an index at all.

    An empty or foreign database next to a manifest is corruption: it is refused, never
    re-initialised (which would orphan, and then delete, every shard file)."""
    version = schema_version(db)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if version < 1 or missing:
        raise CorruptIndexError(
            "catalogue.sqlite holds no pagelens catalogue (empty, or tables missing: "
            f"{', '.join(missing) or 'schema_migrations'}) although manifest.json says an index was created here",
            "nothing was changed or deleted; restore catalogue.sqlite from a backup, or index into a new --index folder")
    if version > SCHEMA_VERSION:
        raise IndexFormatError(
            f"the catalogue has schema version {version}; this pagelens knows up to {SCHEMA_VERSION}",
            "upgrade pagelens to open this index")
    return version


class transaction:
    """``with transaction(db):`` BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection, mode: str = "IMMEDIATE"):
        self.db, self.mode = db, mode

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute(f"BEGIN {self.mode}")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass


def schema_version(db: sqlite3.Connection) -> int:
    has = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'").fetchone()
    if not has:
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def applied_through(db: sqlite3.Connection) -> int:
    """The last migration n such that 1..n are all recorded: migrating resumes after it (a record
    with a gap is migrated again from the gap; each migration tolerates what is already there)."""
    has = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'").fetchone()
    if not has:
        return 0
    done = {int(r[0]) for r in db.execute("SELECT version FROM schema_migrations") if isinstance(r[0], int)}
    n = 0
    while n + 1 in done:
        n += 1
    return n


def migrate(db: sqlite3.Connection) -> int:
    """Apply every migration not yet applied; refuse a catalogue newer than this code."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)"
    )
    current = schema_version(db)
    if current > SCHEMA_VERSION:
        raise IndexFormatError(
            f"the catalogue has schema version {current}; this pagelens knows up to {SCHEMA_VERSION}",
            "upgrade pagelens to open this index",
        )
    done = applied_through(db)
    for version, name, apply in MIGRATIONS:
        if version <= done:
            continue
        with transaction(db):
            apply_in_transaction(db, apply)
            db.execute("INSERT OR REPLACE INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
    return SCHEMA_VERSION


def apply_in_transaction(db: sqlite3.Connection, apply: Callable[[sqlite3.Connection], None]) -> None:
    # executescript would COMMIT the open transaction: split the script into statements instead
    captured: list[str] = []

    class _Recorder:
        def executescript(self, script: str) -> None:
            captured.append(script)

        def execute(self, sql: str, params=()):
            return db.execute(sql, params)

    apply(_Recorder())  # type: ignore[arg-type]
    for script in captured:
        for statement in _statements(script):
            db.execute(statement)


def _statements(script: str) -> list[str]:
    out, buf = [], []
    for line in script.splitlines():
        buf.append(line.split("--", 1)[0])
        joined = "\n".join(buf)
        if joined.strip().endswith(";") and sqlite3.complete_statement(joined):
            out.append(joined.strip())
            buf = []
    if "".join(buf).strip():
        out.append("\n".join(buf).strip())
    return out


def get_meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
               (key, value))


# --- the SQL the store's writers use (kept here so store, writer and compaction share one copy) ---

def upsert_document(db: sqlite3.Connection, key: bytes, display: str, size, mtime, sha256, *, status: str,
                    error: str | None, page_count: int, complete: bool = True) -> tuple[int, int]:
    """Insert or replace the row for document ``key`` inside the caller's transaction.

    Returns (document id, pages removed). The id of an existing path is kept."""
    now = time.time()
    row = db.execute("SELECT id FROM documents WHERE path = ?", (key,)).fetchone()
    if row is None:
        cur = db.execute(
            "INSERT INTO documents (path, display, size, mtime, sha256, page_count, status, error, added_at,"
            " updated_at, complete) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, display, size, mtime, sha256, page_count, status, error, now, now, int(complete)),
        )
        return int(cur.lastrowid), 0
    doc_id = int(row[0])
    removed = db.execute("DELETE FROM pages WHERE document_id = ?", (doc_id,)).rowcount
    db.execute(
        "UPDATE documents SET size = ?, mtime = ?, sha256 = ?, page_count = ?, status = ?, error = ?,"
        " updated_at = ?, complete = ? WHERE id = ?",
        (size, mtime, sha256, page_count, status, error, now, int(complete), doc_id),
    )
    return doc_id, removed


def extend_document(db: sqlite3.Connection, doc_id: int, page_count: int, complete: bool) -> None:
    """A later chunk of a document that commits in chunks: new page count, complete or not."""
    db.execute("UPDATE documents SET page_count = ?, complete = ?, updated_at = ? WHERE id = ?",
               (page_count, int(complete), time.time(), doc_id))


_LOCATION_COLUMNS = ("page_number", "width", "height", "multi_shard", "multi_offset", "n_tokens", "single_shard",
                     "single_row", "crc32")
_PAGE_INSERT = (f"INSERT INTO pages (document_id, {', '.join(_LOCATION_COLUMNS + GRID_COLUMNS)}) VALUES "
                f"({', '.join('?' * (1 + len(_LOCATION_COLUMNS) + len(GRID_COLUMNS)))})")
_NO_GRID = (None,) * len(GRID_COLUMNS)


def insert_pages(db: sqlite3.Connection, doc_id: int, rows) -> list[int]:
    """Insert page rows (page_number, width, height, multi_shard, multi_offset, n_tokens, single_shard,
    single_row, crc32[, grid_offset, grid_rows, grid_cols, box_x0, box_y0, box_x1, box_y1]); a row
    without the grid part stores none. Returns their new page ids in order."""
    ids = []
    for row in rows:
        row = tuple(row)
        if len(row) == len(_LOCATION_COLUMNS):
            row = row + _NO_GRID
        ids.append(int(db.execute(_PAGE_INSERT, (doc_id, *row)).lastrowid))
    return ids


def page_locations_of(db: sqlite3.Connection, doc_id: int) -> list[tuple]:
    """A document's page rows as ``insert_pages`` takes them, grid included (a copy keeps it)."""
    return db.execute(f"SELECT {', '.join(_LOCATION_COLUMNS + GRID_COLUMNS)} FROM pages WHERE document_id = ?"
                      " ORDER BY page_number", (doc_id,)).fetchall()


def page_size_row(db: sqlite3.Connection, page_id: int) -> tuple | None:
    """(width, height) recorded for a visible page, or None when no such page is live."""
    return db.execute("SELECT p.width, p.height FROM pages p JOIN documents d ON d.id = p.document_id"
                      " WHERE p.page_id = ? AND d.status = 'indexed' AND d.complete = 1", (page_id,)).fetchone()


def page_grid_row(db: sqlite3.Connection, page_id: int) -> tuple | None:
    """(n_tokens, grid_offset, grid_rows, grid_cols, box_x0, box_y0, box_x1, box_y1) of a visible page
    (its document complete and indexed), or None when no such page is live. Values are as stored:
    the caller checks them."""
    return db.execute(f"SELECT p.n_tokens, {', '.join('p.' + c for c in GRID_COLUMNS)} FROM pages p JOIN documents d"
                      " ON d.id = p.document_id WHERE p.page_id = ? AND d.status = 'indexed' AND d.complete = 1",
                      (page_id,)).fetchone()


def set_watermark(db: sqlite3.Connection, shard_id: int, rows: int) -> None:
    db.execute("UPDATE shards SET committed_rows = ? WHERE id = ?", (rows, shard_id))


def shard_rows(db: sqlite3.Connection) -> list[tuple]:
    """(id, kind, file, committed_rows) of every shard."""
    return db.execute("SELECT id, kind, file, committed_rows FROM shards ORDER BY id").fetchall()


def next_shard_id(db: sqlite3.Connection) -> int:
    """An id no shard row has ever had (AUTOINCREMENT's high-water mark + 1)."""
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'shards'").fetchone()
    top = db.execute("SELECT COALESCE(MAX(id), 0) FROM shards").fetchone()[0]
    return max(int(seq[0] if seq else 0), int(top)) + 1


def live_shard_bytes(db: sqlite3.Connection, row_bytes: dict) -> dict:
    """Bytes each shard holds for live pages; copies share bytes, counted once. ``row_bytes``:
    bytes per row of each shard id (rows of coded shards are smaller than raw ones)."""
    live = {}
    for sid, tokens in db.execute("SELECT multi_shard, SUM(n_tokens) FROM (SELECT DISTINCT multi_shard,"
                                  " multi_offset, n_tokens FROM pages) GROUP BY multi_shard"):
        live[sid] = tokens * row_bytes.get(sid, 0)
    for sid, count in db.execute("SELECT single_shard, COUNT(*) FROM (SELECT DISTINCT single_shard,"
                                 " single_row FROM pages) GROUP BY single_shard"):
        live[sid] = count * row_bytes.get(sid, 0)
    return live
