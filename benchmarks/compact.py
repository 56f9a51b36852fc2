"""Compact multi-vectors (issue 11, section 1): every codec x token pool factor, on the real-text set's
cached embeddings (``realtext_data.py``) and on a synthetic set (``search.py``'s generator).

For each codec (indexer/codecs.py) and pool factor (indexer/token_pooling.py), on one set:

- bytes per page: codes of the pooled tokens (no per-page side data), on the set and scaled to a
  768-token page (the real model's), and the codec state's bytes;
- quality of *exhaustive MaxSim over the codes* (so the codec's and the pooling's own loss shows):
  recall@10 against fp16 exhaustive MaxSim (the truth realtext.py cached, when it matches), and the
  known-item hit@10 and MRR@10 (each query's source page) next to fp16's;
- pooling time per page, encode speed (pages/s), scoring a 250-page shortlist with both paths of
  scoring/coded_maxsim.py (median ms per query), training time and its traced peak memory.

Residual and pq codecs share one k-means codebook per set (trained on a streamed reservoir sample of the
unpooled tokens); the buckets are refitted per pool factor on a sample of the pooled tokens, which
is ``ResidualCodec.train(sample, centroids=...)``, the codec's cheap "extend" step. At pool factor 1
the residual codecs also run without renormalisation ("raw" rows): the only kind the asymmetric
scoring path takes.

    nice python benchmarks/compact.py --set small            # real-text small + synthetic
    nice python benchmarks/compact.py --set small --no-synthetic --pool-factors 1,2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from realtext import DEFAULT_ROOT, load_set, quality  # noqa: E402
from scoring.coded_maxsim import maxsim_codes  # noqa: E402
from indexer.codecs import CODECS, TokenSampler, make_codec  # noqa: E402
from scoring.maxsim import maxsim_batch  # noqa: E402
from indexer.token_pooling import METHODS, pool_tokens  # noqa: E402

REAL_PAGE_TOKENS = 768


def top_rows(scores: np.ndarray, k: int = 10) -> list[list[int]]:
    out = []
    for s in scores:
        part = np.argpartition(-s, k - 1)[:k]
        out.append([int(i) for i in part[np.lexsort((part, -s[part]))]])
    return out


def exhaustive(queries, pages, batch: int = 50) -> list[list[int]]:
    rows = []
    for a in range(0, len(queries), batch):
        rows += top_rows(maxsim_batch(queries[a : a + batch], pages))
    return rows


class Data:
    def __init__(self, name, pages, queries, targets, truth=None):
        self.name, self.pages, self.queries, self.targets = name, pages, queries, np.asarray(targets)
        self.truth = truth if truth is not None else exhaustive(queries, pages)


def real_data(root: Path, set_name: str, n_queries: int | None) -> Data:
    ds = load_set(root, set_name, n_queries)
    pages = [np.asarray(ds.page(i)) for i in range(ds.n_pages)]
    truth = None
    key = hashlib.sha256(ds.fingerprint().encode() + np.concatenate(ds.q_multi).tobytes()).hexdigest()[:16]
    cached = root / f"index-{set_name}" / f"realtext-truth-{key}-k10.json"
    if cached.exists():  # realtext.py's exhaustive truth (rows of this set), when it is of these queries
        truth = json.loads(cached.read_text())["rows"]
        print(f"fp16 exhaustive truth: cached {cached.name}")
    return Data(f"realtext-{set_name}", pages, ds.q_multi, ds.q_page, truth)


def synthetic_data(n_pages: int, tokens: int, n_queries: int) -> Data:
    from search import World, generate, make_queries

    folder = Path(tempfile.mkdtemp(prefix="pagelens-compact-"))
    world = World(0)
    generate(folder, world, n_pages, tokens, seed=n_pages)
    qs = make_queries(folder, world, n_queries, seed=n_pages)
    targets = np.random.default_rng(n_pages + 1).integers(0, n_pages, n_queries)  # make_queries' own draw
    offsets = np.load(folder / "offsets.npy")
    multi = np.fromfile(folder / "multi.f16", np.float16).reshape(-1, 128)
    pages = [multi[offsets[i] : offsets[i + 1]] for i in range(n_pages)]
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    return Data(f"synthetic-{n_pages}x{tokens}", pages, [m for m, _ in qs], targets)


def pool_all(pages, pf: int, method: str) -> tuple[list[np.ndarray], float]:
    t0 = time.perf_counter()
    out = [pool_tokens(p, pf, method=method) for p in pages] if pf > 1 else [np.asarray(p, np.float32) for p in pages]
    return out, (time.perf_counter() - t0) / len(pages)


def sample_of(pages, max_tokens: int, seed: int = 0) -> np.ndarray:
    sampler = TokenSampler(max_tokens, pages[0].shape[1], seed=seed)
    for a in range(0, len(pages), 200):
        sampler.add(np.concatenate(pages[a : a + 200]).astype(np.float32))
    return sampler.sample()


def traced(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def encode_all(codec, pages) -> tuple[list[np.ndarray], float]:
    """Codes per page; encoded 100 pages at a time (records are per token, so a batch splits exactly)."""
    out, t0 = [], time.perf_counter()
    for a in range(0, len(pages), 100):
        batch = pages[a : a + 100]
        codes = codec.encode(np.concatenate(batch))
        ends = np.cumsum([len(p) for p in batch])
        out += np.split(codes, ends[:-1])
    return out, len(pages) / (time.perf_counter() - t0)


def shortlist_ms(codec, codes, queries, paths, n: int = 250, reps: int = 20) -> dict:
    """Median ms per query of each path on one 250-page shortlist; the paths alternate query by
    query, so a busy neighbour on the shared cores slows both alike."""
    rng = np.random.default_rng(3)
    short = [codes[i] for i in rng.choice(len(codes), min(n, len(codes)), replace=False)]
    times = {p: [] for p in paths}
    for p in paths:
        maxsim_codes(queries[0], codec, short, path=p)  # warm
    for i in rng.choice(len(queries), reps):
        for p in paths:
            t0 = time.perf_counter()
            maxsim_codes(queries[i], codec, short, path=p)
            times[p].append(time.perf_counter() - t0)
    return {p: float(np.median(t) * 1e3) for p, t in times.items()}


def run_set(data: Data, args) -> dict:
    print(f"\n== {data.name}: {len(data.pages):,} pages, {sum(len(p) for p in data.pages):,} tokens,"
          f" {len(data.queries)} queries")
    fp16_quality = quality(data.truth, data.truth, data.targets)
    result = {"set": data.name, "pages": len(data.pages), "tokens": int(sum(len(p) for p in data.pages)),
              "queries": len(data.queries), "fp16_exhaustive": fp16_quality, "rows": [], "pooling_methods": []}
    # which pooling method keeps MaxSim closer, and its time per page (a page subset: Ward is O(T^2) per page)
    rng = np.random.default_rng(0)
    sub = np.unique(np.concatenate([rng.choice(len(data.pages), min(300, len(data.pages)), replace=False),
                                    data.targets[: args.method_queries]]))
    sub_pages = [np.asarray(data.pages[i], np.float32) for i in sub]
    sub_queries = data.queries[: args.method_queries]
    sub_truth = top_rows(maxsim_batch(sub_queries, sub_pages))
    for pf in [p for p in args.pool_factors if p > 1]:
        for method in METHODS:
            pooled, per_page = pool_all(sub_pages, pf, method)
            rec = quality(top_rows(maxsim_batch(sub_queries, pooled)), sub_truth, np.zeros(len(sub_queries), int))
            row = {"pool_factor": pf, "method": method, "ms_per_page": per_page * 1e3, "recall": rec["recall_mean"],
                   "pages": len(sub_pages)}
            result["pooling_methods"].append(row)
            print(f"pooling pf {pf} {method:<6}: {row['ms_per_page']:6.1f} ms/page, recall@10 {row['recall']:.3f}"
                  f" against unpooled fp16 on {len(sub_pages)} pages")
    # one codebook for the set, trained on a streamed sample of the unpooled tokens
    kmeans = make_codec("residual-2", n_centroids=args.centroids, niter=args.niter)
    _, km_s, km_peak = traced(lambda: kmeans.train(sample_of(data.pages, args.sample_tokens)))
    print(f"k-means: {kmeans.n_centroids} centroids on {args.sample_tokens:,} sampled tokens in {km_s:.0f} s"
          f" (traced peak {km_peak / 2**20:.0f} MiB)")
    result["kmeans"] = {"centroids": kmeans.n_centroids, "sample_tokens": args.sample_tokens, "seconds": km_s,
                        "traced_peak_mib": km_peak / 2**20}
    codecs = [c for c in args.codecs]
    for pf in args.pool_factors:
        pooled, pool_s = pool_all(data.pages, pf, args.pool_method)
        pooled_sample = sample_of(pooled, args.sample_tokens // pf, seed=pf)
        n_tokens = sum(len(p) for p in pooled)
        variants = [(name, False) for name in codecs]
        if pf == 1 and args.raw:  # the residual codecs without renormalisation, which the asymmetric path needs
            variants += [(n, True) for n in codecs if n.startswith(("residual", "pq-"))]
        for name, raw in variants:
            residual = name.startswith(("residual", "pq-"))  # centroid codecs: share the set's k-means codebook
            codec = make_codec(name, renormalise=not raw) if residual else make_codec(name)
            train = (lambda: codec.train(pooled_sample, centroids=kmeans.centroids)) if residual else (lambda: codec.train(pooled_sample[:1]))
            _, train_s, train_peak = traced(train)
            codes, pages_per_s = encode_all(codec, pooled)
            decoded = [codec.decode(c) for c in codes]  # scores on codes == scores on these (tests)
            found = exhaustive(data.queries, decoded)
            del decoded
            qd = quality(found, data.truth, data.targets)
            bpt = codec.bytes_per_token
            row = {
                "codec": name + (" raw" if raw else ""), "pool_factor": pf, "bytes_per_token": bpt,
                "bytes_per_page": n_tokens * bpt / len(pooled), "bytes_per_page_768": -(-REAL_PAGE_TOKENS // pf) * bpt,
                "state_bytes": int(sum(a.nbytes for a in codec.to_arrays().values())),
                "recall_mean": qd["recall_mean"], "recall_worst": qd["recall_worst"], "hit": qd["hit"], "mrr": qd["mrr"],
                "mrr_over_fp16": qd["mrr"] / max(fp16_quality["mrr"], 1e-12),
                "pool_ms_per_page": pool_s * 1e3, "encode_pages_per_s": pages_per_s,
                "bucket_fit_s": train_s, "train_traced_peak_mib": train_peak / 2**20,
                "relative_error": codec.training[2],
            }
            asym = name == "int8" or raw and name.startswith("residual")  # pq has no asymmetric path
            ms = shortlist_ms(codec, codes, data.queries, ["decode"] + (["asymmetric"] if asym else []))
            row["decode_ms"], row["asymmetric_ms"] = ms["decode"], ms.get("asymmetric")
            result["rows"].append(row)
            print(f"{row['codec']:<17} pf {pf}: {row['bytes_per_page_768']:>7,} B/768-tok page  recall@10"
                  f" {row['recall_mean']:.3f} (worst {row['recall_worst']:.2f})  hit {row['hit']:.3f}  MRR {row['mrr']:.3f}"
                  f" ({row['mrr_over_fp16']:.3f} of fp16)  encode {pages_per_s:,.0f} p/s  250 pages:"
                  f" decode {row['decode_ms']:.1f} ms, asym {row['asymmetric_ms'] or float('nan'):.1f} ms", flush=True)
    return result


def table(result: dict) -> str:
    fp = result["fp16_exhaustive"]
    lines = [f"\n{result['set']}: {result['pages']:,} pages, {result['queries']} queries; fp16 exhaustive"
             f" hit@10 {fp['hit']:.3f} MRR@10 {fp['mrr']:.3f}; k-means {result['kmeans']['centroids']} centroids"
             f" in {result['kmeans']['seconds']:.0f} s",
             f"{'codec':<17}{'pf':>3}{'B/page@768':>11}{'B/page':>8}{'rec@10':>8}{'worst':>6}{'hit@10':>7}{'MRR':>7}"
             f"{'/fp16':>6}{'pool ms':>8}{'enc p/s':>8}{'dec ms':>7}{'asym ms':>8}{'fit s':>6}"]
    for r in result["rows"]:
        asym = f"{r['asymmetric_ms']:.1f}" if r["asymmetric_ms"] is not None else "-"
        lines.append(f"{r['codec']:<17}{r['pool_factor']:>3}{r['bytes_per_page_768']:>11,}{r['bytes_per_page']:>8,.0f}"
                     f"{r['recall_mean']:>8.3f}{r['recall_worst']:>6.2f}{r['hit']:>7.3f}{r['mrr']:>7.3f}"
                     f"{r['mrr_over_fp16']:>6.3f}{r['pool_ms_per_page']:>8.1f}{r['encode_pages_per_s']:>8,.0f}"
                     f"{r['decode_ms']:>7.1f}{asym:>8}{r['bucket_fit_s']:>6.1f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--set", default="small", help="real-text set: small or large; 'none' skips it")
    ap.add_argument("--queries", type=int, default=None, help="first N queries of the real-text set (default all)")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--pool-factors", default="1,2,3,4")
    ap.add_argument("--pool-method", default="ward", choices=METHODS)
    ap.add_argument("--method-queries", type=int, default=100, help="queries for the pooling-method comparison")
    ap.add_argument("--centroids", type=int, default=4096)
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--sample-tokens", type=int, default=4096 * 64)
    ap.add_argument("--no-raw", dest="raw", action="store_false",
                    help="skip the rows of residual codecs without renormalisation (and their asymmetric timing)")
    ap.add_argument("--no-synthetic", dest="synthetic", action="store_false")
    ap.add_argument("--synthetic-pages", type=int, default=2000)
    ap.add_argument("--synthetic-tokens", type=int, default=192)
    ap.add_argument("--json", type=Path, default=None, help="default: ROOT/compact-SET.json")
    args = ap.parse_args()
    args.codecs = [c for c in args.codecs.split(",") if c]
    args.pool_factors = [int(p) for p in args.pool_factors.split(",")]
    import torch

    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    results = []
    if args.set != "none":
        results.append(run_set(real_data(args.root, args.set, args.queries), args))
    if args.synthetic:
        results.append(run_set(synthetic_data(args.synthetic_pages, args.synthetic_tokens, 200), args))
    for r in results:
        print(table(r))
    out = args.json or args.root / f"compact-{args.set}.json"
    out.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                               "results": results}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
