"""Real-text search benchmark (issue 8): pagelens' default search against exact MaxSim and against a
padded brute force, on real PDF pages embedded with a real text model (``realtext_data.py``).

One run, on one cached set (``--set small`` ~3k pages, ``--set large`` ~24k):

- builds a bring-your-own-embeddings pagelens index of the set (one document per PDF; reused on
  the next run when the set has not changed), timing the adds and the derived-structure build;
- truth: ``search_embeddings(queries, k=10, exhaustive=True)``, exact MaxSim over every page;
- quality of the default ``search_embedding(q, k=10)``: recall@10 against exhaustive (mean and
  worst query), known-item hit@10 and MRR@10 (each query's source page), beside the same for
  exhaustive;
- latency, in alternating blocks in the same run: default search (every query, each block),
  a padded brute force over every page (byaldi / colpali-engine ``score_multi_vector`` style:
  pages zero-padded once to the longest page, fp32 in RAM, ``torch.einsum`` in batches of 128
  pages, max over page tokens, sum over query tokens) and ours exhaustive, on a few queries
  per block; p50 / p95 and the padded/default ratio;
- all of it quiet, then again (latency only) with ``--load N`` busy Python processes sharing
  the cores, which the script starts and stops itself (each bounded by ``--load-seconds``).

Prints two tables side by side and writes a JSON of every figure (``--json``).

    python benchmarks/realtext.py --set small                 # quiet + 2 busy processes
    python benchmarks/realtext.py --set large --load 0        # quiet only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "bench-data" / "realtext"
BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


# -- the cached set ------------------------------------------------------------------------------
@dataclass
class RealSet:
    name: str
    folder: Path
    meta: dict
    multi: np.ndarray  # fp16 [T, 128], memory-mapped
    offsets: np.ndarray  # int64 [N + 1]
    single: np.ndarray  # fp32 [N, 384]
    token_ids: np.ndarray  # int32 [T]
    docs: list[str]  # per page: its PDF
    q_multi: list[np.ndarray]  # fp32 [Tq, 128] per query
    q_single: np.ndarray  # fp32 [Q, 384]
    q_page: np.ndarray  # int64 [Q]: the row of each query's source page
    q_text: np.ndarray
    q_token_ids: list[np.ndarray] | None  # int32 [Tq] per query (None for a cache made before they were kept)

    @property
    def n_pages(self) -> int:
        return len(self.offsets) - 1

    def page(self, i: int) -> np.ndarray:
        return self.multi[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode())
        h.update(self.offsets.tobytes())
        h.update(np.asarray(self.single[:: max(1, self.n_pages // 64)]).tobytes())
        return h.hexdigest()[:16]


def load_set(root: Path, name: str, n_queries: int | None = None) -> RealSet:
    folder = root / name
    if not (folder / "meta.json").exists():
        sys.exit(f"no cached set at {folder}: run `python benchmarks/realtext_data.py` first")
    meta = json.loads((folder / "meta.json").read_text())
    with open(folder / "pages.jsonl") as fh:
        docs = [json.loads(line)["doc"] for line in fh]
    q = np.load(folder / "queries.npz")
    qo = q["offsets"]
    n = len(qo) - 1 if n_queries is None else min(n_queries, len(qo) - 1)
    return RealSet(
        name=name, folder=folder, meta=meta,
        multi=np.load(folder / "multi.npy", mmap_mode="r"),
        offsets=np.load(folder / "offsets.npy"),
        single=np.load(folder / "single.npy"),
        token_ids=np.load(folder / "token_ids.npy", mmap_mode="r"),
        docs=docs,
        q_multi=[np.ascontiguousarray(q["multi"][qo[i] : qo[i + 1]]) for i in range(n)],
        q_single=q["single"][:n], q_page=q["page"][:n], q_text=q["text"][:n],
        q_token_ids=[q["token_ids"][qo[i] : qo[i + 1]] for i in range(n)] if "token_ids" in q.files else None,
    )


# -- the pagelens index --------------------------------------------------------------------------
def build_index(ds: RealSet, folder: Path, rebuild: bool = False):
    """A BYO-embeddings index of the set, one document per PDF. Returns (index opened for reading,
    page id of every row, build figures). Reused when its stamp matches the set."""
    import pagelens

    stamp_path = folder / "realtext-stamp.json"
    stamp = {"fingerprint": ds.fingerprint()}
    if not rebuild and stamp_path.exists() and json.loads(stamp_path.read_text()).get("fingerprint") == stamp["fingerprint"]:
        built = json.loads(stamp_path.read_text())
        # derived structures: rebuilt (and saved: only a writer persists them) if the engine's
        # defaults or format changed since
        index = pagelens.Index.open(folder, writable=True)
        t0 = time.perf_counter()
        index.sync()
        built["reopen_sync_s"] = time.perf_counter() - t0
        index.close()
        return pagelens.Index.open(folder), np.load(folder / "realtext-page-ids.npy"), built
    shutil.rmtree(folder, ignore_errors=True)
    index = pagelens.Index.create(folder, single_dim=ds.single.shape[1], multi_dim=ds.multi.shape[1])
    t0 = time.perf_counter()
    page_ids = add_set(index, ds)
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.sync()
    sync_s = time.perf_counter() - t0
    index.close()
    np.save(folder / "realtext-page-ids.npy", page_ids)
    built = {**stamp, "add_s": add_s, "sync_s": sync_s, "documents": len(set(ds.docs))}
    stamp_path.write_text(json.dumps(built))
    return pagelens.Index.open(folder), page_ids, built


def add_set(index, ds: RealSet) -> np.ndarray:
    """Add every page of the set to ``index``, one document per PDF; the page id of every row."""
    import pagelens

    page_ids = np.zeros(ds.n_pages, np.int64)
    start = 0
    while start < ds.n_pages:
        stop = start + 1
        while stop < ds.n_pages and ds.docs[stop] == ds.docs[start]:
            stop += 1
        pages = [pagelens.Embedding(single=ds.single[i], multi=np.asarray(ds.page(i))) for i in range(start, stop)]
        page_ids[start:stop] = index.add_embeddings(f"realtext://{ds.docs[start]}", pages)
        start = stop
    return page_ids


def embeddings(ds: RealSet):
    import pagelens

    return [pagelens.Embedding(single=s, multi=m) for s, m in zip(ds.q_single, ds.q_multi)]


def exhaustive_truth(index, ds: RealSet, page_ids: np.ndarray, folder: Path, k: int = 10) -> tuple[list[list[int]], float]:
    """Rows of the exact top-k per query (``search_embeddings(..., exhaustive=True)``), cached."""
    key = hashlib.sha256(ds.fingerprint().encode() + np.concatenate(ds.q_multi).tobytes()).hexdigest()[:16]
    path = folder / f"realtext-truth-{key}-k{k}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        return cached["rows"], cached["seconds"]
    row_of = {int(p): i for i, p in enumerate(page_ids)}
    t0 = time.perf_counter()
    hits = index.search_embeddings(embeddings(ds), k=k, exhaustive=True)
    seconds = time.perf_counter() - t0
    rows = [[row_of[h.page_id] for h in hs] for hs in hits]
    path.write_text(json.dumps({"rows": rows, "seconds": seconds}))
    return rows, seconds


# -- metrics -------------------------------------------------------------------------------------
def recall_at(found, truth, k: int = 10) -> float:
    return len(set(list(found)[:k]) & set(list(truth)[:k])) / max(1, min(k, len(truth)))


def known_item(found, target: int, k: int = 10) -> tuple[float, float]:
    """(hit@k, reciprocal rank@k) of the known item."""
    found = list(found)[:k]
    if target in found:
        return 1.0, 1.0 / (found.index(target) + 1)
    return 0.0, 0.0


def quality(ranked: list[list[int]], truth: list[list[int]], targets: np.ndarray, k: int = 10) -> dict:
    rec = np.array([recall_at(r, t, k) for r, t in zip(ranked, truth)])
    ki = np.array([known_item(r, int(t), k) for r, t in zip(ranked, targets)])
    return {"recall_mean": float(rec.mean()), "recall_worst": float(rec.min()), "recall_below_1": int((rec < 1).sum()),
            "hit": float(ki[:, 0].mean()), "mrr": float(ki[:, 1].mean()), "queries": len(rec)}


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q)) if len(values) else float("nan")


# -- the padded brute force ----------------------------------------------------------------------
class PaddedBruteForce:
    """byaldi / colpali-engine style: every page zero-padded to the longest, fp32, in RAM;
    ``einsum`` over batches of pages, max over page tokens, sum over query tokens."""

    def __init__(self, ds: RealSet, batch: int = 128):
        import torch

        self.torch, self.batch = torch, batch
        lengths = ds.lengths()
        self.pages = torch.zeros((ds.n_pages, int(lengths.max()), ds.multi.shape[1]), dtype=torch.float32)
        for i in range(ds.n_pages):
            self.pages[i, : lengths[i]] = torch.from_numpy(np.asarray(ds.page(i), dtype=np.float32))

    @property
    def nbytes(self) -> int:
        return self.pages.numel() * 4

    def scores(self, query: np.ndarray) -> np.ndarray:
        torch = self.torch
        q = torch.from_numpy(np.asarray(query, dtype=np.float32))
        out = []
        with torch.inference_mode():
            for a in range(0, len(self.pages), self.batch):
                out.append(torch.einsum("nd,csd->cns", q, self.pages[a : a + self.batch]).max(dim=2)[0].sum(dim=1))
        return torch.cat(out).numpy()

    def top(self, query: np.ndarray, k: int = 10) -> list[int]:
        s = self.scores(query)
        part = np.argpartition(-s, k - 1)[:k]
        return [int(i) for i in part[np.lexsort((part, -s[part]))]]


# -- machine state -------------------------------------------------------------------------------
def sgemm_gflops(n: int = 2048, reps: int = 3) -> float:
    import torch

    a = torch.rand(n, n)
    a @ a
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    return reps * 2 * n**3 / (time.perf_counter() - t0) / 1e9


class BusyLoad:
    """``n`` Python busy loops, each ending by itself after ``seconds`` at most; stopped on exit."""

    def __init__(self, n: int, seconds: float):
        self.n, self.seconds, self.procs = n, seconds, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(self.seconds)]) for _ in range(self.n)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def machine_state() -> dict:
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "sgemm_gflops": round(sgemm_gflops(), 1)}


# -- timing --------------------------------------------------------------------------------------
def timed_blocks(index, ds: RealSet, padded: PaddedBruteForce | None, args) -> dict:
    """Alternating blocks: default search over every query, then padded brute force and ours
    exhaustive over ``--slow-queries`` queries (a different slice each block)."""
    embs = embeddings(ds)
    ours, pad, exh = [], [], []
    rng = np.random.default_rng(1)
    slow = rng.permutation(len(embs))
    per_block = max(1, args.slow_queries)
    for b in range(args.blocks):
        for e in embs:
            t0 = time.perf_counter()
            index.search_embedding(e, k=10)
            ours.append(time.perf_counter() - t0)
        for qi in slow[(b * per_block) % len(embs) :][:per_block]:
            if padded is not None:
                t0 = time.perf_counter()
                padded.top(ds.q_multi[qi])
                pad.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            index.search_embedding(embs[qi], k=10, exhaustive=True)
            exh.append(time.perf_counter() - t0)
    out = {
        "default_p50_ms": pct(ours, 50), "default_p95_ms": pct(ours, 95), "default_n": len(ours),
        "exhaustive_p50_ms": pct(exh, 50), "exhaustive_p95_ms": pct(exh, 95), "exhaustive_n": len(exh),
        "padded_p50_ms": pct(pad, 50), "padded_p95_ms": pct(pad, 95), "padded_n": len(pad),
    }
    out["padded_over_default_p50"] = out["padded_p50_ms"] / out["default_p50_ms"]
    out["exhaustive_over_default_p50"] = out["exhaustive_p50_ms"] / out["default_p50_ms"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the cache of realtext_data.py (default: %(default)s)")
    ap.add_argument("--set", default="small", help="small or large (default: %(default)s)")
    ap.add_argument("--queries", type=int, default=None, help="use only the first N queries (default: all)")
    ap.add_argument("--blocks", type=int, default=3, help="alternating timing blocks per phase")
    ap.add_argument("--slow-queries", type=int, default=10, help="queries per block for the padded and exhaustive timings")
    ap.add_argument("--load", type=int, default=2, help="busy processes for the loaded phase; 0: quiet only")
    ap.add_argument("--load-seconds", type=float, default=1800, help="upper bound on each busy process's life")
    ap.add_argument("--no-padded", action="store_true", help="skip the padded brute force (it holds every page in fp32)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--index-dir", type=Path, default=None, help="default: ROOT/index-SET")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the pagelens index even if it matches")
    ap.add_argument("--json", type=Path, default=None, help="default: ROOT/results-SET.json")
    args = ap.parse_args()

    import torch

    from scoring import rank

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_set(args.root, args.set, args.queries)
    m = ds.meta
    # the K a search gets when the caller gives none (it may grow with the collection)
    auto_k = rank.default_candidates(ds.n_pages) if hasattr(rank, "default_candidates") else rank.DEFAULT_CANDIDATES
    token_gen = ("every token vector (IVF-SQ8)" if "ann" in rank.DEFAULT_GENERATORS
                 else "pooled token vectors")
    print(f"set {ds.name}: {ds.n_pages:,} pages from {m['documents']} PDFs, {int(ds.offsets[-1]):,} token vectors"
          f" (tokens/page {m['tokens_per_page']}), {len(ds.q_multi)} queries (tokens {m['tokens_per_query']})")
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads;"
          f" default search: generators {'+'.join(rank.DEFAULT_GENERATORS)}, K={auto_k} at {ds.n_pages:,} pages,"
          f" {token_gen}, n'={rank.DEFAULT_PER_TOKEN} neighbours per query token")
    folder = args.index_dir or args.root / f"index-{ds.name}"
    index, page_ids, built = build_index(ds, folder, args.rebuild)
    row_of = {int(p): i for i, p in enumerate(page_ids)}
    print(f"index: {folder} | adds {built.get('add_s', float('nan')):.1f} s | derived build (sync)"
          f" {built.get('sync_s', float('nan')):.1f} s"
          + (f" when built; this run's sync on reopen {built['reopen_sync_s']:.1f} s (a rebuild when the"
             " derived format or defaults changed)" if "reopen_sync_s" in built else ""))
    truth, truth_s = exhaustive_truth(index, ds, page_ids, folder)
    print(f"exhaustive truth for {len(truth)} queries in one batch: {truth_s:.1f} s")

    ranked = [[row_of[h.page_id] for h in index.search_embedding(e, k=10)] for e in embeddings(ds)]
    q_default = quality(ranked, truth, ds.q_page)
    q_exh = quality(truth, truth, ds.q_page)

    padded = None
    if not args.no_padded:
        t0 = time.perf_counter()
        padded = PaddedBruteForce(ds)
        print(f"padded brute force: {ds.n_pages:,} pages x {padded.pages.shape[1]} tokens fp32 in RAM"
              f" ({padded.nbytes / 2**30:.2f} GiB, padded in {time.perf_counter() - t0:.1f} s)")
        check = np.random.default_rng(2).permutation(len(truth))[: args.slow_queries]
        agree = [recall_at(padded.top(ds.q_multi[i]), truth[i]) for i in check]
        print(f"padded top-10 against exhaustive on {len(check)} queries: recall {np.mean(agree):.3f}")

    phases = {}
    plan = [("quiet", 0)] + ([(f"load{args.load}", args.load)] if args.load > 0 else [])
    for name, n in plan:
        with BusyLoad(n, args.load_seconds):
            state = machine_state()
            t0 = time.perf_counter()
            phases[name] = {**timed_blocks(index, ds, padded, args), **state, "busy_processes": n}
            phases[name]["seconds"] = time.perf_counter() - t0
        print(f"phase {name}: {phases[name]['seconds']:.0f} s, load average {state['loadavg_1m']},"
              f" sgemm {state['sgemm_gflops']} GFLOP/s at its start")

    w = 30
    print(f"\nquality ({len(truth)} queries; recall@10 against exhaustive MaxSim; known item = the query's source page)")
    print(f"{'':<{w}}{'recall@10 mean':>15}{'worst':>8}{'<1':>6}{'hit@10':>9}{'MRR@10':>9}")
    for label, qd in ((f"default (K={auto_k})", q_default), ("exhaustive", q_exh)):
        print(f"{label:<{w}}{qd['recall_mean']:>15.3f}{qd['recall_worst']:>8.2f}{qd['recall_below_1']:>6}"
              f"{qd['hit']:>9.3f}{qd['mrr']:>9.3f}")
    names = list(phases)
    print(f"\nlatency (ms; {args.blocks} alternating blocks per phase)")
    print(f"{'':<{w}}" + "".join(f"{n:>16}" for n in names))
    rows = [("default search p50", "default_p50_ms", ".1f"), ("default search p95", "default_p95_ms", ".1f"),
            ("padded brute force p50", "padded_p50_ms", ".0f"), ("padded brute force p95", "padded_p95_ms", ".0f"),
            ("ours exhaustive p50", "exhaustive_p50_ms", ".0f"), ("ours exhaustive p95", "exhaustive_p95_ms", ".0f"),
            ("padded / default (p50)", "padded_over_default_p50", ".2f"),
            ("exhaustive / default (p50)", "exhaustive_over_default_p50", ".2f"),
            ("load average at start", "loadavg_1m", ".2f"), ("sgemm GFLOP/s at start", "sgemm_gflops", ".0f")]
    for label, key, fmt in rows:
        print(f"{label:<{w}}" + "".join(f"{format(phases[n][key], fmt):>16}" for n in names))

    result = {
        "set": {k: m[k] for k in ("set", "pages", "documents", "tokens", "tokens_per_page", "queries", "tokens_per_query", "languages")},
        "defaults": {"generators": list(rank.DEFAULT_GENERATORS), "candidates": auto_k,
                     "token_generator": token_gen, "per_token": rank.DEFAULT_PER_TOKEN},
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "index": built, "truth_seconds": truth_s,
        "quality": {"default": q_default, "exhaustive": q_exh}, "latency": phases,
    }
    out = args.json or args.root / f"results-{ds.name}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
