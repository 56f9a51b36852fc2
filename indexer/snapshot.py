"""A consistent, read-only picture of the committed index: page table arrays and shard maps.

Loaded inside one SQLite read transaction, so it never mixes two commits; shard maps cover only
the committed rows, so bytes a writer is appending meanwhile are invisible.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from dataclasses import dataclass, field

import numpy as np

from indexer import page_cache
from indexer.catalogue import transaction
from indexer.errors import CorruptIndexError, PageNotFoundError
from indexer.shards import SHARD_DIR, checked_shard_path, map_rows, shard_codec_version


@dataclass
class Snapshot:
    page_ids: np.ndarray  # int64, ascending
    document_ids: np.ndarray
    page_numbers: np.ndarray
    multi_shard: np.ndarray
    multi_offset: np.ndarray
    n_tokens: np.ndarray
    single_shard: np.ndarray
    single_row: np.ndarray
    crc32: np.ndarray
    paths: dict[int, str]  # document id -> path
    maps: dict[int, np.ndarray] = field(default_factory=dict)  # shard id -> committed rows
    versions: dict[int, int | None] = field(default_factory=dict)  # shard id -> codec version (None: raw)

    def positions(self, page_ids) -> np.ndarray:
        ids = np.asarray(page_ids, dtype=np.int64).reshape(-1)
        if len(self.page_ids) == 0:
            pos, bad = np.zeros(len(ids), np.int64), np.ones(len(ids), bool)
        else:
            pos = np.minimum(np.searchsorted(self.page_ids, ids), len(self.page_ids) - 1)
            bad = self.page_ids[pos] != ids
        if np.any(bad):
            missing = ids[bad][:5].tolist()
            raise PageNotFoundError(
                f"page id(s) {missing} are not in this index (removed, or from another index)",
                "refresh the store or rebuild derived search files",
            )
        return pos

    def multi(self, pos: int) -> np.ndarray:
        start = int(self.multi_offset[pos])
        return self.maps[int(self.multi_shard[pos])][start:start + int(self.n_tokens[pos])]

    def multi_rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the stored token rows of the pages at ``positions``, concatenated in order; their row
        counts). One gather per shard instead of a memmap slice per page: slicing a memmap costs
        ~40 us of Python per page, most of a 1,000-page compact rerank. Locations were checked
        against the committed rows when the snapshot was loaded (``_check_locations``)."""
        positions = np.asarray(positions, dtype=np.int64)
        shards, starts, lens = self.multi_shard[positions], self.multi_offset[positions], self.n_tokens[positions]
        ends = np.cumsum(lens)
        src = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) + np.repeat(starts - (ends - lens), lens)
        first = np.asarray(self.maps[int(shards[0])]) if len(shards) else None
        if first is None or (shards == shards[0]).all():
            return (first[src] if first is not None else np.zeros((0, 0), np.float16)), lens
        token_shard = np.repeat(shards, lens)
        out = np.empty((len(src),) + first.shape[1:], dtype=first.dtype)
        for sid in np.unique(shards).tolist():
            at = np.flatnonzero(token_shard == sid)
            out[at] = np.asarray(self.maps[sid])[src[at]]
        return out, lens

    def codec_version(self, pos: int) -> int | None:
        """The codec state of a page's stored token rows, or None for raw float16 rows."""
        return self.versions.get(int(self.multi_shard[pos]))

    def single(self, pos: int) -> np.ndarray:
        return self.maps[int(self.single_shard[pos])][int(self.single_row[pos])]


_PAGE_COLUMNS = ("page_id", "document_id", "page_number", "multi_shard", "multi_offset", "n_tokens",
                 "single_shard", "single_row", "crc32")


# Searches see the pages of complete documents only: a long document committing in chunks stays
# invisible until its last page is in (docs/index-format.md, "Write order").
_VISIBLE_FROM = ("FROM pages p JOIN documents d ON d.id = p.document_id"
                 " WHERE d.status = 'indexed' AND d.complete = 1")
_VISIBLE_PAGES = f"SELECT {', '.join('p.' + c for c in _PAGE_COLUMNS)} {_VISIBLE_FROM} ORDER BY p.page_id"
_STAMP = page_cache.stamp_query(_PAGE_COLUMNS, _VISIBLE_FROM)
CACHE_MIN_PAGES = 20_000  # below this the rows read from SQLite in well under 0.1 s


def read_page_table(db: sqlite3.Connection, directory: str) -> tuple[np.ndarray, tuple[int, int] | None, bool]:
    """Inside the caller's read transaction: (the visible page rows int64 [n, 9] sorted by page id,
    their stamp, whether they came from the cache). See ``page_cache``."""
    stamp = page_cache.read_stamp(db, _STAMP)
    if stamp is not None and stamp[0] >= CACHE_MIN_PAGES:
        table = page_cache.load(directory, stamp, len(_PAGE_COLUMNS))
        if table is not None:
            return table, stamp, True
    rows = db.execute(_VISIBLE_PAGES).fetchall()
    try:  # fromiter: np.array over a million row tuples took 1.2 s of a 1M-page open
        table = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64,
                            count=len(rows) * len(_PAGE_COLUMNS)).reshape(-1, len(_PAGE_COLUMNS))
    except (TypeError, ValueError, OverflowError):
        raise CorruptIndexError("the catalogue's page table holds values that are not integers",
                                "restore the index directory from a backup or rebuild it") from None
    return table, stamp, False


