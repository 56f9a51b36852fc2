"""Space: what the shards hold, what is dead, and compaction that reclaims it.

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

from indexer import catalogue as cat
from indexer.manifest import DERIVED_DIR, MANIFEST_NAME
from indexer.shards import SHARD_DIR, Appender, fsync_dir, map_rows, row_bytes, shard_file_name

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


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def shard_usage(store: "Store") -> tuple[dict, dict]:
    """(committed bytes per shard, live bytes per shard); copies share bytes, counted once."""
    committed, live = {}, {}
    for sid, kind, rows in store._db.execute("SELECT id, kind, committed_rows FROM shards"):
        committed[sid] = (kind, rows * row_bytes(kind, store._dim(kind)))
    for sid, tokens in store._db.execute("SELECT multi_shard, SUM(n_tokens) FROM (SELECT DISTINCT multi_shard,"
                                        " multi_offset, n_tokens FROM pages) GROUP BY multi_shard"):
        live[sid] = tokens * row_bytes("multi", store.multi_dim)
    for sid, count in store._db.execute("SELECT single_shard, COUNT(*) FROM (SELECT DISTINCT single_shard,"
                                       " single_row FROM pages) GROUP BY single_shard"):
        live[sid] = count * row_bytes("single", store.single_dim)
    return committed, live

def store_stats(store: "Store") -> StoreStats:
    db = store._db
    docs = dict(db.execute("SELECT status, COUNT(*) FROM documents GROUP BY status").fetchall())
    pages, tokens = db.execute("SELECT COUNT(*), COALESCE(SUM(n_tokens), 0) FROM pages").fetchone()
    parts = {"catalogue": 0, "multi_vectors": 0, "single_vectors": 0, "manifest": 0, DERIVED_DIR: 0}
    for suffix in ("", "-wal", "-shm"):
        p = os.path.join(store.directory, cat.CATALOGUE_NAME + suffix)
        parts["catalogue"] += os.path.getsize(p) if os.path.exists(p) else 0
    for _sid, kind, name in db.execute("SELECT id, kind, file FROM shards"):
        p = os.path.join(store.directory, SHARD_DIR, name)
        parts[f"{kind}_vectors"] += os.path.getsize(p) if os.path.exists(p) else 0
    parts["manifest"] = os.path.getsize(os.path.join(store.directory, MANIFEST_NAME))
    parts[DERIVED_DIR] = _dir_bytes(os.path.join(store.directory, DERIVED_DIR))
    return StoreStats(
        documents=docs.get("indexed", 0), failed_documents=docs.get("failed", 0), pages=pages, vectors=tokens,
        bytes_by_part=parts, total_bytes=sum(parts.values()), dead_bytes=store.dead_bytes(),
        identity=store.identity, format_version=store.format_version, single_dim=store.single_dim,
        multi_dim=store.multi_dim)


def compact_store(store: "Store") -> int:
    store._require_writable()
    if store._writer_open:
        raise RuntimeError("cannot compact while a document writer is open")
    for app in store._apps.values():
        app.close()
    store._apps.clear()
    db, shard_dir = store._db, os.path.join(store.directory, SHARD_DIR)

    old = db.execute("SELECT id, kind, file, committed_rows FROM shards").fetchall()
    before = sum(os.path.getsize(os.path.join(shard_dir, f)) for _i, _k, f, _r in old
                 if os.path.exists(os.path.join(shard_dir, f)))
    maps = {sid: map_rows(os.path.join(shard_dir, f), kind, store._dim(kind), rows) for sid, kind, f, rows in old}
    pages = db.execute("SELECT page_id, multi_shard, multi_offset, n_tokens, single_shard, single_row FROM pages"
                       " ORDER BY page_id").fetchall()
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'shards'").fetchone()
    next_id = int(seq[0] if seq else 0) + 1
    new_ids = {"multi": next_id, "single": next_id + 1}
    apps = {kind: Appender(os.path.join(shard_dir, shard_file_name(kind, sid)), kind, store._dim(kind), 0,
                           shard_id=sid) for kind, sid in new_ids.items()}
    try:
        moved_multi: dict[tuple[int, int], int] = {}
        moved_single: dict[tuple[int, int], int] = {}
        updates = []
        for page_id, m_shard, m_off, n_tok, s_shard, s_row in pages:
            m_key, s_key = (m_shard, m_off), (s_shard, s_row)
            if m_key not in moved_multi:  # copies of one document share their vectors: keep sharing
                moved_multi[m_key] = apps["multi"].append(maps[m_shard][m_off:m_off + n_tok])
            if s_key not in moved_single:
                moved_single[s_key] = apps["single"].append(maps[s_shard][s_row:s_row + 1])
            updates.append((new_ids["multi"], moved_multi[m_key], new_ids["single"], moved_single[s_key], page_id))
        for app in apps.values():
            app.sync()
        fsync_dir(shard_dir)
        with cat.transaction(db):
            for kind, sid in new_ids.items():
                db.execute("INSERT INTO shards (id, kind, file, committed_rows) VALUES (?, ?, ?, ?)",
                           (sid, kind, shard_file_name(kind, sid), apps[kind].rows))
            db.executemany("UPDATE pages SET multi_shard = ?, multi_offset = ?, single_shard = ?, single_row = ?"
                           " WHERE page_id = ?", updates)
            db.executemany("DELETE FROM shards WHERE id = ?", [(sid,) for sid, *_rest in old])
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
    store._snap = None
    for _sid, _kind, name, _rows in old:
        try:
            os.unlink(os.path.join(shard_dir, name))
        except FileNotFoundError:
            pass
    fsync_dir(shard_dir)
    after = sum(app.size for app in apps.values())
    return before - after
