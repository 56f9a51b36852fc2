"""The two stages: candidate generators -> a shortlist of K pages -> exact MaxSim -> top k.

Generators: "single" (FAISS over single vectors, ``prefilter.py``), "ann" (FAISS over every token
vector, IVF lists of 8-bit residuals: ``pooled.PooledIndex(m=0)``), "pooled" (FAISS over each page's
k-means-pooled token vectors) and "tokens" (global-codebook centroid probes, ``tokens.py``). With
several, the shortlist is a union: the first generator's top K pages plus the top K/4 of each
other one (``union_with_quotas``), so MaxSim reranks at most K * (1 + (g-1)/4); or, the compact
default (``shares="each"``), every generator's top K.

Defaults, chosen on real text (``benchmarks/realtext.py``: 3,000 and 24,000 real PDF pages in 36
languages, MiniLM token states projected to 128-d, 300 queries of 10 words from page text;
recall@10 against exhaustive MaxSim) with the synthetic sets of ``benchmarks/search.py`` beside it:
- "ann" + "single", n' = 1024 neighbours per query token. On 24k real pages recall@10 0.954 /
  0.975 / 0.989 / 0.995 at K = 100 / 200 / 400 / 800, and known-item hit@10 equal to exhaustive at
  every K; pooled means (m = 64 per page) gave 0.920 / 0.959 / 0.978 / 0.988 and lose known items:
  a mean blurs exactly the rare tokens that decide MaxSim (real token vectors are clustered and
  anisotropic, the same frequent tokens on every page). On the 3k real set the default finds
  what exhaustive finds (1.000 at K=200).
- K grows with the collection (``default_candidates``: 200 up to 6k pages, one per 30 pages, at
  most 800): at 24k pages K = 400 gave 0.989, K = 800 0.996 with the default generators.
- single alone: 0.86 / 0.93 / 0.97 at K = 100 / 200 / 400 on the 3k real set; it adds its top
  K/4 for ~1 ms. The global codebook (nprobe 16) reaches 0.980 at K=200 on 3k, 0.914 on 24k:
  selectable, not default.
- a flat (exact) index over every token vector finds everything but costs ~620 ms a query at 3k
  pages: a brute force in disguise; IVF with 8-bit residuals keeps its recall at 50 ms at 24k.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from scoring.maxsim import EMPTY_PAGE_SCORE, maxsim, maxsim_batch
from scoring.pooled import DEFAULT_PER_TOKEN, PooledIndex
from scoring.prefilter import SinglePrefilter
from scoring.source import VectorSource
from scoring.tokens import TokenIndex

GENERATORS = ("single", "tokens", "pooled", "ann")
DEFAULT_GENERATORS = ("ann", "single")
# A compact index (its codec's records begin with a centroid id) keeps no all-token copy. Its token
# generators are 16 pooled means a page (product-quantised, built at sync: scoring/pooled.py,
# COMPACT_*) and the centroid lists built from the stored ids, each its top K (``shares="each"``). The
# means separate pages of one topic, which the lists' pre-scores cannot (they tie across it: 1M
# synthetic pages, lists first recall@10 0.563); the lists find the rare tokens a mean blurs (real
# text). Measured in README, "Compact storage".
COMPACT_GENERATORS = ("pooled", "tokens")
COMPACT_PER_TOKEN = 2048  # pooled neighbours per query token on a compact index
DEFAULT_CANDIDATES = 200
MAX_AUTO_CANDIDATES = 800
PAGES_PER_CANDIDATE = 30  # the shortlist grows with the collection: real text needs it (module doc)
EARLY_STOP_STEP = 100  # pages reranked per step past the first DEFAULT_CANDIDATES (see search)
# Before the first stop test: the token index's best EARLY_STOP_HEAD pages and each other
# generator's best QUOTA_ALWAYS; the rest of their quotas only where the pre-score reaches the k-th
# exact score. On 24k real pages (head 200 -> 100, all quotas -> bounded) recall@10 stayed 0.996,
# pages reranked per query fell 618 -> 595; on 100k synthetic pages 324 -> ~160.
EARLY_STOP_HEAD = 100
QUOTA_ALWAYS = 50
QUOTA_BOUNDED = True


def default_candidates(live_pages: int) -> int:
    """K when the caller gives none: 200 up to 6,000 pages, then one per 30 pages, at most 800.
    Measured on 24k real pages (default generators): K = 200 / 400 / 800 gave recall@10
    0.975 / 0.989 / 0.996."""
    return int(min(MAX_AUTO_CANDIDATES, max(DEFAULT_CANDIDATES, live_pages // PAGES_PER_CANDIDATE)))
def compact_candidates(live_pages: int) -> int:
    """K for the compact generators (pooled means and centroid lists, each its top K, reranked whole):
    ``default_candidates`` up to 400. Measured over pq-16 codes (recall@10 against exhaustive over
    the same codes; benchmarks/compact_shares.py, README "Compact storage"): 3k real pages K = 200
    0.998 (313 pages reranked; lists + single, the default before, 0.991); 24k real pages K = 200 /
    400 / 600 0.980 / 0.996 / 0.997 (341 / 664 / 979 reranked; lists + single at K = 800: 0.995 with
    935); 1M synthetic pages K = 400 0.970 (compact_pooled.py): the means find what the lists tie on."""
    return int(min(MAX_COMPACT_CANDIDATES, default_candidates(live_pages)))


MAX_COMPACT_CANDIDATES = 400
DEFAULT_NPROBE = 4
EXHAUSTIVE_BLOCK_PAGES = 1024

Hits = list[tuple[int, float]]


def check_generators(generators: Sequence[str] | None) -> tuple[str, ...]:
    gens = tuple(DEFAULT_GENERATORS if generators is None else generators)
    bad = [g for g in gens if g not in GENERATORS]
    if bad or not gens:
        raise ValueError(f"unknown candidate generators {bad or gens!r}; choose from {list(GENERATORS)}")
    return gens


def top_k(page_ids: np.ndarray, scores: np.ndarray, k: int) -> Hits:
    """Best ``k`` (page_id, score), score descending then page id; empty pages (-inf) dropped."""
    keep = np.isfinite(scores)
    ids, sc = np.asarray(page_ids)[keep], np.asarray(scores)[keep]
    if len(ids) > k:
        part = np.argpartition(-sc, k - 1)[:k]
        ids, sc = ids[part], sc[part]
    order = np.lexsort((ids, -sc))
    return [(int(ids[i]), float(sc[i])) for i in order]


def _merge_top(a: Hits, b: Hits, k: int) -> Hits:
    return sorted(a + b, key=lambda h: (-h[1], h[0]))[:k]


def live_subset(page_ids: np.ndarray, live_ids: np.ndarray) -> np.ndarray:
    """The ids (order kept) that are in the sorted array ``live_ids``."""
    page_ids = np.asarray(page_ids, dtype=np.int64)
    if len(live_ids) == 0 or len(page_ids) == 0:
        return page_ids[:0]
    at = np.minimum(np.searchsorted(live_ids, page_ids), len(live_ids) - 1)
    return page_ids[live_ids[at] == page_ids]


def shortlist(
    query_multi: np.ndarray,
    query_single: np.ndarray | None,
    *,
    prefilter: SinglePrefilter | None,
    tokens: TokenIndex | None,
    live_ids: np.ndarray,
    candidates: int = DEFAULT_CANDIDATES,
    generators: Sequence[str] | None = None,
    nprobe: int = DEFAULT_NPROBE,
    pooled: PooledIndex | None = None,
    per_token: int = DEFAULT_PER_TOKEN,
    k: int = 0,
    ann: PooledIndex | None = None,
    shares: str = "first",
) -> np.ndarray:
    """Live page ids from the chosen generators (a union with quotas when several).
    A generator whose structure is missing (no codebook yet, no single vector) is skipped.

    ``candidates`` is a floor raised to ``k``, and the shortlist never holds fewer than
    ``min(k, len(live_ids))`` pages: when the generators propose fewer (a generator returns what
    its neighbours reach, removed pages drop out), it is topped up from a deeper single-vector
    search, then from the remaining live pages, so a search of an index with at least k live pages
    always returns k hits."""
    ids = proposals(
        query_multi, query_single, prefilter=prefilter, tokens=tokens, live_ids=live_ids,
        candidates=max(int(candidates), int(k)), generators=generators, nprobe=nprobe, pooled=pooled,
        per_token=per_token, ann=ann, shares=shares,
    )
    return top_up(ids, k, live_ids, prefilter=prefilter, query_single=query_single)


def proposals(
    query_multi: np.ndarray,
    query_single: np.ndarray | None,
    *,
    prefilter: SinglePrefilter | None,
    tokens: TokenIndex | None,
    live_ids: np.ndarray,
    candidates: int = DEFAULT_CANDIDATES,
    generators: Sequence[str] | None = None,
    nprobe: int = DEFAULT_NPROBE,
    pooled: PooledIndex | None = None,
    per_token: int = DEFAULT_PER_TOKEN,
    ann: PooledIndex | None = None,
    shares: str = "first",
) -> np.ndarray:
    """What the generators propose, as one sorted set (``union_with_quotas``), before any top-up;
    empty when no generator could run."""
    rankings = [ranking(gen, query_multi, query_single, candidates, prefilter=prefilter, tokens=tokens,
                        live_ids=live_ids, nprobe=nprobe, pooled=pooled, per_token=per_token, ann=ann)
                for gen in check_generators(generators)]
    return union_with_quotas([r for r in rankings if r is not None], candidates, shares=shares)


def ranking(gen: str, query_multi, query_single, candidates: int, *, prefilter, tokens, live_ids, nprobe, pooled,
            per_token, ann) -> np.ndarray | None:
    """One generator's live pages, best first; None when its structure (or the single query) is missing."""
    if gen == "single" and prefilter is not None and query_single is not None:
        ids, _ = prefilter.search(query_single, candidates)
        return live_subset(ids[0][ids[0] >= 0], live_ids)
    if gen == "tokens" and tokens is not None:
        ids, scores = tokens.candidates(query_multi, candidates + 1, nprobe=nprobe)
        return live_subset(untied_head(ids, scores, candidates), live_ids)
    if gen == "pooled" and pooled is not None:
        return live_subset(pooled.candidates(query_multi, candidates, per_token=per_token)[0], live_ids)
    if gen == "ann" and ann is not None:
        return live_subset(ann.candidates(query_multi, candidates, per_token=per_token)[0], live_ids)
    return None


