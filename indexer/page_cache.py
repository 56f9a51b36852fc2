"""A copy of the visible page table as one .npy file, so opening a large index does not turn a
million SQLite rows into Python objects (2.3 s of fetchall alone at 1M pages; this file loads in
tens of milliseconds).

It is a cache, never the truth. It is used only when its stamp equals the catalogue's, computed in
the same read transaction as everything else the snapshot reads. The stamp is the row count and a
polynomial hash of every column of every visible row, both from SQL: any commit that adds, removes,
moves or hides a page changes it. Anything else (no file, a link, a short or odd file, a stamp from
another state) is ignored and the rows are read from SQLite as before. A writer writes the file
again when the stamp moved. The table it returns is then checked like one read from SQLite
(``snapshot._check_locations``), so a crafted cache can never read outside committed rows.

Layout: int64 [1 + pages, 9]; row 0 is (MAGIC, VERSION, pages, hash, 0...), then the page rows in
``snapshot._PAGE_COLUMNS`` order, sorted by page id.
"""

from __future__ import annotations

import os
import stat
import sqlite3

import numpy as np

CACHE_NAME = "catalogue-pages.npy"
MAGIC, VERSION = 0x70676C6E73, 1  # "pglns"
_MOD = 2147483629  # a prime below 2**31: each row's hash fits, a million rows' sum fits in int64
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def is_temp_name(name: str) -> bool:
    """A temporary file of ``save`` (a writer killed while saving leaves one)."""
    return name.startswith(f".{CACHE_NAME}.") and name.endswith(".tmp")


def stamp_query(columns: tuple[str, ...], visible_from: str) -> str:
    """SQL for (row count, sum of a per-row hash over every column) of the visible pages."""
    h = f"(p.{columns[0]} % {_MOD})"
    for c in columns[1:]:
        h = f"(({h} * 1000003 + p.{c}) % {_MOD})"
    return f"SELECT count(*), coalesce(sum({h}), 0) {visible_from}"


def read_stamp(db: sqlite3.Connection, query: str) -> tuple[int, int] | None:
    try:
        n, h = db.execute(query).fetchone()
    except (sqlite3.Error, OverflowError):
        return None  # values SQLite cannot sum: read the rows, whose checks will name the damage
    if not isinstance(n, int) or not isinstance(h, int):
        return None
    return n, h


def load(directory: str, stamp: tuple[int, int] | None, n_columns: int) -> np.ndarray | None:
    """The cached rows [pages, n_columns] when the file is a plain file whose stamp is ``stamp``."""
    if stamp is None:
        return None
    path = os.path.join(directory, CACHE_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 256 + (stamp[0] + 1) * n_columns * 8:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            table = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    finally:
        os.close(fd)
    if (table.dtype != np.int64 or table.ndim != 2 or table.shape != (stamp[0] + 1, n_columns)
            or table[0, :4].tolist() != [MAGIC, VERSION, stamp[0], stamp[1]]):
        return None
    return table[1:]


def save(directory: str, stamp: tuple[int, int] | None, table: np.ndarray) -> None:
    """Best effort (read-only or full disks, races with another writer: the cache is just absent)."""
    if stamp is None:
        return
    head = np.zeros((1, table.shape[1]), np.int64)
    head[0, :4] = (MAGIC, VERSION, stamp[0], stamp[1])
    tmp = os.path.join(directory, f".{CACHE_NAME}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.concatenate([head, np.asarray(table, np.int64)]), allow_pickle=False)
        os.replace(tmp, os.path.join(directory, CACHE_NAME))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
