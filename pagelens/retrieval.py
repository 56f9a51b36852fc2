"""Derived search artefacts: the single-vector FAISS prefilter, the all-token index ("ann": every
token vector in IVF-SQ8, ``scoring/pooled.py`` with m = 0) and, only once asked for, the m-means
pooled index ("pooled") and the global token codebook with its inverted lists ("tokens"), kept in
step with a ``VectorSource`` and persisted under ``derived/``.

The codebook and the pooled index are not in the default ranking (see ``scoring/rank.py``):
each is built only when a search first asks for it (or ``token_codebook=True`` / ``pooled=True``),
and from then on kept in step like the others. A compact index (codes that begin with a centroid
id) is the other way round: its sync builds 16 pooled means a page and the centroid lists from the
stored ids, its default generators, and the single-vector prefilter only once a search asks for
"single" (the bytes it would take go to the means: README, "Compact storage").

Everything here is rebuildable from the source. The source is the truth about which pages
exist: search filters every candidate by ``source.live_page_ids()`` and always reranks live pages
newer than the watermark, so a lagging or lost derived state never hides a page and never
resurrects a removed one.

On disk (``directory``):
    state.json            {"format", "generation", "watermark", "single_dim", ...}
    gen-00000042/*.npy    the arrays of generation 42 (prefilter + all-token index [+ pooled] [+ codebook])
A save writes a new generation folder (files fsynced, folder renamed from ``.tmp``), then
replaces state.json (tmp -> fsync -> rename -> directory fsync), then deletes older folders.
A kill at any moment leaves state.json naming a complete generation. A state that fails to load
(missing, truncated, inconsistent) is discarded and rebuilt by the next ``sync()``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from indexer.shards import atomic_write_json, fsync_dir, open_nofollow
from scoring import rank
from scoring.faiss_io import map_index
from scoring.pooled import COMPACT_CODEC, COMPACT_MEANS, DEFAULT_CLUSTERS, PooledIndex
from scoring.prefilter import KINDS, SinglePrefilter
from scoring.source import VectorSource
from scoring.threads import single_threaded
from scoring.tokens import TokenIndex, suggest_centroids

FORMAT = 3  # 2: adds the pooled index; 3: the all-token index, pooled optional
MIN_TRAIN_TOKENS = 50_000  # below this the collection is a few pages: rerank covers it
TRAIN_SAMPLE_TOKENS = 131_072  # k-means sample: 64 per centroid at the largest codebook
RETRAIN_GROWTH = 4.0  # retrain the codebook once live tokens exceed 4x those it was trained on
READ_BATCH_PAGES = 512


# The names a generation may hold: anything else in state.json is not ours (a crafted state must not
# make a search open files elsewhere).
_ARRAY_NAME = re.compile(r"\A(included|(pf|pool|tok|ann)_[a-z0-9_]{1,40})\Z")
MAX_STATE_BYTES = 1 << 20


def _read_state(directory: Path) -> dict:
    path = directory / "state.json"
    if path.is_symlink() or not path.is_file():
        raise ValueError("state.json is missing or not a plain file")
    with open(path, "rb") as fh:
        data = fh.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise ValueError("state.json is too large")
    state = json.loads(data)
    if not isinstance(state, dict) or not isinstance(state.get("generation"), int) or state["generation"] < 0:
        raise ValueError("state.json has no valid generation")
    files = state.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and _ARRAY_NAME.match(k) and isinstance(v, int)
                                              for k, v in files.items()):
        raise ValueError("state.json names files that are not ours")
    return state


# what each saved array belongs to, by its name's prefix (``_save``), for ``derived_bytes``
_PARTS = (("pool_", "pooled means"), ("tok_", "token lists"), ("ann_", "all-token index"),
          ("pf_", "single prefilter"))


def derived_bytes(directory: Path | str) -> dict[str, int]:
    """Bytes of the saved generation by structure ({"pooled means": ..., "token lists": ...,
    "all-token index": ..., "single prefilter": ..., "other": ...}, the parts it holds), as its
    state.json records them; {} when there is no readable state (it is rebuilt on the next sync)."""
    try:
        files = _read_state(Path(directory))["files"]
    except Exception:  # noqa: BLE001 - derived data is rebuildable: unreadable means "none yet"
        return {}
    out: dict[str, int] = {}
    for name, size in files.items():
        part = next((label for prefix, label in _PARTS if name.startswith(prefix)), "other")
        out[part] = out.get(part, 0) + max(0, int(size))
    return out


def _generation_on_disk(directory: Path) -> int:
    try:
        return int(_read_state(directory)["generation"])
    except Exception:  # noqa: BLE001 - any unreadable state means "none": derived data is rebuildable
        return 0


@contextmanager
def _exclusive(directory: Path):
    """One process at a time changes the derived structures on disk (only writers persist them)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = open_nofollow(str(directory / ".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Retriever:
    """Two-stage search over a VectorSource, with its derived structures under ``directory``."""

    def __init__(
        self,
        directory: Path | str,
        source: VectorSource,
        *,
        single_dim: int | None = None,
        prefilter: str = "auto",
        device: str = "cpu",
        min_train_tokens: int = MIN_TRAIN_TOKENS,
        seed: int = 0,
        token_codebook: bool = False,
        pool_clusters: int | None = None,
        persist: bool = True,
        pooled: bool = False,
    ):
        if prefilter not in KINDS:
            raise ValueError(f"unknown prefilter {prefilter!r}; choose one of {list(KINDS)}")
        self.directory = Path(directory)
        self.source = source
        self.device = device
        self.min_train_tokens = int(min_train_tokens)
        self.seed = int(seed)
        self.token_codebook = bool(token_codebook)
        # None: DEFAULT_CLUSTERS means a page, or COMPACT_MEANS over a compact index's codes
        self._requested_clusters = None if pool_clusters is None else int(pool_clusters)
        # the m-means pooled index ("pooled") is built only once a search asks for it, like the
        # codebook; the default token generator is the all-token index ("ann", scoring/pooled.py)
        self.pooled_enabled = bool(pooled)
        # a compact index builds its single-vector prefilter only once a search asks for "single"
        # (its default generators do not: README, "Compact storage"); every other index always does
        self.single_enabled = False
        # A reader (persist=False) never writes into the index folder: what it must build, it keeps
        # in memory; the writer saves generations that readers then map.
        self.persist = bool(persist)
        self._requested_dim = single_dim
        self._requested_kind = prefilter
        self._generation = 0
        self._reset()
        self._load()

    # -- state ----------------------------------------------------------------------------------
    def _reset(self) -> None:
        # a store may keep its single vectors narrower than the model's (Matryoshka, issue 11)
        dim = self._requested_dim or getattr(self.source, "single_width", self.source.single_dim)
        if dim > self.source.single_dim:
            raise ValueError(f"single_dim {dim} exceeds the source's {self.source.single_dim}-d vectors")
        self.single_dim = int(dim)
        # single vectors stored in float16 (compact) are held so by the prefilter too: the same values
        half = getattr(self.source, "single_precision", "fp32") == "fp16"
        self.prefilter = SinglePrefilter(self.single_dim, kind=self._requested_kind, codec="fp16" if half else "flat")
        self.tokens: TokenIndex | None = None
        self.ann: PooledIndex | None = PooledIndex(self.source.multi_dim, m=0)
        book = self._source_codebook()
        self.compact_codec: int | None = None if book is None else int(book[0])
        if book is not None:  # compact: lists over the codec's centroids replace the all-token copy
            self.tokens, self.ann = TokenIndex(book[1], version=self.compact_codec), None
        # a compact index pools at sync: its default generators lead with the means (scoring/rank.py)
        self.pooled = self._new_pooled() if self.pooled_enabled or self.compact else None
        self.included = np.zeros(0, dtype=np.int64)  # sorted ids the structures hold
        self.watermark = -1
        self.trained_tokens = 0

    @property
    def pool_clusters(self) -> int:
        if self._requested_clusters is not None:
            return self._requested_clusters
        return COMPACT_MEANS if self.compact else DEFAULT_CLUSTERS

    @property
    def pool_codec(self) -> str:
        return COMPACT_CODEC if self.compact else "flat"

    def _new_pooled(self) -> PooledIndex:
        """An empty pooled generator: over a compact index 16 means a page, product-quantised
        (``scoring/pooled.py``, COMPACT_*); elsewhere float32."""
        return PooledIndex(self.source.multi_dim, m=self.pool_clusters, codec=self.pool_codec)

    def _pooled_over(self, page_ids: np.ndarray) -> PooledIndex:
        """A pooled generator over these pages, read from the source in batches, added in one go."""
        pooled = self._new_pooled()
        batches = (page_ids[a : a + READ_BATCH_PAGES] for a in range(0, len(page_ids), READ_BATCH_PAGES))
        pooled.add_batches((b, list(self.source.multi_vectors(b))) for b in batches)
        return pooled

    def _add_singles(self, page_ids: np.ndarray) -> None:
        for start in range(0, len(page_ids), READ_BATCH_PAGES * 8):
            batch = page_ids[start : start + READ_BATCH_PAGES * 8]
            self.prefilter.add(batch, self.source.single_vectors(batch))

    def _source_codebook(self) -> tuple[int, np.ndarray] | None:
        """The source's centroid codec (``Store.token_codebook``), when it stores tokens as codes that
        begin with a centroid id; None for float16 stores and sources without codecs."""
        book = getattr(self.source, "token_codebook", None)
        return book() if book is not None else None

    @property
    def compact(self) -> bool:
        """Whether the token generator is the codec's centroid lists ("tokens", built from the stored
        centroid ids: 4 B a (centroid, page) pair) instead of the all-token IVF copy ("ann", 136 B a
        token): the derived side of a compact index (issue 11)."""
        return self.compact_codec is not None

    @property
    def codebook_version(self) -> int:
        return self.tokens.version if self.tokens is not None else 0

    def _load(self) -> None:
        state_path = self.directory / "state.json"
        if not os.path.lexists(state_path):
            return
        try:
            state = _read_state(self.directory)
            if state.get("format") != FORMAT:
                raise ValueError("unknown format")
            if self._requested_dim is not None and state["single_dim"] != self._requested_dim:
                raise ValueError("width changed")  # a different width asked for: rebuild at it
            gen_dir = self.directory / f"gen-{state['generation']:08d}"
            if gen_dir.is_symlink():
                raise ValueError("a generation folder is a link")
            arrays = {}
            for name, size in state["files"].items():
                path = gen_dir / (f"{name}.faiss" if name.endswith("faiss") else f"{name}.npy")
                if path.stat().st_size != size:
                    raise ValueError(f"{path} is truncated")
                # memory maps: opening costs milliseconds whatever the size; copies happen on change
                arrays[name] = map_index(path) if name.endswith("faiss") else np.load(path, mmap_mode="r", allow_pickle=False)
            pf = SinglePrefilter.from_arrays({k[3:]: v for k, v in arrays.items() if k.startswith("pf_")})
            tok_arrays = {k[4:]: v for k, v in arrays.items() if k.startswith("tok_")}
            tokens = TokenIndex.from_arrays(tok_arrays) if tok_arrays else None
            ann_arrays = {k[4:]: v for k, v in arrays.items() if k.startswith("ann_")}
            ann = PooledIndex.from_arrays(ann_arrays) if ann_arrays else None
            if state.get("compact_codec") != self.compact_codec:
                raise ValueError("saved for another codec state")  # the store's codec changed: rebuild
            if self.compact and (ann is not None or tokens is None or tokens.version != self.compact_codec
                                 or not np.array_equal(tokens.centroids, self.tokens.centroids)):
                raise ValueError("compact lists do not match the codec")
            pool_arrays = {k[5:]: v for k, v in arrays.items() if k.startswith("pool_")}
            pooled = PooledIndex.from_arrays(pool_arrays) if pool_arrays else None
            included = np.array(arrays["included"], dtype=np.int64)
            if pf.dim != state["single_dim"] or len(pf) not in ((0, len(included)) if self.compact else (len(included),)):
                raise ValueError("prefilter does not match the state")  # compact: empty until asked for
            if self.single_enabled and len(pf) != len(included):
                raise ValueError("prefilter asked for but not saved")
            if tokens is not None and not np.array_equal(tokens.live_ids(), included):
                raise ValueError("token index does not match the state")
            if not self.compact and (ann is None or not np.array_equal(ann.live_ids(), included) or ann.m != 0):
                raise ValueError("token index does not match the state")
            if pooled is not None and (not np.array_equal(pooled.live_ids(), included) or pooled.m != self.pool_clusters
                                       or pooled.codec != self.pool_codec):
                raise ValueError("pooled index does not match the state")
            if pooled is None and self.pooled_enabled:
                raise ValueError("pooled index asked for but not saved")
        except Exception:  # noqa: BLE001 - np.load alone raises half a dozen types on damaged files
            self._reset()  # derived data is rebuildable: the next sync() starts from the source
            self._generation = max(self._generation, _generation_on_disk(self.directory))
            return
        self.single_dim = int(state["single_dim"])
        self.prefilter, self.tokens, self.ann, self.pooled, self.included = pf, tokens, ann, pooled, included
        self.token_codebook = self.token_codebook or (tokens is not None and not self.compact)
        self.pooled_enabled = self.pooled_enabled or pooled is not None
        self.single_enabled = self.single_enabled or (self.compact and len(pf) > 0 and len(included) > 0)
        self.watermark = int(state["watermark"])
        self.trained_tokens = int(state["trained_tokens"])
        self._generation = int(state["generation"])

    def _save(self) -> None:
        if not self.persist:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        generation = self._generation + 1
        final = self.directory / f"gen-{generation:08d}"
        tmp = self.directory / f"gen-{generation:08d}.tmp"
        for stale in (tmp, final):
            if stale.is_symlink():  # removed itself, never followed
                stale.unlink()
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        arrays = {"included": self.included}
        arrays.update({f"pf_{k}": v for k, v in self.prefilter.to_arrays().items()})
        if self.ann is not None:
            arrays.update({f"ann_{k}": v for k, v in self.ann.to_arrays().items()})
        if self.pooled is not None:
            arrays.update({f"pool_{k}": v for k, v in self.pooled.to_arrays().items()})
        if self.tokens is not None:
            arrays.update({f"tok_{k}": v for k, v in self.tokens.to_arrays().items()})
        files = {}
        for name, arr in arrays.items():
            # FAISS indexes go in their own raw files so readers can memory-map them
            path = tmp / (f"{name}.faiss" if name.endswith("faiss") else f"{name}.npy")
            with open(path, "wb") as fh:
                if name.endswith("faiss"):
                    fh.write(memoryview(np.ascontiguousarray(arr, dtype=np.uint8)))
                else:
                    np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            files[name] = path.stat().st_size
        fsync_dir(str(tmp))
        os.replace(tmp, final)
        fsync_dir(str(self.directory))
        state = {
            "format": FORMAT,
            "generation": generation,
            "watermark": int(self.watermark),
            "single_dim": self.single_dim,
            "prefilter": self.prefilter.current_kind,
            "codebook_version": self.codebook_version,
            "compact_codec": self.compact_codec,
            "trained_tokens": int(self.trained_tokens),
            "pages": int(len(self.included)),
            "files": files,
        }
        atomic_write_json(str(self.directory / "state.json"), state)
        self._generation = generation
        for old in self.directory.glob("gen-*"):
            if old.name != final.name:
                if old.is_symlink():
                    old.unlink()
                else:
                    shutil.rmtree(old, ignore_errors=True)

    # -- sync -----------------------------------------------------------------------------------
    def _reload_if_newer(self) -> None:
        """Another process (the writer) saved a newer generation: map it instead of redoing its work."""
        if _generation_on_disk(self.directory) != self._generation:
            self._reset()
            self._load()

    def sync(self) -> bool:
        """Bring the derived structures in step with ``source.live_page_ids()`` and persist them.
        Returns whether anything changed. Reads only the added pages' vectors, except when the
        codebook is (re)trained, or a compact index's pooled means are built or regrown 4x, which
        read every live page once."""
        live = np.asarray(self.source.live_page_ids(), dtype=np.int64)
        book = self._source_codebook()
        if (None if book is None else int(book[0])) != self.compact_codec:
            self._reset()  # the store's codec was trained or replaced: lists over its centroids, from scratch
        if self._in_step(live):
            return False  # the common case on every search: no file is read
        self._reload_if_newer()  # the writer may already have saved a generation holding these pages
        if self._in_step(live):
            return False
        if not self.persist:
            self._apply(live)
            return True
        with _exclusive(self.directory):
            self._reload_if_newer()  # someone may have saved while we waited for the lock
            if self._in_step(live):
                return False
            self._apply(live)
        return True

    def _in_step(self, live: np.ndarray) -> bool:
        """Nothing to do: the structures hold exactly ``live``, and a writer's compact generation
        has its pooled means (one saved before they were built at sync gets them now, once)."""
        return np.array_equal(live, self.included) and not self._pool_everything()

    def _pool_everything(self) -> bool:
        """A writer holding a compact generation without pooled means: the next sync pools every
        live page (a reader never does: at 1M pages that is a quarter of an hour; it searches
        without the means until the writer has saved them)."""
        return self.persist and self.compact and self.pooled is None and len(self.included) > 0

    def _apply(self, live: np.ndarray) -> None:
        removed = np.setdiff1d(self.included, live, assume_unique=True)
        added = np.setdiff1d(live, self.included, assume_unique=True)
        if len(removed):
            if self._keeps_single():
                self.prefilter.remove(removed)
            if self.tokens is not None:
                self.tokens.remove(removed)
            if self.ann is not None:
                self.ann.remove(removed)
            if self.pooled is not None:
                self.pooled.remove(removed)
        if self._keeps_single():
            self._add_singles(added)
        batches = (added[a : a + READ_BATCH_PAGES] for a in range(0, len(added), READ_BATCH_PAGES))
        # the means' IVF-PQ lists retrain as the collection grows 4x: pooled again from the stored
        # pages, not re-encoded from their own decoded codes (a second quantisation each time)
        regrow = self.compact and self.pooled is not None and len(added) > 0 and self.pooled.regrows_lossily(len(added))
        if self._pool_everything() or regrow:
            self.pooled = None  # the lists alone read nothing but the stored ids
            for b in batches:
                self._add_coarse(b)
            self.pooled = self._pooled_over(live)
        elif self.compact and self.pooled is not None:  # one pooled add: IVF-PQ trained once, not regrown
            self.pooled.add_batches((b, self._add_coarse(b)) for b in batches)
        elif self.compact:
            for b in batches:
                self._add_coarse(b)
        else:
            self.ann.add_batches((b, self._read_multi(b)) for b in batches)
        self.included = live
        self.watermark = max(self.watermark, int(live[-1]) if len(live) else -1)
        if self.token_codebook and not self.compact:
            self._maybe_train(live)
        self._save()

    def _read_multi(self, batch: np.ndarray) -> list[np.ndarray]:
        """One read of a batch's tokens, shared by the pooled index and the codebook lists."""
        pages = list(self.source.multi_vectors(batch))
        if self.tokens is not None:
            self.tokens.add(batch, pages)
        if self.pooled is not None:
            self.pooled.add(batch, pages)
        return pages

    def _add_coarse(self, batch: np.ndarray) -> list[np.ndarray]:
        """Compact mode: enter a batch in the centroid lists from its stored centroid ids (pages not
        stored under this codec, raw rows from before training, are assigned from their vectors);
        returns the batch's decoded pages, for the pooled index."""
        ids = list(self.source.coarse_ids(batch, self.compact_codec))
        need = self.pooled is not None or any(a is None for a in ids)
        pages = list(self.source.multi_vectors(batch)) if need else []
        for i, a in enumerate(ids):
            if a is None:
                ids[i] = self.tokens.assign(np.asarray(pages[i], dtype=np.float32))
        self.tokens.add_assigned(batch, ids)
        return pages

    def _enable_pooled(self) -> None:
        """First search asking for "pooled": pool every page now and keep the index from then on."""
        self.pooled_enabled = True
        if self.pooled is not None:
            return
        self.sync()  # pools what is live now: removed pages may no longer be readable
        if self.pooled is not None:  # the sync loaded a generation that has one
            return
        self.pooled = self._pooled_over(self.included)
        if self.persist and len(self.included):
            with _exclusive(self.directory):
                self._save()

    def _keeps_single(self) -> bool:
        return not self.compact or self.single_enabled

    def _enable_single(self) -> None:
        """First search of a compact index asking for "single": build the prefilter over what is
        live now and keep it in step from then on."""
        self.sync()
        if self.single_enabled:
            return
        self.single_enabled = True
        self._add_singles(self.included)
        if self.persist and len(self.included):
            with _exclusive(self.directory):
                self._save()

    def _enable_tokens(self) -> None:
        """First search asking for "tokens": train the codebook now and keep it from then on."""
        self.token_codebook = True
        if self.compact:
            return  # the codec's centroid lists are the codebook
        if self.tokens is None and len(self.included) and not self.persist:
            self._maybe_train(self.included)
        elif self.tokens is None and len(self.included):
            with _exclusive(self.directory):
                self._maybe_train(self.included)
                if self.tokens is not None:
                    self._save()

    def _live_tokens(self, live: np.ndarray, stop_at: int) -> int:
        total = 0
        for start in range(0, len(live), READ_BATCH_PAGES * 8):
            total += sum(len(m) for m in self.source.multi_vectors(live[start : start + READ_BATCH_PAGES * 8]))
            if total >= stop_at:
                break
        return total

    def _maybe_train(self, live: np.ndarray) -> None:
        if self.tokens is not None:
            n_tokens = int(self.tokens.page_lengths[self.tokens.alive].sum())
            if n_tokens <= RETRAIN_GROWTH * self.trained_tokens:
                return
        else:
            n_tokens = self._live_tokens(live, self.min_train_tokens)
            if n_tokens < self.min_train_tokens:
                return
            n_tokens = self._live_tokens(live, np.iinfo(np.int64).max)
        rng = np.random.default_rng(self.seed + self.codebook_version)
        sample, have = [], 0
        for pid in rng.permutation(live):
            m = np.asarray(self.source.multi_vectors(np.array([pid]))[0], dtype=np.float32)
            sample.append(m)
            have += len(m)
            if have >= TRAIN_SAMPLE_TOKENS:
                break
        tokens = TokenIndex.train(
            np.concatenate(sample), suggest_centroids(n_tokens), seed=self.seed, version=self.codebook_version + 1
        )
        for start in range(0, len(live), READ_BATCH_PAGES):
            batch = live[start : start + READ_BATCH_PAGES]
            tokens.add(batch, list(self.source.multi_vectors(batch)))
        self.tokens, self.trained_tokens = tokens, n_tokens

    # -- search ---------------------------------------------------------------------------------
    def search(
        self,
        query_multi: np.ndarray,
        query_single: np.ndarray | None = None,
        *,
        k: int = 10,
        candidates: int | None = None,
        exhaustive: bool = False,
        generators: Sequence[str] | None = None,
        nprobe: int | None = None,
        per_token: int | None = None,
    ) -> list[tuple[int, float]]:
        """Top ``k`` (page_id, MaxSim score), best first (ties: lower page id)."""
        return self.search_batch(
            [query_multi], None if query_single is None else [query_single], k=k, candidates=candidates,
            exhaustive=exhaustive, generators=generators, nprobe=nprobe, per_token=per_token,
        )[0]

    def search_batch(
        self,
        queries_multi: Sequence[np.ndarray],
        queries_single: Sequence[np.ndarray] | np.ndarray | None = None,
        *,
        k: int = 10,
        candidates: int | None = None,
        exhaustive: bool = False,
        generators: Sequence[str] | None = None,
        nprobe: int | None = None,
        per_token: int | None = None,
    ) -> list[list[tuple[int, float]]]:
        asked = generators is not None
        if generators is None and self.compact:
            generators = rank.COMPACT_GENERATORS
        if "tokens" in rank.check_generators(generators) and not self.token_codebook and not self.compact:
            self._enable_tokens()
        # asked for by name, the means are built now; a compact reader's default searches without
        # them until its writer has saved them (see _pool_everything)
        if "pooled" in rank.check_generators(generators) and self.pooled is None and (asked or self.persist):
            self._enable_pooled()
        if "single" in rank.check_generators(generators) and not self._keeps_single():
            self._enable_single()
        # the compact default: each generator's top K (the means and the lists find different pages)
        shares = "each" if self.compact and not asked else "first"
        with single_threaded():  # see scoring/threads.py: no OpenMP barriers on a shared CPU
            return self._search_batch(queries_multi, queries_single, k=k, candidates=candidates,
                                      exhaustive=exhaustive, generators=generators, nprobe=nprobe,
                                      per_token=per_token, shares=shares)

    def _search_batch(self, queries_multi, queries_single, *, k, candidates, exhaustive, generators, nprobe,
                      per_token, shares) -> list[list[tuple[int, float]]]:
        live = np.asarray(self.source.live_page_ids(), dtype=np.int64)
        unindexed = live[np.searchsorted(live, self.watermark, side="right") :]
        if candidates is None and self.compact:
            candidates = rank.compact_candidates(len(live))
        if per_token is None and self.compact:
            per_token = rank.COMPACT_PER_TOKEN
        queries = [np.asarray(q, dtype=np.float32) for q in queries_multi]
        if exhaustive:
            return rank.exhaustive(self.source, queries, live, k, device=self.device)
        results = []
        for i, q in enumerate(queries):
            single = None if queries_single is None else np.asarray(queries_single[i], dtype=np.float32)
            results.append(
                rank.search(
                    self.source, q, single, prefilter=self.prefilter, tokens=self.tokens, live_ids=live,
                    unindexed_ids=unindexed, k=k, candidates=candidates, generators=generators, nprobe=nprobe,
                    device=self.device, pooled=self.pooled, per_token=per_token, ann=self.ann, shares=shares,
                )
            )
        return results
