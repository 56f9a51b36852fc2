"""A hostile or damaged index folder: nothing outside it is touched, damage is named, never "repaired"
by deleting data, and readers work on read-only and full file systems."""

import json
import os
import sqlite3

import numpy as np
import pytest

from engine.types import Embedding
from indexer.errors import CorruptIndexError, IndexExistsError, ReadOnlyError
from indexer.shards import shard_file_name
from indexer.sources import SourceFile
from indexer.store import Store
from tests.mounts import mount, unmount


def emb(seed: int, tokens: int = 4) -> Embedding:
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(32).astype(np.float32)
    m = rng.standard_normal((tokens, 16)).astype(np.float32)
    return Embedding(s / np.linalg.norm(s), m / np.linalg.norm(m, axis=1, keepdims=True))


def src(path: str, sha: str = "x") -> SourceFile:
    return SourceFile(path=path, size=1, mtime=0.0, sha256=sha)


def make_index(tmp_path, docs: int = 2) -> str:
    d = str(tmp_path / "idx")
    s = Store.create(d, identity=None, single_dim=32, multi_dim=16)
    for i in range(docs):
        s.add_document(src(f"/docs/{i}.pdf", f"h{i}"), [emb(10 * i + 1), emb(10 * i + 2)])
    s.close()
    return d


def victims(tmp_path) -> dict:
    out = {}
    for name in ("abs-victim", "rel-victim", "third-victim"):
        p = tmp_path / name
        p.write_bytes(b"precious user data\n" * 100)
        out[name] = str(p)
    return out


def untouched(files: dict) -> bool:
    return all(os.path.getsize(p) == 1900 and open(p, "rb").read(18) == b"precious user data" for p in files.values())


def sql(d: str, statement: str, params=()) -> None:
    db = sqlite3.connect(os.path.join(d, "catalogue.sqlite"))
    db.execute(statement, params)
    db.commit()
    db.close()


# --- paths read from the catalogue are data -----------------------------------------------------

def test_crafted_shard_rows_never_touch_files_outside_the_index(tmp_path):
    d = make_index(tmp_path)
    v = victims(tmp_path)
    rel = os.path.relpath(v["rel-victim"], os.path.join(d, "shards"))
    sql(d, "INSERT INTO shards (kind, file, committed_rows) VALUES ('single', ?, 0)", (v["abs-victim"],))
    sql(d, "INSERT INTO shards (kind, file, committed_rows) VALUES ('multi', ?, 0)", (rel,))
    for opener in (lambda: Store.open(d, writable=True), lambda: Store.open(d)):
        with pytest.raises(CorruptIndexError) as exc:
            opener()
        assert "not a pagelens shard name" in exc.value.message
    assert untouched(v)
    # and the index's own data is still all there for whoever repairs it
    assert sorted(os.listdir(os.path.join(d, "shards"))) == [shard_file_name("multi", 1), shard_file_name("single", 2)]


def test_a_well_named_row_of_another_kind_or_id_is_refused(tmp_path):
    d = make_index(tmp_path)
    sql(d, "UPDATE shards SET file = ? WHERE kind = 'multi'", (shard_file_name("multi", 99),))
    with pytest.raises(CorruptIndexError):
        Store.open(d)


def test_links_planted_in_the_index_folder_are_refused_and_not_followed(tmp_path):
    d = make_index(tmp_path)
    v = victims(tmp_path)
    shard = os.path.join(d, "shards", shard_file_name("multi", 1))
    os.rename(shard, shard + ".moved")
    os.symlink(v["abs-victim"], shard)
    with pytest.raises(CorruptIndexError) as exc:
        Store.open(d, writable=True)
    assert "symbolic link" in exc.value.message
    os.unlink(shard)
    os.rename(shard + ".moved", shard)
    # an orphan-looking link in shards/ is removed itself, its target stays
    os.symlink(v["rel-victim"], os.path.join(d, "shards", shard_file_name("multi", 77)))
    # a planted temp file link must not be written through when the manifest is rewritten
    os.symlink(v["third-victim"], os.path.join(d, "manifest.json.tmp"))
    Store.open(d, writable=True).close()
    assert untouched(v)
    assert not os.path.lexists(os.path.join(d, "shards", shard_file_name("multi", 77)))
    from indexer.shards import atomic_write_json
    os.symlink(v["third-victim"], os.path.join(d, "x.json.tmp"))
    atomic_write_json(os.path.join(d, "x.json"), {"a": 1})
    assert untouched(v) and json.load(open(os.path.join(d, "x.json"))) == {"a": 1}


