"""Candidate-generation prototypes on the real-text sets (issue 8, part 1): which shortlist of K pages
holds the exact MaxSim top 10, at what cost. Prototype only: nothing here changes scoring/.

Every method proposes K page ids; the same exact rerank (``scoring.rank.rerank`` over the index's
fp16 store) picks the top 10. Recall@10 is against exhaustive MaxSim (``realtext.py``'s cached
truth), hit@10 / MRR@10 against each query's source page. Times per query: the candidate stage
and the rerank, separately.

Methods (``--methods``, comma-separated names; default all that fit):
  default        today's shortlist: pooled top K + single top K/4 (``rank.shortlist``), the real Retriever
  pooled         the pooled generator alone (16 pooled vectors per page, n' = 512)
  single         the single-vector FAISS prefilter alone (the index's own: flat below 5k pages, HNSW above)
  tokens-P       PLAID-style global codebook (``scoring.tokens``), nprobe P in ``--nprobe``
  tokann-KIND-N  FAISS over EVERY token vector keyed by page (KIND: flat, hnsw, ivf = IVF + 8-bit
                 scalar quantiser); each query token fetches its N nearest token vectors (``--nprime``),
                 pages pre-scored by approximate MaxSim from the hits (a page's best hit per query
                 token, floored at that token's N-th score), then the top K reranked exactly
  tokann-...+single  the same, union the single-vector top K/4
  pooledM-N      pooled vectors with M clusters per page (``--pool-m``), n' = N
  idf-pooled / idf-tokann-KIND-N   the pre-score with each query token weighted by an IDF taken from
                 the codebook (log of pages / pages using the token's nearest centroid): frequent
                 tokens ([CLS], punctuation, stop words) weigh less. Works for image tokens too.
  lex-idf        (text-only reference, not possible for page images) pages sharing the query's rarest
                 token ids, BM25-like over the page token ids

Then (``--rerank-bench``) the exact-rerank kernel alone for ~250 pages x their tokens: today's
``maxsim`` (fp16 pages, chunked widening to fp32), one whole-block fp16->fp32 widening, pre-widened
fp32, bf16 matmul, int8 matmul (``torch._int_mm``), in GFLOP/s at 1 and 2 torch threads.

    python benchmarks/realtext_candidates.py --set small
    python benchmarks/realtext_candidates.py --set large --K 100,200,400,800 --methods default,tokann-ivf-1024
    python benchmarks/realtext_candidates.py --set small --rerank-bench-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realtext as rt  # noqa: E402

from scoring import rank  # noqa: E402
from scoring.maxsim import maxsim  # noqa: E402
from scoring.pooled import DEFAULT_PER_TOKEN, PooledIndex  # noqa: E402
from scoring.tokens import TokenIndex  # noqa: E402

try:  # the product runs a search's library calls single-threaded (see scoring/threads.py)
    from scoring.threads import single_threaded  # noqa: E402
except ImportError:  # an older tree
    from contextlib import nullcontext as single_threaded  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- approximate MaxSim from retrieved vectors ----------------------------------------------------
def approx_maxsim(owner: np.ndarray, sims: np.ndarray, n: int, weights: np.ndarray | None = None):
    """Pages from per-query-token hits: ``owner`` [Tq, n'] page id of each hit (-1: none),
    ``sims`` [Tq, n'] best first. Score(page) = sum_t w_t * max(floor_t, best hit of the page for t),
    floor_t = t's last returned score. Top ``n`` (ids, scores), best first."""
    found = owner >= 0
    tq = len(owner)
    w = np.ones(tq, np.float32) if weights is None else np.asarray(weights, np.float32)
    floor = np.where(found.any(axis=1), np.where(found, sims, np.inf).min(axis=1), 0.0).astype(np.float32)
    tok = np.broadcast_to(np.arange(tq)[:, None], owner.shape)[found]
    pages, inv = np.unique(owner[found], return_inverse=True)
    gain = ((sims - floor[:, None]) * w[:, None])[found]
    _, first = np.unique(tok * len(pages) + inv, return_index=True)  # rows best first: first = max
    score = np.bincount(inv[first], weights=gain[first], minlength=len(pages)).astype(np.float32)
    score += np.float32((floor * w).sum())
    if len(pages) > n:
        top = np.argpartition(-score, n - 1)[:n]
        pages, score = pages[top], score[top]
    order = np.lexsort((pages, -score))
    return pages[order], score[order]


class TokenANN:
    """FAISS over every token vector of every page; a hit's owner is its page id."""

    def __init__(self, kind: str, ds: rt.RealSet, page_ids: np.ndarray, *, nprobe: int, seed: int = 0):
        d = ds.multi.shape[1]
        total = int(ds.offsets[-1])
        self.owner = np.repeat(page_ids, ds.lengths()).astype(np.int64)  # page id of token position
        self.kind = kind
        t0 = time.perf_counter()
        if kind == "flat":
            self.index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = 40
        elif kind == "ivf":
            nlist = int(2 ** round(np.log2(2 * np.sqrt(total))))
            quantiser = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFScalarQuantizer(quantiser, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                       faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(total, size=min(total, 64 * nlist), replace=False))
            self.index.train(np.asarray(ds.multi[sample], dtype=np.float32))
            self.index.nprobe = nprobe
            self._quantiser = quantiser  # keep it alive
        else:
            raise ValueError(kind)
        for a in range(0, total, 1 << 18):
            self.index.add(np.asarray(ds.multi[a : a + (1 << 18)], dtype=np.float32))
        self.build_s = time.perf_counter() - t0

    def set_search(self, nprime: int) -> None:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(64, nprime)

    def search(self, q: np.ndarray, nprime: int):
        self.set_search(nprime)
        sims, pos = self.index.search(np.ascontiguousarray(q, dtype=np.float32), nprime)
        owner = np.where(pos >= 0, self.owner[np.maximum(pos, 0)], -1)
        return owner, sims


def pooled_hits(pooled: PooledIndex, q: np.ndarray, nprime: int):
    from scoring.pooled import SLOTS

    sub, sims = pooled.index.search(np.ascontiguousarray(q, dtype=np.float32), nprime)
    return np.where(sub >= 0, sub // SLOTS, -1), sims


def codebook_idf(tokens: TokenIndex, q: np.ndarray) -> np.ndarray:
    """IDF of each query token from the codebook: pages using the nearest centroid."""
    tokens._merge()  # additions wait in pending lists until a search or a save merges them
    df = np.diff(tokens.list_offsets)  # pages per centroid (each page once per centroid it uses)
    n_pages = max(1, len(tokens.page_ids))
    near = np.argmax(q @ tokens.centroids.T, axis=1)
    return np.log((n_pages + 1) / (df[near] + 1)).astype(np.float32)


class LexicalIDF:
    """Text-only reference: pages sharing query token ids, scored by summed IDF of the shared ids."""

    def __init__(self, ds: rt.RealSet, page_ids: np.ndarray):
        ids = np.asarray(ds.token_ids, dtype=np.int64)
        page_of = np.repeat(np.arange(ds.n_pages), ds.lengths())
        key = np.unique(ids * ds.n_pages + page_of)  # one entry per (token id, page)
        self.tok, self.page = key // ds.n_pages, key % ds.n_pages
        self.vocab = int(ids.max()) + 1
        self.df = np.bincount(self.tok, minlength=self.vocab)
        self.starts = np.concatenate([[0], np.cumsum(self.df)])
        self.idf = np.log((ds.n_pages + 1) / (self.df + 1))
        self.page_ids = page_ids

    def candidates(self, q_ids: np.ndarray, n: int) -> np.ndarray:
        uniq = np.unique(q_ids[(q_ids >= 0) & (q_ids < self.vocab)])
        score = np.zeros(len(self.page_ids), np.float32)
        for t in uniq:
            score[self.page[self.starts[t] : self.starts[t + 1]]] += self.idf[t]
        top = np.argpartition(-score, min(n, len(score) - 1))[:n]
        top = top[np.argsort(-score[top], kind="stable")]
        return self.page_ids[top]


# -- evaluation ----------------------------------------------------------------------------------
def evaluate(name, gen, ds, store, truth_pids, target_pids, K, args) -> dict:
    """``gen(qi, K)`` -> candidate page ids. Exact rerank of them, metrics and times."""
    cand_t, rer_t, sizes, ranked = [], [], [], []
    context = single_threaded if args.threading == "product" else nullcontext
    for qi, q in enumerate(ds.q_multi):
        with context():
            t0 = time.perf_counter()
            ids = np.asarray(gen(qi, K), dtype=np.int64)
            t1 = time.perf_counter()
            hits = rank.rerank(store, q, np.unique(ids), 10)
            t2 = time.perf_counter()
        cand_t.append(t1 - t0), rer_t.append(t2 - t1), sizes.append(len(np.unique(ids)))
        ranked.append([p for p, _ in hits])
    qd = rt.quality(ranked, truth_pids, target_pids)
    row = {"method": name, "K": K, **qd, "shortlist_mean": float(np.mean(sizes)),
           "cand_p50_ms": rt.pct(cand_t, 50), "cand_p95_ms": rt.pct(cand_t, 95),
           "rerank_p50_ms": rt.pct(rer_t, 50), "total_p50_ms": rt.pct(np.add(cand_t, rer_t), 50),
           "total_p95_ms": rt.pct(np.add(cand_t, rer_t), 95)}
    print(f"{name:<28}{K:>5}{row['shortlist_mean']:>7.0f}{qd['recall_mean']:>8.3f}{qd['recall_worst']:>7.2f}"
          f"{qd['recall_below_1']:>5}{qd['hit']:>8.3f}{qd['mrr']:>7.3f}{row['cand_p50_ms']:>9.1f}{row['cand_p95_ms']:>8.1f}"
          f"{row['rerank_p50_ms']:>9.1f}{row['total_p50_ms']:>9.1f}{row['total_p95_ms']:>8.1f}", flush=True)
    return row


HEADER = (f"{'method':<28}{'K':>5}{'short':>7}{'rec@10':>8}{'worst':>7}{'<1':>5}{'hit@10':>8}{'MRR':>7}"
          f"{'cand p50':>9}{'p95':>8}{'rerank':>9}{'total':>9}{'p95':>8}")


def run_candidates(ds, index, page_ids, truth_rows, args) -> list[dict]:
    retr = index._retrieval()
    store = index._store
    live = np.asarray(store.live_page_ids(), dtype=np.int64)
    truth_pids = [[int(page_ids[r]) for r in t] for t in truth_rows]
    target_pids = page_ids[ds.q_page]
    qs, qsingle = ds.q_multi, ds.q_single
    wanted = set(args.methods.split(",")) if args.methods else None

    def want(name: str) -> bool:
        return wanted is None or name in wanted or any(name.startswith(w.rstrip("*")) for w in wanted if w.endswith("*"))

    methods: list[tuple[str, object]] = []

    def shortlist(gens, **kw):
        return lambda qi, K: rank.shortlist(qs[qi], qsingle[qi], prefilter=retr.prefilter, tokens=retr.tokens,
                                            live_ids=live, candidates=K, generators=gens, pooled=retr.pooled, **kw)

    methods += [("default", shortlist(rank.DEFAULT_GENERATORS, per_token=DEFAULT_PER_TOKEN)),
                ("pooled", shortlist(("pooled",), per_token=DEFAULT_PER_TOKEN)),
                ("single", shortlist(("single",)))]
    need_codebook = wanted is None or any(w.startswith(("tokens-", "idf-")) for w in wanted)
    if need_codebook:
        t0 = time.perf_counter()
        retr._enable_tokens()
        log(f"codebook (tokens generator): {retr.tokens.n_centroids} centroids, built in {time.perf_counter() - t0:.1f} s")
    for p in args.nprobe:
        methods.append((f"tokens-{p}", shortlist(("tokens",), nprobe=p)))
    if retr.tokens is not None:
        idf = [codebook_idf(retr.tokens, q) for q in qs]
        methods.append(("idf-pooled", lambda qi, K: approx_maxsim(*pooled_hits(retr.pooled, qs[qi], DEFAULT_PER_TOKEN), K, idf[qi])[0]))
    for m in args.pool_m:
        for npr in args.nprime:
            name = f"pooled{m}-{npr}"
            if not want(name):
                continue
            t0 = time.perf_counter()
            pooled = PooledIndex(ds.multi.shape[1], m=m)
            pooled.add_batches((live[a : a + 512], list(store.multi_vectors(live[a : a + 512]))) for a in range(0, len(live), 512))
            log(f"pooled index m={m}: {len(pooled.index):,} vectors ({pooled.index.current_kind}), built in {time.perf_counter() - t0:.1f} s")
            methods.append((name, lambda qi, K, pooled=pooled, npr=npr: pooled.candidates(qs[qi], K, per_token=npr)[0]))
    total_tokens = int(ds.offsets[-1])
    for kind in args.tokann:
        limit = {"flat": args.flat_max_tokens, "hnsw": args.hnsw_max_tokens}.get(kind, None)
        names = [f"tokann-{kind}-{n}" for n in args.nprime]
        if not any(want(n) or want(n + "+single") or want("idf-" + n) for n in names):
            continue
        if limit is not None and total_tokens > limit:
            log(f"tokann-{kind}: skipped, {total_tokens:,} token vectors > --{kind}-max-tokens {limit:,}")
            continue
        ann = TokenANN(kind, ds, page_ids, nprobe=args.ivf_nprobe)
        extra = f", nprobe {args.ivf_nprobe}, {ann.index.nlist} lists" if kind == "ivf" else ""
        log(f"tokann-{kind}: {ann.index.ntotal:,} token vectors, built in {ann.build_s:.1f} s{extra}")
        for npr in args.nprime:
            name = f"tokann-{kind}-{npr}"
            methods.append((name, lambda qi, K, ann=ann, npr=npr: approx_maxsim(*ann.search(qs[qi], npr), K)[0]))
            single_gen = shortlist(("single",))
            methods.append((name + "+single", lambda qi, K, ann=ann, npr=npr: rank.union_with_quotas(
                [approx_maxsim(*ann.search(qs[qi], npr), K)[0], single_gen(qi, K)], K)))
            if retr.tokens is not None:
                methods.append(("idf-" + name, lambda qi, K, ann=ann, npr=npr: approx_maxsim(*ann.search(qs[qi], npr), K, idf[qi])[0]))
    if ds.q_token_ids is not None and want("lex-idf"):
        lex = LexicalIDF(ds, page_ids)
        methods.append(("lex-idf", lambda qi, K: lex.candidates(ds.q_token_ids[qi], K)))

    print(f"\n{len(qs)} queries; short = mean shortlist pages reranked; times in ms per query\n{HEADER}")
    rows = []
    for name, gen in methods:
        if not want(name):
            continue
        for K in args.K:
            if K >= ds.n_pages:
                continue
            rows.append(evaluate(name, gen, ds, store, truth_pids, target_pids, K, args))
    return rows


# -- exact rerank kernels ------------------------------------------------------------------------
def rerank_bench(ds: rt.RealSet, args) -> list[dict]:
    import torch

    rng = np.random.default_rng(3)
    rows_ = np.sort(rng.choice(ds.n_pages, size=min(args.rerank_pages, ds.n_pages), replace=False))
    pages16 = [np.array(ds.page(i)) for i in rows_]
    lengths = np.array([len(p) for p in pages16])
    starts = np.concatenate([[0], np.cumsum(lengths[:-1])])
    block16 = np.concatenate(pages16)
    block32 = block16.astype(np.float32)
    t_block16 = torch.from_numpy(block16)
    t_block32 = torch.from_numpy(block32)
    t_bf16 = t_block32.bfloat16()
    block8 = torch.from_numpy(np.clip(np.rint(block32 * 127), -127, 127).astype(np.int8))
    q = ds.q_multi[int(np.argmin(np.abs([len(x) - np.median([len(y) for y in ds.q_multi]) for x in ds.q_multi])))]
    tq = len(q)
    t_q = torch.from_numpy(np.ascontiguousarray(q))
    t_qbf = t_q.bfloat16()
    t_q8 = torch.from_numpy(np.clip(np.rint(q * 127), -127, 127).astype(np.int8))
    flops = 2.0 * tq * len(block16) * q.shape[1]
    exact = np.maximum.reduceat(q @ block32.T, starts, axis=1).sum(axis=0)
    top_exact = set(np.argsort(-exact)[:10])

    def red(s: np.ndarray) -> np.ndarray:
        return np.maximum.reduceat(s, starts, axis=1).sum(axis=0)

    def int8_mm():
        # torch._int_mm wants the first dimension > 16 and the inner dimensions multiples of 8
        pad = max(0, 17 - tq)
        a = torch.nn.functional.pad(t_q8, (0, 0, 0, pad)) if pad else t_q8
        return torch._int_mm(a, block8.T)[:tq].float().numpy() * np.float32(1 / (127.0 * 127.0))

    # name -> (score matrix [Tq, tokens] fp32 numpy, or None when the kernel reduces by itself)
    kernels = [
        ("today: maxsim() on fp16 pages (chunked widening)", None),
        ("fp16 block -> fp32 once, torch fp32 matmul", lambda: torch.matmul(t_q, t_block16.float().T).numpy()),
        ("pre-widened fp32 block, torch matmul", lambda: torch.matmul(t_q, t_block32.T).numpy()),
        ("pre-widened fp32 block, numpy matmul", lambda: q @ block32.T),
        ("bf16 block, torch bf16 matmul (bf16 out)", lambda: torch.matmul(t_qbf, t_bf16.T).float().numpy()),
        ("fp16 block, torch fp16 matmul (fp16 out)", lambda: torch.matmul(t_q.half(), t_block16.T).float().numpy()),
        ("int8 block, torch._int_mm (int32 out)", int8_mm),
    ]
    out = []
    print(f"\nexact rerank kernels: {len(rows_)} pages, {len(block16):,} page tokens, query {tq} tokens, "
          f"{flops / 1e9:.2f} GFLOP per call; torch CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"median of {args.reps}; 'full' adds the per-page max (np.maximum.reduceat) and the sum")
    print(f"{'kernel':<50}{'threads':>8}{'matmul ms':>10}{'GFLOP/s':>9}{'full ms':>9}{'GFLOP/s':>9}{'max |err|':>11}{'top10 =':>8}")
    saved = torch.get_num_threads()

    def median_time(fn) -> float:
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    for threads in args.threads_list:
        torch.set_num_threads(threads)
        for name, mm in kernels:
            full = (lambda: maxsim(q, pages16)) if mm is None else (lambda mm=mm: red(mm()))
            try:
                scores = full()
            except Exception as exc:  # a kernel this torch build lacks
                print(f"{name:<50}{threads:>8}   unavailable: {type(exc).__name__}: {str(exc)[:60]}")
                continue
            mm_s = median_time(mm) if mm is not None else float("nan")
            full_s = median_time(full)
            err = float(np.max(np.abs(scores - exact)))
            same = len(set(np.argsort(-scores)[:10]) & top_exact)
            row = {"kernel": name, "threads": threads, "matmul_ms": mm_s * 1e3, "matmul_gflops": flops / mm_s / 1e9,
                   "full_ms": full_s * 1e3, "full_gflops": flops / full_s / 1e9, "max_abs_err": err, "top10_same": same}
            out.append(row)
            print(f"{name:<50}{threads:>8}{mm_s * 1e3:>10.2f}{flops / mm_s / 1e9:>9.1f}{full_s * 1e3:>9.2f}"
                  f"{flops / full_s / 1e9:>9.1f}{err:>11.4f}{same:>8}")
        s_mat = q @ block32.T
        red_s = median_time(lambda: red(s_mat))
        print(f"{'  (the per-page max + sum alone)':<50}{threads:>8}{'':>10}{'':>9}{red_s * 1e3:>9.2f}")
        out.append({"kernel": "reduce only", "threads": threads, "full_ms": red_s * 1e3})
    torch.set_num_threads(saved)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=rt.DEFAULT_ROOT)
    ap.add_argument("--set", default="small", help="small or large (default: %(default)s)")
    ap.add_argument("--queries", type=int, default=None, help="only the first N queries")
    ap.add_argument("--K", type=lambda s: [int(x) for x in s.split(",")], default=[100, 200, 400, 800])
    ap.add_argument("--methods", default="", help="comma-separated method names (a trailing * matches a prefix); default: all")
    ap.add_argument("--nprobe", type=lambda s: [int(x) for x in s.split(",") if x], default=[4, 16, 32],
                    help="codebook probes for the tokens-P methods")
    ap.add_argument("--nprime", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024],
                    help="neighbours per query token, tokann and pooledM methods")
    ap.add_argument("--pool-m", type=lambda s: [int(x) for x in s.split(",") if x], default=[32, 64],
                    help="clusters per page for the pooledM methods")
    ap.add_argument("--tokann", type=lambda s: [x for x in s.split(",") if x], default=["flat", "hnsw", "ivf"])
    ap.add_argument("--ivf-nprobe", type=int, default=32)
    ap.add_argument("--flat-max-tokens", type=int, default=1_500_000, help="largest set for tokann-flat")
    ap.add_argument("--hnsw-max-tokens", type=int, default=1_500_000, help="largest set for tokann-hnsw")
    ap.add_argument("--rerank-pages", type=int, default=250)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads-list", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--threading", choices=("product", "libraries"), default="product",
                    help="product: each query's stages inside scoring.threads.single_threaded(), as a search runs;"
                         " libraries: torch / FAISS at their own thread counts")
    ap.add_argument("--rerank-bench-only", action="store_true")
    ap.add_argument("--no-rerank-bench", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="default: ROOT/candidates-SET.json")
    args = ap.parse_args()

    import torch

    ds = rt.load_set(args.root, args.set, args.queries)
    print(f"set {ds.name}: {ds.n_pages:,} pages, {int(ds.offsets[-1]):,} token vectors, {len(ds.q_multi)} queries;"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    result = {"set": ds.name, "pages": ds.n_pages, "tokens": int(ds.offsets[-1]), "queries": len(ds.q_multi)}
    if not args.rerank_bench_only:
        index, page_ids, built = rt.build_index(ds, args.root / f"index-{ds.name}")
        truth, _ = rt.exhaustive_truth(index, ds, page_ids, args.root / f"index-{ds.name}")
        result["candidates"] = run_candidates(ds, index, page_ids, truth, args)
    if not args.no_rerank_bench:
        result["rerank_kernels"] = rerank_bench(ds, args)
    out = args.json or args.root / f"candidates-{ds.name}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
