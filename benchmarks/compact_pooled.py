"""Compact search at scale: the compact default (pooled means first, then the centroid lists and the
single vector) against its variants (issue 11, section 2; the README's "Compact storage" figures).

Opens an index built by ``million.py`` (``--dir`` holds ``index/`` and ``queries.npz``), or the
compact profile of a real-text set (``--realtext``). The index's writer syncs it first (the product
path: a generation saved before compact indexes pooled at sync gets its means now, once, and keeps
them), then a reader loads the saved structures, as ``pagelens search`` does. ``--means`` other than
the default pools in memory instead (nothing is written). Compares, in alternating blocks (the first
block only warms up): the default; pooled first + lists (no single); pooled first + lists + single at
K and 1.5 K; pooled first + single; and the lists + single that were the compact default before, at
their K rule. Prints recall@10 against exhaustive MaxSim over the same codes (and, on real text,
against fp16 exhaustive), p50 / p95 latency, the sync time and the pooled index's bytes a page.

    python benchmarks/compact_pooled.py --dir /tmp/m100k --queries 30
    python benchmarks/compact_pooled.py --realtext large --queries 300   # real text (after compact_search.py)
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
from scoring import rank  # noqa: E402
from scoring.pooled import COMPACT_MEANS  # noqa: E402


def load(args) -> tuple[Path, list, list | None]:
    """(index folder, [(query multi, query single)], fp16 truth rows as page-id sets or None)."""
    if args.realtext is None:
        z = np.load(args.dir / "queries.npz")
        return args.dir / "index", list(zip(z["multi"][: args.queries], z["single"][: args.queries])), None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from realtext import DEFAULT_ROOT, exhaustive_truth, load_set  # noqa: PLC0415

    ds = load_set(DEFAULT_ROOT, args.realtext, args.queries)
    folder = DEFAULT_ROOT / f"compact-{args.realtext}" / "compact"
    if not (folder / "manifest.json").exists():
        sys.exit(f"no {folder}: run `python benchmarks/compact_search.py --set {args.realtext} --profiles compact`")
    live = Store.open(folder).live_page_ids()  # pages were added in the set's order: ids ascend with rows
    fp16 = DEFAULT_ROOT / f"index-{args.realtext}"
    rows, _ = exhaustive_truth(pagelens.Index.open(fp16), ds, np.load(fp16 / "realtext-page-ids.npy"), fp16)
    return folder, list(zip(ds.q_multi, ds.q_single)), [{int(live[r]) for r in row} for row in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="a million.py --dir (index/ and queries.npz)")
    ap.add_argument("--realtext", default=None, help="or a real-text set (small, large) whose compact profile "
                    "compact_search.py built; recall is then given against fp16 exhaustive too")
    ap.add_argument("--means", type=int, default=COMPACT_MEANS, help="pooled means a page")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--candidates", type=int, default=400, help="K for the pooled-first searches")
    args = ap.parse_args()
    if (args.dir is None) == (args.realtext is None):
        ap.error("give --dir or --realtext")
    folder, qs, fp16_truth = load(args)
    t0 = time.perf_counter()
    writer = pagelens.Index.open(folder, writable=True)
    writer.sync()
    writer.close()
    synced = time.perf_counter() - t0
    index = pagelens.Index.open(folder)
    store = Store.open(folder)
    narrow = store.single_width if store.single_width != store.single_dim else None
    with tempfile.TemporaryDirectory() as scratch:
        saved = args.means == COMPACT_MEANS
        t0 = time.perf_counter()
        retriever = Retriever(folder / "derived" if saved else scratch, store, persist=False, pool_clusters=args.means,
                              single_dim=narrow)
        retriever.sync()
        loaded = time.perf_counter() - t0
    if retriever.pooled is None:
        sys.exit("the saved structures have no pooled means: the writer's sync should have built them")
    pooled_bytes = sum(np.asarray(v).nbytes for v in retriever.pooled.to_arrays().values())
    print(f"writer sync {synced:.1f} s; reader load{'' if saved else ' with pooling in memory'} {loaded:.1f} s;"
          f" {args.means} means a page, {retriever.pooled.codec}: {pooled_bytes / len(retriever.included):,.0f} B a page",
          flush=True)
    embs = [pagelens.Embedding(single=s, multi=q) for q, s in qs]
    if args.realtext is None:  # shared with million.py's run over the same index
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from million import cached_truth  # noqa: PLC0415

        truth, _ = cached_truth(index, embs, args.dir)
    else:
        truth = [{h.page_id for h in t} for t in index.search_embeddings(embs, k=10, exhaustive=True)]
    k, n = args.candidates, len(retriever.included)
    before = int(min(1600, max(rank.default_candidates(n), n // 80)))  # the lists-first rule it replaced
    configs = {
        f"default (K={rank.compact_candidates(n)})": {},
        f"pooled first + lists, K={k}": {"generators": ["pooled", "tokens"], "candidates": k},
        f"pooled first + lists + single, K={k}": {"generators": ["pooled", "tokens", "single"], "candidates": k},
        f"pooled first + lists + single, K={k * 3 // 2}": {"generators": ["pooled", "tokens", "single"],
                                                           "candidates": k * 3 // 2},
        f"pooled first + single, K={k}": {"generators": ["pooled", "single"], "candidates": k},
        f"lists + single (the default before), K={before}": {"generators": ["tokens", "single"], "candidates": before},
    }
    lat = {name: [] for name in configs}
    rec = {name: [] for name in configs}
    rec16 = {name: [] for name in configs}
    for block in range(3):
        for name, kw in configs.items():
            for i, ((q, s), want) in enumerate(zip(qs, truth)):
                t1 = time.perf_counter()
                hits = retriever.search(q, s, k=10, **kw)
                if block:
                    lat[name].append((time.perf_counter() - t1) * 1e3)
                    rec[name].append(len({p for p, _ in hits} & want) / 10)
                    if fp16_truth is not None:
                        rec16[name].append(len({p for p, _ in hits} & fp16_truth[i]) / 10)
    for name in configs:
        extra = f" (against fp16 exhaustive {np.mean(rec16[name]):.3f})" if fp16_truth is not None else ""
        print(f"{name}: recall@10 against exhaustive over the codes {np.mean(rec[name]):.3f}{extra},"
              f" p50 {np.median(lat[name]):.1f} ms, p95 {np.percentile(lat[name], 95):.1f} ms")


if __name__ == "__main__":
    main()