def test_a_shards_folder_that_is_a_link_is_refused(tmp_path):
    d = make_index(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / shard_file_name("multi", 55)).write_bytes(b"not ours")  # looks like an orphan shard
    os.rename(os.path.join(d, "shards"), str(tmp_path / "real-shards"))
    os.symlink(str(outside), os.path.join(d, "shards"))
    with pytest.raises(CorruptIndexError):
        Store.open(d, writable=True)
    assert (outside / shard_file_name("multi", 55)).read_bytes() == b"not ours"


def test_writer_lock_link_is_refused(tmp_path):
    d = make_index(tmp_path)
    v = victims(tmp_path)
    os.unlink(os.path.join(d, "writer.lock"))
    os.symlink(v["abs-victim"], os.path.join(d, "writer.lock"))
    with pytest.raises(CorruptIndexError):
        Store.open(d, writable=True)
    assert untouched(v)


def test_unknown_files_in_shards_are_left_alone(tmp_path):
    d = make_index(tmp_path)
    (tmp_path / "idx" / "shards" / "README.txt").write_text("a note someone left")
    Store.open(d, writable=True).close()
    assert (tmp_path / "idx" / "shards" / "README.txt").read_text() == "a note someone left"


def test_page_rows_pointing_outside_committed_data_are_corruption(tmp_path):
    d = make_index(tmp_path)
    sql(d, "UPDATE pages SET multi_offset = 10000 WHERE page_id = 2")
    with pytest.raises(CorruptIndexError) as exc:
        Store.open(d)
    assert "page id 2" in exc.value.message
    d2 = make_index(tmp_path / "b")
    sql(d2, "UPDATE pages SET n_tokens = -3 WHERE page_id = 1")
    with pytest.raises(CorruptIndexError):
        Store.open(d2)
    d3 = make_index(tmp_path / "c")
    sql(d3, "UPDATE pages SET single_shard = multi_shard WHERE page_id = 1")  # a multi shard read as single
    with pytest.raises(CorruptIndexError):
        Store.open(d3)
    d4 = make_index(tmp_path / "d")
    sql(d4, "UPDATE pages SET multi_offset = 'x' WHERE page_id = 1")
    with pytest.raises(CorruptIndexError):
        Store.open(d4)


@pytest.mark.parametrize("change", [
    {"single_dim": "abc"}, {"multi_dim": -1}, {"format_version": "1"}, {"identity": "x"}, {"settings": [1]},
])
def test_hostile_manifest_values_are_corruption_not_crashes(tmp_path, change):
    d = make_index(tmp_path)
    m = json.load(open(os.path.join(d, "manifest.json")))
    m.update(change)
    json.dump(m, open(os.path.join(d, "manifest.json"), "w"))
    with pytest.raises(CorruptIndexError):
        Store.open(d)


# --- a damaged catalogue is named, never re-initialised --------------------------------------------

def test_emptied_catalogue_is_refused_and_nothing_is_deleted(tmp_path):
    d = make_index(tmp_path)
    shards_before = sorted(os.listdir(os.path.join(d, "shards")))
    sizes = [os.path.getsize(os.path.join(d, "shards", n)) for n in shards_before]
    open(os.path.join(d, "catalogue.sqlite"), "wb").close()  # `: > catalogue.sqlite`
    for writable in (False, True):
        with pytest.raises(CorruptIndexError) as exc:
            Store.open(d, writable=writable)
        assert "no pagelens catalogue" in exc.value.message
    assert sorted(os.listdir(os.path.join(d, "shards"))) == shards_before
    assert [os.path.getsize(os.path.join(d, "shards", n)) for n in shards_before] == sizes
    assert os.path.getsize(os.path.join(d, "catalogue.sqlite")) == 0  # not silently re-created


