"""Open-time benchmark: how long `pagelens.Index.open` and the first searches take on a big index,
excluding the model (a bring-your-own-embeddings index, built through the same store and sync code).

    python benchmarks/open_index.py --pages 100000 --tokens 32

Pages get few tokens by default so the build fits a small machine; open time depends on the
page count (catalogue rows, FAISS indexes, pooled vectors), not on the tokens per page.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import pagelens


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def build(directory: Path, pages: int, tokens: int, single_dim: int, per_doc: int) -> float:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    index = pagelens.Index.create(directory, single_dim=single_dim, multi_dim=128)
    for d in range(0, pages, per_doc):
        n = min(per_doc, pages - d)
        singles = unit(rng.standard_normal((n, single_dim)))
        multis = unit(rng.standard_normal((n, tokens, 128)))
        index.add_embeddings(f"docs/doc{d // per_doc:06d}.pdf", [pagelens.Embedding(s, m) for s, m in zip(singles, multis)])
    index.close()  # brings the search structures in step, as a writer does at the end of a run
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=100_000)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--single-dim", type=int, default=2048)
    ap.add_argument("--pages-per-document", type=int, default=200)
    ap.add_argument("--dir", type=Path, default=None, help="reuse or keep the index here")
    args = ap.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="pagelens-open-")) / "index"
    if not (directory / "manifest.json").exists():
        secs = build(directory, args.pages, args.tokens, args.single_dim, args.pages_per_document)
        print(f"built {args.pages:,} pages x {args.tokens} tokens in {secs:.1f} s ({args.pages / secs:.0f} pages/s incl. sync)")
    rng = np.random.default_rng(1)
    query = pagelens.Embedding(unit(rng.standard_normal(args.single_dim)), unit(rng.standard_normal((16, 128))))
    t0 = time.perf_counter()
    index = pagelens.Index.open(directory)
    t1 = time.perf_counter()
    info = index.info()
    t2 = time.perf_counter()
    index.search_embedding(query, k=10)
    t3 = time.perf_counter()
    lat = []
    for _ in range(20):
        s = time.perf_counter()
        index.search_embedding(query, k=10)
        lat.append(time.perf_counter() - s)
    index.close()
    print(f"index: {info.pages:,} pages, {info.documents:,} documents, {info.bytes_on_disk['total'] / 2**30:.2f} GiB on disk")
    print(f"Index.open: {1e3 * (t1 - t0):.0f} ms | info(): {1e3 * (t2 - t1):.0f} ms | first search: {1e3 * (t3 - t2):.0f} ms"
          f" | open + first search: {1e3 * (t3 - t0):.0f} ms   [target: well under 1 s]")
    print(f"repeated search_embedding: p50 {1e3 * np.median(lat):.1f} ms, p95 {1e3 * np.percentile(lat, 95):.1f} ms")
    if args.dir is None:
        shutil.rmtree(directory.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
