"""kill -9 while the derived search structures are being synced and saved: the index still opens,
and search gives what a fresh rebuild from the store gives."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

import pagelens

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "derived_kill_entry.py")


def _queries(n=8):
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        s = rng.standard_normal(64).astype(np.float32)
        m = rng.standard_normal((5, 16)).astype(np.float32)
        out.append(pagelens.Embedding(s / np.linalg.norm(s), m / np.linalg.norm(m, axis=1, keepdims=True)))
    return out


def test_kill_9_during_derived_sync_then_search_matches_a_rebuild(tmp_path):
    index_dir = tmp_path / "idx"
    pagelens.Index.create(index_dir, single_dim=64, multi_dim=16).close()
    rng = random.Random(99)
    kills = 0
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, ENTRY, str(index_dir), ROOT, str(round_)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(rng.randint(2, 6)):  # let it commit and sync a few documents
            if not proc.stdout.readline():
                break
        time.sleep(rng.uniform(0.0, 0.05))  # then kill at a random moment, often mid-sync
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]

        survivor = pagelens.Index.open(index_dir)
        pages = survivor.info().pages
        # a shortlist far below the page count, so the derived structures decide the candidates
        got = [survivor.search_embedding(q, k=5, candidates=8) for q in _queries()]
        survivor.close()
        shutil.copytree(index_dir, tmp_path / f"fresh{round_}", ignore=shutil.ignore_patterns("derived"))
        fresh = pagelens.Index.open(tmp_path / f"fresh{round_}")
        rebuilt = [fresh.search_embedding(q, k=5, candidates=8) for q in _queries()]
        fresh.close()
        assert pages > 8
        assert [[(h.path, h.page) for h in r] for r in got] == [[(h.path, h.page) for h in r] for r in rebuilt]
    assert kills >= 3