def test_catalogue_of_another_index_is_refused(tmp_path):
    a, b = make_index(tmp_path / "a"), make_index(tmp_path / "b", docs=1)
    os.replace(os.path.join(b, "catalogue.sqlite"), os.path.join(a, "catalogue.sqlite"))
    with pytest.raises(CorruptIndexError) as exc:
        Store.open(a, writable=True)
    assert "does not belong to this index" in exc.value.message


@pytest.mark.parametrize("damage", ["truncate", "header", "middle"])
def test_damaged_catalogue_is_a_clear_error(tmp_path, damage):
    d = make_index(tmp_path, docs=40)
    path = os.path.join(d, "catalogue.sqlite")
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "header":
        data[0:16] = b"X" * 16
    else:
        for i in range(4096, len(data), 997):
            data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))
    for writable in (False, True):
        try:
            s = Store.open(d, writable=writable)
        except CorruptIndexError as exc:
            assert "catalogue" in exc.message or "page" in exc.message
            continue
        # SQLite may not notice damage in pages it has not read: the integrity check must
        report = s.check_integrity()
        s.close()
        assert not report.ok


def test_leftover_catalogue_with_data_but_no_manifest_is_not_reused(tmp_path):
    d = make_index(tmp_path)
    os.unlink(os.path.join(d, "manifest.json"))
    with pytest.raises((CorruptIndexError, IndexExistsError)):
        Store.create(d, identity=None, single_dim=32, multi_dim=16)
    assert len(os.listdir(os.path.join(d, "shards"))) == 2


# --- readers never write, and work where writing is impossible ----------------------------------

def _mount_ro(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    mount("--bind", src, dst)
    mount("-o", "remount,bind,ro", dst)


def test_reader_on_a_read_only_file_system(tmp_path):
    d = make_index(tmp_path)
    ro = str(tmp_path / "ro")
    _mount_ro(d, ro)
    try:
        r = Store.open(ro)
        assert len(r.live_page_ids()) == 4 and r.stats().pages == 4
        assert r.check_integrity().ok
        with pytest.raises(ReadOnlyError):
            r.record_failure("/x.pdf", "no")
        r.close()
    finally:
        unmount(ro)


def test_reader_on_a_full_disk(tmp_path):
    mnt = str(tmp_path / "small")
    os.makedirs(mnt)
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt)
    try:
        d = os.path.join(mnt, "idx")
        s = Store.create(d, identity=None, single_dim=32, multi_dim=16)
        s.add_document(src("/a.pdf"), [emb(1), emb(2)])
        s.close()
        fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk to the last byte
            while True:
                os.write(fd, b"\0" * 512)
        except OSError:
            pass
        os.close(fd)
        reader = Store.open(d)
        assert len(reader.live_page_ids()) == 2
        assert reader.multi_vectors(reader.live_page_ids())[1].shape == (4, 16)
        reader.close()
    finally:
        unmount(mnt)


# --- damage is detected and named -------------------------------------------------------------------

def test_check_integrity_names_the_damaged_document_and_mark_for_reindex(tmp_path):
    d = make_index(tmp_path, docs=3)
    s = Store.open(d, writable=True)
    page = s.page_ids_of("/docs/1.pdf")[1]
    s.close()
    db = sqlite3.connect(os.path.join(d, "catalogue.sqlite"))
    shard, offset = db.execute("SELECT multi_shard, multi_offset FROM pages WHERE page_id = ?", (int(page),)).fetchone()
    db.close()
    path = os.path.join(d, "shards", shard_file_name("multi", shard))
    with open(path, "r+b") as fh:  # one flipped byte in page 2 of /docs/1.pdf
        fh.seek(offset * 16 * 2 + 5)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x10]))
    r = Store.open(d)
    report = r.check_integrity()
    assert not report.ok and report.pages_checked == 6 and report.problems == []
    assert [(x.path, x.pages) for x in report.damaged] == [("/docs/1.pdf", [2])]
    with pytest.raises(CorruptIndexError):
        r.verify()
    r.close()
    w = Store.open(d, writable=True)
    assert w.mark_for_reindex(["/docs/1.pdf"]) == 1
    assert "/docs/1.pdf" not in w.indexed_sha256s() and "/docs/0.pdf" in w.indexed_sha256s()
    w.close()


