"""How a compact index's candidate generators should share the shortlist (issue 11, section 2; the
README's "Compact storage", the choice of ``shares="each"`` and of K).

For each query, every generator's ranking is taken once, deep (the pooled means, the centroid lists
with their pre-scores, the single vector), and the exact MaxSim of
every page any of them proposed. Each scheme is then a set of those pages; its top 10 by exact score is
compared with exhaustive MaxSim over the same codes (and, on real text, fp16 exhaustive), and the
pages it would rerank are counted. No timing: ``compact_pooled.py`` times the product path.

    python benchmarks/compact_shares.py --realtext large --queries 100
    python benchmarks/compact_shares.py --dir /tmp/m100k --queries 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pagelens  # noqa: E402
from compact_pooled import load  # noqa: E402
from indexer.store import Store  # noqa: E402
from pagelens.retrieval import Retriever  # noqa: E402
from scoring import rank  # noqa: E402
from scoring.maxsim import maxsim  # noqa: E402

DEPTH = 1600  # deepest K tried


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="a million.py --dir (index/ and queries.npz)")
    ap.add_argument("--realtext", default=None, help="or a real-text set whose compact profile compact_search.py built")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--ks", default="200,400,600,800")
    args = ap.parse_args()
    if (args.dir is None) == (args.realtext is None):
        ap.error("give --dir or --realtext")
    folder, qs, fp16_truth = load(args)
    store = Store.open(folder)
    narrow = store.single_width if store.single_width != store.single_dim else None
    r = Retriever(folder / "derived", store, persist=False, single_dim=narrow)  # the saved structures
    r.sync()
    # a compact index holds no single prefilter until asked: a reader's first "single" search builds
    # it in memory (nothing is written), so its share can be measured too
    r.search(np.asarray(qs[0][0], np.float32), np.asarray(qs[0][1], np.float32), k=1, generators=["single"])
    if r.pooled is None:
        sys.exit("no pooled means saved: run compact_pooled.py (its writer's sync builds them) first")
    index = pagelens.Index.open(folder)
    embs = [pagelens.Embedding(single=s, multi=q) for q, s in qs]
    if args.realtext is None:
        from million import cached_truth  # noqa: PLC0415

        truth, _ = cached_truth(index, embs, args.dir)
    else:
        truth = [{h.page_id for h in t} for t in index.search_embeddings(embs, k=10, exhaustive=True)]
    runs = []
    for q, s in qs:
        q = np.asarray(q, np.float32)
        pooled, _ = r.pooled.candidates(q, DEPTH, per_token=rank.COMPACT_PER_TOKEN)
        lists, pre = r.tokens.candidates(q, DEPTH + 1, nprobe=rank.DEFAULT_NPROBE)
        found, _ = r.prefilter.search(np.asarray(s, np.float32), DEPTH)
        single = found[0][found[0] >= 0]
        pages = np.unique(np.concatenate([pooled, lists, single]))
        exact = dict(zip(pages.tolist(), maxsim(q, list(store.multi_vectors(pages))).tolist()))
        runs.append({"pooled": pooled, "lists": lists, "pre": pre, "single": single, "exact": exact})
    print(f"{folder}: {len(r.included):,} pages, {len(qs)} queries")

    def evaluate(name, pick):
        codes, fp16, sizes = [], [], []
        for i, x in enumerate(runs):
            short = set(np.concatenate(pick(x)).tolist())
            sizes.append(len(short))
            top = set(sorted(short, key=lambda p: (-x["exact"][p], p))[:10])
            codes.append(len(top & truth[i]) / 10)
            if fp16_truth is not None:
                fp16.append(len(top & fp16_truth[i]) / 10)
        extra = f" / fp16 {np.mean(fp16):.3f}" if fp16 else ""
        print(f"  {name:<44} recall@10 codes {np.mean(codes):.3f}{extra}, pages reranked {np.mean(sizes):.0f}", flush=True)

    for k in (int(v) for v in args.ks.split(",")):
        print(f"K = {k}")
        evaluate("lists K + single K/4", lambda x: (x["lists"][:k], x["single"][: k // 4]))
        evaluate("means K + lists K/4 + single K/4 (first)", lambda x: (x["pooled"][:k], x["lists"][: k // 4], x["single"][: k // 4]))
        evaluate("means K + lists K (each)", lambda x: (x["pooled"][:k], x["lists"][:k]))
        evaluate("means K + untied lists K (each: the default)",
                 lambda x: (x["pooled"][:k], rank.untied_head(x["lists"], x["pre"], k)))
        evaluate("means K + untied lists K + single K/4", lambda x: (x["pooled"][:k], rank.untied_head(x["lists"], x["pre"], k),
                                                                     x["single"][: k // 4]))
        evaluate("means K/2 + lists K/2 + single K/4", lambda x: (x["pooled"][: k // 2], x["lists"][: k // 2], x["single"][: k // 4]))


if __name__ == "__main__":
    main()
