"""Search benchmark (issue 4, section 4): recall@10 against exhaustive MaxSim, latency per
generator, MaxSim throughput against the machine's sgemm peak and against the padded
(byaldi / colpali-engine) baseline, all measured side by side in one run.

Synthetic collections behave like jina-embeddings-v4: each page's token *states* are drawn
around a few regions (one shared background, one dominant topic, three small regions); the
single vector is the normalised mean of the states (through a fixed map to 2048-d), the
multi-vectors are one fixed linear projection of each state to 128-d, normalised. The single
vector is never derived from the multi-vectors. A query is a short set of fresh states drawn
around one (non-background) region of one page, so small regions make "needle" queries that the
page mean dilutes. States live in a 64-d latent space (state = z @ basis), which makes the
2048-d means cheap to compute and is the same linear algebra.

Data is written to flat fp16/fp32 files and read through a memory-mapped VectorSource; the
derived structures are built by the product's own ``pagelens.retrieval.Retriever``.

    python benchmarks/search.py --sizes 1000,3000,10000 [--sizes-tokens 100000:192] [--quick]
        [--data-dir DIR --keep] [--K 100,200] [--nprobe 2,4] [--per-token 128,256] [--tokens-max 10000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pagelens.retrieval import Retriever
from scoring import rank
from scoring.maxsim import maxsim, maxsim_flops, maxsim_padded

LATENT, MULTI_DIM, SINGLE_DIM = 64, 128, 2048
N_TOPICS, N_BACKGROUND = 256, 8
REGION_SHARE = np.array([0.25, 0.45, 0.15, 0.10, 0.05])  # background, dominant, three small
NOISE = 0.6
QUERY_TOKENS = 16


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class World:
    """The fixed parts: topics, background states and the two linear maps."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.topics = _unit(rng.standard_normal((N_TOPICS, LATENT))).astype(np.float32)
        self.background = _unit(rng.standard_normal((N_BACKGROUND, LATENT))).astype(np.float32)
        self.to_multi = (rng.standard_normal((LATENT, MULTI_DIM)) / np.sqrt(LATENT)).astype(np.float32)
        self.to_single = (rng.standard_normal((LATENT, SINGLE_DIM)) / np.sqrt(LATENT)).astype(np.float32)

    def centres(self, rng, n_pages):
        """[n_pages, 5, LATENT] region centres per page."""
        c = np.empty((n_pages, len(REGION_SHARE), LATENT), np.float32)
        c[:, 0] = self.background[rng.integers(0, N_BACKGROUND, n_pages)]
        topics = self.topics[rng.integers(0, N_TOPICS, (n_pages, 4))]
        c[:, 1:] = _unit(topics + 0.7 * _unit(rng.standard_normal(topics.shape)))
        return c

    def states(self, rng, centres_per_token):
        noise = rng.standard_normal(centres_per_token.shape, dtype=np.float32) * (NOISE / np.sqrt(LATENT))
        return centres_per_token + noise


class MemmapSource:
    """VectorSource over flat files: multi fp16 [sum T, 128], offsets, single fp32 [N, 2048]."""

    def __init__(self, folder: Path):
        self.offsets = np.load(folder / "offsets.npy")
        n_tokens = int(self.offsets[-1])
        self.multi = np.memmap(folder / "multi.f16", np.float16, "r", shape=(n_tokens, MULTI_DIM))
        self.single = np.memmap(folder / "single.f32", np.float32, "r", shape=(len(self.offsets) - 1, SINGLE_DIM))
        self.single_dim, self.multi_dim = SINGLE_DIM, MULTI_DIM
        self._live = np.arange(1, len(self.offsets), dtype=np.int64)

    def live_page_ids(self):
        return self._live

    def single_vectors(self, page_ids):
        return np.asarray(self.single[np.asarray(page_ids) - 1])

    def multi_vectors(self, page_ids):
        o = self.offsets
        return [self.multi[o[i - 1] : o[i]] for i in np.asarray(page_ids)]


