"""kill -9 of an indexing process at random moments, then reopen and resume."""

import os
import random
import signal
import subprocess
import sys
import time

from indexer.store import Store
from tests.indexer.indexer_fakes import FakeEncoder, make_pdf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "indexer_kill_entry.py")


def check_consistent(index_dir, expected_pages):
    """Only complete documents, no duplicates, every committed byte intact."""
    s = Store.open(index_dir)
    try:
        ids = s.live_page_ids()
        info = s.pages_info(ids)
        assert len(set(info)) == len(info)
        by_doc = {}
        for path, number in info:
            by_doc.setdefault(path, []).append(number)
        for path, numbers in by_doc.items():
            assert sorted(numbers) == list(range(1, expected_pages[path] + 1)), path
        assert s.verify() == len(ids)
        return {p: list(s.page_ids_of(p)) for p in by_doc}
    finally:
        s.close()


def test_kill_9_at_random_moments_then_resume(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    expected = {}
    for i in range(8):
        path = make_pdf(docs / f"d{i}.pdf", 3 + i % 4, seed=i)
        expected[path] = 3 + i % 4
    enc = FakeEncoder()
    index_dir = str(tmp_path / "idx")
    Store.create(index_dir, identity=enc.identity, single_dim=enc.single_dim, multi_dim=enc.multi_dim).close()
    rng = random.Random(20240603)
    kept: dict[str, list[int]] = {}
    kills = 0
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, ENTRY, index_dir, str(docs), "0.06", ROOT],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if round_ == 0:
            time.sleep(0.4)  # mid-start-up or mid-first-document
        else:
            proc.stdout.readline()  # let it commit a document, then kill at a random moment
            time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        out, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()
        now = check_consistent(index_dir, expected)
        for path, ids in kept.items():  # finished documents keep their page ids across resumes
            assert now[path] == ids
        kept = now
        if b"finished" in out:
            break
    assert kills >= 2
    proc = subprocess.run([sys.executable, ENTRY, index_dir, str(docs), "0", ROOT], capture_output=True,
                          timeout=60)
    assert b"finished all_indexed" in proc.stdout, proc.stderr.decode()
    final = check_consistent(index_dir, expected)
    assert sorted(final) == sorted(expected)
    for path, ids in kept.items():
        assert final[path] == ids
    s = Store.open(index_dir)
    assert s.stats().pages == sum(expected.values()) and s.stats().dead_bytes == 0
    s.close()
