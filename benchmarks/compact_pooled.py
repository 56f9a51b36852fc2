"""Compact index at scale: the default compact search against the pooled-means generator first
(issue 11, section 2; the README's "Compact storage" figures for pooled-first search).

Opens an index built by ``million.py`` (``--dir`` holds ``index/`` and ``queries.npz``), builds
the derived structures in memory (nothing is written into the index) with ``pool_clusters`` means
a page pooled from the decoded codes, and compares, in alternating blocks (the first block only
warms up): the default compact generators (centroid lists + single vector), pooled first + lists
+ single, and pooled first + single. Prints recall@10 against exhaustive MaxSim over the same codes
and p50 / p95 latency for each, and the sync time including pooling.

    python benchmarks/compact_pooled.py --dir /tmp/m100k --means 16 --queries 30
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pagelens  # noqa: E402
from indexer.store import Store  # noqa: E402
from pagelens.retrieval import Retriever  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, required=True, help="a million.py --dir (index/ and queries.npz)")
    ap.add_argument("--means", type=int, default=8, help="pooled means a page")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--candidates", type=int, default=400, help="K for the pooled-first searches")
    args = ap.parse_args()
    index = pagelens.Index.open(args.dir / "index")
    z = np.load(args.dir / "queries.npz")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        retriever = Retriever(scratch, Store.open(args.dir / "index"), persist=False, pool_clusters=args.means,
                              pooled=True)
        retriever.sync()
    print(f"sync with pooling ({args.means} means a page): {time.perf_counter() - t0:.1f} s", flush=True)
    qs = list(zip(z["multi"][: args.queries], z["single"][: args.queries]))
    truth = [{h.page_id for h in t} for t in index.search_embeddings(
        [pagelens.Embedding(single=s, multi=q) for q, s in qs], k=10, exhaustive=True)]
    k = args.candidates
    configs = {
        "lists + single (default)": {},
        f"pooled first + lists + single, K={k}": {"generators": ["pooled", "tokens", "single"], "candidates": k},
        f"pooled first + single, K={k}": {"generators": ["pooled", "single"], "candidates": k},
    }
    lat = {name: [] for name in configs}
    rec = {name: [] for name in configs}
    for block in range(3):
        for name, kw in configs.items():
            for (q, s), want in zip(qs, truth):
                t1 = time.perf_counter()
                hits = retriever.search(q, s, k=10, **kw)
                if block:
                    lat[name].append((time.perf_counter() - t1) * 1e3)
                    rec[name].append(len({p for p, _ in hits} & want) / 10)
    for name in configs:
        print(f"{name}: recall@10 {np.mean(rec[name]):.3f}, p50 {np.median(lat[name]):.1f} ms,"
              f" p95 {np.percentile(lat[name], 95):.1f} ms")


if __name__ == "__main__":
    main()