def generate(folder: Path, world: World, n_pages: int, tokens: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(tokens * 0.8), int(tokens * 1.2) + 1, n_pages)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "offsets.npy", offsets)
    multi = np.memmap(folder / "multi.f16", np.float16, "w+", shape=(int(offsets[-1]), MULTI_DIM))
    single = np.memmap(folder / "single.f32", np.float32, "w+", shape=(n_pages, SINGLE_DIM))
    centres = world.centres(rng, n_pages)
    np.save(folder / "centres.npy", centres)
    cum = np.cumsum(REGION_SHARE)
    for a in range(0, n_pages, 1000):
        b = min(a + 1000, n_pages)
        page = np.repeat(np.arange(a, b), lengths[a:b])
        region = np.searchsorted(cum, rng.random(len(page)) * cum[-1], side="right")
        z = world.states(rng, centres[page, region])
        multi[offsets[a] : offsets[b]] = _unit(z @ world.to_multi).astype(np.float16)
        sums = np.add.reduceat(z, offsets[a:b] - offsets[a], axis=0) / lengths[a:b, None]
        single[a:b] = _unit(sums @ world.to_single)
    multi.flush()
    single.flush()


def make_queries(folder: Path, world: World, n: int, seed: int):
    rng = np.random.default_rng(seed + 1)
    centres = np.load(folder / "centres.npy")
    pages = rng.integers(0, len(centres), n)
    regions = rng.integers(1, len(REGION_SHARE), n)  # any non-background region, small ones too
    out = []
    for p, r in zip(pages, regions):
        z = world.states(rng, np.repeat(centres[p, r][None], QUERY_TOKENS, axis=0))
        out.append((_unit(z @ world.to_multi).astype(np.float32), _unit(z.mean(0) @ world.to_single).astype(np.float32)))
    return out


def recall_at(hits, truth, k=10):
    return len({p for p, _ in hits[:k]} & {p for p, _ in truth[:k]}) / max(1, min(k, len(truth)))


def time_search(retriever, queries, truth, **kw):
    lat, rec = [], []
    for (m, s), t in zip(queries, truth):
        t0 = time.perf_counter()
        hits = retriever.search(m, s, k=10, **kw)
        lat.append(time.perf_counter() - t0)
        rec.append(recall_at(hits, t))
    return np.percentile(lat, 50) * 1e3, np.percentile(lat, 95) * 1e3, float(np.mean(rec))


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def sgemm_peak() -> float:
    a = torch.rand(4096, 4096)
    a @ a
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * 4096**3 / (time.perf_counter() - t0) / 1e9


