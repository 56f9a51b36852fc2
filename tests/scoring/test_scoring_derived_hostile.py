"""Derived search files are rebuildable: any damage means rebuild, a crafted state opens nothing
outside derived/, and a reader (persist=False) never writes into the index folder."""

import json
import os

import numpy as np

from pagelens.retrieval import Retriever

from .conftest import normalise


def snapshot_tree(root):
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(base, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def query(source, pid=3):
    single, multi = source.pages[pid]
    return normalise(multi[:4].astype(np.float32)), single


def saved(tmp_path, source):
    w = Retriever(tmp_path / "derived", source)
    w.sync()
    return tmp_path / "derived"


def test_damaged_derived_file_of_the_same_size_means_rebuild(tmp_path, source):
    d = saved(tmp_path, source)
    m, s = query(source)
    truth = Retriever(tmp_path / "fresh", source, persist=False)
    truth.sync()
    expected = truth.search(m, s, k=5)
    gen = next(p for p in d.iterdir() if p.name.startswith("gen-"))
    for f in sorted(gen.iterdir()):  # zero the tail of every file, sizes unchanged
        data = bytearray(f.read_bytes())
        data[len(data) // 2:] = b"\0" * (len(data) - len(data) // 2)
        f.write_bytes(bytes(data))
    r = Retriever(d, source)  # must not raise (np.load raised tokenize.TokenError here)
    assert len(r.included) == 0  # the damaged generation was discarded ...
    assert r.search(m, s, k=5) == expected  # a lagging structure hides nothing (unindexed pages are reranked)
    r.sync()  # ... and rebuilt
    assert r.search(m, s, k=5) == expected
    assert len(Retriever(d, source).included) == len(source.live_page_ids())  # the writer saved the rebuild


def test_crafted_state_names_are_not_opened(tmp_path, source):
    d = saved(tmp_path, source)
    outside = tmp_path / "secret.npy"
    np.save(outside, np.arange(5))
    state = json.loads((d / "state.json").read_text())
    state["files"]["../../secret"] = os.path.getsize(outside)
    (d / "state.json").write_text(json.dumps(state))
    r = Retriever(d, source, persist=False)
    assert len(r.included) == 0  # refused as a whole, rebuilt in memory on sync
    r.sync()
    m, s = query(source)
    assert r.search(m, s, k=3)[0][0] == 3


def test_reader_never_writes_even_when_it_must_rebuild(tmp_path, source):
    d = tmp_path / "derived"
    d.mkdir()
    before = snapshot_tree(tmp_path)
    r = Retriever(d, source, persist=False)
    r.sync()
    m, s = query(source)
    assert r.search(m, s, k=3)[0][0] == 3
    assert snapshot_tree(tmp_path) == before