def save_page_table(db: sqlite3.Connection, directory: str) -> None:
    """A writer, on close: refresh the page-table cache when the catalogue moved past it."""
    with transaction(db, "DEFERRED"):
        stamp = page_cache.read_stamp(db, _STAMP)
        if stamp is None or stamp[0] < CACHE_MIN_PAGES:
            return
        if page_cache.load(directory, stamp, len(_PAGE_COLUMNS)) is not None:
            return  # still current
        table, stamp, _ = read_page_table(db, directory)
    page_cache.save(directory, stamp, table)


def load_snapshot(db: sqlite3.Connection, directory: str, dims: dict[str, int], layout=None) -> Snapshot:
    """Read the committed state; retry if a compaction swapped shard files under us.
    ``layout(kind, name) -> (dtype, width)`` gives the row layout of coded shards."""
    shard_dir = os.path.join(directory, SHARD_DIR)
    for attempt in range(5):
        with transaction(db, "DEFERRED"):
            shards = db.execute("SELECT id, kind, file, committed_rows FROM shards").fetchall()
            table, _stamp, _cached = read_page_table(db, directory)
            paths = {doc_id: os.fsdecode(path) for doc_id, path in
                     db.execute("SELECT id, path FROM documents WHERE status = 'indexed' AND complete = 1")}
        kinds, committed = {}, {}
        for sid, kind, name, rows_ in shards:
            checked_shard_path(shard_dir, sid, kind, name)
            if not isinstance(rows_, int) or rows_ < 0:
                raise CorruptIndexError(f"shard {name} has an invalid watermark {rows_!r}",
                                        "restore the index directory from a backup or rebuild it")
            kinds[sid], committed[sid] = kind, rows_
        try:
            maps = {}
            for sid, kind, name, rows_ in shards:
                dtype, width = layout(kind, name) if layout is not None else (None, dims[kind])
                maps[sid] = map_rows(os.path.join(shard_dir, name), kind, width, rows_, dtype)
        except FileNotFoundError:
            if attempt == 4:
                raise CorruptIndexError("a shard file named by the catalogue is missing",
                                        "restore the index directory from a backup or rebuild it") from None
            continue
        cols = {name: np.ascontiguousarray(table[:, i]) for i, name in enumerate(_PAGE_COLUMNS)}
        _check_locations(cols, kinds, committed)
        return Snapshot(
            page_ids=cols["page_id"], document_ids=cols["document_id"], page_numbers=cols["page_number"],
            multi_shard=cols["multi_shard"], multi_offset=cols["multi_offset"], n_tokens=cols["n_tokens"],
            single_shard=cols["single_shard"], single_row=cols["single_row"], crc32=cols["crc32"],
            paths=paths, maps=maps, versions={sid: shard_codec_version(name) for sid, _k, name, _r in shards},
        )
    raise AssertionError("unreachable")


def _check_locations(cols: dict, kinds: dict, committed: dict) -> None:
    """Every page must point inside committed rows of a shard of the right kind: a crafted or
    damaged catalogue must fail here, not read past a map or another page's vectors silently."""
    if len(cols["page_id"]) == 0:
        return
    ids = np.array(sorted(kinds), dtype=np.int64)
    rows = np.array([committed[i] for i in ids.tolist()], dtype=np.int64)
    is_multi = np.array([kinds[i] == "multi" for i in ids.tolist()], dtype=bool)

    def lookup(shard_col):
        pos = np.minimum(np.searchsorted(ids, shard_col), max(len(ids) - 1, 0))
        known = (ids[pos] == shard_col) if len(ids) else np.zeros(len(shard_col), bool)
        return pos, known

    m_pos, m_known = lookup(cols["multi_shard"])
    s_pos, s_known = lookup(cols["single_shard"])
    n, off, row = cols["n_tokens"], cols["multi_offset"], cols["single_row"]
    bad = ~m_known | ~s_known
    if len(ids):
        bad |= ~is_multi[m_pos] | is_multi[s_pos]
        bad |= (n < 1) | (off < 0) | (off > rows[m_pos] - n) | (row < 0) | (row >= rows[s_pos])
    if np.any(np.diff(cols["page_id"]) <= 0):
        bad[1:] |= np.diff(cols["page_id"]) <= 0
    if np.any(bad):
        first = int(cols["page_id"][np.argmax(bad)])
        raise CorruptIndexError(
            f"{int(bad.sum())} page row(s) of the catalogue point outside the committed shard data "
            f"(first: page id {first})", "restore the index directory from a backup or rebuild it")
