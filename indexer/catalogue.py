"""The SQLite catalogue: the single source of truth of what the index holds.

Schema changes are numbered migrations; each runs in one transaction together with the row that
records it. The database runs in WAL mode so readers see a committed snapshot while one writer works.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Callable

from indexer.errors import IndexFormatError

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


MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "initial", _m1_initial),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def connect(path: str, *, writable: bool) -> sqlite3.Connection:
    """A connection in autocommit mode: transactions are opened explicitly with ``transaction``."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    db.execute("PRAGMA busy_timeout = 30000")
    if writable:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")  # a commit survives power loss, not only kill -9
    db.execute("PRAGMA foreign_keys = ON")
    return db


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
    for version, name, apply in MIGRATIONS:
        if version <= current:
            continue
        with transaction(db):
            apply_in_transaction(db, apply)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
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
