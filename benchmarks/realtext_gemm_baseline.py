"""The default search against the strongest plain brute force, side by side in one loop, on a cached
real-text set (``realtext_data.py``): every page zero-padded once to 256 tokens, fp32 in RAM, one
GEMM of the query's tokens against all padded tokens, max per page, sum over query tokens, top 10.
(``realtext.py``'s padded baseline batches 128 pages per einsum, as colpali-engine does; this one is
what a user with enough RAM would write, and the faster of the two.)

    python benchmarks/realtext_gemm_baseline.py --set small --queries 60 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realtext as rt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(rt.DEFAULT_ROOT), help="the cache of realtext_data.py")
    ap.add_argument("--set", default="small")
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pad", type=int, default=256, help="tokens every page is padded to")
    args = ap.parse_args()
    root = Path(args.root)
    ds = rt.load_set(root, args.set, args.queries)
    index, _page_ids, _built = rt.build_index(ds, root / f"index-{args.set}")
    qs = rt.embeddings(ds)
    n, dim = ds.n_pages, ds.multi.shape[1]
    padded = torch.zeros(n, args.pad, dim)
    for i in range(n):
        page = np.asarray(ds.page(i), dtype=np.float32)[: args.pad]
        padded[i, : len(page)] = torch.from_numpy(page)
    flat = padded.reshape(n * args.pad, dim)

    def brute(q):
        s = torch.from_numpy(np.asarray(q.multi, np.float32)) @ flat.T  # [Tq, pages * pad]
        return s.view(len(q.multi), n, args.pad).max(dim=2).values.sum(0).topk(10).indices

    for q in qs[:3]:
        brute(q), index.search_embedding(q, k=10)
    print(f"{args.set}: {n} pages padded to {args.pad} ({flat.numel() * 4 / 2**30:.2f} GiB fp32), "
          f"{len(qs)} queries, torch {torch.get_num_threads()} threads")
    for rnd in range(args.rounds):
        tb, to = [], []
        for q in qs:  # alternating, so both see the same machine
            t = time.perf_counter()
            brute(q)
            tb.append(time.perf_counter() - t)
            t = time.perf_counter()
            index.search_embedding(q, k=10)
            to.append(time.perf_counter() - t)
        b, o = np.median(tb) * 1e3, np.median(to) * 1e3
        print(f"round {rnd}: one-GEMM brute force p50 {b:.1f} ms | default search p50 {o:.1f} ms | {b / o:.2f}x")


if __name__ == "__main__":
    main()
