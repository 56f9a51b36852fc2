"""The on-disk page index: manifest + SQLite catalogue + append-only vector shards.

``Store`` implements ``scoring.source.VectorSource`` (read side) and owns every write. One writer
at a time (an flock on ``writer.lock``); any number of readers, each on a committed snapshot.
The layout, write order and recovery rules are in docs/index-format.md.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from indexer import catalogue as cat
from indexer.compaction import StoreStats, compact_store, shard_usage, store_stats
from indexer.errors import CorruptIndexError, IndexExistsError, IndexFormatError, PdfError, ReadOnlyError
from indexer.manifest import (
    DERIVED_DIR, FORMAT_NAME, FORMAT_VERSION, LOCK_NAME, MANIFEST_NAME, check_identity, read_manifest,
    take_lock,
)
from indexer.shards import (
    SHARD_DIR, Appender, atomic_write_json, cut_torn_tail, fsync_dir, page_crc, row_bytes, shard_file_name,
)
from indexer.snapshot import Snapshot, load_snapshot
from indexer.sources import SourceFile, absolute, display_path, path_key, read_source
from indexer.writer import DocumentWriter, as_embedding, upsert_document

_OWN_NAMES = {MANIFEST_NAME, LOCK_NAME, DERIVED_DIR, SHARD_DIR, cat.CATALOGUE_NAME,
              cat.CATALOGUE_NAME + "-wal", cat.CATALOGUE_NAME + "-shm", MANIFEST_NAME + ".tmp"}


@dataclass(frozen=True)
class DocumentInfo:
    id: int
    path: str  # exact (may hold surrogate escapes); display_path is printable
    display_path: str
    size: int | None
    mtime: float | None
    sha256: str | None
    page_count: int
    status: str  # "indexed" | "failed"
    error: str | None
    added_at: float
    updated_at: float


class Store:
    """Create with ``Store.create``, open with ``Store.open``; close (or use ``with``) when done."""

    auto_compact_ratio = 0.5  # compact after a removal once dead bytes exceed this share ...
    auto_compact_min_bytes = 64 << 20  # ... and this many bytes
    shard_max_bytes = 1 << 30  # start a new shard file (at a document boundary) past this size

    def __init__(self, directory: str, manifest: dict, db, writable: bool, lock_fd: int | None):
        self.directory, self.writable = directory, writable
        self._manifest, self._db, self._lock_fd = manifest, db, lock_fd
        self.single_dim, self.multi_dim = int(manifest["single_dim"]), int(manifest["multi_dim"])
        self._snap: Snapshot | None = None
        self._data_version: int | None = None
        self._apps: dict[str, Appender] = {}
        self._writer_open = False

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory, *, identity: dict | None, single_dim: int, multi_dim: int,
               settings: dict | None = None) -> "Store":
        """A new, empty index. ``identity`` None makes a bring-your-own-embeddings index (no model).
        ``settings`` (JSON) are kept in the manifest for the layers above, e.g. the search width."""
        directory = absolute(directory)
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(os.path.join(directory, MANIFEST_NAME)):
            raise IndexExistsError(f"{display_path(directory)} already holds an index",
                                   "open it instead, or choose another directory")
        stray = sorted(set(os.listdir(directory)) - _OWN_NAMES)
        if stray:
            raise IndexExistsError(f"{display_path(directory)} is not empty (holds {stray[:3]})",
                                   "create the index in an empty or new directory")
        if identity is not None or settings:
            json.dumps([identity, settings])  # must be JSON-serialisable: fail before anything is written
        lock_fd = take_lock(directory)
        try:
            for sub in (SHARD_DIR, DERIVED_DIR):
                os.makedirs(os.path.join(directory, sub), exist_ok=True)
            db = cat.connect(os.path.join(directory, cat.CATALOGUE_NAME), writable=True)
            cat.migrate(db)
            manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "identity": identity,
                        "single_dim": int(single_dim), "multi_dim": int(multi_dim), "created_at": time.time(),
                        "settings": dict(settings or {})}
            with cat.transaction(db):
                for key in ("identity", "single_dim", "multi_dim", "format_version"):
                    cat.set_meta(db, key, json.dumps(manifest[key]))
            fsync_dir(directory)
            atomic_write_json(os.path.join(directory, MANIFEST_NAME), manifest)  # last: now it is an index
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(directory, manifest, db, True, lock_fd)

    @classmethod
    def open(cls, directory, *, writable: bool = False) -> "Store":
        directory = absolute(directory)
        manifest = read_manifest(directory)
        db_path = os.path.join(directory, cat.CATALOGUE_NAME)
        if not os.path.exists(db_path):
            raise CorruptIndexError(f"{display_path(directory)} has a manifest but no catalogue",
                                    "restore the index directory from a backup or rebuild it")
        lock_fd = take_lock(directory) if writable else None
        try:
            db = cat.connect(db_path, writable=writable)
            if writable:
                cat.migrate(db)
            elif cat.schema_version(db) > cat.SCHEMA_VERSION:
                raise IndexFormatError("the catalogue was written by a newer pagelens", "upgrade pagelens")
            store = cls(directory, manifest, db, writable, lock_fd)
            if writable:
                store._recover()
            else:
                store._snapshot()  # readers pin the committed state they open on
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return store

    def _recover(self) -> None:
        """Cut torn shard tails past the committed watermarks; delete files no commit names."""
        shard_dir = os.path.join(self.directory, SHARD_DIR)
        os.makedirs(shard_dir, exist_ok=True)
        os.makedirs(os.path.join(self.directory, DERIVED_DIR), exist_ok=True)
        named = set()
        for sid, kind, name, committed in self._db.execute("SELECT id, kind, file, committed_rows FROM shards"):
            named.add(name)
            cut_torn_tail(os.path.join(shard_dir, name), kind, self._dim(kind), committed)
        for name in os.listdir(shard_dir):
            if name not in named:  # written by a compaction or a shard start that never committed
                os.unlink(os.path.join(shard_dir, name))
        tmp = os.path.join(self.directory, MANIFEST_NAME + ".tmp")
        if os.path.exists(tmp):
            os.unlink(tmp)
        fsync_dir(shard_dir)

    def close(self) -> None:
        for app in self._apps.values():
            app.close()
        self._apps.clear()
        self._snap = None
        if self._db is not None:
            if self.writable:
                try:  # fold the WAL back into the catalogue so a closed index is one file
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except Exception:
                    pass
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- identity --------------------------------------------------------------------------------

    @property
    def identity(self) -> dict | None:
        return self._manifest["identity"]

    @property
    def settings(self) -> dict:
        """Creation-time settings of the layers above (e.g. the search width), from the manifest."""
        return dict(self._manifest.get("settings") or {})

    @property
    def format_version(self) -> int:
        return int(self._manifest["format_version"])

    def check_identity(self, identity: dict | None) -> None:
        """Refuse an encoder other than the one that built the index (paths/devices may differ)."""
        check_identity(self.identity, identity)

    # --- VectorSource (read side) ----------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        if self._snap is None:
            self._snap = load_snapshot(self._db, self.directory, {"multi": self.multi_dim, "single": self.single_dim})
        return self._snap

    def refresh(self) -> bool:
        """Readers: move to the latest committed state (a reader otherwise keeps the one it opened on).

        Cheap when nothing changed: SQLite's data_version only moves when another connection commits.
        Returns whether the view changed."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if self._snap is not None and version == self._data_version:
            return False
        self._data_version = version
        self._snap = None
        self._snapshot()
        return True

    def live_page_ids(self) -> np.ndarray:
        return self._snapshot().page_ids.copy()

    def single_vectors(self, page_ids) -> np.ndarray:
        snap = self._snapshot()
        pos = snap.positions(page_ids)
        out = np.empty((len(pos), self.single_dim), dtype=np.float32)
        for i, p in enumerate(pos):
            out[i] = snap.single(p)
        return out

    def multi_vectors(self, page_ids) -> list[np.ndarray]:
        snap = self._snapshot()
        return [snap.multi(p) for p in snap.positions(page_ids)]

    def pages_info(self, page_ids) -> list[tuple[str, int]]:
        """(document path, page number) for each page id, in order."""
        snap = self._snapshot()
        return [(snap.paths[int(snap.document_ids[p])], int(snap.page_numbers[p])) for p in snap.positions(page_ids)]

    def page_ids_of(self, path) -> np.ndarray:
        """The page ids of one document in page order (empty if it is not indexed)."""
        row = self._db.execute("SELECT id FROM documents WHERE path = ?", (path_key(absolute(path)),)).fetchone()
        if row is None:
            return np.zeros(0, np.int64)
        ids = [r[0] for r in self._db.execute(
            "SELECT page_id FROM pages WHERE document_id = ? ORDER BY page_number", (row[0],))]
        return np.asarray(ids, dtype=np.int64)

    # --- catalogue reads -------------------------------------------------------------------------

    _DOC_COLUMNS = "id, path, display, size, mtime, sha256, page_count, status, error, added_at, updated_at"

    @staticmethod
    def _doc(row) -> DocumentInfo:
        return DocumentInfo(row[0], os.fsdecode(row[1]), *row[2:])

    def documents(self, status: str | None = None) -> list[DocumentInfo]:
        sql = f"SELECT {self._DOC_COLUMNS} FROM documents"
        rows = self._db.execute(sql + (" WHERE status = ? ORDER BY path" if status else " ORDER BY path"),
                                (status,) if status else ())
        return [self._doc(r) for r in rows]

    def document(self, path) -> DocumentInfo | None:
        row = self._db.execute(f"SELECT {self._DOC_COLUMNS} FROM documents WHERE path = ?",
                               (path_key(absolute(path)),)).fetchone()
        return self._doc(row) if row else None

    def find_sha256(self, sha256: str) -> DocumentInfo | None:
        """An indexed document with this content, if any (the oldest)."""
        row = self._db.execute(f"SELECT {self._DOC_COLUMNS} FROM documents WHERE sha256 = ? AND status = 'indexed'"
                               " ORDER BY id LIMIT 1", (sha256,)).fetchone()
        return self._doc(row) if row else None

    def indexed_sha256s(self) -> dict[str, str]:
        """path -> sha256 of every indexed document (what an incremental run may skip)."""
        return {os.fsdecode(p): s for p, s in
                self._db.execute("SELECT path, sha256 FROM documents WHERE status = 'indexed'")}

    # --- writes ----------------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyError("this index was opened read-only", "open it with writable=True to change it")

    def _dim(self, kind: str) -> int:
        return self.multi_dim if kind == "multi" else self.single_dim

    def _appenders(self) -> tuple[Appender, Appender]:
        self._require_writable()
        if self._writer_open:
            raise RuntimeError("one document at a time: commit or abort the open document writer first")
        for kind in ("multi", "single"):
            row = self._db.execute("SELECT id, file, committed_rows FROM shards WHERE kind = ? ORDER BY id DESC"
                                   " LIMIT 1", (kind,)).fetchone()
            if row is not None and row[2] * row_bytes(kind, self._dim(kind)) >= self.shard_max_bytes:
                row = None
            if row is None:
                with cat.transaction(self._db):
                    sid = self._db.execute("INSERT INTO shards (kind, file) VALUES (?, '')", (kind,)).lastrowid
                    self._db.execute("UPDATE shards SET file = ? WHERE id = ?", (shard_file_name(kind, sid), sid))
                row = (sid, shard_file_name(kind, sid), 0)
            app = self._apps.get(kind)
            if app is None or app.shard_id != row[0]:
                if app is not None:
                    app.close()
                path = os.path.join(self.directory, SHARD_DIR, row[1])
                self._apps[kind] = Appender(path, kind, self._dim(kind), row[2], shard_id=row[0])
        self._writer_open = True
        return self._apps["multi"], self._apps["single"]

    def _writer_closed(self, changed: bool) -> None:
        self._writer_open = False
        if changed:
            self._snap = None

    def document_writer(self, source: SourceFile) -> DocumentWriter:
        """``with store.document_writer(src) as w: w.add_page(n, w, h, emb)`` -> committed on exit."""
        return DocumentWriter(self, source)

    def add_document(self, source, pages: Sequence) -> list[int]:
        """Store a document whose page i+1 is ``pages[i]`` (an Embedding or (width, height, Embedding))."""
        src = self._as_source(source)
        with self.document_writer(src) as writer:
            for number, item in enumerate(pages, start=1):
                width, height, emb = as_embedding(item)
                writer.add_page(number, width, height, emb)
        return writer.page_ids

    def copy_document(self, source: SourceFile, from_path) -> list[int]:
        """Index ``source`` as a copy of the indexed document at ``from_path`` (same content):
        new page ids that point at the same stored vectors, so nothing is encoded or stored twice."""
        self._require_writable()
        src_doc = self.document(from_path)
        if src_doc is None or src_doc.status != "indexed":
            raise ValueError(f"{display_path(absolute(from_path))} is not an indexed document")
        ids = []
        with cat.transaction(self._db) as db:
            rows = db.execute("SELECT page_number, width, height, multi_shard, multi_offset, n_tokens, single_shard,"
                              " single_row, crc32 FROM pages WHERE document_id = ? ORDER BY page_number",
                              (src_doc.id,)).fetchall()
            doc_id, _removed = upsert_document(db, source, status="indexed", error=None, page_count=len(rows))
            for row in rows:
                ids.append(db.execute(
                    "INSERT INTO pages (document_id, page_number, width, height, multi_shard, multi_offset,"
                    " n_tokens, single_shard, single_row, crc32) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (doc_id, *row)).lastrowid)
        self._snap = None
        return ids

    def record_failure(self, source, reason: str) -> int:
        """Record that a file could not be indexed; any pages it had are removed. Returns those."""
        self._require_writable()
        src = source if isinstance(source, SourceFile) else SourceFile(absolute(source), None, None, None)
        with cat.transaction(self._db) as db:
            _doc_id, removed = upsert_document(db, src, status="failed", error=reason, page_count=0)
        if removed:
            self._snap = None
        return removed

    def remove_document(self, path, *, compact: bool = True) -> int:
        """Remove a document (indexed or failed); returns the pages removed (0 if unknown)."""
        self._require_writable()
        with cat.transaction(self._db) as db:
            row = db.execute("SELECT id FROM documents WHERE path = ?", (path_key(absolute(path)),)).fetchone()
            if row is None:
                return 0
            removed = db.execute("DELETE FROM pages WHERE document_id = ?", (row[0],)).rowcount
            db.execute("DELETE FROM documents WHERE id = ?", (row[0],))
        self._snap = None
        if compact:
            self.maybe_compact()
        return removed

    def _as_source(self, source) -> SourceFile:
        if isinstance(source, SourceFile):
            return source
        path = absolute(source)
        try:
            return read_source(path)
        except PdfError:  # embeddings made elsewhere: the file need not be here
            return SourceFile(path, None, None, None)

    # --- runs ------------------------------------------------------------------------------------

    def begin_run(self, arguments) -> int:
        self._require_writable()
        with cat.transaction(self._db) as db:
            return db.execute("INSERT INTO runs (started_at, arguments) VALUES (?, ?)",
                              (time.time(), json.dumps(arguments))).lastrowid

    def finish_run(self, run_id: int, summary: dict) -> None:
        with cat.transaction(self._db) as db:
            db.execute("UPDATE runs SET finished_at = ?, summary = ? WHERE id = ?",
                       (time.time(), json.dumps(summary), run_id))

    # --- space -----------------------------------------------------------------------------------

    def dead_bytes(self) -> int:
        committed, live = shard_usage(self)
        return sum(size for _kind, size in committed.values()) - sum(live.values())

    def stats(self) -> StoreStats:
        """Documents, pages, vectors, bytes on disk by part, dead bytes, identity, format version."""
        return store_stats(self)

    def compact(self) -> int:
        """Rewrite live vectors into new shard files and drop the old ones; returns bytes reclaimed."""
        return compact_store(self)

    def maybe_compact(self) -> int:
        """Compact when dead bytes pass both thresholds; returns bytes reclaimed (0 if not run)."""
        committed, live = shard_usage(self)
        total = sum(size for _kind, size in committed.values())
        dead = total - sum(live.values())
        if dead > self.auto_compact_min_bytes and dead > self.auto_compact_ratio * total:
            return self.compact()
        return 0

    def verify(self) -> int:
        """Check every live page's checksum; returns pages checked, raises CorruptIndexError on damage."""
        snap = self._snapshot()
        for p in range(len(snap.page_ids)):
            if page_crc(snap.multi(p), snap.single(p)) != int(snap.crc32[p]):
                path = snap.paths.get(int(snap.document_ids[p]), "?")
                raise CorruptIndexError(
                    f"page {int(snap.page_numbers[p])} of {display_path(path)} (page id {int(snap.page_ids[p])})"
                    " fails its checksum", "restore the index from a backup or re-index that document")
        return len(snap.page_ids)