def test_missing_shard_is_an_index_level_problem(tmp_path):
    d = make_index(tmp_path)
    s = Store.open(d)
    os.unlink(os.path.join(d, "shards", shard_file_name("single", 2)))
    report = s.check_integrity()
    assert report.problems and not report.ok
    s.close()


def test_compact_counts_the_orphan_bytes_recovery_removed(tmp_path):
    d = make_index(tmp_path)
    orphan = os.path.join(d, "shards", shard_file_name("multi", 9))
    with open(orphan, "wb") as fh:
        fh.write(b"\0" * 100_000)  # what a compaction killed before its commit leaves
    with open(os.path.join(d, "shards", shard_file_name("multi", 1)), "ab") as fh:
        fh.write(b"\1" * 3000)  # a torn tail
    s = Store.open(d, writable=True)
    assert not os.path.exists(orphan)
    assert s.compact() >= 103_000
    s.close()


# --- long documents commit in chunks and resume -------------------------------------------------

def test_long_document_commits_in_chunks_invisible_until_complete_and_resumes(tmp_path):
    d = str(tmp_path / "idx")
    s = Store.create(d, identity=None, single_dim=32, multi_dim=16)
    s.checkpoint_pages = 4
    s.add_document(src("/short.pdf", "s"), [emb(1)])
    source = src("/long.pdf", "L")
    with pytest.raises(KeyboardInterrupt):
        with s.document_writer(source) as w:
            for n in range(1, 11):
                w.add_page(n, 10, 10, emb(100 + n))
                if n == 10:
                    raise KeyboardInterrupt  # Ctrl-C at page 10: pages 1-8 are committed
    assert len(s.live_page_ids()) == 1  # searches never see the half-done document
    reader = Store.open(d)
    assert len(reader.live_page_ids()) == 1 and reader.stats().pages == 1
    assert reader.stats().partial_documents == 1
    assert s.partial_documents() == {"/long.pdf": ("L", 8)}
    assert "/long.pdf" not in s.indexed_sha256s()
    # another content at the same path starts over; the same content resumes after page 8
    assert s.resume_point(src("/long.pdf", "other")) is None
    with s.document_writer(source, resume=True) as w:
        assert w.first_page == 9
        for n in range(9, 13):
            w.add_page(n, 10, 10, emb(100 + n))
    ids = w.page_ids
    assert len(ids) == 12 and ids == sorted(ids)
    s.close()
    reader.refresh()
    assert len(reader.live_page_ids()) == 13
    got = reader.multi_vectors(ids)
    for n, m in zip(range(1, 13), got):
        np.testing.assert_allclose(m, emb(100 + n).multi, atol=2e-3)
    assert reader.check_integrity().ok and reader.stats().partial_documents == 0
    reader.close()


def test_byo_identifier_is_kept_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Store.create(tmp_path / "byo", identity=None, single_dim=32, multi_dim=16)
    ids = s.add_document("s3://bucket/report.pdf", [emb(1)])
    assert s.pages_info(ids) == [("s3://bucket/report.pdf", 1)]
    assert s.document("s3://bucket/report.pdf").page_count == 1
    assert s.remove_document("s3://bucket/report.pdf") == 1
    s.close()


def test_schema_1_index_is_read_as_is_and_migrated_by_a_writer(tmp_path):
    d = make_index(tmp_path)
    db = sqlite3.connect(os.path.join(d, "catalogue.sqlite"))  # make it what pagelens 0.1 wrote
    db.execute("ALTER TABLE documents DROP COLUMN complete")
    db.execute("DELETE FROM schema_migrations WHERE version = 2")
    db.commit()
    db.close()
    r = Store.open(d)
    assert len(r.live_page_ids()) == 4 and r.stats().documents == 2 and r.documents()[0].complete
    assert r.check_integrity().ok
    r.close()
    w = Store.open(d, writable=True)
    w.add_document(src("/docs/new.pdf", "n"), [emb(99)])
    assert len(w.live_page_ids()) == 5
    w.close()