def top_up(
    ids: np.ndarray,
    k: int,
    live_ids: np.ndarray,
    *,
    prefilter: SinglePrefilter | None = None,
    query_single: np.ndarray | None = None,
) -> np.ndarray:
    """``ids`` (sorted, unique) grown to at least ``min(k, len(live_ids))`` live pages: first with
    the single-vector prefilter's next best pages, then with the lowest remaining live ids."""
    ids = np.asarray(ids, dtype=np.int64)
    want = min(int(k), len(live_ids))
    if len(ids) >= want:
        return ids
    if prefilter is not None and query_single is not None and len(prefilter):
        depth = min(len(prefilter), len(ids) + 2 * (want - len(ids)) + 16)
        found, _ = prefilter.search(query_single, depth)
        more = live_subset(found[0][found[0] >= 0], live_ids)
        more = more[~np.isin(more, ids)][: want - len(ids)]
        ids = np.union1d(ids, more)
    if len(ids) < want:
        rest = live_ids[~np.isin(live_ids, ids)][: want - len(ids)]
        ids = np.union1d(ids, rest)
    return ids


def untied_head(ids: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of a ranking (best first, ties by page id), less the pages tied with the n-th
    when the tie runs past it: which of those make the cut is a draw by page id, not a ranking.
    The centroid lists' pre-scores tie across a whole topic at scale (1M synthetic pages: the same
    probed lists, the same sum); on real text they seldom tie and nothing is dropped."""
    ids = np.asarray(ids)
    if len(ids) <= n or n <= 0 or scores[n - 1] != scores[n]:
        return ids[: max(n, 0)]
    return ids[:n][np.asarray(scores[:n]) != scores[n - 1]]


SHARES = ("first", "each")


def union_with_quotas(rankings: Sequence[np.ndarray], candidates: int, *, shares: str = "first") -> np.ndarray:
    """The first generator's top ``candidates`` pages plus each other generator's top quarter of
    that (``shares="first"``), or every generator's top ``candidates`` (``"each"``: the compact
    default, whose two token generators each find what the other misses), as one set; topped up
    from the others' next pages while it holds fewer than ``candidates`` (a generator may return
    fewer pages than asked). Unlike a fused cut to K, the main generator keeps all of its K slots:
    at 100k pages RRF-fusing pooled with single at K=100 lost 2.5 points of recall@10 against
    pooled alone; the others add the pages only they find."""
    if shares not in SHARES:
        raise ValueError(f"unknown shares {shares!r}; choose one of {list(SHARES)}")
    rankings = [np.asarray(r, dtype=np.int64) for r in rankings]
    quota = [candidates if i == 0 or shares == "each" else max(1, candidates // 4) for i in range(len(rankings))]
    chosen = [r[:q] for r, q in zip(rankings, quota)]
    shortlist = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    if len(shortlist) < candidates:
        rest = np.concatenate([r[q:] for r, q in zip(rankings, quota)] or [np.zeros(0, np.int64)])
        rest = rest[~np.isin(rest, shortlist)]
        _, first = np.unique(rest, return_index=True)
        shortlist = np.union1d(shortlist, rest[np.sort(first)][: candidates - len(shortlist)])
    return shortlist


def rerank(source: VectorSource, query_multi: np.ndarray, page_ids: np.ndarray, k: int, *, device: str = "cpu") -> Hits:
    """Exact MaxSim over the given pages, top ``k``."""
    page_ids = np.asarray(page_ids, dtype=np.int64)
    if len(page_ids) == 0:
        return []
    scores = maxsim(query_multi, list(source.multi_vectors(page_ids)), device=device)
    return top_k(page_ids, scores, k)


def exhaustive(
    source: VectorSource,
    queries_multi: Sequence[np.ndarray],
    page_ids: np.ndarray,
    k: int,
    *,
    device: str = "cpu",
    block_pages: int = EXHAUSTIVE_BLOCK_PAGES,
) -> list[Hits]:
    """Ground truth: MaxSim of every query against every given page, in blocks of pages so
    memory stays bounded; all queries share each block's fp16 -> fp32 widening."""
    results: list[Hits] = [[] for _ in queries_multi]
    for start in range(0, len(page_ids), block_pages):
        block = np.asarray(page_ids[start : start + block_pages], dtype=np.int64)
        scores = maxsim_batch(queries_multi, list(source.multi_vectors(block)), device=device)
        for qi in range(len(queries_multi)):
            results[qi] = _merge_top(results[qi], top_k(block, scores[qi], k), k)
    return results


