"""Compact indexes end to end (issue 11, section 2): each storage profile built as a real pagelens
index of the real-text set (``realtext_data.py``), searched with its default settings.

For each profile (multi-vector codec, single-vector width/precision):

- bytes per page all-in, as ``Index.info()`` counts them on disk (shards, catalogue, derived), split
  into what grows with the tokens (multi-vector codes, the token generator's lists or IVF copy) and
  what a page costs whatever its length (single vector, single-vector prefilter, catalogue rows);
  then scaled to a 768-token page, the real model's shape: per-token part x 768 / tokens per page +
  per-page part;
- quality of the default search against **fp16 exhaustive MaxSim** (the truth ``realtext.py``
  cached for this set): recall@10, and known-item hit@10 / MRR@10 beside fp16 exhaustive's;
- quality of exhaustive MaxSim over the profile's own codes (its codec's loss alone);
- default search latency p50 / p95, all profiles measured in alternating blocks in one run.

    nice python benchmarks/compact_search.py --set small
    python benchmarks/compact_search.py --set small --profiles fp16,pq-16,compact --blocks 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from realtext import DEFAULT_ROOT, add_set, embeddings, exhaustive_truth, load_set, quality  # noqa: E402

REAL_PAGE_TOKENS = 768
# name -> Index.create keywords ("compact" is the recommended profile, whatever it is today)
PROFILES = {
    "fp16": {},
    "int8": {"compression": "int8"},
    "residual-2": {"compression": "residual-2"},
    "pq-32": {"compression": "pq-32"},
    "pq-16-single-fp32": {"compression": "pq-16"},  # the compact codec with full-width fp32 single vectors
    "compact": {"compact": True},
}


def build(ds, folder: Path, create_kw: dict) -> tuple[object, np.ndarray, float]:
    import pagelens

    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    index = pagelens.Index.create(folder, single_dim=ds.single.shape[1], multi_dim=ds.multi.shape[1], **create_kw)
    page_ids = add_set(index, ds)
    index.sync()  # trains a codec that is due (pq, residual) and builds the search structures over it
    index.close()
    return pagelens.Index.open(folder), page_ids, time.perf_counter() - t0


# derived files by how they grow: with the tokens (lists, the all-token IVF copy), not at all (a
# copy of the codec's centroids, list offsets), or with the pages (pooled means: a fixed number a
# page, whatever its length; the single-vector prefilter; the rest)
TOKEN_FILES = ("tok_list_pos", "ann_")
FIXED_FILES = ("tok_centroids", "tok_list_offsets", "tok_meta", "pf_meta", "ann_meta", "pool_meta")


def derived_split(folder: Path) -> dict[str, int]:
    """Bytes of the current derived generation: {"token", "fixed", "page", "pooled" (within "page")}."""
    derived = folder / "derived"
    state = json.loads((derived / "state.json").read_text())
    out = {"token": 0, "fixed": 0, "page": (derived / "state.json").stat().st_size, "pooled": 0}
    for f in (derived / f"gen-{state['generation']:08d}").iterdir():
        kind = "fixed" if f.name.startswith(FIXED_FILES) else "token" if f.name.startswith(TOKEN_FILES) else "page"
        out[kind] += f.stat().st_size
        if kind == "page" and f.name.startswith("pool_"):
            out["pooled"] += f.stat().st_size
    return out


def bytes_per_page(index, folder: Path, n_pages: int, n_tokens: int) -> dict:
    """All-in bytes: what grows with the tokens, scaled to 768 a page, plus what each page costs;
    fixed costs (codec state, the centroid copy, manifest) are shown apart: at 1M pages they are
    a few bytes a page."""
    parts = {k: v for k, v in index.info().bytes_on_disk.items() if k not in ("total", "dead (reclaimable)")}
    d = derived_split(folder)
    per_token = parts.get("multi_vectors", 0) + d["token"]
    fixed = parts.get("codec_state", 0) + parts.get("manifest", 0) + d["fixed"]
    per_page = parts.get("single_vectors", 0) + parts.get("catalogue", 0) + d["page"]
    scale = REAL_PAGE_TOKENS * n_pages / n_tokens
    return {
        "parts": parts, "derived": d, "fixed_bytes": fixed,
        "all_in_per_page": (per_token + per_page + fixed) / n_pages,
        "at_768_tokens": (per_token * scale + per_page) / n_pages,
        "multi_at_768": parts.get("multi_vectors", 0) * scale / n_pages,
        "token_derived_at_768": d["token"] * scale / n_pages,
        "single_per_page": parts.get("single_vectors", 0) / n_pages,
        "pooled_per_page": d["pooled"] / n_pages,
        "other_per_page": (per_page - parts.get("single_vectors", 0) - d["pooled"]) / n_pages,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--set", default="small")
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--blocks", type=int, default=3, help="alternating latency blocks")
    ap.add_argument("--work", type=Path, default=None, help="where the indexes go (default ROOT/compact-SET)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import pagelens

    ds = load_set(args.root, args.set, args.queries)
    n_tokens = int(ds.offsets[-1])
    work = args.work or args.root / f"compact-{args.set}"
    work.mkdir(parents=True, exist_ok=True)
    fp16_folder = args.root / f"index-{args.set}"
    fp16_ids = np.load(fp16_folder / "realtext-page-ids.npy") if (fp16_folder / "realtext-page-ids.npy").exists() else None
    if fp16_ids is None:
        sys.exit(f"run `python benchmarks/realtext.py --set {args.set}` first: it builds the fp16 index and its truth")
    truth, _ = exhaustive_truth(pagelens.Index.open(fp16_folder), ds, fp16_ids, fp16_folder)
    embs = embeddings(ds)
    print(f"set {args.set}: {ds.n_pages:,} pages, {n_tokens:,} tokens ({n_tokens / ds.n_pages:.0f} per page),"
          f" {len(embs)} queries; truth: fp16 exhaustive MaxSim (cached)")
    runs = {}
    for name in args.profiles.split(","):
        folder = work / name
        index, page_ids, build_s = build(ds, folder, PROFILES[name])
        row_of = {int(p): i for i, p in enumerate(page_ids)}
        ranked = [[row_of[h.page_id] for h in hs] for hs in (index.search_embedding(e, k=10) for e in embs)]
        own = [[row_of[h.page_id] for h in hs] for hs in index.search_embeddings(embs, k=10, exhaustive=True)]
        info = index.info()
        runs[name] = {
            "index": index, "row_of": row_of, "build_s": build_s,
            "bytes": bytes_per_page(index, folder, ds.n_pages, n_tokens),
            "compression": info.extra.get("compression"), "single": info.extra.get("single_width"),
            "default": quality(ranked, truth, ds.q_page), "own_exhaustive": quality(own, truth, ds.q_page),
            "lat": [],
        }
        r = runs[name]
        print(f"{name}: built in {build_s:.0f} s; {r['bytes']['at_768_tokens'] / 1024:.1f} KiB a 768-token page all-in;"
              f" default recall@10 vs fp16 exhaustive {r['default']['recall_mean']:.3f}", flush=True)
    for _ in range(args.blocks):  # alternating blocks: a busy neighbour slows every profile alike
        for name, r in runs.items():
            for e in embs:
                t0 = time.perf_counter()
                r["index"].search_embedding(e, k=10)
                r["lat"].append((time.perf_counter() - t0) * 1e3)
    fp16_q = quality(truth, truth, ds.q_page)
    print(f"\nload average {os.getloadavg()[0]:.1f}; fp16 exhaustive: hit@10 {fp16_q['hit']:.3f} MRR@10 {fp16_q['mrr']:.3f};"
          " KiB at 768 tokens a page = multi codes + token lists (both scaled from this set's tokens a page)"
          " + single vector + pooled means + other (single-vector prefilter, catalogue); fixed costs (codec state,"
          " centroids) apart")
    hdr = (f"{'profile':<24}{'KiB/768-tok page':>17}{'multi':>8}{'tok-gen':>8}{'single':>8}{'pooled':>8}{'other':>7}"
           f"{'fixed MiB':>10}{'recall@10':>10}{'hit@10':>8}{'MRR':>7}{'MRR/fp16':>9}{'own-exh rec':>12}{'p50 ms':>8}{'p95 ms':>8}")
    print(hdr)
    out = {}
    for name, r in runs.items():
        b, q = r["bytes"], r["default"]
        p50, p95 = float(np.percentile(r["lat"], 50)), float(np.percentile(r["lat"], 95))
        print(f"{name:<24}{b['at_768_tokens'] / 1024:>17.1f}{b['multi_at_768'] / 1024:>8.1f}{b['token_derived_at_768'] / 1024:>8.1f}"
              f"{b['single_per_page'] / 1024:>8.2f}{b['pooled_per_page'] / 1024:>8.2f}{b['other_per_page'] / 1024:>7.2f}{b['fixed_bytes'] / 2**20:>10.1f}{q['recall_mean']:>10.3f}{q['hit']:>8.3f}"
              f"{q['mrr']:>7.3f}{q['mrr'] / fp16_q['mrr']:>9.3f}{r['own_exhaustive']['recall_mean']:>12.3f}{p50:>8.1f}{p95:>8.1f}")
        out[name] = {"bytes": b, "default": q, "own_exhaustive": r["own_exhaustive"], "p50_ms": p50, "p95_ms": p95,
                     "build_s": r["build_s"], "create": PROFILES[name]}
    path = args.json or args.root / f"compact-search-{args.set}.json"
    path.write_text(json.dumps({"set": args.set, "pages": ds.n_pages, "tokens": n_tokens, "fp16_exhaustive": fp16_q,
                                "profiles": out, "loadavg": os.getloadavg()[0]}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
