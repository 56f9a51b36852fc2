"""A synthetic compact index at scale (issue 11, section 2): build, open, search, measure.

Pages come from ``search.py``'s generator (jina-v4-like token states: a background, a dominant topic
and small regions per page; the single vector is the normalised mean of the states), made batch by
batch in memory (nothing is written but the index), stored through the product's own path
(``Index.create(..., compact=True)`` + ``add_embeddings``, one document per ``--pages-per-doc``),
so the codec trains on its first 65,536 tokens and every later page is encoded as it is written.

Prints and writes (``--json``):
- build: pages/s, seconds per stage (adds, codec training + conversion, derived sync), peak RSS of
  this process (ru_maxrss) against the 16 GB target;
- bytes per page all-in by part (and scaled to 768 tokens a page);
- open + first search (a fresh process does it: ``--open-only``), against the 2 s target;
- default search p50 / p95 against the 100 ms target, recall@10 against exhaustive MaxSim over the
  same codes (the index's own ``exhaustive=True``), against 0.95.

    python benchmarks/million.py --pages 1000000 --tokens 64 --dir /big/disk/million
    python benchmarks/million.py --pages 20000 --tokens 64 --dir /tmp/m20k      # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from search import LATENT, REGION_SHARE, World, _unit  # noqa: E402

REAL_PAGE_TOKENS = 768


def page_batches(world: World, n_pages: int, tokens: int, batch: int, seed: int):
    """(first page number, [(single, multi)] * batch, region centres [batch, R, LATENT]) in order."""
    rng = np.random.default_rng(seed)
    cum = np.cumsum(REGION_SHARE)
    for a in range(0, n_pages, batch):
        b = min(a + batch, n_pages)
        lengths = rng.integers(int(tokens * 0.8), int(tokens * 1.2) + 1, b - a)
        centres = world.centres(rng, b - a)
        page = np.repeat(np.arange(b - a), lengths)
        region = np.searchsorted(cum, rng.random(len(page)) * cum[-1], side="right")
        z = world.states(rng, centres[page, region])
        multi = _unit(z @ world.to_multi).astype(np.float32)
        ends = np.cumsum(lengths)
        sums = np.add.reduceat(z, ends - lengths, axis=0) / lengths[:, None]
        single = _unit(sums @ world.to_single).astype(np.float32)
        yield a, [(single[i], multi[ends[i] - lengths[i] : ends[i]]) for i in range(b - a)], centres


def queries(world: World, centres: np.ndarray, first_page: int, n: int, seed: int):
    """Queries from pages of one generated batch: (page number, multi [16, 128], single)."""
    rng = np.random.default_rng(seed)
    out = []
    for p in rng.choice(len(centres), min(n, len(centres)), replace=False):
        r = int(rng.integers(1, len(REGION_SHARE)))
        z = world.states(rng, np.repeat(centres[p, r][None], 16, axis=0))
        out.append((first_page + int(p), _unit(z @ world.to_multi).astype(np.float32),
                    _unit(z.mean(0) @ world.to_single).astype(np.float32)))
    return out


def cached_truth(index, embs, folder: Path) -> tuple[list[set[int]], float]:
    """Exhaustive top-10 page ids of the first len(embs) queries of queries.npz over the index's own
    codes, cached in ``folder`` (a rebuild removes it): at 1M pages minutes of work, shared by every
    benchmark of the same index."""
    path = folder / f"truth-k10-q{len(embs)}.json"
    if path.exists():
        data = json.loads(path.read_text())
        return [set(r) for r in data["rows"]], float(data["seconds"])
    t0 = time.perf_counter()
    rows = [[h.page_id for h in t] for t in index.search_embeddings(embs, k=10, exhaustive=True)]
    seconds = time.perf_counter() - t0
    path.write_text(json.dumps({"rows": rows, "seconds": seconds}))
    return [set(r) for r in rows], seconds


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux


def open_and_search(folder: Path, query_file: Path) -> dict:
    """In a fresh process: open the index, search once, and time both."""
    import pagelens

    q = np.load(query_file)
    t0 = time.perf_counter()
    index = pagelens.Index.open(folder)
    opened = time.perf_counter() - t0
    index.search_embedding(pagelens.Embedding(single=q["single"], multi=q["multi"]), k=10)
    return {"open_s": opened, "open_and_first_search_s": time.perf_counter() - t0, "peak_rss_gb": rss_gb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=1_000_000)
    ap.add_argument("--tokens", type=int, default=64, help="mean tokens per page (disk: ~18 B a token at pq-16)")
    ap.add_argument("--pages-per-doc", type=int, default=100)
    ap.add_argument("--batch", type=int, default=2000, help="pages generated at a time")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--keep", action="store_true", help="reuse an index already built in --dir")
    ap.add_argument("--open-only", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.open_only:
        print(json.dumps(open_and_search(args.dir, args.open_only)))
        return
    import pagelens

    world = World(0)
    folder = args.dir / "index"
    qs, result = [], {"pages": args.pages, "tokens_per_page": args.tokens}
    if not (args.keep and (folder / "manifest.json").exists()):
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        for stale in args.dir.glob("truth-k10-q*.json"):
            stale.unlink()
        index = pagelens.Index.create(folder, single_dim=2048, multi_dim=128, compact=True)
        # queries come from batches spread over the whole run, so late pages are asked for too
        n_batches = -(-args.pages // args.batch)
        per_batch = max(1, -(-args.queries // n_batches))
        stride = max(1, n_batches // -(-args.queries // per_batch))
        t0 = time.perf_counter()
        n_tokens = 0
        for first, pages, centres in page_batches(world, args.pages, args.tokens, args.batch, seed=7):
            for d in range(0, len(pages), args.pages_per_doc):
                chunk = pages[d : d + args.pages_per_doc]
                index.add_embeddings(f"synthetic://doc-{first + d:08d}",
                                     [pagelens.Embedding(single=s, multi=m) for s, m in chunk])
                n_tokens += sum(len(m) for _s, m in chunk)
            if len(qs) < args.queries and (first // args.batch) % stride == 0:
                qs += queries(world, centres, first, per_batch, seed=first)
            done = first + len(pages)
            if done % (args.batch * 10) == 0 or done == args.pages:
                el = time.perf_counter() - t0
                print(f"  {done:,} pages, {n_tokens:,} tokens in {el:.0f} s ({done / el:.0f} pages/s),"
                      f" peak RSS {rss_gb():.1f} GiB", flush=True)
        result["add_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        index.sync()  # trains a due codec, converts what was stored raw, builds the derived structures
        result["sync_s"] = time.perf_counter() - t0
        index.close()
        result["build_peak_rss_gb"] = rss_gb()
        np.savez(args.dir / "queries.npz", pages=np.array([p for p, _m, _s in qs]),
                 multi=np.stack([m for _p, m, _s in qs]), single=np.stack([s for _p, _m, s in qs]))
    z = np.load(args.dir / "queries.npz")
    qs = [(int(p), m, s) for p, m, s in zip(z["pages"], z["multi"], z["single"])][: args.queries]
    np.savez(args.dir / "first-query.npz", multi=qs[0][1], single=qs[0][2])
    fresh = subprocess.run([sys.executable, __file__, "--dir", str(folder), "--open-only",
                            str(args.dir / "first-query.npz")], capture_output=True, text=True, check=True)
    result["fresh_process"] = json.loads(fresh.stdout.strip().splitlines()[-1])
    index = pagelens.Index.open(folder)
    info = index.info()
    n_tokens = info.vectors
    parts = {k: v for k, v in info.bytes_on_disk.items() if k not in ("total", "dead (reclaimable)")}
    result["bytes_per_page"] = {k: v / args.pages for k, v in parts.items()}
    per_token = parts.get("multi_vectors", 0)
    result["multi_at_768_tokens"] = per_token * REAL_PAGE_TOKENS / n_tokens
    embs = [pagelens.Embedding(single=s, multi=m) for _p, m, s in qs]
    truth, result["exhaustive_s"] = cached_truth(index, embs, args.dir)
    lat, rec = [], []
    for rep in range(2):  # the first pass warms the page cache; the second is timed
        for e, t in zip(embs, truth):
            t1 = time.perf_counter()
            hits = index.search_embedding(e, k=10)
            if rep:
                lat.append((time.perf_counter() - t1) * 1e3)
                rec.append(len({h.page_id for h in hits} & t) / 10)
    result.update(p50_ms=float(np.percentile(lat, 50)), p95_ms=float(np.percentile(lat, 95)),
                  recall_at_10=float(np.mean(rec)), tokens=int(n_tokens))
    fp = result["fresh_process"]
    print(f"{args.pages:,} pages x ~{args.tokens} tokens ({n_tokens:,} token vectors), compact profile")
    if "add_s" in result:
        print(f"build: adds {result['add_s']:.0f} s ({args.pages / result['add_s']:.0f} pages/s), sync {result['sync_s']:.0f} s,"
              f" peak RSS {result['build_peak_rss_gb']:.1f} GiB [target < 16 GB]")
    print("bytes per page: " + ", ".join(f"{k} {v:,.0f}" for k, v in result["bytes_per_page"].items())
          + f" | multi at 768 tokens {result['multi_at_768_tokens']:,.0f}")
    print(f"fresh process: open {fp['open_s'] * 1e3:.0f} ms, open + first search {fp['open_and_first_search_s']:.2f} s"
          f" [target < 2 s], peak RSS {fp['peak_rss_gb']:.1f} GiB")
    print(f"default search p50 {result['p50_ms']:.1f} ms p95 {result['p95_ms']:.1f} ms [target p50 <= 100 ms];"
          f" recall@10 against exhaustive over the same codes {result['recall_at_10']:.3f} [target >= 0.95]"
          f" (exhaustive for {len(embs)} queries: {result['exhaustive_s']:.0f} s)")
    (args.json or args.dir / "million.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
