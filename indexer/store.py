"""The on-disk page index: manifest + SQLite catalogue + append-only vector shards.

``Store`` implements ``scoring.source.VectorSource`` (read side) and owns every write. One writer
at a time (an flock on ``writer.lock``); any number of readers, each on a committed snapshot.
The layout, write order and recovery rules are in docs/index-format.md.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from engine.types import PatchGrid
from indexer import catalogue as cat
from indexer import codec_store
from indexer.codec_store import CodecState, codec_file_name, parse_codec_file_name, read_codec_state
from indexer.compaction import StoreStats, compact_store
from indexer.errors import CorruptIndexError, IndexExistsError, PageNotFoundError, PdfError, ReadOnlyError
from indexer.manifest import (
    COMPRESSIONS, DERIVED_DIR, FORMAT_NAME, LOCK_NAME, MANIFEST_NAME, MAX_POOL_FACTOR, check_identity,
    format_version_for, read_manifest, take_lock,
)
from indexer.shards import (
    DTYPES, SHARD_DIR, Appender, atomic_write_json, check_real_directory, check_regular_or_absent,
    checked_shard_path, cut_torn_tail, fsync_dir, is_half_single, map_rows, page_crc, parse_shard_name, row_bytes,
    shard_codec_version, shard_file_name,
)
from indexer.codecs import make_codec
from indexer import single_store
from indexer import page_cache
from indexer.snapshot import Snapshot, load_snapshot, save_page_table
from indexer.sources import SourceFile, absolute, display_path, path_key, read_source
from indexer.writer import DocumentWriter, as_embedding

_OWN_NAMES = {MANIFEST_NAME, LOCK_NAME, DERIVED_DIR, SHARD_DIR, cat.CATALOGUE_NAME,
              cat.CATALOGUE_NAME + "-wal", cat.CATALOGUE_NAME + "-shm", MANIFEST_NAME + ".tmp", page_cache.CACHE_NAME}
_OWN_FILES = (MANIFEST_NAME, LOCK_NAME, cat.CATALOGUE_NAME, cat.CATALOGUE_NAME + "-wal", cat.CATALOGUE_NAME + "-shm")
# pages a document add encodes in one codec call (64 pages x 768 tokens x 128 fp32: 25 MB at once)
ENCODE_BATCH_PAGES = 64
_URI = re.compile(r"\A[A-Za-z][A-Za-z0-9+.-]*://")
_CATALOGUE_HINT = ("restore catalogue.sqlite from a backup, or rebuild the index by indexing into a new --index "
                   "folder; `pagelens verify` says what is damaged")


def document_key(path) -> str:
    """How a document is named in the catalogue: a URI-like identifier of embeddings made elsewhere
    (``s3://bucket/report.pdf``) exactly as given; anything else as an absolute local path."""
    text = os.fsdecode(os.fspath(path))
    return text if _URI.match(text) else absolute(text)


def _catalogue_error(exc: sqlite3.Error) -> CorruptIndexError:
    return CorruptIndexError(f"the index catalogue cannot be read ({exc})", _CATALOGUE_HINT)


def check_compression(compression, pool_factor) -> tuple[str, int]:
    """(compression, pool factor) after checking them; ValueError naming the valid choices."""
    if not isinstance(compression, str) or compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
    if isinstance(pool_factor, bool) or not isinstance(pool_factor, (int, np.integer)) \
            or not 1 <= int(pool_factor) <= MAX_POOL_FACTOR:
        raise ValueError(f"pool_factor must be an integer from 1 (no pooling) to {MAX_POOL_FACTOR}, got {pool_factor!r}")
    return compression, int(pool_factor)


@dataclass(frozen=True)
class RawPageGroup:
    """Pages sharing one block of raw float16 token rows (a document and its copies)."""

    multi_shard: int
    multi_offset: int
    n_tokens: int
    page_ids: tuple
    single_locations: tuple  # (single_shard, single_row) per page id


@dataclass(frozen=True)
class RecompressResult:
    compression: str
    pool_factor: int
    pages_converted: int
    bytes_before: int  # multi-vector shard bytes
    bytes_after: int
    single_width: int | None = None  # how single vectors are stored after it
    single_precision: str | None = None
    single_pages_converted: int = 0
    single_bytes_before: int = 0  # single-vector shard bytes
    single_bytes_after: int = 0


@dataclass(frozen=True)
class DamagedDocument:
    path: str
    display_path: str
    pages: list  # page numbers whose stored vectors fail their checksum
    reason: str


@dataclass
class IntegrityReport:
    """What ``Store.check_integrity`` found: damaged documents (re-index them) and index-level problems."""

    pages_checked: int = 0
    damaged: list = field(default_factory=list)  # DamagedDocument
    problems: list = field(default_factory=list)  # str

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems


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
    complete: bool = True  # False while a long document is committed in chunks (invisible to search)


class Store:
    """Create with ``Store.create``, open with ``Store.open``; close (or use ``with``) when done."""

    auto_compact_ratio = 0.5  # compact after a removal once dead bytes exceed this share ...
    auto_compact_min_bytes = 64 << 20  # ... and this many bytes
    shard_max_bytes = 1 << 30  # start a new shard file (at a document boundary) past this size
    checkpoint_pages = 64  # a long document commits every this many pages (resumable, still invisible)

    def __init__(self, directory: str, manifest: dict, db, writable: bool, lock_fd: int | None):
        self.directory, self.writable = directory, writable
        self._manifest, self._db, self._lock_fd = manifest, db, lock_fd
        self.single_dim, self.multi_dim = int(manifest["single_dim"]), int(manifest["multi_dim"])
        # how single vectors are stored (docs/index-format.md, "Single vectors"); absent: fp32, full width
        self.single_width = int(manifest.get("single_width", self.single_dim))
        self.single_precision = manifest.get("single_precision", "fp32")
        self._snap: Snapshot | None = None
        self._data_version: int | None = None
        self._apps: dict[str, Appender] = {}
        self._writer_open = False
        self._codec_states: dict[int, CodecState] = {}  # version -> state (immutable once written)
        self._raw_maps: dict[tuple[int, int], np.ndarray] = {}
        self.recovered_bytes = 0  # torn tails and orphan files removed when this writer opened

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory, *, identity: dict | None, single_dim: int, multi_dim: int,
               settings: dict | None = None, compression: str = "fp16", pool_factor: int = 1,
               single_width: int | None = None, single_precision: str = "fp32") -> "Store":
        """A new, empty index. ``identity`` None makes a bring-your-own-embeddings index (no model).
        ``settings`` (JSON) are kept in the manifest for the layers above, e.g. the search width.
        ``compression`` (a ``indexer.codecs`` name) and ``pool_factor`` say how token vectors are
        stored; ``single_width`` (default: ``single_dim``) and ``single_precision`` ("fp32", "fp16")
        how page vectors are (truncated to that Matryoshka width and renormalised when written).
        All fixed here (``recompress`` converts later)."""
        compression, pool_factor = check_compression(compression, pool_factor)
        single_width, single_precision = single_store.check_single_settings(single_width, single_precision,
                                                                           int(single_dim))
        if compression != "fp16":
            make_codec(compression, int(multi_dim))  # the width must suit the codec: fail before writing
        directory = absolute(directory)
        if identity is not None or settings:
            json.dumps([identity, settings])  # must be JSON-serialisable: fail before anything is written
        os.makedirs(directory, exist_ok=True)
        _check_own_entries(directory)
        # The lock comes first: two runs creating one index at once must not both decide "create"
        # (the second waits its turn as a writer, then finds the manifest and opens instead).
        lock_fd = take_lock(directory)
        try:
            if os.path.lexists(os.path.join(directory, MANIFEST_NAME)):
                raise IndexExistsError(f"{display_path(directory)} already holds an index",
                                       "open it instead, or choose another directory")
            stray = sorted(n for n in set(os.listdir(directory)) - _OWN_NAMES  # a codec state of a create that died
                           if parse_codec_file_name(n[:-4] if n.endswith(".tmp") else n) is None)
            if stray:
                raise IndexExistsError(f"{display_path(directory)} is not empty (holds {stray[:3]})",
                                       "create the index in an empty or new directory")
            _refuse_leftover_data(directory)  # a create that died before its manifest left none; anything else did
            for sub in (SHARD_DIR, DERIVED_DIR):
                os.makedirs(os.path.join(directory, sub), exist_ok=True)
            db = cat.connect(os.path.join(directory, cat.CATALOGUE_NAME), writable=True)
            cat.migrate(db)
            narrowed = (single_width, single_precision) != (int(single_dim), "fp32")
            manifest = {"format": FORMAT_NAME,
                        "format_version": format_version_for(compression, pool_factor, single_narrowed=narrowed),
                        "identity": identity, "single_dim": int(single_dim), "multi_dim": int(multi_dim),
                        "created_at": time.time(), "settings": dict(settings or {}),
                        "index_id": secrets.token_hex(16), "compression": compression, "pool_factor": pool_factor}
            if narrowed:  # the default keeps the manifest of before (absent means fp32, full width)
                manifest.update(single_width=single_width, single_precision=single_precision)
            with cat.transaction(db):
                for key in ("identity", "single_dim", "multi_dim", "format_version", "index_id"):
                    cat.set_meta(db, key, json.dumps(manifest[key]))
            store = cls(directory, manifest, db, True, lock_fd)
            store._write_state()  # a codec that needs no training (int8, pooled fp16) is saved now
            fsync_dir(directory)
            atomic_write_json(os.path.join(directory, MANIFEST_NAME), manifest)  # last: now it is an index
        except BaseException:
            os.close(lock_fd)
            raise
        return store

    @classmethod
    def open(cls, directory, *, writable: bool = False) -> "Store":
        directory = absolute(directory)
        manifest = read_manifest(directory)
        _check_own_entries(directory)
        db_path = os.path.join(directory, cat.CATALOGUE_NAME)
        if not os.path.exists(db_path):
            raise CorruptIndexError(f"{display_path(directory)} has a manifest but no catalogue",
                                    "restore the index directory from a backup or rebuild it")
        lock_fd = take_lock(directory) if writable else None
        db = None
        try:
            try:
                # an empty or foreign catalogue is refused before anything (even WAL mode) is written
                probe = cat.connect(db_path, writable=False)
                try:
                    cat.check_schema(probe)
                    _check_meta(probe, manifest)
                finally:
                    probe.close()
                db = cat.connect(db_path, writable=writable)
                if not writable:
                    cat.read_older_schema(db)
                if writable:
                    cat.migrate(db)
                store = cls(directory, manifest, db, writable, lock_fd)
                if writable:
                    store._recover()
                else:
                    store._snapshot()  # readers pin the committed state they open on
            except sqlite3.Error as exc:
                raise _catalogue_error(exc) from None
        except BaseException:
            if db is not None:
                db.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return store

    def _recover(self) -> None:
        """Cut torn shard tails past the committed watermarks; delete files no commit names."""
        shard_dir = os.path.join(self.directory, SHARD_DIR)
        os.makedirs(shard_dir, exist_ok=True)
        os.makedirs(os.path.join(self.directory, DERIVED_DIR), exist_ok=True)
        rows = cat.shard_rows(self._db)
        paths = [checked_shard_path(shard_dir, sid, kind, name) for sid, kind, name, _c in rows]  # all, before any cut
        named, freed = {name for _s, _k, name, _c in rows}, 0
        for (sid, kind, name, committed), path in zip(rows, paths):
            dtype, width = self.shard_layout(kind, name)
            freed += cut_torn_tail(path, kind, width, committed, dtype)
        for name in os.listdir(shard_dir):
            # only files of the format's own naming that no commit names (an interrupted compaction,
            # or old files of one that committed); anything else in shards/ is not ours to delete
            if name not in named and parse_shard_name(name) is not None:
                path = os.path.join(shard_dir, name)
                try:
                    freed += os.lstat(path).st_size
                    os.unlink(path)  # a link is removed itself, never followed
                except FileNotFoundError:
                    pass
        tmp = os.path.join(self.directory, MANIFEST_NAME + ".tmp")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        # codec states no shard names and that are not the one new pages use (an interrupted
        # recompress) are orphans, like shard files; stale temp files of them too
        keep = {shard_codec_version(name) for _s, _k, name, _c in rows} | {self._meta_codec_version()}
        for name in os.listdir(self.directory):
            if page_cache.is_temp_name(name):  # a page-table cache a killed writer did not finish
                freed += _size(os.path.join(self.directory, name))
                os.unlink(os.path.join(self.directory, name))
                continue
            version = parse_codec_file_name(name[:-4] if name.endswith(".tmp") else name)
            if version is not None and (name.endswith(".tmp") or version not in keep):
                path = os.path.join(self.directory, name)
                freed += _size(path)
                os.unlink(path)
        fsync_dir(shard_dir)
        self.recovered_bytes = freed

    def close(self) -> None:
        for app in self._apps.values():
            app.close()
        self._apps.clear()
        self._snap = None
        if self._db is not None:
            if self.writable:
                try:  # a large index opens from a copy of its page table (indexer/page_cache.py)
                    save_page_table(self._db, self.directory)
                except Exception:  # a cache: never a reason for close() to fail
                    pass
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

    # --- compression -------------------------------------------------------------------------------

    @property
    def compression(self) -> str:
        """How token vectors are stored (a ``indexer.codecs`` name), from the manifest."""
        return self._manifest.get("compression", "fp16")

    @property
    def pool_factor(self) -> int:
        """Tokens per stored vector (1 = every token kept), from the manifest."""
        return int(self._manifest.get("pool_factor", 1))

    def codec_state(self, version: int) -> CodecState:
        """The codec state ``codec-v<version>.npz`` (checked on load; CorruptIndexError otherwise)."""
        state = self._codec_states.get(version)
        if state is None:
            state = self._codec_states[version] = read_codec_state(self.directory, version, self.multi_dim)
        return state

    def shard_layout(self, kind: str, name: str) -> tuple[np.dtype, int]:
        """(dtype, values per row) of a shard's rows: raw float16/float32, or uint8 codec records;
        single shards by the index's single-vector settings (``indexer.single_store.shard_layout``)."""
        if kind == "single":
            return single_store.shard_layout(name, self.single_dim, self.single_width, self.single_precision)
        version = shard_codec_version(name)
        if version is None:
            return DTYPES[kind], self.dim(kind)
        return np.dtype(np.uint8), self.codec_state(version).bytes_per_token

    def _meta_codec_version(self) -> int | None:
        raw = cat.get_meta(self._db, "codec_version")
        if raw is None:
            return None
        try:
            version = json.loads(raw)
        except ValueError:
            version = None
        if type(version) is not int or not 1 <= version <= 999999:
            raise CorruptIndexError(f"the catalogue names an invalid codec version {raw[:40]!r}", _CATALOGUE_HINT)
        return version

    def _write_state(self) -> CodecState | None:
        """The codec state new pages are stored with; None: raw float16 (an fp16 index, or a codec
        that is not trained yet). A codec that needs no training is saved on first need."""
        if (self.compression, self.pool_factor) == ("fp16", 1):
            return None
        version = self._meta_codec_version()
        if version is not None:
            state = self.codec_state(version)
            if (state.name, state.pool_factor) == (self.compression, self.pool_factor):
                return state
        codec = make_codec(self.compression, self.multi_dim)
        if codec.needs_training or not self.writable:
            return None
        return self._install_codec(codec, self.pool_factor)

    def _install_codec(self, codec, pool_factor: int) -> CodecState:
        """Save a new codec state (a version no file or shard has used) and make it the one new
        pages use: the file first, then the catalogue names it."""
        self.require_writable()
        used = [self._meta_codec_version() or 0]
        used += [shard_codec_version(name) or 0 for _s, _k, name, _c in cat.shard_rows(self._db)]
        used += [parse_codec_file_name(n) or 0 for n in os.listdir(self.directory)]
        version = max(used) + 1
        codec_store.write_codec_state(self.directory, version, codec, pool_factor)
        with cat.transaction(self._db) as db:
            cat.set_meta(db, "codec_version", json.dumps(version))
        return self.codec_state(version)

    def encode_multi_pages(self, appender: Appender, pages: list[np.ndarray]) -> tuple[list[np.ndarray], bool]:
        """The rows to store for pages' float16 tokens in ``appender``'s shard (one codec call for
        them all), and whether the pages' patch grids still apply (not once their tokens are pooled)."""
        state = getattr(appender, "codec_state", None)
        if state is None:
            return list(pages), True
        return state.encode_pages(pages), state.pool_factor == 1

    def raw_page_groups(self) -> list[RawPageGroup]:
        """Pages whose token vectors are still raw float16 (unpooled), grouped by shared block."""
        raw = [sid for sid, kind, name, _c in cat.shard_rows(self._db)
               if kind == "multi" and shard_codec_version(name) is None]
        groups: dict[tuple, list] = {}
        for sid in raw:
            for page_id, off, n, s_shard, s_row in self._db.execute(
                    "SELECT page_id, multi_offset, n_tokens, single_shard, single_row FROM pages"
                    " WHERE multi_shard = ? ORDER BY multi_offset, page_id", (sid,)):
                groups.setdefault((sid, off, n), []).append((page_id, (s_shard, s_row)))
        return [RawPageGroup(sid, off, n, tuple(p for p, _l in v), tuple(loc for _p, loc in v))
                for (sid, off, n), v in groups.items()]

    def raw_multi_rows(self, shard_id: int, offset: int, n_tokens: int) -> np.ndarray:
        """float16 [n_tokens, multi_dim] of a raw multi shard (committed rows only)."""
        return self._committed_map(shard_id, "multi")[offset:offset + n_tokens]

    def stored_multi_rows(self, shard_id: int, offset: int, n_tokens: int) -> np.ndarray:
        """A page's token rows exactly as stored (float16, or uint8 codec records): what its checksum covers."""
        return self._committed_map(shard_id, "multi")[offset:offset + n_tokens]

    def single_row(self, shard_id: int, row: int) -> np.ndarray:
        """A stored single row as stored (float32 or float16, the width of its shard's layout)."""
        return self._committed_map(shard_id, "single")[row]

    # --- single vectors: width and precision (indexer/single_store.py) ----------------------------

    def encode_single(self, vectors: np.ndarray) -> np.ndarray:
        """The rows to store for single vectors [n, single_dim] (or already [n, single_width]):
        truncated to the index's width, renormalised and cast to its precision (full-width fp32
        rows are stored exactly as given)."""
        return single_store.stored_rows(vectors, self.single_dim, self.single_width, self.single_precision)

    def _single_is_target(self, name: str) -> bool:
        return is_half_single(name) == (self.single_precision == "fp16")

    def single_rows_to_convert(self) -> list[tuple[tuple[int, int], list[tuple[int, int, int, int]]]]:
        """Stored single rows not in the index's single layout (an interrupted or pending conversion):
        [((single_shard, single_row), [(page_id, multi_shard, multi_offset, n_tokens), ...])], one
        entry per stored row (copies share theirs)."""
        old = [sid for sid, kind, name, _c in cat.shard_rows(self._db) if kind == "single"
               and not self._single_is_target(name)]
        groups: dict[tuple[int, int], list] = {}
        for sid in old:
            for page_id, row, m_shard, m_off, n in self._db.execute(
                    "SELECT page_id, single_row, multi_shard, multi_offset, n_tokens FROM pages"
                    " WHERE single_shard = ? ORDER BY single_row, page_id", (sid,)):
                groups.setdefault((sid, row), []).append((page_id, m_shard, m_off, n))
        return list(groups.items())

    def single_appender(self) -> Appender:
        """An appender on the newest single shard of the index's layout (a new one when it is full)."""
        self.require_writable()
        if self._writer_open:
            raise RuntimeError("a document writer is open")
        return self._appender("single", None)

    def move_single_rows(self, appender: Appender, updates: list) -> None:
        """One transaction: pages (single_shard, single_row, crc32, page_id) now read their single
        vector there, and the shard's watermark moves."""
        self.require_writable()
        with cat.transaction(self._db) as db:
            db.executemany("UPDATE pages SET single_shard = ?, single_row = ?, crc32 = ? WHERE page_id = ?", updates)
            cat.set_watermark(db, appender.shard_id, appender.rows)
        self._snap = None

    def drop_unused_single_shards(self) -> int:
        """Drop single shards of the old layout no page uses (after a conversion); returns bytes freed."""
        self.require_writable()
        self.close_appenders()
        unused = [sid for sid, kind, name, _c in cat.shard_rows(self._db)
                  if kind == "single" and not self._single_is_target(name)
                  and self._db.execute("SELECT 1 FROM pages WHERE single_shard = ? LIMIT 1", (sid,)).fetchone() is None]
        return self._drop_shards(unused)

    def _committed_map(self, shard_id: int, kind: str) -> np.ndarray:
        found = self._db.execute("SELECT kind, file, committed_rows FROM shards WHERE id = ?", (shard_id,)).fetchone()
        if found is None or found[0] != kind:
            raise CorruptIndexError(f"a page names {kind} shard {shard_id!r}, which the catalogue lacks",
                                    _CATALOGUE_HINT)
        key = (shard_id, found[2])
        if key not in self._raw_maps:
            dtype, width = self.shard_layout(kind, found[1])
            self._raw_maps[key] = map_rows(self.shard_path(shard_id, kind, found[1]), kind, width, found[2], dtype)
        return self._raw_maps[key]

    def coded_appender(self, version: int) -> Appender:
        """An appender on the newest multi shard of codec state ``version`` (a new one when it is full)."""
        self.require_writable()
        if self._writer_open:
            raise RuntimeError("a document writer is open")
        return self._appender("multi", self.codec_state(version))

    def move_multi_rows(self, appender: Appender, updates: list, *, drop_grid: bool) -> None:
        """One transaction: pages (shard, offset, n_tokens, crc32, page_id) now read their token
        vectors there (``drop_grid``: pooled, so no patch grid), and the shard's watermark moves."""
        self.require_writable()
        grid = "".join(f", {c} = NULL" for c in cat.GRID_COLUMNS) if drop_grid else ""
        with cat.transaction(self._db) as db:
            db.executemany(f"UPDATE pages SET multi_shard = ?, multi_offset = ?, n_tokens = ?, crc32 = ?{grid}"
                           " WHERE page_id = ?", updates)
            cat.set_watermark(db, appender.shard_id, appender.rows)
        self._snap = None

    def drop_unused_raw_shards(self) -> int:
        """Drop raw float16 multi shards no page uses (after a conversion); returns bytes freed."""
        self.require_writable()
        self.close_appenders()
        unused = [(sid, name) for sid, kind, name, _c in cat.shard_rows(self._db)
                  if kind == "multi" and shard_codec_version(name) is None
                  and self._db.execute("SELECT 1 FROM pages WHERE multi_shard = ? LIMIT 1", (sid,)).fetchone() is None]
        return self._drop_shards([sid for sid, _name in unused])

    def _drop_shards(self, ids: list[int]) -> int:
        """Delete shard rows no page uses, then (after the commit) their files."""
        if not ids:
            return 0
        names = {sid: (kind, name) for sid, kind, name, _c in cat.shard_rows(self._db)}
        paths = [self.shard_path(sid, *names[sid]) for sid in ids]
        with cat.transaction(self._db) as db:
            db.executemany("DELETE FROM shards WHERE id = ?", [(sid,) for sid in ids])
        self._raw_maps.clear()
        self._snap = None
        freed = 0
        for path in paths:  # after the commit: a crash here leaves orphans, deleted on the next open
            freed += _size(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        fsync_dir(os.path.join(self.directory, SHARD_DIR))
        return freed

    def _set_compression(self, compression: str, pool_factor: int,
                         single: tuple[int, str] | None = None) -> None:
        """Rewrite the manifest with these storage settings (``single``: (width, precision), default
        the index's own) and the lowest format version that describes them."""
        width, precision = single or (self.single_width, self.single_precision)
        narrowed = (width, precision) != (self.single_dim, "fp32")
        manifest = dict(self._manifest, compression=compression, pool_factor=pool_factor,
                        format_version=format_version_for(compression, pool_factor, single_narrowed=narrowed))
        if narrowed:
            manifest.update(single_width=width, single_precision=precision)
        if manifest == self._manifest:
            return
        atomic_write_json(os.path.join(self.directory, MANIFEST_NAME), manifest)
        with cat.transaction(self._db) as db:
            cat.set_meta(db, "format_version", json.dumps(manifest["format_version"]))
        self._manifest = manifest
        self.single_width, self.single_precision = width, precision
        self._raw_maps.clear()
        self._snap = None

    def _coded_states_in_use(self) -> set[tuple[str, int]]:
        versions = {shard_codec_version(name) for sid, kind, name, _c in cat.shard_rows(self._db)
                    if kind == "multi" and self._db.execute("SELECT 1 FROM pages WHERE multi_shard = ? LIMIT 1",
                                                            (sid,)).fetchone() is not None}
        return {(self.codec_state(v).name, self.codec_state(v).pool_factor) for v in versions if v is not None}

    def recompress(self, compression: str | None = None, pool_factor: int | None = None, *,
                   single_width: int | None = None, single_precision: str | None = None,
                   progress=None) -> RecompressResult:
        """Convert the stored float16 token vectors in place to ``compression`` (pooled by
        ``pool_factor``, default: the index's), and/or the full-width fp32 single vectors to
        ``single_width`` / ``single_precision`` ("fp16"), from the stored vectors alone; what is
        not named stays as it is. Resumable: after a kill the same call finishes it. Coded vectors
        cannot be converted back or to another codec (their float16 originals are gone), nor single
        vectors widened or converted again once narrowed or fp16: ValueError saying so.
        ``progress(stage, done, total)``."""
        self.require_writable()
        multi_asked = compression is not None or pool_factor is not None
        if not multi_asked and single_width is None and single_precision is None:
            raise ValueError("nothing to convert: name a compression, or single_width / single_precision")
        compression, pool_factor = check_compression(self.compression if compression is None else compression,
                                                     self.pool_factor if pool_factor is None else pool_factor)
        target = (compression, pool_factor)
        coded = self._coded_states_in_use() if multi_asked else set()
        if coded and coded != {target}:
            have = ", ".join(f"{n} (pool factor {p})" for n, p in sorted(coded))
            raise ValueError(
                f"this index already stores token vectors as {have}; recompress converts only from the fp16 "
                f"originals, which a coded index no longer holds, so it cannot become {compression} "
                f"(pool factor {pool_factor})",
            )
        if compression != "fp16":
            make_codec(compression, self.multi_dim)  # refuse an unsuitable width before changing anything
        single = single_store.check_single_settings(
            self.single_width if single_width is None else single_width,
            self.single_precision if single_precision is None else single_precision, self.single_dim)
        single_store.check_conversion((self.single_width, self.single_precision), single, self.single_dim)
        before, single_before = self._multi_bytes(), self._single_bytes()
        self._set_compression(compression, pool_factor, single)  # first: new pages follow the target from now on
        moved = 0
        if multi_asked:
            state = self._write_state()
            if state is None and target != ("fp16", 1) and self.raw_page_groups():  # a codec to train on the pages
                codec = codec_store.train_codec(self, compression, pool_factor, progress=progress)
                state = self._install_codec(codec, pool_factor)
            if state is not None:
                self.close_appenders()
                moved = codec_store.convert_raw_pages(self, state, progress=progress)
        self.close_appenders()
        single_moved = single_store.convert_single_rows(self, progress=progress)  # also finishes an interrupted one
        self._raw_maps.clear()
        return RecompressResult(compression, pool_factor, moved, before, self._multi_bytes(),
                                single_width=self.single_width, single_precision=self.single_precision,
                                single_pages_converted=single_moved, single_bytes_before=single_before,
                                single_bytes_after=self._single_bytes())

    train_min_tokens = 1 << 16  # a residual codec index trains at the end of a run once this many tokens are in
    # ... and in the middle of one (``early``: after a document of an indexing run, after an
    # ``add_embeddings``) only past this many: at most 256 MB of raw 128-d float16 on disk, and a
    # sample that is not just the first documents.
    # 3k real-text pages (many languages) trained at 65,536 tokens (their first 256 pages): exhaustive
    # recall@10 over the codes against fp16 0.822; trained at the end over all of them: 0.857
    train_early_tokens = 1 << 20

    def maybe_train_codec(self, *, progress=None, early: bool = False) -> int:
        """An index created with a codec that needs training stores pages raw until it holds
        ``train_min_tokens`` tokens; then (at the end of a run) the codec is trained on a sample
        of them and every raw page converted. ``early`` (during a run): only once it holds
        ``train_early_tokens``. Returns pages converted (0 when not due)."""
        if not self.writable or (self.compression, self.pool_factor) == ("fp16", 1) or self._write_state() is not None:
            return 0
        tokens = sum(g.n_tokens for g in self.raw_page_groups())
        if tokens < max(1, self.train_early_tokens if early else self.train_min_tokens):
            return 0
        return self.recompress(self.compression, self.pool_factor, progress=progress).pages_converted

    def _raw_page_count(self) -> int:
        """Live pages whose token vectors are still raw float16 while the index names a codec
        (waiting for the codec's training, or an interrupted ``recompress``)."""
        if (self.compression, self.pool_factor) == ("fp16", 1):
            return 0
        raw = [sid for sid, kind, name, _c in cat.shard_rows(self._db)
               if kind == "multi" and shard_codec_version(name) is None]
        return sum(self._db.execute("SELECT COUNT(*) FROM pages WHERE multi_shard = ?", (sid,)).fetchone()[0]
                   for sid in raw)

    def _multi_bytes(self) -> int:
        return sum(_size(path) for _sid, kind, path, _r in self.shards() if kind == "multi")

    def _single_bytes(self) -> int:
        return sum(_size(path) for _sid, kind, path, _r in self.shards() if kind == "single")

    # --- VectorSource (read side) ----------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        if self._snap is None:
            # the state about to be read is at least this new: a refresh() right after open (every
            # search makes one) must not read a million-row page table a second time
            self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
            self._snap = load_snapshot(self._db, self.directory, {"multi": self.multi_dim, "single": self.single_dim},
                                       layout=self.shard_layout)
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
        """float32 [len(page_ids), single_width]: the stored single vectors (fp16 ones widened to
        float32; full-width rows an interrupted conversion has not reached truncated and renormalised,
        as they will be stored)."""
        snap = self._snapshot()
        pos = snap.positions(page_ids)
        out = np.empty((len(pos), self.single_width), dtype=np.float32)
        for i, p in enumerate(pos):
            row = snap.single(p)
            out[i] = row if row.shape[-1] == self.single_width else single_store.matryoshka(row, self.single_width)
        return out

    def multi_vectors(self, page_ids) -> list[np.ndarray]:
        """[n_tokens, multi_dim] per page: float16 as stored, or float32 decoded from the stored codes."""
        snap = self._snapshot()
        pos = snap.positions(page_ids)
        out: list = [None] * len(pos)
        coded: dict[int, list[int]] = {}
        for i, p in enumerate(pos):
            version = snap.codec_version(p)
            if version is None:
                out[i] = snap.multi(p)
            else:
                coded.setdefault(version, []).append(i)
        for version, items in coded.items():
            # one gather and one decode per codec state for the whole batch: per-page calls cost a
            # search 5x the decoding itself (a 200-page shortlist of pq-16 pages,
            # benchmarks/compact_search.py)
            rows, lens = snap.multi_rows(pos[items])
            flat = self.codec_state(version).decode(rows)
            ends = np.cumsum(lens).tolist()
            for i, a, b in zip(items, [0] + ends[:-1], ends):
                out[i] = flat[a:b]
        return out

    def token_codebook(self) -> tuple[int, np.ndarray] | None:
        """(codec version, centroids float32 [C, multi_dim]) of the codec new pages are stored with,
        when its records begin with a centroid id (residual-b, pq-M); None otherwise (fp16, int8, or
        a codec not trained yet). Search builds its token lists over these centroids from the stored
        ids (``coarse_ids``) instead of a second copy of every token vector."""
        version = self._meta_codec_version()
        if version is None:
            return None
        codec = self.codec_state(version).codec
        if getattr(codec, "centroids", None) is None or not hasattr(codec, "centroid_ids"):
            return None
        return version, codec.centroids

    def coarse_ids(self, page_ids, version: int) -> list[np.ndarray | None]:
        """Per page id, in order: its stored token rows' centroid ids (int64) where the rows are
        codes of codec ``version``, else None (raw float16 rows, or another codec state)."""
        snap = self._snapshot()
        codec = self.codec_state(int(version)).codec
        pos = snap.positions(page_ids)
        out: list[np.ndarray | None] = [None] * len(pos)
        items = [i for i, p in enumerate(pos) if snap.codec_version(p) == version]
        if items:
            rows, lens = snap.multi_rows(pos[items])
            flat = codec.centroid_ids(rows).astype(np.int64)
            ends = np.cumsum(lens).tolist()
            for i, a, b in zip(items, [0] + ends[:-1], ends):
                out[i] = flat[a:b]
        return out

    def pages_info(self, page_ids) -> list[tuple[str, int]]:
        """(document path, page number) for each page id, in order."""
        snap = self._snapshot()
        return [(snap.paths[int(snap.document_ids[p])], int(snap.page_numbers[p])) for p in snap.positions(page_ids)]

    def page_ids_of(self, path) -> np.ndarray:
        """The page ids of one document in page order (empty if it is not indexed)."""
        row = self._db.execute("SELECT id FROM documents WHERE path = ?", (path_key(document_key(path)),)).fetchone()
        if row is None:
            return np.zeros(0, np.int64)
        ids = [r[0] for r in self._db.execute(
            "SELECT page_id FROM pages WHERE document_id = ? ORDER BY page_number", (row[0],))]
        return np.asarray(ids, dtype=np.int64)

    def page_grid(self, page_id) -> PatchGrid | None:
        """The patch grid a live page was stored with (see ``engine.types.PatchGrid``), or None
        when it has none: stored before grids were recorded, brought without one, or with values
        that cannot be right (negative, huge, not integers, more patches than the page has token
        vectors, a box outside the image). Such values are never trusted as a place to read.
        Raises PageNotFoundError when no live page has that id."""
        return _checked_grid(self._live_page_row(cat.page_grid_row, page_id))

    def page_size(self, page_id) -> tuple[int | None, int | None]:
        """(width, height) in pixels the page was encoded at, as recorded; (None, None) for a page
        stored without them or with values that cannot be a size. Raises PageNotFoundError when no
        live page has that id."""
        row = self._live_page_row(cat.page_size_row, page_id)
        sane = all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < (1 << 20) for v in row)
        return (int(row[0]), int(row[1])) if sane else (None, None)

    def _live_page_row(self, read, page_id) -> tuple:
        """``read(db, page_id)``'s row for a live page; the id is checked before it reaches SQLite."""
        if isinstance(page_id, bool) or not isinstance(page_id, (int, np.integer)):
            raise PageNotFoundError(f"page id {page_id!r} is not an integer", "use a page_id from a search hit")
        try:
            row = read(self._db, int(page_id)) if -(1 << 63) <= int(page_id) < (1 << 63) else None
        except sqlite3.Error as exc:
            raise _catalogue_error(exc) from None
        if row is None:
            raise PageNotFoundError(f"no page with id {int(page_id)} in this index (removed, or from another index)",
                                    "use a page_id from a current search hit")
        return row

    # --- catalogue reads -------------------------------------------------------------------------

    _DOC_COLUMNS = "id, path, display, size, mtime, sha256, page_count, status, error, added_at, updated_at, complete"

    @staticmethod
    def _doc(row) -> DocumentInfo:
        return DocumentInfo(row[0], os.fsdecode(row[1]), *row[2:11], complete=bool(row[11]))

    def documents(self, status: str | None = None) -> list[DocumentInfo]:
        sql = f"SELECT {self._DOC_COLUMNS} FROM documents"
        rows = self._db.execute(sql + (" WHERE status = ? ORDER BY path" if status else " ORDER BY path"),
                                (status,) if status else ())
        return [self._doc(r) for r in rows]

    def document(self, path) -> DocumentInfo | None:
        row = self._db.execute(f"SELECT {self._DOC_COLUMNS} FROM documents WHERE path = ?",
                               (path_key(document_key(path)),)).fetchone()
        return self._doc(row) if row else None

    def find_sha256(self, sha256: str) -> DocumentInfo | None:
        """A complete indexed document with this content, if any (the oldest)."""
        row = self._db.execute(f"SELECT {self._DOC_COLUMNS} FROM documents WHERE sha256 = ? AND status = 'indexed'"
                               " AND complete = 1 ORDER BY id LIMIT 1", (sha256,)).fetchone()
        return self._doc(row) if row else None

    def indexed_sha256s(self) -> dict[str, str]:
        """path -> sha256 of every complete indexed document (what an incremental run may skip)."""
        return {os.fsdecode(p): s for p, s in
                self._db.execute("SELECT path, sha256 FROM documents WHERE status = 'indexed' AND complete = 1"
                                 " AND sha256 IS NOT NULL")}

    def partial_documents(self) -> dict[str, tuple[str, int]]:
        """path -> (sha256, pages committed) of documents whose chunked commit was interrupted:
        a run that finds the same content there resumes after those pages."""
        return {os.fsdecode(p): (sha, n) for p, sha, n in self._db.execute(
            "SELECT path, sha256, page_count FROM documents WHERE status = 'indexed' AND complete = 0"
            " AND sha256 IS NOT NULL")}

    # --- writes: the public methods DocumentWriter and compaction use -----------------------------

    def require_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyError("this index was opened read-only", "open it with writable=True to change it")

    def dim(self, kind: str) -> int:
        """Values per row of a shard kind ("multi": token vectors, "single": page vectors)."""
        return self.multi_dim if kind == "multi" else self.single_dim

    def shard_path(self, shard_id: int, kind: str, name: str | None = None) -> str:
        """The checked path of a shard inside shards/ (CorruptIndexError for a name not of the format)."""
        return checked_shard_path(os.path.join(self.directory, SHARD_DIR), shard_id, kind,
                                  shard_file_name(kind, shard_id) if name is None else name)

    def open_appenders(self) -> tuple[Appender, Appender]:
        """The (multi, single) appenders of the newest shards, for one document writer at a time."""
        self.require_writable()
        if self._writer_open:
            raise RuntimeError("one document at a time: commit or abort the open document writer first")
        state = self._write_state()
        multi, single = self._appender("multi", state), self._appender("single", None)
        self._writer_open = True
        return multi, single

    def _appender(self, kind: str, state: CodecState | None) -> Appender:
        """The appender of the newest shard of ``kind`` whose rows are of ``state`` (None: raw),
        starting a new shard when there is none or it is full."""
        version = None if state is None else state.version
        half = kind == "single" and self.single_precision == "fp16"  # single rows: the index's precision
        row = None
        for found in self._db.execute("SELECT id, file, committed_rows FROM shards WHERE kind = ? ORDER BY id DESC",
                                      (kind,)):
            if shard_codec_version(found[1]) == version and is_half_single(found[1]) == half:
                row = found
                break
        if state is not None:
            dtype, width = np.dtype(np.uint8), state.bytes_per_token
        else:
            dtype, width = self.shard_layout(kind, shard_file_name(kind, 1, half=half))
        if row is not None and row[2] * row_bytes(kind, width, dtype) >= self.shard_max_bytes:
            row = None
        if row is None:
            with cat.transaction(self._db):
                sid = self._db.execute("INSERT INTO shards (kind, file) VALUES (?, '')", (kind,)).lastrowid
                self._db.execute("UPDATE shards SET file = ? WHERE id = ?",
                                 (shard_file_name(kind, sid, version, half=half), sid))
            row = (sid, shard_file_name(kind, sid, version, half=half), 0)
        app = self._apps.get(kind)
        if app is None or app.shard_id != row[0]:
            if app is not None:
                app.close()
            app = self._apps[kind] = Appender(self.shard_path(row[0], kind, row[1]), kind, width, row[2],
                                              shard_id=row[0], dtype=dtype)
            app.codec_state = state
        return app

    def release_appenders(self, changed: bool) -> None:
        """The document writer is done (committed, or aborted when ``changed`` is False)."""
        self._writer_open = False
        if changed:
            self._snap = None

    def close_appenders(self) -> None:
        """Close the shard files kept open between documents (compaction replaces them)."""
        if self._writer_open:
            raise RuntimeError("a document writer is open")
        for app in self._apps.values():
            app.close()
        self._apps.clear()

    def commit_pages(self, source: SourceFile, rows: list, appenders: Iterable[Appender], *,
                     document_id: int | None, page_count: int, complete: bool) -> tuple[int, list[int], int]:
        """One transaction: the document row (new or replaced when ``document_id`` is None, else
        extended), its new page rows, and the shard watermarks. The appenders must be synced.
        Returns (document id, new page ids, pages replaced)."""
        self.require_writable()
        replaced = 0
        with cat.transaction(self._db) as db:
            if document_id is None:
                document_id, replaced = cat.upsert_document(
                    db, path_key(source.path), display_path(source.path), source.size, source.mtime, source.sha256,
                    status="indexed", error=None, page_count=page_count, complete=complete)
            else:
                cat.extend_document(db, document_id, page_count, complete)
            ids = cat.insert_pages(db, document_id, rows)
            for app in appenders:
                cat.set_watermark(db, app.shard_id, app.rows)
        return document_id, ids, replaced

    def resume_point(self, source: SourceFile) -> tuple[int, int, list[int]] | None:
        """(document id, pages committed, their page ids) when ``source`` is a partial document of the
        same content, else None."""
        row = self._db.execute("SELECT id, sha256 FROM documents WHERE path = ? AND status = 'indexed'"
                               " AND complete = 0", (path_key(source.path),)).fetchone()
        if row is None or source.sha256 is None or row[1] != source.sha256:
            return None
        ids = [int(r[0]) for r in self._db.execute(
            "SELECT page_id FROM pages WHERE document_id = ? ORDER BY page_number", (row[0],))]
        return int(row[0]), len(ids), ids

    def shards(self) -> list[tuple[int, str, str, int]]:
        """(id, kind, checked path, committed rows) of every shard."""
        return [(sid, kind, self.shard_path(sid, kind, name), rows) for sid, kind, name, rows in cat.shard_rows(self._db)]

    def page_locations(self) -> list[tuple[int, int, int, int, int, int]]:
        """(page_id, multi_shard, multi_offset, n_tokens, single_shard, single_row) of every stored page."""
        return self._db.execute("SELECT page_id, multi_shard, multi_offset, n_tokens, single_shard, single_row"
                                " FROM pages ORDER BY page_id").fetchall()

    def next_shard_id(self) -> int:
        return cat.next_shard_id(self._db)

    def swap_shards(self, new_shards: dict[str, tuple[int, int]], updates: list, old_ids: list[int]) -> None:
        """Compaction's commit: add the new shards {kind, (kind, codec version) or (kind, codec version,
        half): (id, rows)} (``half``: float16 single rows), point pages at their new places
        (multi_shard, multi_offset, single_shard, single_row, page_id), drop the old shard rows."""
        self.require_writable()
        with cat.transaction(self._db) as db:
            for key, (sid, rows) in new_shards.items():
                kind, version, half = (tuple(key) + (None, False))[:3] if isinstance(key, tuple) else (key, None, False)
                db.execute("INSERT INTO shards (id, kind, file, committed_rows) VALUES (?, ?, ?, ?)",
                           (sid, kind, shard_file_name(kind, sid, version, half=bool(half)), rows))
            db.executemany("UPDATE pages SET multi_shard = ?, multi_offset = ?, single_shard = ?, single_row = ?"
                           " WHERE page_id = ?", updates)
            db.executemany("DELETE FROM shards WHERE id = ?", [(sid,) for sid in old_ids])
        self._snap = None
        self._raw_maps.clear()

    def document_writer(self, source: SourceFile, *, resume: bool = False) -> DocumentWriter:
        """``with store.document_writer(src) as w: w.add_page(n, w, h, emb)`` -> committed on exit.
        With ``resume``, a partial document of the same content continues after its committed pages
        (``w.first_page``)."""
        return DocumentWriter(self, source, resume=resume)

    def add_document(self, source, pages: Sequence) -> list[int]:
        """Store a document whose page i+1 is ``pages[i]`` (an Embedding or (width, height, Embedding)).
        ``source`` is a SourceFile, a local path, or an identifier such as ``s3://bucket/x.pdf``."""
        src = self._as_source(source)
        with self.document_writer(src) as writer:
            items = [(n, *as_embedding(item)) for n, item in enumerate(pages, start=1)]
            for at in range(0, len(items), ENCODE_BATCH_PAGES):  # a codec call per batch, not per page
                writer.add_pages(items[at:at + ENCODE_BATCH_PAGES])
        return writer.page_ids

    def copy_document(self, source: SourceFile, from_path) -> list[int]:
        """Index ``source`` as a copy of the indexed document at ``from_path`` (same content):
        new page ids that point at the same stored vectors, so nothing is encoded or stored twice."""
        self.require_writable()
        src_doc = self.document(from_path)
        if src_doc is None or src_doc.status != "indexed" or not src_doc.complete:
            raise ValueError(f"{display_path(document_key(from_path))} is not an indexed document")
        with cat.transaction(self._db) as db:
            rows = cat.page_locations_of(db, src_doc.id)
            doc_id, _removed = cat.upsert_document(
                db, path_key(source.path), display_path(source.path), source.size, source.mtime, source.sha256,
                status="indexed", error=None, page_count=len(rows))
            ids = cat.insert_pages(db, doc_id, rows)
        self._snap = None
        return ids

    def record_failure(self, source, reason: str) -> int:
        """Record that a file could not be indexed; any pages it had are removed. Returns those."""
        self.require_writable()
        src = source if isinstance(source, SourceFile) else SourceFile(document_key(source), None, None, None)
        with cat.transaction(self._db) as db:
            _doc_id, removed = cat.upsert_document(db, path_key(src.path), display_path(src.path), src.size,
                                                   src.mtime, src.sha256, status="failed", error=reason, page_count=0)
        if removed:
            self._snap = None
        return removed

    def remove_document(self, path, *, compact: bool = True) -> int:
        """Remove a document (indexed or failed); returns the pages removed (0 if unknown)."""
        self.require_writable()
        with cat.transaction(self._db) as db:
            row = db.execute("SELECT id FROM documents WHERE path = ?", (path_key(document_key(path)),)).fetchone()
            if row is None:
                return 0
            removed = db.execute("DELETE FROM pages WHERE document_id = ?", (row[0],)).rowcount
            db.execute("DELETE FROM documents WHERE id = ?", (row[0],))
        self._snap = None
        if compact:
            self.maybe_compact()
        return removed

    def mark_for_reindex(self, paths) -> int:
        """Forget the stored SHA-256 of these documents, so the next run re-encodes them (a damaged
        document would otherwise be skipped as unchanged). Returns how many were marked."""
        self.require_writable()
        with cat.transaction(self._db) as db:
            return sum(db.execute("UPDATE documents SET sha256 = NULL WHERE path = ?",
                                  (path_key(document_key(p)),)).rowcount for p in paths)

    def _as_source(self, source) -> SourceFile:
        if isinstance(source, SourceFile):
            return source
        key = document_key(source)
        if key != absolute(key):  # an identifier of embeddings made elsewhere: kept as given
            return SourceFile(key, None, None, None)
        try:
            return read_source(key)
        except PdfError:  # embeddings made elsewhere: the file need not be here
            return SourceFile(key, None, None, None)

    # --- runs ------------------------------------------------------------------------------------

    def begin_run(self, arguments) -> int:
        self.require_writable()
        with cat.transaction(self._db) as db:
            return db.execute("INSERT INTO runs (started_at, arguments) VALUES (?, ?)",
                              (time.time(), json.dumps(arguments))).lastrowid

    def finish_run(self, run_id: int, summary: dict) -> None:
        with cat.transaction(self._db) as db:
            db.execute("UPDATE runs SET finished_at = ?, summary = ? WHERE id = ?",
                       (time.time(), json.dumps(summary), run_id))

    # --- space -----------------------------------------------------------------------------------

    def shard_usage(self) -> tuple[dict, dict]:
        """({shard id: (kind, committed bytes)}, {shard id: live bytes}); copies share bytes, counted once."""
        sizes = {sid: (kind, row_bytes(kind, self.shard_layout(kind, name)[1], self.shard_layout(kind, name)[0]))
                 for sid, kind, name, _rows in cat.shard_rows(self._db)}
        committed = {sid: (kind, rows * sizes[sid][1]) for sid, kind, _name, rows in cat.shard_rows(self._db)}
        live = cat.live_shard_bytes(self._db, {sid: size for sid, (_kind, size) in sizes.items()})
        return committed, live

    def dead_bytes(self) -> int:
        committed, live = self.shard_usage()
        return sum(size for _kind, size in committed.values()) - sum(live.values())

    def stats(self) -> StoreStats:
        """Documents, pages, vectors, bytes on disk by part, dead bytes, identity, format version."""
        db = self._db
        docs = dict(db.execute("SELECT status, COUNT(*) FROM documents GROUP BY status").fetchall())
        partial = db.execute("SELECT COUNT(*) FROM documents WHERE status = 'indexed' AND complete = 0").fetchone()[0]
        pages, tokens = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(p.n_tokens), 0) FROM pages p JOIN documents d ON d.id = p.document_id"
            " WHERE d.status = 'indexed' AND d.complete = 1").fetchone()
        parts = {"catalogue": 0, "multi_vectors": 0, "single_vectors": 0, "manifest": 0, DERIVED_DIR: 0}
        for name in (cat.CATALOGUE_NAME, cat.CATALOGUE_NAME + "-wal", cat.CATALOGUE_NAME + "-shm", page_cache.CACHE_NAME):
            parts["catalogue"] += _size(os.path.join(self.directory, name))
        for sid, kind, path, _rows in self.shards():
            parts[f"{kind}_vectors"] += _size(path)
        parts["manifest"] = _size(os.path.join(self.directory, MANIFEST_NAME))
        parts[DERIVED_DIR] = _dir_bytes(os.path.join(self.directory, DERIVED_DIR))
        parts["codec_state"] = sum(_size(os.path.join(self.directory, n)) for n in os.listdir(self.directory)
                                   if parse_codec_file_name(n) is not None)
        # per page, the multi-vectors' cost includes their codec state (fixed: it matters on small indexes)
        per_page = {part: ((parts[part] + (parts["codec_state"] if part == "multi_vectors" else 0)) / pages
                           if pages else 0.0) for part in ("multi_vectors", "single_vectors", DERIVED_DIR, "catalogue")}
        return StoreStats(
            documents=docs.get("indexed", 0) - partial, failed_documents=docs.get("failed", 0), pages=pages,
            vectors=tokens, bytes_by_part=parts, total_bytes=sum(parts.values()), dead_bytes=self.dead_bytes(),
            identity=self.identity, format_version=self.format_version, single_dim=self.single_dim,
            multi_dim=self.multi_dim, partial_documents=partial, compression=self.compression,
            pool_factor=self.pool_factor, bytes_per_page=per_page, raw_pages=self._raw_page_count(),
            single_width=self.single_width, single_precision=self.single_precision,
            single_pages_not_yet_converted=sum(len(p) for _loc, p in self.single_rows_to_convert()))

    def compact(self) -> int:
        """Rewrite live vectors into new shard files and drop the old ones; returns bytes reclaimed,
        counting the torn tails and orphan files this writer's open removed."""
        reclaimed = compact_store(self) + self.recovered_bytes
        self.recovered_bytes = 0
        return reclaimed

    def maybe_compact(self) -> int:
        """Compact when dead bytes pass both thresholds; returns bytes reclaimed (0 if not run)."""
        committed, live = self.shard_usage()
        total = sum(size for _kind, size in committed.values())
        dead = total - sum(live.values())
        if dead > self.auto_compact_min_bytes and dead > self.auto_compact_ratio * total:
            return self.compact()
        return 0

    # --- integrity -------------------------------------------------------------------------------

    def check_integrity(self) -> IntegrityReport:
        """Read every stored page (complete or partial documents) and compare its checksum; check the
        catalogue with SQLite's quick_check and every shard file against its watermark.
        Reports instead of raising: which documents to re-index, and index-level problems."""
        report = IntegrityReport()
        try:
            quick = [r[0] for r in self._db.execute("PRAGMA quick_check(20)")]
        except sqlite3.Error as exc:
            report.problems.append(f"the catalogue cannot be read: {exc}")
            return report
        if quick != ["ok"]:
            report.problems.extend(f"catalogue: {line}" for line in quick)
        maps, bad_shards = {}, set()
        for sid, kind, name, rows in cat.shard_rows(self._db):
            try:
                dtype, width = self.shard_layout(kind, name)
                maps[sid] = map_rows(self.shard_path(sid, kind, name), kind, width, rows, dtype)
            except (CorruptIndexError, OSError) as exc:
                report.problems.append(f"shard {name}: {getattr(exc, 'message', None) or exc}")
                bad_shards.add(sid)
        damaged: dict[int, list[int]] = {}
        for doc_id, number, m_shard, m_off, n_tok, s_shard, s_row, crc in self._db.execute(
                "SELECT document_id, page_number, multi_shard, multi_offset, n_tokens, single_shard, single_row,"
                " crc32 FROM pages ORDER BY document_id, page_number"):
            report.pages_checked += 1
            try:
                if m_shard in bad_shards or s_shard in bad_shards:
                    raise KeyError
                multi = maps[m_shard][m_off:m_off + n_tok]
                single = maps[s_shard][s_row]
                ok = len(multi) == n_tok and n_tok > 0 and m_off >= 0 and s_row >= 0 and page_crc(multi, single) == crc
            except (KeyError, IndexError, TypeError, ValueError):
                ok = False
            if not ok:
                damaged.setdefault(doc_id, []).append(int(number))
        for doc_id, numbers in damaged.items():
            path = os.fsdecode(self._db.execute("SELECT path FROM documents WHERE id = ?", (doc_id,)).fetchone()[0])
            report.damaged.append(DamagedDocument(
                path=path, display_path=display_path(path), pages=numbers,
                reason=f"{len(numbers)} page(s) fail their checksum (stored vectors changed on disk)"))
        return report

    def verify(self) -> int:
        """Check every page's checksum; returns pages checked, raises CorruptIndexError on damage."""
        report = self.check_integrity()
        if report.problems:
            raise CorruptIndexError(report.problems[0], "restore the index from a backup or rebuild it")
        if report.damaged:
            doc = report.damaged[0]
            raise CorruptIndexError(f"page {doc.pages[0]} of {doc.display_path} fails its checksum",
                                    "re-index that document with `pagelens index --repair`")
        return report.pages_checked