def search(
    source: VectorSource,
    query_multi: np.ndarray,
    query_single: np.ndarray | None,
    *,
    prefilter: SinglePrefilter | None,
    tokens: TokenIndex | None,
    live_ids: np.ndarray,
    unindexed_ids: np.ndarray | None = None,
    k: int = 10,
    candidates: int | None = None,
    generators: Sequence[str] | None = None,
    nprobe: int | None = None,
    exhaustive_search: bool = False,
    device: str = "cpu",
    pooled: PooledIndex | None = None,
    per_token: int | None = None,
    ann: PooledIndex | None = None,
    early_stop: bool = True,
    shares: str = "first",
) -> Hits:
    """One query through both stages. ``live_ids`` (sorted) is the truth about what exists;
    ``unindexed_ids`` are live pages the derived structures do not hold yet: they are always
    reranked, so a lagging index never hides a new page.

    ``early_stop``: when the first generator is the all-token index ("ann"), its pages are
    reranked in the order of their pre-scores: the first ``EARLY_STOP_HEAD`` (with each other
    generator's first ``QUOTA_ALWAYS``), then 100 at a time only while the next page's pre-score
    reaches the k-th exact score so far; the rest of the other generators' quotas are reranked
    where their pre-score (or, outside the token ranking, its lowest pre-score) reaches it.
    A pre-score counts, per query token, the page's best returned vector or else the token's floor
    (its n'-th score), so it is close to an upper bound of the page's MaxSim: a page whose
    pre-score is under the k-th exact score can seldom enter the top k. K is then a ceiling."""
    k = int(k)
    candidates = default_candidates(len(live_ids)) if candidates is None else int(candidates)
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    candidates = max(candidates, k)  # a floor raised to k: the rerank must see at least k pages
    nprobe = DEFAULT_NPROBE if nprobe is None else int(nprobe)
    per_token = DEFAULT_PER_TOKEN if per_token is None else int(per_token)
    if k <= 0 or len(live_ids) == 0:
        return []
    if exhaustive_search or len(live_ids) <= candidates:
        return exhaustive(source, [query_multi], live_ids, k, device=device)[0]
    gens = check_generators(generators)
    # Only the all-token index's pre-scores come close to bounding MaxSim (a page's own tokens
    # were searched); a pooled mean can score far below the token it stands for, so a pooled-first
    # shortlist is reranked whole (100k synthetic pages, 16 means: recall@10 0.987 with early
    # stopping, 0.997 without, K = 200).
    ordered = ann if gens[0] == "ann" else None
    if early_stop and ordered is not None and len(ordered):
        return _search_in_prescore_order(
            source, query_multi, query_single, ordered, gens[1:], prefilter=prefilter, tokens=tokens,
            live_ids=live_ids, unindexed_ids=unindexed_ids, k=k, candidates=candidates, nprobe=nprobe,
            pooled=pooled, per_token=per_token, ann=ann, device=device,
        )
    ids = proposals(
        query_multi, query_single, prefilter=prefilter, tokens=tokens, live_ids=live_ids,
        candidates=candidates, generators=generators, nprobe=nprobe, pooled=pooled, per_token=per_token,
        ann=ann, shares=shares,
    )
    if len(ids) == 0:  # no generator could run (no codebook yet, no single query): stay exact
        return exhaustive(source, [query_multi], live_ids, k, device=device)[0]
    if unindexed_ids is not None and len(unindexed_ids):
        ids = np.union1d(ids, unindexed_ids)
    ids = top_up(ids, k, live_ids, prefilter=prefilter, query_single=query_single)  # never fewer than k
    return rerank(source, query_multi, ids, k, device=device)


