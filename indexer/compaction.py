"""Compaction: reclaim the shard bytes of removed pages (and the store's space figures type).

Live vectors are copied into new shard files (named from ids no commit has used yet), which are
fsynced; one catalogue transaction then points every page at its new place and drops the old
shard rows; only after that commit are the old files deleted. A crash before the commit leaves
the old state plus orphan files (deleted on the next writable open); a crash after it leaves
orphan old files (deleted the same way). Page ids never change. Readers that mapped the old files
keep reading them until they refresh (POSIX keeps unlinked files alive while mapped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from indexer.shards import Appender, fsync_dir, map_rows

if TYPE_CHECKING:
    from indexer.store import Store


@dataclass(frozen=True)
class StoreStats:
    documents: int  # indexed documents
    failed_documents: int
    pages: int
    vectors: int  # live token vectors (multi rows)
    bytes_by_part: dict  # catalogue, multi_vectors, single_vectors, manifest, derived
    total_bytes: int
    dead_bytes: int  # shard bytes no live page uses (reclaimed by compact())
    identity: dict | None
    format_version: int
    single_dim: int
    multi_dim: int
    partial_documents: int = 0  # long documents whose chunked commit has not finished (invisible)


def compact_store(store: "Store") -> int:
    store.require_writable()
    store.close_appenders()  # raises while a document writer is open
    old = store.shards()
    before = sum(_size(path) for _sid, _kind, path, _rows in old)
    maps = {sid: map_rows(path, kind, store.dim(kind), rows) for sid, kind, path, rows in old}
    next_id = store.next_shard_id()
    new_ids = {"multi": next_id, "single": next_id + 1}
    apps = {kind: Appender(store.shard_path(sid, kind), kind, store.dim(kind), 0, shard_id=sid)
            for kind, sid in new_ids.items()}
    try:
        moved_multi: dict[tuple[int, int], int] = {}
        moved_single: dict[tuple[int, int], int] = {}
        updates = []
        for page_id, m_shard, m_off, n_tok, s_shard, s_row in store.page_locations():
            m_key, s_key = (m_shard, m_off), (s_shard, s_row)
            if m_key not in moved_multi:  # copies of one document share their vectors: keep sharing
                moved_multi[m_key] = apps["multi"].append(maps[m_shard][m_off:m_off + n_tok])
            if s_key not in moved_single:
                moved_single[s_key] = apps["single"].append(maps[s_shard][s_row:s_row + 1])
            updates.append((new_ids["multi"], moved_multi[m_key], new_ids["single"], moved_single[s_key], page_id))
        for app in apps.values():
            app.sync()
        fsync_dir(os.path.dirname(apps["multi"].path))
        store.swap_shards({kind: (sid, apps[kind].rows) for kind, sid in new_ids.items()}, updates,
                          [sid for sid, *_rest in old])
    except BaseException:
        for app in apps.values():
            app.close()
            try:
                os.unlink(app.path)
            except OSError:
                pass
        raise
    for app in apps.values():
        app.close()
    maps.clear()
    for _sid, _kind, path, _rows in old:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    fsync_dir(os.path.dirname(apps["multi"].path))
    after = sum(app.size for app in apps.values())
    return before - after


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0