def _checked_grid(row) -> PatchGrid | None:
    """A PatchGrid from catalogue values (n_tokens, offset, rows, cols, x0, y0, x1, y1), or None."""
    n_tokens, offset, rows, cols, *box = row
    if not all(type(v) is int for v in (n_tokens, offset, rows, cols)):
        return None  # NULL (no grid), or text / blobs / floats where integers belong
    if not all(type(v) in (int, float) for v in box):
        return None
    try:
        grid = PatchGrid(offset, rows, cols, tuple(float(v) for v in box))  # checks ranges and the box
    except (ValueError, OverflowError):
        return None
    return grid if grid.fits(n_tokens) else None


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total

def _check_own_entries(directory: str) -> None:
    """The index's own files must be plain files and its folders real folders: a link planted in a
    shared index folder would make a writer truncate or delete a file outside it."""
    for name in _OWN_FILES:
        check_regular_or_absent(os.path.join(directory, name))
    for sub in (SHARD_DIR, DERIVED_DIR):
        check_real_directory(os.path.join(directory, sub))


def _check_meta(db, manifest: dict) -> None:
    """The catalogue must be this index's own: same id (indexes made since it was recorded) and widths."""
    for key in ("index_id", "single_dim", "multi_dim"):
        raw = cat.get_meta(db, key)
        if key == "index_id" and "index_id" not in manifest:
            continue  # made before the id was recorded
        try:
            value = json.loads(raw) if raw is not None else None
        except ValueError:
            value = object()
        if value != manifest.get(key):
            raise CorruptIndexError(
                f"catalogue.sqlite does not belong to this index ({key}: catalogue {raw!r}, manifest "
                f"{manifest.get(key)!r})", "nothing was changed or deleted; " + _CATALOGUE_HINT)


def _refuse_leftover_data(directory: str) -> None:
    shard_dir = os.path.join(directory, SHARD_DIR)
    if os.path.isdir(shard_dir) and os.listdir(shard_dir):
        raise CorruptIndexError(f"{display_path(directory)} has shard files but no manifest.json",
                                "restore manifest.json from a backup, or create the index in a new folder")
    db_path = os.path.join(directory, cat.CATALOGUE_NAME)
    if not os.path.exists(db_path):
        return
    try:
        db = cat.connect(db_path, writable=False)
        try:
            has = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            used = any(db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in ("documents", "shards")
                       if t in has)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise _catalogue_error(exc) from None
    if used:
        raise CorruptIndexError(f"{display_path(directory)} has a catalogue with data but no manifest.json",
                                "restore manifest.json from a backup, or create the index in a new folder")
