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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from indexer.shards import Appender, fsync_dir, is_half_single, map_rows, shard_codec_version, shard_file_name

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
    compression: str = "fp16"  # how token vectors are stored (docs/index-format.md, "Compression")
    pool_factor: int = 1
    bytes_per_page: dict = field(default_factory=dict)  # multi_vectors, single_vectors, derived, catalogue
    raw_pages: int = 0  # pages still stored fp16 although the index names a codec (not trained yet)
    single_width: int = 0  # values per stored single vector (docs/index-format.md, "Single vectors")
    single_precision: str = "fp32"
    single_pages_not_yet_converted: int = 0  # single vectors an interrupted recompress has not reached


def compact_store(store: "Store") -> int:
    store.require_writable()
    store.close_appenders()  # raises while a document writer is open
    old = store.shards()
    before = sum(_size(path) for _sid, _kind, path, _rows in old)
    # rows keep their layout: raw float16 rows go to a raw shard, rows of codec state V to a
    # ``.c<V>`` shard (a store may hold both while a codec waits for training); float32 and float16
    # single rows to their own kinds of shard (both exist while a single conversion is under way)
    layout = {sid: (kind, shard_codec_version(os.path.basename(path)), is_half_single(os.path.basename(path)))
              for sid, kind, path, _rows in old}
    maps = {}
    for sid, kind, path, rows in old:
        dtype, width = store.shard_layout(kind, os.path.basename(path))
        maps[sid] = map_rows(path, kind, width, rows, dtype)
    locations = store.page_locations()
    groups = {layout[m] for _p, m, *_r in locations if m in layout} | {layout[s] for *_r, s, _row in locations
                                                                        if s in layout}
    if not any(kind == "multi" for kind, _v, _h in groups):
        groups.add(("multi", None, False))
    if not any(kind == "single" for kind, _v, _h in groups):
        groups.add(("single", None, store.single_precision == "fp16"))
    order = sorted(groups, key=lambda g: (g[0] != "multi", g[1] or 0, g[2]))  # fp16 index: multi then single, as before
    next_id = store.next_shard_id()
    new_ids = {group: next_id + i for i, group in enumerate(order)}
    apps = {}
    for (kind, version, half), sid in new_ids.items():
        name = shard_file_name(kind, sid, version, half=half)
        dtype, width = store.shard_layout(kind, name)
        apps[(kind, version, half)] = Appender(store.shard_path(sid, kind, name), kind, width, 0, shard_id=sid,
                                               dtype=dtype)
    try:
        moved_multi: dict[tuple[int, int], int] = {}
        moved_single: dict[tuple[int, int], int] = {}
        updates = []
        for page_id, m_shard, m_off, n_tok, s_shard, s_row in locations:
            m_key, s_key = (m_shard, m_off), (s_shard, s_row)
            m_app, s_app = apps[layout[m_shard]], apps[layout[s_shard]]
            if m_key not in moved_multi:  # copies of one document share their vectors: keep sharing
                moved_multi[m_key] = m_app.append(maps[m_shard][m_off:m_off + n_tok])
            if s_key not in moved_single:
                moved_single[s_key] = s_app.append(maps[s_shard][s_row:s_row + 1])
            updates.append((m_app.shard_id, moved_multi[m_key], s_app.shard_id, moved_single[s_key], page_id))
        for app in apps.values():
            app.sync()
        fsync_dir(os.path.dirname(next(iter(apps.values())).path))
        store.swap_shards({group: (sid, apps[group].rows) for group, sid in new_ids.items()}, updates,
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
    fsync_dir(os.path.dirname(next(iter(apps.values())).path))
    after = sum(app.size for app in apps.values())
    return before - after


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0
