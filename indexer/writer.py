"""Streaming writes of one document: shard bytes as pages arrive, one catalogue commit at the end.

Write order (see docs/index-format.md): append multi and single rows past the watermarks ->
fsync both shard files -> one SQLite transaction that replaces the document row, deletes its old
pages, inserts the new ones and moves the watermarks. Until that commit nothing is visible; on any
exception the appended bytes are cut back (and a crash leaves them as a torn tail, cut on reopen).
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

import numpy as np

from engine.types import Embedding
from indexer.catalogue import transaction
from indexer.errors import DimensionMismatchError
from indexer.shards import page_crc
from indexer.sources import SourceFile, display_path, path_key

if TYPE_CHECKING:
    from indexer.store import Store


def upsert_document(db: sqlite3.Connection, source: SourceFile, *, status: str, error: str | None,
                    page_count: int) -> tuple[int, int]:
    """Insert or replace the row for ``source.path`` inside the caller's transaction.

    Returns (document id, pages removed). The id of an existing path is kept.
    """
    key, now = path_key(source.path), time.time()
    row = db.execute("SELECT id FROM documents WHERE path = ?", (key,)).fetchone()
    if row is None:
        cur = db.execute(
            "INSERT INTO documents (path, display, size, mtime, sha256, page_count, status, error, added_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, display_path(source.path), source.size, source.mtime, source.sha256, page_count, status,
             error, now, now),
        )
        return int(cur.lastrowid), 0
    doc_id = int(row[0])
    removed = db.execute("DELETE FROM pages WHERE document_id = ?", (doc_id,)).rowcount
    db.execute(
        "UPDATE documents SET size = ?, mtime = ?, sha256 = ?, page_count = ?, status = ?, error = ?,"
        " updated_at = ? WHERE id = ?",
        (source.size, source.mtime, source.sha256, page_count, status, error, now, doc_id),
    )
    return doc_id, removed


def as_embedding(item) -> tuple[int | None, int | None, Embedding]:
    """Accept an Embedding or a (width, height, Embedding) triple."""
    if isinstance(item, Embedding):
        return None, None, item
    width, height, emb = item
    if not isinstance(emb, Embedding):
        raise TypeError(f"expected an Embedding or (width, height, Embedding), got {type(item).__name__}")
    return width, height, emb


class DocumentWriter:
    """Use through ``Store.document_writer(source)``; commits on a clean ``with`` exit."""

    def __init__(self, store: "Store", source: SourceFile):
        self.store, self.source = store, source
        self._multi, self._single = store._appenders()
        self._start = (self._multi.rows, self._single.rows)
        self._rows: list[tuple] = []
        self._done = False
        self.pages_replaced = 0
        self.page_ids: list[int] = []

    @property
    def page_count(self) -> int:
        return len(self._rows)

    def add_page(self, page_number: int, width: int | None, height: int | None, embedding: Embedding) -> None:
        if self._done:
            raise RuntimeError("this document writer is closed")
        expected = len(self._rows) + 1
        if page_number != expected:
            raise ValueError(f"pages must arrive in order: expected page {expected}, got {page_number}")
        single = np.asarray(embedding.single, dtype=np.float32).reshape(1, -1)
        multi = np.asarray(embedding.multi, dtype=np.float16)
        if single.shape[1] != self.store.single_dim or multi.ndim != 2 or multi.shape[1] != self.store.multi_dim:
            raise DimensionMismatchError(
                f"page {page_number} of {self.source.display_path} has a {single.shape[1]}-d single vector and "
                f"{multi.shape[-1]}-d token vectors; this index stores {self.store.single_dim} and "
                f"{self.store.multi_dim}",
                "use the encoder the index was created with, or create a new index",
            )
        if multi.shape[0] == 0:
            raise ValueError(f"page {page_number} has no token vectors")
        multi_at = self._multi.append(multi)
        single_at = self._single.append(single)
        self._rows.append((page_number, width, height, self._multi.shard_id, multi_at, multi.shape[0],
                           self._single.shard_id, single_at, page_crc(multi, single[0])))

    def commit(self) -> list[int]:
        """Make the document visible; returns its new page ids in page order."""
        if self._done:
            raise RuntimeError("this document writer is closed")
        if not self._rows:
            self.abort()
            raise ValueError(f"{self.source.display_path}: a document needs at least one page")
        try:
            self._multi.sync()
            self._single.sync()
            db = self.store._db
            with transaction(db):
                doc_id, self.pages_replaced = upsert_document(db, self.source, status="indexed", error=None,
                                                              page_count=len(self._rows))
                for row in self._rows:
                    cur = db.execute(
                        "INSERT INTO pages (document_id, page_number, width, height, multi_shard, multi_offset,"
                        " n_tokens, single_shard, single_row, crc32) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (doc_id, *row),
                    )
                    self.page_ids.append(int(cur.lastrowid))
                for app in (self._multi, self._single):
                    db.execute("UPDATE shards SET committed_rows = ? WHERE id = ?", (app.rows, app.shard_id))
        except BaseException:
            self.page_ids = []
            self.abort()
            raise
        self._done = True
        self.store._writer_closed(changed=True)
        return self.page_ids

    def abort(self) -> None:
        """Forget this document: cut the appended bytes back to where it started."""
        if self._done:
            return
        self._done = True
        self._multi.rollback(self._start[0])
        self._single.rollback(self._start[1])
        self.store._writer_closed(changed=False)

    def __enter__(self) -> "DocumentWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self._done:
                self.commit()
        else:
            self.abort()