def _search_in_prescore_order(source, query_multi, query_single, ordered: PooledIndex, others: Sequence[str], *,
                              prefilter, tokens, live_ids, unindexed_ids, k, candidates, nprobe, pooled, per_token,
                              ann, device) -> Hits:
    """``search`` with early stopping (see its docstring)."""
    ranked, pre = ordered.candidates(query_multi, candidates, per_token=per_token)
    alive = np.isin(ranked, live_ids)
    ranked, pre = ranked[alive], pre[alive]
    head = max(k, min(candidates, EARLY_STOP_HEAD))
    quotas = []  # each other generator's quota (K/4, as union_with_quotas gives it), best first
    for gen in others:
        r = ranking(gen, query_multi, query_single, max(1, candidates // 4), prefilter=prefilter, tokens=tokens,
                    live_ids=live_ids, nprobe=nprobe, pooled=pooled, per_token=per_token, ann=ann)
        if r is not None:
            quotas.append(r[: max(1, candidates // 4)])
    if QUOTA_BOUNDED:
        ids, deferred = _bounded_quotas(ranked[:head], quotas)
    else:
        ids, deferred = np.unique(np.concatenate([ranked[:head]] + quotas)), np.zeros(0, np.int64)
    if unindexed_ids is not None and len(unindexed_ids):  # always reranked: no pre-score knows them
        ids = np.union1d(ids, np.asarray(unindexed_ids, dtype=np.int64))
    ids = top_up(ids, k, live_ids, prefilter=prefilter, query_single=query_single)
    hits = rerank(source, query_multi, ids, k, device=device)
    if len(deferred):
        bound = _prescore_bound(deferred, ranked, pre)
        more = deferred[(bound >= hits[k - 1][1]) if len(hits) >= k else slice(None)]
        more = more[~np.isin(more, ids)]
        if len(more):
            hits = _merge_top(hits, rerank(source, query_multi, more, k, device=device), k)
            ids = np.union1d(ids, more)
    pos = head
    while pos < len(ranked):
        if len(hits) >= k and pre[pos] < hits[k - 1][1]:
            break  # no page left can reach the k-th exact score by its pre-score
        block = ranked[pos : pos + EARLY_STOP_STEP]
        pos += len(block)
        block = block[~np.isin(block, ids)]
        if len(block):
            hits = _merge_top(hits, rerank(source, query_multi, block, k, device=device), k)
    return hits


def _bounded_quotas(head: np.ndarray, quotas: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(pages to rerank now, pages deferred): the token index's head and each other generator's
    first ``QUOTA_ALWAYS``; the rest of the quotas wait for the k-th exact score of that first
    rerank and are reranked only where their pre-score reaches it (``_prescore_bound``)."""
    ids = np.unique(np.concatenate([head] + [q[:QUOTA_ALWAYS] for q in quotas]))
    rest = np.concatenate([q[QUOTA_ALWAYS:] for q in quotas] or [np.zeros(0, np.int64)])
    return ids, np.setdiff1d(rest, ids)


def _prescore_bound(page_ids: np.ndarray, ranked: np.ndarray, pre: np.ndarray) -> np.ndarray:
    """Each page's pre-score where the token index ranked it, else the lowest pre-score it
    returned: a page outside its ranking pre-scores at most that."""
    if not len(ranked):
        return np.full(len(page_ids), np.inf, np.float32)
    order = np.argsort(ranked)
    at = np.minimum(np.searchsorted(ranked[order], page_ids), len(ranked) - 1)
    hit = ranked[order][at] == page_ids
    return np.where(hit, pre[order][at], pre.min()).astype(np.float32)


__all__ = [
    "COMPACT_GENERATORS", "COMPACT_PER_TOKEN", "DEFAULT_CANDIDATES", "DEFAULT_GENERATORS", "compact_candidates", "default_candidates", "DEFAULT_NPROBE", "DEFAULT_PER_TOKEN", "EMPTY_PAGE_SCORE", "GENERATORS",
    "Hits", "SHARES", "check_generators", "exhaustive", "live_subset", "proposals", "rerank", "search", "shortlist", "top_k", "top_up", "union_with_quotas", "untied_head",
]