def run_size(root: Path, world: World, n_pages: int, tokens: int, args, peak: float) -> dict:
    folder = root / f"data-{n_pages}x{tokens}"
    t0 = time.perf_counter()
    if not (folder / "single.f32").exists():
        generate(folder, world, n_pages, tokens, seed=n_pages)
    gen_s = time.perf_counter() - t0
    source = MemmapSource(folder)
    derived = root / f"derived-{n_pages}x{tokens}"
    reused = args.keep and derived.exists()  # --keep keeps the derived structures too: reruns skip the build
    if not reused:
        shutil.rmtree(derived, ignore_errors=True)
    t0 = time.perf_counter()
    retriever = Retriever(derived, source)
    retriever.sync()
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reopened = Retriever(derived, source)
    open_s = time.perf_counter() - t0
    assert reopened.watermark == retriever.watermark and len(reopened.ann) == n_pages
    with_tokens = n_pages <= args.tokens_max
    tok_s = 0.0
    t0 = time.perf_counter()
    if not args.default_only:
        retriever._enable_pooled()  # the m-means pooled index, also built on first use now
    pool_s = time.perf_counter() - t0
    with_tokens = with_tokens and not args.default_only
    if with_tokens:  # the codebook is built on first use; time it apart from the default build
        t0 = time.perf_counter()
        retriever._enable_tokens()
        tok_s = time.perf_counter() - t0
    queries = make_queries(folder, world, args.queries, seed=n_pages)
    t0 = time.perf_counter()
    truth = rank.exhaustive(source, [m for m, _ in queries], source.live_page_ids(), 10)
    truth_s = time.perf_counter() - t0
    n_tok = int(source.offsets[-1])
    print(f"\n== {n_pages:,} pages x ~{tokens} tokens ({n_tok:,} token vectors, {n_tok * 256 / 2**30:.2f} GiB fp16)")
    codebook = f"{retriever.tokens.n_centroids} centroids, built on first use in {tok_s:.1f} s" if retriever.tokens else "not built"
    built = "reused (--keep)" if reused else "build"
    print(f"generate {gen_s:.1f} s | {built} default derived (sync: single + every token) {build_s:.1f} s | reopen {open_s * 1e3:.0f} ms"
          f" | prefilter {retriever.prefilter.current_kind} | ann {len(retriever.ann.index):,} token vectors,"
          f" {retriever.ann.index.current_kind} {retriever.ann.index.codec}"
          + (f" | pooled m={retriever.pooled.m}, {len(retriever.pooled.index):,} vectors, built on first use in {pool_s:.1f} s"
             if retriever.pooled is not None else " | pooled not built")
          + f" | codebook {codebook}"
          f" | exhaustive truth for {len(queries)} queries {truth_s:.1f} s")
    print(f"{'generators':<14}{'K':>5}{'probe':>7}{'recall@10':>11}{'p50 ms':>9}{'p95 ms':>9}   (probe: nprobe for tokens, n' per token for pooled / ann)")
    rows = {}
    plans = [] if args.default_only else [("single",), ("ann",), ("ann", "single"), ("pooled",), ("pooled", "single")]
    if with_tokens:
        plans[1:1] = [("tokens",), ("single", "tokens")]
    for gens in plans:
        for K in args.K:
            probes = [None]
            if "tokens" in gens:
                probes = args.nprobe
            elif "pooled" in gens or "ann" in gens:
                probes = args.per_token
            for probe in probes:
                kw = {"nprobe": probe} if "tokens" in gens else {"per_token": probe}
                p50, p95, rec = time_search(retriever, queries, truth, candidates=K, generators=gens, **kw)
                rows[(gens, K, probe)] = (p50, p95, rec)
                name = "+".join(gens)
                print(f"{name:<14}{K:>5}{probe or '-':>7}{rec:>11.3f}{p50:>9.1f}{p95:>9.1f}")
    # a first pass reads the mapped derived files and the pages from disk when the page cache lost
    # them (a reused --keep build, other work since): reported apart, the figures are the warm pass
    cold50, cold95, _ = time_search(retriever, queries, truth)
    print(f"first pass over the queries (page cache as found): p50 {cold50:.1f} ms p95 {cold95:.1f} ms")
    p50, p95, rec = time_search(retriever, queries, truth)
    name = "DEFAULT " + "+".join(rank.DEFAULT_GENERATORS)
    print(f"{name:<22}K={rank.default_candidates(n_pages)} n'={rank.DEFAULT_PER_TOKEN}: recall@10 {rec:.3f}"
          f" [target >= 0.99: {_verdict(rec >= 0.99)}] | p50 {p50:.1f} ms p95 {p95:.1f} ms"
          + (f" [target p50 <= 50 ms at 100k: {_verdict(p50 <= 50)}]" if n_pages >= 100_000 else ""))
    # exact MaxSim over a given set vs the padded baseline, same pages, same query
    m = queries[0][0]
    subset = source.live_page_ids()[: min(n_pages, 2000)]
    # in RAM, so the comparison measures the two scorers, not the page cache; best of 3, alternating
    pages = [np.array(p) for p in source.multi_vectors(subset)]
    flops = maxsim_flops(len(m), int(sum(len(p) for p in pages)), MULTI_DIM)
    ours_s = pad_s = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        ours = maxsim(m, pages)
        ours_s = min(ours_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        padded = maxsim_padded(m, pages)
        pad_s = min(pad_s, time.perf_counter() - t0)
    differ = np.flatnonzero(~np.isclose(ours, padded, atol=1e-2))
    for i in differ:  # ours must be the exact value wherever the two disagree
        exact = (m @ np.asarray(pages[i], dtype=np.float32).T).max(axis=1).sum()
        assert abs(exact - ours[i]) < 1e-2, (i, exact, ours[i], padded[i])
    if len(differ):
        print(f"padded baseline wrong on {len(differ)} of {len(pages)} pages: its zero padding outscores a query"
              " token whose every real dot product is negative (ours checked exact there)")
    print(f"exact MaxSim over {len(subset)} pages in RAM (best of 3): {flops / ours_s / 1e9:.1f} GFLOP/s ({100 * flops / ours_s / 1e9 / peak:.0f}% of"
          f" sgemm peak {peak:.0f}) | padded baseline {flops / pad_s / 1e9:.1f} GFLOP/s | ours/padded {pad_s / ours_s:.2f}x"
          f"   [target >= 1x: {_verdict(pad_s >= ours_s)}]")
    if n_pages <= args.padded_whole_max:
        everything = source.multi_vectors(source.live_page_ids())
        t0 = time.perf_counter()
        maxsim_padded(m, everything)
        whole_s = time.perf_counter() - t0
        how = "measured"
    else:
        whole_s = pad_s * n_pages / len(subset)
        how = "extrapolated linearly from the subset"
    print(f"padded baseline over the whole collection {whole_s * 1e3:.0f} ms ({how}) | default search p50 {p50:.1f} ms"
          f" | speed-up {whole_s * 1e3 / p50:.1f}x   [target >= 3x (already at 3k pages): {_verdict(whole_s * 1e3 >= 3 * p50)}]")
    retriever = reopened = None
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(derived, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,3000,10000", help="page counts, comma-separated")
    ap.add_argument("--tokens", type=int, default=750, help="mean tokens per page")
    ap.add_argument("--sizes-tokens", default="", help="extra SIZE:TOKENS pairs, e.g. 100000:192")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--K", default="50,100,200,400")
    ap.add_argument("--nprobe", default="2,4,8")
    ap.add_argument("--per-token", default="256,1024", help="pooled and ann generators: neighbours per query token")
    ap.add_argument("--tokens-max", type=int, default=10000, help="largest size where the global codebook is built and measured")
    ap.add_argument("--padded-whole-max", type=int, default=10000, help="largest size where the padded baseline scores everything")
    ap.add_argument("--data-dir", default=None, help="where the synthetic files go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the generated data and the derived structures for the next run (which reuses both)")
    ap.add_argument("--default-only", action="store_true",
                    help="build and time only the default search (no sweep, no pooled index or codebook)")
    ap.add_argument("--quick", action="store_true", help="1k and 3k pages, 20 queries, fewer settings")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.queries, args.K, args.nprobe, args.per_token = "1000,3000", 20, "100,200", "4", "256"
    args.K = [int(x) for x in args.K.split(",")]
    args.nprobe = [int(x) for x in args.nprobe.split(",")]
    args.per_token = [int(x) for x in args.per_token.split(",")]
    plan = [(int(s), args.tokens) for s in args.sizes.split(",") if s]
    plan += [tuple(int(v) for v in pair.split(":")) for pair in args.sizes_tokens.split(",") if pair]
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="pagelens-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    peak = sgemm_peak()
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}, sgemm peak {peak:.0f} GFLOP/s (4096^3 fp32)")
    world = World()
    for n_pages, tokens in plan:
        run_size(root, world, n_pages, tokens, args, peak)


if __name__ == "__main__":
    main()
