"""A consistent, read-only picture of the committed index: page table arrays and shard maps.

Loaded inside one SQLite read transaction, so it never mixes two commits; shard maps cover only
the committed rows, so bytes a writer is appending meanwhile are invisible.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field

import numpy as np

from indexer.catalogue import transaction
from indexer.errors import CorruptIndexError, PageNotFoundError
from indexer.shards import SHARD_DIR, map_rows


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

    def single(self, pos: int) -> np.ndarray:
        return self.maps[int(self.single_shard[pos])][int(self.single_row[pos])]


_PAGE_COLUMNS = ("page_id", "document_id", "page_number", "multi_shard", "multi_offset", "n_tokens",
                 "single_shard", "single_row", "crc32")


def load_snapshot(db: sqlite3.Connection, directory: str, dims: dict[str, int]) -> Snapshot:
    """Read the committed state; retry if a compaction swapped shard files under us."""
    for attempt in range(5):
        with transaction(db, "DEFERRED"):
            shards = db.execute("SELECT id, kind, file, committed_rows FROM shards").fetchall()
            rows = db.execute(f"SELECT {', '.join(_PAGE_COLUMNS)} FROM pages ORDER BY page_id").fetchall()
            paths = {doc_id: os.fsdecode(path) for doc_id, path in
                     db.execute("SELECT id, path FROM documents WHERE status = 'indexed'")}
        try:
            maps = {sid: map_rows(os.path.join(directory, SHARD_DIR, name), kind, dims[kind], committed)
                    for sid, kind, name, committed in shards}
        except FileNotFoundError:
            if attempt == 4:
                raise CorruptIndexError("a shard file named by the catalogue is missing",
                                        "restore the index directory from a backup or rebuild it") from None
            continue
        table = np.array(rows, dtype=np.int64).reshape(-1, len(_PAGE_COLUMNS))
        cols = {name: np.ascontiguousarray(table[:, i]) for i, name in enumerate(_PAGE_COLUMNS)}
        return Snapshot(
            page_ids=cols["page_id"], document_ids=cols["document_id"], page_numbers=cols["page_number"],
            multi_shard=cols["multi_shard"], multi_offset=cols["multi_offset"], n_tokens=cols["n_tokens"],
            single_shard=cols["single_shard"], single_row=cols["single_row"], crc32=cols["crc32"],
            paths=paths, maps=maps,
        )
    raise AssertionError("unreachable")
