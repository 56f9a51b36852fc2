"""The Python API: an `Index` is a store on disk, the encoder that made it, and its search structures.

Every `pagelens` CLI command is a thin layer over one method here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from engine.types import Embedding
from pagelens.errors import BadEmbeddingError, EncoderOutputError, IndexExistsError, IndexNotFoundError, NoModelError, PagelensError
from pagelens.results import DamagedDocument, Hit, IndexInfo, ModelLoaded, ModelLoading, PageInfo, VerifyReport

DEFAULT_MODEL = "jinaai/jina-embeddings-v4"

# Identity keys that decide whether a query encoder may search an index: queries are text, so
# the image-side settings (pixel cap, image processor) may differ; the weights, task and widths may not.
_QUERY_COMPAT_KEYS = ("revision", "task", "single_dim", "multi_dim")


def _store_module():
    from indexer import store  # noqa: PLC0415 - keeps `import pagelens` free of heavy imports

    return store


def _load_encoder(model: str, **kwargs: Any):
    from engine.loader import load_encoder  # noqa: PLC0415 - torch loads only when a model is needed

    return load_encoder(model, **kwargs)


def _load_reporting(on_event: Callable[[Any], None] | None, model: str, **kwargs: Any):
    """`_load_encoder`, telling ``on_event`` when the load starts (it takes seconds) and ends."""
    if on_event is not None:
        on_event(ModelLoading(model=str(model)))
    start = time.perf_counter()
    encoder = _load_encoder(model, **kwargs)
    if on_event is not None:
        on_event(ModelLoaded(model=str(model), seconds=time.perf_counter() - start))
    return encoder


def _is_index_dir(directory: Path) -> bool:
    return (directory / "manifest.json").is_file()


FLOAT16_MAX = 65504.0  # token vectors are stored as float16: anything larger would be stored as inf


def check_embedding(emb: Embedding, what: str, single_dim: int, multi_dim: int, *, stored: bool,
                    single_width: int | None = None) -> None:
    """Refuse an embedding the index cannot store or search meaningfully: wrong widths, no token
    vectors, NaN or inf anywhere, or (``stored``) token values beyond float16's range. A single
    vector may also be ``single_width`` wide (already truncated to the index's stored width)."""
    single, multi = np.asarray(emb.single), np.asarray(emb.multi)
    widths = (single_dim, single_width or single_dim)
    if single.ndim != 1 or multi.ndim != 2 or single.shape[0] not in widths or multi.shape[1] != multi_dim:
        width = lambda a: str(a.shape[-1]) if a.ndim else "0"  # noqa: E731
        raise BadEmbeddingError(
            f"{what} has single {width(single)}-d / multi {width(multi)}-d, "
            f"the index stores {single_dim}-d / {multi_dim}-d",
            "Embed with the same model and widths the index was created with.",
        )
    if multi.shape[0] == 0:
        raise BadEmbeddingError(
            f"{what} has no token vectors (an empty multi-vector scores nothing)",
            "Give at least one token vector per page and per query.",
        )
    with np.errstate(over="ignore", invalid="ignore"):
        for name, arr in (("single vector", single), ("token vectors", multi)):
            try:
                finite = bool(np.isfinite(np.asarray(arr, dtype=np.float32)).all())
            except (TypeError, ValueError):
                finite = False
            if not finite:
                raise BadEmbeddingError(
                    f"{what} has NaN or infinite values in its {name}",
                    "Check the encoder's output (a float16 overflow gives inf: try --dtype float32).",
                )
        if stored and multi.size and float(np.abs(np.asarray(multi, dtype=np.float32)).max()) > FLOAT16_MAX:
            raise BadEmbeddingError(
                f"{what} has token values beyond +-{FLOAT16_MAX:g}, which the index's float16 store would turn into inf",
                "L2-normalise the token vectors (rows of unit length), as the model does.",
            )


def clean_query(query: Any, what: str = "the query") -> str:
    """A query as valid Unicode text. Bytes that were not UTF-8 (lone surrogates, as an invalid
    command-line argument or os.fsdecode gives them) become U+FFFD; an empty query is refused."""
    if not isinstance(query, str):
        raise PagelensError(f"{what} must be a string, got {type(query).__name__}", "Pass the query as text.")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        try:
            query = query.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            query = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in query)
    if not query.strip():
        raise PagelensError(f"{what} is empty", "Say what you are looking for, e.g. \"revenue by region in 2023\".")
    return query


def _check_generators(generators: Any) -> tuple[str, ...] | None:
    """None (the index's defaults) or a non-empty list of known generator names."""
    if generators is None:
        return None
    from scoring.rank import GENERATORS, check_generators  # noqa: PLC0415 - numpy only

    names = (generators,) if isinstance(generators, str) else tuple(generators)
    try:
        return check_generators(names)
    except (TypeError, ValueError):
        raise PagelensError(
            f"unknown candidate generators {list(names)!r}",
            f"Choose from {list(GENERATORS)}, first the one whose ranking fills the shortlist, or leave it unset.",
        ) from None


def _check_search_args(k: Any, candidates: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise PagelensError(f"k must be an integer of at least 1, got {k!r}", "Ask for k=1 or more pages.")
    if candidates is not None and (
        isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < 1
    ):
        raise PagelensError(
            f"candidates must be an integer of at least 1, got {candidates!r}",
            "Leave it unset (200), or give a shortlist size; it is raised to k when smaller.",
        )


class _PageEncoder:
    """What `Index.add` hands the indexing pipeline.

    ``identity`` and ``max_pixels`` are the index's recorded ones, so a run with nothing new to
    encode never loads the model; the real encoder loads on the first ``encode_images`` call (and
    must match the index). Every embedding it returns is checked before it can be stored."""

    def __init__(self, index: "Index", encoder: Any = None, on_event: Callable[[Any], None] | None = None):
        self._index, self._encoder, self._on_event = index, encoder, on_event
        source = encoder.identity if encoder is not None else index.identity
        self.identity = dict(source)
        self.max_pixels = (
            getattr(encoder, "max_pixels", None) if encoder is not None else self.identity.get("max_pixels")
        )

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def encode_images(self, images: Sequence[Any], *, batch_size: int = 8, show_progress_bar: bool | None = None):
        if self._encoder is None:
            self._encoder = self._index._own_encoder(for_adding=True, on_event=self._on_event)
        out = self._encoder.encode_images(images, batch_size=batch_size, show_progress_bar=show_progress_bar)
        store = self._index._store
        for i, emb in enumerate(out):
            what = "the encoder's output" if len(images) == 1 else f"the encoder's output for image {i + 1} of {len(images)}"
            try:
                check_embedding(emb, what, store.single_dim, store.multi_dim, stored=True)
            except BadEmbeddingError as error:
                # not a UserError: the pipeline fails the document holding this page and goes on
                raise EncoderOutputError(error.message, error.hint) from None
        return out


# The recommended compact profile (`compact=True`, `--compact`): (compression, pool factor). pq-16
# (18 B a token) over residual-2 (34 B): on the 3k real-text set exhaustive MaxSim over the codes gave
# recall@10 0.869 against fp16's at about half residual-2's bytes (0.901), and its MRR@10 0.920 of
# fp16's 0.930; pooling text tokens loses more than it saves (benchmarks/compact.py, compact_search.py).
COMPACT_PROFILE = ("pq-16", 1)
# ... and its single vectors: (Matryoshka width, precision), 256 B a page instead of 8 KiB at 2048-d
# fp32; the width is capped by the encoder's (a narrower model keeps its full width, in fp16).
COMPACT_SINGLE = (128, "fp16")
SINGLE_PRECISIONS = ("fp32", "fp16")  # indexer.manifest.SINGLE_PRECISIONS
COMPRESSIONS = ("fp16", "int8", "residual-1", "residual-2", "residual-4", "pq-16", "pq-32")


def _compression_choice(compression: Any, pool_factor: Any, compact: bool) -> tuple[str, int]:
    """(compression, pool factor) from the arguments, checked; compact=True means COMPACT_PROFILE."""
    if compact:
        if compression is not None and compression != COMPACT_PROFILE[0] or \
                pool_factor is not None and pool_factor != COMPACT_PROFILE[1]:
            raise PagelensError("compact picks its own compression and pool factor",
                             "Give either compact or compression/pool_factor, not both.")
        return COMPACT_PROFILE
    compression = "fp16" if compression is None else compression
    pool_factor = 1 if pool_factor is None else pool_factor
    if not isinstance(compression, str) or compression not in COMPRESSIONS:
        raise PagelensError(f"unknown compression {compression!r}", f"Choose one of {', '.join(COMPRESSIONS)}.")
    if isinstance(pool_factor, bool) or not isinstance(pool_factor, (int, np.integer)) or not 1 <= pool_factor <= 64:
        raise PagelensError(f"pool_factor must be an integer from 1 (no pooling) to 64, got {pool_factor!r}",
                         "Use 1, 2 or 3.")
    return compression, int(pool_factor)


def compact_single_width(single_dim: int, allowed: tuple | None) -> int:
    """COMPACT_SINGLE's width for these vectors: itself, or the widest Matryoshka width below it,
    or the full width of vectors no wider than it."""
    want = COMPACT_SINGLE[0]
    if single_dim <= want:
        return int(single_dim)
    if allowed:
        fits = [int(w) for w in allowed if int(w) <= want]
        return max(fits) if fits else int(single_dim)
    return want


def _single_choice(single_width: Any, single_precision: Any, compact: bool, single_dim: int,
                   allowed: tuple | None) -> tuple[int, str]:
    """(width, precision) of stored single vectors from the arguments, checked against the vectors'
    ``single_dim`` and the encoder's Matryoshka widths ``allowed``; compact=True means COMPACT_SINGLE."""
    if compact:
        width = compact_single_width(single_dim, allowed)
        if single_width is not None and single_width != width or \
                single_precision is not None and single_precision != COMPACT_SINGLE[1]:
            raise PagelensError("compact picks its own single-vector width and precision",
                                f"Give either compact or single_width/single_precision, not both (compact is "
                                f"{width}, {COMPACT_SINGLE[1]} here).")
        return width, COMPACT_SINGLE[1]
    precision = "fp32" if single_precision is None else single_precision
    if not isinstance(precision, str) or precision not in SINGLE_PRECISIONS:
        raise PagelensError(f"unknown single_precision {single_precision!r}", f"Choose one of {', '.join(SINGLE_PRECISIONS)}.")
    if single_width is None:
        return int(single_dim), precision
    widths = sorted({int(w) for w in (allowed or ()) if int(w) <= single_dim} | {int(single_dim)})
    if isinstance(single_width, bool) or not isinstance(single_width, (int, np.integer)) \
            or not 1 <= single_width <= single_dim or (allowed and int(single_width) not in widths):
        raise PagelensError(
            f"single_width {single_width!r} is not usable with {single_dim}-d single vectors",
            f"Choose one of {widths} (Matryoshka widths)." if allowed else f"Choose a width from 1 to {single_dim}.")
    return int(single_width), precision


class Index:
    """A page index on disk.

    >>> index = Index.create("my-index", model="jinaai/jina-embeddings-v4")   # doctest: +SKIP
    >>> index.add(["reports/"])                                              # doctest: +SKIP
    >>> index.search("revenue by region in 2023", k=5)                       # doctest: +SKIP

    ``on_event`` (given to ``create``, ``open``, ``open_or_create`` or set as an attribute) is
    called with `pagelens.results.ModelLoading` / `ModelLoaded` around a model load, which takes
    seconds; ``add`` also sends it the indexing progress events.
    """

    def __init__(self, directory: Path, store: Any, *, encoder: Any = None, device=None, dtype=None,
                 on_event: Callable[[Any], None] | None = None):
        self.directory = Path(directory)
        self._store = store
        self._encoder = encoder
        self._device = device
        self._dtype = dtype
        self._retriever = None
        self._dirty = False
        self._model: str | None = None  # overrides the recorded model location when set
        self.on_event = on_event

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike,
        *,
        encoder: Any = None,
        model: str | None = None,
        task: str = "retrieval",
        device: str | None = None,
        dtype: str | None = None,
        max_pixels: int | None = None,
        single_dim: int | None = None,
        multi_dim: int | None = None,
        search_dim: int | None = None,
        prefilter: str = "auto",
        on_event: Callable[[Any], None] | None = None,
        compression: str | None = None,
        pool_factor: int | None = None,
        compact: bool = False,
        single_width: int | None = None,
        single_precision: str | None = None,
    ) -> "Index":
        """Create a new, empty index.

        Give an ``encoder`` (from `pagelens.load_encoder`) or a ``model`` id/folder to embed pages
        here; or neither, with ``single_dim`` and ``multi_dim``, for an index that stores embeddings
        made elsewhere (`add_embeddings`, `search_embedding`).

        ``search_dim`` is the Matryoshka width of the single-vector FAISS index (default: full; the
        stored vectors stay full width). ``prefilter`` is its kind: "auto" (exact below 5k pages,
        HNSW above), "flat", "hnsw" or "ivf". Both are fixed at creation.

        ``compression`` is how token vectors are stored: "fp16" (default, lossless), "int8",
        "residual-1", "residual-2", "residual-4", "pq-16" or "pq-32" (see docs/index-format.md, "Compression");
        ``pool_factor`` N > 1 stores each page's tokens pooled N to 1 (lossy; no heatmaps).
        ``single_width`` stores single vectors truncated to that Matryoshka width (renormalised; default:
        full) and ``single_precision`` ("fp32" default, "fp16") in that precision; the prefilter then
        searches at most that width. ``compact=True`` picks the recommended profile (`COMPACT_PROFILE`,
        and `COMPACT_SINGLE` for single vectors). All fixed at creation: `recompress` converts later.

        Raises `pagelens.errors.IndexExistsError` (an `indexer.errors.IndexExistsError`) when the folder
        already holds an index: checked before the model loads, and again, under the writer lock,
        by the store itself (another process may be creating it at the same moment).
        """
        directory = Path(directory)
        if _is_index_dir(directory):  # cheap and early (no model load); the store checks again under its lock
            raise IndexExistsError(
                f"an index already exists at {directory}",
                "Open it with Index.open(), or choose another directory.",
            )
        if prefilter not in ("auto", "flat", "hnsw", "ivf"):
            raise PagelensError(f"unknown prefilter {prefilter!r}", "Choose auto, flat, hnsw or ivf.")
        compression, pool_factor = _compression_choice(compression, pool_factor, compact)
        if search_dim is not None and search_dim < 1:
            raise PagelensError(f"search_dim must be at least 1, got {search_dim}", "Leave it unset for the full width.")
        if encoder is None and model is not None:
            encoder = _load_reporting(on_event, model, task=task, device=device, dtype=dtype, max_pixels=max_pixels)
        if encoder is not None:
            identity = dict(encoder.identity)
            single_dim, multi_dim = encoder.single_dim, encoder.multi_dim
        else:
            if not single_dim or not multi_dim:
                raise PagelensError(
                    "an index without a model needs single_dim and multi_dim",
                    "Pass model=... (or encoder=...) to embed pages, or both dimensions to bring your own embeddings.",
                )
            identity = None
        allowed = tuple(getattr(encoder, "matryoshka_dims", ()) or ()) or None
        if search_dim is not None and (
            search_dim < 1 or search_dim > single_dim or (allowed and search_dim not in allowed)
        ):
            raise PagelensError(
                f"search_dim {search_dim} is not usable with {single_dim}-d single vectors",
                f"Choose one of {list(allowed)}." if allowed else f"Choose a width from 1 to {single_dim}.",
            )
        single_width, single_precision = _single_choice(single_width, single_precision, compact, single_dim, allowed)
        if search_dim is not None and search_dim > single_width:
            raise PagelensError(
                f"search_dim {search_dim} is wider than the {single_width} values single vectors are stored at",
                "Give a search_dim no wider than single_width, or leave it unset (the stored width).")
        settings = {"search_dim": search_dim, "prefilter": prefilter}
        store = _store_module().Store.create(
            directory, identity=identity, single_dim=single_dim, multi_dim=multi_dim, settings=settings,
            compression=compression, pool_factor=pool_factor, single_width=single_width,
            single_precision=single_precision,
        )
        return cls(directory, store, encoder=encoder, device=device, dtype=dtype, on_event=on_event)

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike,
        *,
        encoder: Any = None,
        model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        writable: bool = False,
        on_event: Callable[[Any], None] | None = None,
    ) -> "Index":
        """Open an existing index. The model loads lazily, on the first call that needs it: the
        one recorded in the index, or ``model`` (the same checkpoint moved to another folder, say;
        its weights must match the recorded revision)."""
        directory = Path(directory)
        if not _is_index_dir(directory):
            raise IndexNotFoundError(
                f"no pagelens index at {directory}",
                "Create one with `pagelens index PATH... --index DIR`, or check the --index path.",
            )
        store = _store_module().Store.open(directory, writable=writable)
        index = cls(directory, store, device=device, dtype=dtype, on_event=on_event)
        index._model = model
        if encoder is not None:
            try:
                index._check_encoder(encoder, for_adding=writable)
            except BaseException:
                index.close()  # release the writer lock: a refused open must not block the next one
                raise
            index._encoder = encoder
        return index

    @classmethod
    def open_or_create(
        cls,
        directory: str | os.PathLike,
        *,
        model: str | None = None,
        task: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_pixels: int | None = None,
        search_dim: int | None = None,
        on_event: Callable[[Any], None] | None = None,
        compression: str | None = None,
        pool_factor: int | None = None,
        compact: bool = False,
        single_width: int | None = None,
        single_precision: str | None = None,
    ) -> "Index":
        """Open the index at ``directory`` for adding, or create it with ``model`` (default jina-v4).
        ``compression``, ``pool_factor``, ``single_width``, ``single_precision`` and ``compact`` (see
        `create`) apply when it is created; on an existing index a value other than its own is
        refused (use `recompress`).

        On an existing index, a ``model``, ``task`` or ``max_pixels`` given explicitly must match the
        index's own encoder: adding pages from another encoder is refused, never mixed in. Without
        them, the model loads only once a page must be encoded (a run with nothing new never loads it).
        When another process creates the index at the same moment, this one opens it instead."""
        from indexer.errors import IndexExistsError as StoreIndexExists  # noqa: PLC0415

        directory = Path(directory)
        given = compression is not None or pool_factor is not None or compact
        asked = (compression, pool_factor)  # on an existing index, what is not given is the index's own
        compression, pool_factor = _compression_choice(compression, pool_factor, compact)
        if not _is_index_dir(directory):
            encoder = _load_reporting(
                on_event, model or DEFAULT_MODEL, task=task or "retrieval", device=device, dtype=dtype,
                max_pixels=max_pixels,
            )
            try:
                return cls.create(directory, encoder=encoder, device=device, dtype=dtype,
                                  search_dim=search_dim, on_event=on_event, compression=compression,
                                  pool_factor=pool_factor, compact=compact, single_width=single_width,
                                  single_precision=single_precision)
            except StoreIndexExists:
                if not _is_index_dir(directory):
                    raise  # a folder holding something else: say so
            # created by another process since we looked: add to it, with the encoder already loaded
            return cls.open(directory, encoder=encoder, device=device, dtype=dtype, writable=True, on_event=on_event)
        index = cls.open(directory, device=device, dtype=dtype, writable=True, on_event=on_event)
        have = (index._store.compression, index._store.pool_factor)
        if not compact:
            compression, pool_factor = _compression_choice(asked[0] or have[0], asked[1] or have[1], False)
        if given and (compression, pool_factor) != have:
            index.close()
            raise PagelensError(
                f"the index at {directory} stores token vectors as {have[0]} with pool factor {have[1]}; "
                f"compression and pool factor are fixed when an index is created",
                f"Convert it with `pagelens recompress --index {directory} --compression {compression}"
                f" --pool-factor {pool_factor}`, or index into a new --index folder.")
        if single_width is not None or single_precision is not None or compact:
            store = index._store
            have_single = (store.single_width, store.single_precision)
            if compact:
                want_single = _single_choice(None, None, True, store.single_dim,
                                             tuple((index.identity or {}).get("matryoshka_dims") or ()) or None)
            else:
                want_single = (have_single[0] if single_width is None else single_width,
                               have_single[1] if single_precision is None else single_precision)
            if want_single != have_single:
                index.close()
                raise PagelensError(
                    f"the index at {directory} stores single vectors at width {have_single[0]} in {have_single[1]}; "
                    f"single_width and single_precision are fixed when an index is created",
                    f"Convert it with `pagelens recompress --index {directory} --single-width {want_single[0]}"
                    f" --single-precision {want_single[1]}`, or index into a new --index folder.")
        if model is not None or task is not None or max_pixels is not None:
            try:
                identity = index.identity or {}
                encoder = _load_reporting(
                    on_event,
                    model or identity.get("model", DEFAULT_MODEL),
                    task=task or identity.get("task", "retrieval"),
                    device=device, dtype=dtype,
                    max_pixels=max_pixels or identity.get("max_pixels"),
                )
                index._check_encoder(encoder, for_adding=True)
            except BaseException:
                index.close()
                raise
            index._encoder = encoder
        return index

    def close(self) -> None:
        """Bring the search structures in step with what this handle wrote, then release the index."""
        if self._store is None:
            return
        try:
            if self._dirty and getattr(self._store, "writable", False):
                self._store.maybe_train_codec()  # a residual codec trains once enough pages are in
            if self._dirty:
                self.sync()
        finally:
            self._store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- encoder ---------------------------------------------------------------------------

    @property
    def identity(self) -> dict | None:
        return self._store.identity

    @property
    def encoder(self):
        """The index's own encoder, loaded from its recorded identity on first use."""
        return self._own_encoder(for_adding=False)

    def _own_encoder(self, *, for_adding: bool, on_event: Callable[[Any], None] | None = None):
        if self._encoder is None:
            identity = self.identity
            if identity is None:
                raise self._no_model()
            encoder = _load_reporting(
                on_event or self.on_event,
                self._model or identity["model"],
                task=identity["task"],
                device=self._device,
                dtype=self._dtype,
                max_pixels=identity.get("max_pixels"),
            )
            self._check_encoder(encoder, for_adding=False)
            self._encoder = encoder
        if for_adding:
            self._check_encoder(self._encoder, for_adding=True)
        return self._encoder

    def _no_model(self) -> NoModelError:
        return NoModelError(
            f"the index at {self.directory} was created without a model",
            "Use add_embeddings() and search_embedding() with embeddings made elsewhere.",
        )

    def _check_encoder(self, encoder: Any, *, for_adding: bool) -> None:
        if for_adding:
            self._store.check_identity(dict(encoder.identity))
            return
        mine, theirs = self.identity or {}, dict(encoder.identity)
        diff = {k: (mine.get(k), theirs.get(k)) for k in _QUERY_COMPAT_KEYS if mine.get(k) != theirs.get(k)}
        if diff:
            detail = ", ".join(f"{k}: index has {a!r}, encoder has {b!r}" for k, (a, b) in diff.items())
            raise PagelensError(
                f"this encoder cannot search the index at {self.directory} ({detail})",
                "Search with the model and task the index was built with (see `pagelens info`).",
            )

    # ---- writing ---------------------------------------------------------------------------

    def _writable(self):
        if not getattr(self._store, "writable", False):
            self._store.close()
            self._store = _store_module().Store.open(self.directory, writable=True)
            self._retriever = None
        return self._store

    def add(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        dpi: int | None = None,
        batch_size: int = 8,
        password: str | None = None,
        on_event: Callable[[Any], None] | None = None,
        repair: bool = False,
    ):
        """Index PDFs, folders of PDFs and page images. Unchanged files are skipped; see IndexReport.

        The model loads only when a page must be encoded. ``repair=True`` first checks every stored
        page (`verify`) and re-encodes the damaged documents too (they need not be among ``paths``);
        the report's ``repaired`` lists them."""
        from indexer.pipeline import index_paths  # noqa: PLC0415

        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise PagelensError(f"batch_size must be an integer of at least 1, got {batch_size!r}", "Use e.g. 8.")
        if dpi is not None and not dpi > 0:
            raise PagelensError(f"dpi must be positive, got {dpi!r}", "Leave it unset (144) or use e.g. 200.")
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [os.fspath(p) for p in paths]
        if self._encoder is None and self.identity is None:
            raise self._no_model()
        store = self._writable()
        repaired: list[str] = []
        if repair:
            damage = store.check_integrity()
            repaired = [d.path for d in damage.damaged]
            if repaired:
                store.mark_for_reindex(repaired)  # their unchanged SHA-256 would otherwise skip them
                given = set(paths)
                paths += [p for p in repaired if p not in given]
            elif not paths:  # nothing damaged, nothing asked for: no run to record
                from indexer.report import IndexReport  # noqa: PLC0415

                report = IndexReport()
                report.repaired = []
                return report
        encoder = _PageEncoder(self, self._encoder, on_event=on_event or self.on_event)
        kwargs: dict[str, Any] = {"batch_size": batch_size, "password": password, "on_event": on_event}
        if dpi is not None:
            kwargs["dpi"] = dpi
        report = index_paths(store, encoder, paths, **kwargs)
        if encoder.loaded:
            self._encoder = encoder._encoder
        report.repaired = repaired
        self.sync()
        return report

    def repair(self, **kwargs: Any):
        """Re-encode exactly the documents whose stored pages fail their checksum (see `verify`);
        the same as ``add([], repair=True)``. Returns the IndexReport (``repaired``: their paths)."""
        return self.add([], repair=True, **kwargs)

    def add_embeddings(self, path: str, pages: Sequence[Embedding]) -> list[int]:
        """Store a document whose page i+1 is ``pages[i]``, embedded elsewhere. Returns page ids.

        Every page needs at least one token vector and finite values (token values within float16's
        range, as they are stored in float16); anything else is refused before anything is written.
        A page's ``Embedding.grid`` (`engine.types.PatchGrid`), when given, is stored with it, so
        `explain` can draw its heatmap; without one, `explain` raises `HeatmapUnavailable`."""
        store = self._writable()
        pages = list(pages)
        for i, page in enumerate(pages):
            check_embedding(page, f"page {i + 1} of {path}", store.single_dim, store.multi_dim, stored=True,
                            single_width=getattr(store, "single_width", None))
        page_ids = store.add_document(path, pages)
        # a codec due for training trains once it holds Store.train_early_tokens (cheap to ask once it
        # is trained), so a big collection never sits raw float16 until close() (16 GB at 1M pages x
        # 64 tokens), yet trains on more than its first documents; close() trains a smaller one
        store.maybe_train_codec(early=True)
        self._dirty = True  # search structures catch up once, at the next search or close()
        return page_ids

    def remove(self, paths: Iterable[str | os.PathLike]) -> int:
        """Remove documents by the path they were indexed under, or every document under a folder.

        Returns the number of pages removed."""
        from indexer.store import document_key  # noqa: PLC0415

        store = self._writable()
        removed = 0
        for path in paths:
            target = document_key(path)  # an identifier (s3://...) as given, a local path made absolute
            prefix = target.rstrip(os.sep) + os.sep
            matches = [d.path for d in store.documents() if d.path == target or d.path.startswith(prefix)]
            for doc_path in matches:
                removed += store.remove_document(doc_path)
        self._dirty = self._dirty or removed > 0
        return removed

    def compact(self) -> int:
        """Reclaim the space of removed pages now; returns the bytes reclaimed."""
        return self._writable().compact()

    def recompress(self, compression: str | None = None, *, pool_factor: int | None = None, compact: bool = False,
                   single_width: int | None = None, single_precision: str | None = None,
                   on_progress: Callable[[str, int, int], None] | None = None):
        """Convert the stored fp16 token vectors in place to ``compression`` (or the `COMPACT_PROFILE`
        with ``compact=True``), and/or the full-width fp32 single vectors to ``single_width`` /
        ``single_precision`` ("fp16"; `COMPACT_SINGLE` with ``compact=True``), from the stored vectors
        alone: no model runs. What is not named stays as it is. Page ids stay. Resumable: after an
        interruption (even kill -9) the same call finishes it. An index already stored with a codec
        cannot be converted again (its fp16 vectors are gone), nor single vectors widened, made fp32
        again or narrowed a second time: `PagelensError`. ``on_progress(stage, done, total)``.
        Returns the store's result (pages converted, bytes)."""
        singles = single_width is not None or single_precision is not None
        if compression is None and not compact and (pool_factor is not None or not singles):
            raise PagelensError("recompress needs a compression or single-vector settings",
                                "Pass compression='int8', single_width=128 with single_precision='fp16', "
                                "or compact=True.")
        store = self._writable()
        if compression is not None or compact:
            compression, pool_factor = _compression_choice(
                compression, store.pool_factor if pool_factor is None and not compact else pool_factor, compact)
        if singles or compact:
            allowed = tuple((self.identity or {}).get("matryoshka_dims") or ()) or None
            single_width, single_precision = _single_choice(
                store.single_width if single_width is None and not compact else single_width,
                store.single_precision if single_precision is None and not compact else single_precision,
                compact, store.single_dim, allowed)
        try:
            result = store.recompress(compression, pool_factor, single_width=single_width,
                                      single_precision=single_precision, progress=on_progress)
        except ValueError as exc:
            raise PagelensError(str(exc), "Re-index the documents into a new --index folder with the storage you "
                                "want (`pagelens index --compression NAME --single-width N --single-precision "
                                "fp16`).") from None
        self._retriever = None  # it read the old vectors
        self._dirty = True
        return result

    # ---- reading ---------------------------------------------------------------------------

    def info(self) -> IndexInfo:
        from pagelens.retrieval import derived_bytes  # noqa: PLC0415

        stats = self._store.stats()
        derived = derived_bytes(self.directory / "derived")
        return IndexInfo(
            directory=str(self.directory),
            format_version=stats.format_version,
            documents=stats.documents,
            pages=stats.pages,
            vectors=stats.vectors,
            bytes_on_disk={**stats.bytes_by_part, "total": stats.total_bytes, "dead (reclaimable)": stats.dead_bytes},
            identity=stats.identity,
            failed_documents=stats.failed_documents,
            extra={"settings": self._store.settings, "compression": stats.compression,
                   "pool_factor": stats.pool_factor, "bytes_per_page": stats.bytes_per_page,
                   "pages_not_yet_compressed": stats.raw_pages, "single_dim": stats.single_dim,
                   "single_width": stats.single_width,
                   "single_precision": stats.single_precision,
                   "single_pages_not_yet_converted": stats.single_pages_not_yet_converted,
                   # the derived search structures by part (bytes, and per page), as last saved
                   "derived_bytes": derived,
                   "derived_bytes_per_page": {k: v / stats.pages for k, v in derived.items()} if stats.pages else {}},
        )

    def verify(self) -> VerifyReport:
        """Read every stored page and compare its checksum; never raises on damage, reports it.
        ``report.damaged`` names the documents to re-index (`repair` does it)."""
        found = self._store.check_integrity()
        return VerifyReport(
            directory=str(self.directory),
            pages_checked=int(found.pages_checked),
            damaged=[
                DamagedDocument(path=d.path, display_path=d.display_path, pages=[int(p) for p in d.pages], reason=d.reason)
                for d in found.damaged
            ],
            problems=[str(p) for p in found.problems],
        )

    def page(self, page_id: int) -> PageInfo:
        """The live page with this id (as in `Hit.page_id`): its document's path, name and
        SHA-256, its page number and size. Raises `pagelens.pages.NoSuchPageError` for an id no
        live page has (never was, removed, or its document was re-indexed since)."""
        from indexer.errors import PageNotFoundError  # noqa: PLC0415
        from pagelens.pages import NoSuchPageError  # noqa: PLC0415

        missing = NoSuchPageError(
            f"no page has id {page_id!r} in the index at {self.directory}",
            "use the page_id of a current search hit; ids of removed or re-indexed documents are not reused",
        )
        if isinstance(page_id, bool) or not isinstance(page_id, (int, np.integer)) or not 0 <= page_id < 2**63:
            raise missing
        store = self._store
        store.refresh()  # a long-lived reader sees pages committed since it opened
        try:
            ((path, number),) = store.pages_info([int(page_id)])
        except PageNotFoundError:
            raise missing from None
        doc = store.document(path)
        # read after the document row: an id from before a re-index is gone from this list, so a
        # page id never comes back with the newer content's hash
        if doc is None or int(page_id) not in set(store.page_ids_of(path).tolist()):
            raise missing
        try:
            width, height = store.page_size(int(page_id))
        except PageNotFoundError:
            raise missing from None
        return PageInfo(
            page_id=int(page_id), path=path, name=os.path.basename(doc.display_path) or doc.display_path,
            page=int(number), width=width, height=height, sha256=doc.sha256,
            heatmap=self._has_grid(int(page_id)),
        )

    def _has_grid(self, page_id: int) -> bool:
        from indexer.errors import PageNotFoundError  # noqa: PLC0415

        try:
            return self._store.page_grid(page_id) is not None
        except PageNotFoundError:
            return False

    def _retrieval(self):
        if self._retriever is None:
            from pagelens.retrieval import Retriever  # noqa: PLC0415

            # exact MaxSim follows the model onto the GPU; candidate structures stay on the CPU
            device = str(self._device) if self._device and str(self._device).startswith("cuda") else "cpu"
            settings = self._store.settings
            self._retriever = Retriever(
                self.directory / "derived", self._store, device=device,
                single_dim=self._prefilter_width(settings.get("search_dim")),
                prefilter=settings.get("prefilter") or "auto",
                persist=bool(getattr(self._store, "writable", False)),  # a reader writes nothing into the index
            )
        return self._retriever

    def _prefilter_width(self, search_dim: int | None) -> int | None:
        """The single-vector prefilter's width: ``search_dim``, at most the width single vectors are
        stored at (a query's single vector is truncated to it by the prefilter); None is the full width."""
        store = self._store
        stored = int(getattr(store, "single_width", None) or store.single_dim)
        if search_dim is None:
            return None if stored == store.single_dim else stored
        return min(int(search_dim), stored)

    def sync(self) -> None:
        """Bring the derived search structures (FAISS over single and token vectors) in step with the stored pages.

        Searches do this by themselves; writers call it once after a batch of changes so that
        readers find the structures ready."""
        if getattr(self._store, "writable", False):
            # a codec due for training trains first, so the structures are built over its codes (and
            # close(), which trains only a dirty index, still trains one synced before it)
            self._store.maybe_train_codec()
        self._retrieval().sync()
        self._dirty = False

    def _has_pages(self) -> bool:
        self._store.refresh()  # a long-lived reader sees pages committed since it opened
        return len(self._store.live_page_ids()) > 0

    def search(self, query: str, *, k: int = 10, candidates: int | None = None, exhaustive: bool = False,
               generators: Sequence[str] | None = None) -> list[Hit]:
        """Find the k pages that best answer ``query``, best first.

        ``candidates`` (default 200) is the shortlist the exact MaxSim rerank sees, raised to ``k``
        when smaller; an index with at least k pages always gives k hits.
        ``generators``: the candidate generators, first the one that fills the shortlist (default:
        ["ann", "single"]; on a compact index its pooled means and centroid lists, each its top K.
        Given, the first fills the shortlist and each other adds its top quarter; a structure the
        index does not hold yet, "pooled" on a full-precision index or "single" on a compact one, is
        built on first use: README, "Compact storage")."""
        return self.search_batch([query], k=k, candidates=candidates, exhaustive=exhaustive,
                                 generators=generators)[0]

    def search_batch(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        candidates: int | None = None,
        exhaustive: bool = False,
        batch_size: int = 8,
        generators: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """Search many queries at once; the encoder batches them. An index with no pages gives
        empty results without loading the model."""
        if isinstance(queries, str):
            queries = [queries]
        _check_search_args(k, candidates)
        generators = _check_generators(generators)
        texts = [clean_query(q, "the query" if len(queries) == 1 else f"query {i + 1}") for i, q in enumerate(queries)]
        if self.identity is None and self._encoder is None:
            raise self._no_model()
        if not texts or not self._has_pages():
            return [[] for _ in texts]
        embeddings = self.encoder.encode_queries(texts, batch_size=batch_size, show_progress_bar=False)
        return self.search_embeddings(embeddings, k=k, candidates=candidates, exhaustive=exhaustive,
                                      generators=generators)

    def search_embedding(
        self, embedding: Embedding, *, k: int = 10, candidates: int | None = None, exhaustive: bool = False,
        generators: Sequence[str] | None = None,
    ) -> list[Hit]:
        """Search with a query embedding made elsewhere (bring your own)."""
        return self.search_embeddings([embedding], k=k, candidates=candidates, exhaustive=exhaustive,
                                      generators=generators)[0]

    def search_embeddings(
        self,
        embeddings: Sequence[Embedding],
        *,
        k: int = 10,
        candidates: int | None = None,
        exhaustive: bool = False,
        generators: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        _check_search_args(k, candidates)
        generators = _check_generators(generators)
        store = self._store
        embeddings = list(embeddings)
        for i, emb in enumerate(embeddings):
            what = "the query embedding" if len(embeddings) == 1 else f"query embedding {i + 1}"
            check_embedding(emb, what, store.single_dim, store.multi_dim, stored=False,
                            single_width=getattr(store, "single_width", None))
        if not embeddings or not self._has_pages():
            return [[] for _ in embeddings]
        retriever = self._retrieval()
        self.sync()
        results = retriever.search_batch(
            [np.asarray(e.multi, np.float32) for e in embeddings],
            [np.asarray(e.single, np.float32) for e in embeddings],
            k=int(k),
            candidates=None if candidates is None else int(candidates),
            exhaustive=exhaustive,
            generators=generators,
        )
        return [self._hits(scored) for scored in results]

    def explain(self, query_or_embedding: str | Embedding, page_id: int, *, token: int | None = None) -> "Heatmap":
        """Why page ``page_id`` matches: a `pagelens.heatmap.Heatmap` of the query's tokens over the
        page's image patches (``.overlay(image)`` draws it over a rendering of the page).

        A text query is encoded as `search` encodes it (query prompt) and its token strings label
        the heatmap; an `Embedding` is used as is ("token i" labels). ``token`` picks the query
        token the heatmap's views show by default (None: all). Raises `NoSuchPageError` for an id
        no live page has and `HeatmapUnavailable` for a page stored without a patch grid (an older
        index, or embeddings brought without one), both before any model loads."""
        from indexer.errors import PageNotFoundError  # noqa: PLC0415
        from pagelens.heatmap import HeatmapUnavailable, compute_heatmap  # noqa: PLC0415
        from pagelens.pages import NoSuchPageError  # noqa: PLC0415

        if isinstance(page_id, bool) or not isinstance(page_id, (int, np.integer)) or not 0 <= page_id < 2**63:
            raise NoSuchPageError(f"no page has id {page_id!r} in the index at {self.directory}",
                                  "use the page_id of a current search hit")
        page_id = int(page_id)
        store = self._store
        store.refresh()  # a long-lived reader sees pages committed since it opened
        try:
            grid = store.page_grid(page_id)
            (page_multi,) = store.multi_vectors([page_id])
            ((path, _number),) = store.pages_info([page_id])
        except PageNotFoundError:
            raise NoSuchPageError(f"no page has id {page_id} in the index at {self.directory}",
                                  "use the page_id of a current search hit; ids of removed or re-indexed "
                                  "documents are not reused") from None
        if grid is None:
            if self.identity is None:
                hint = ("add the document again with add_embeddings() and Embeddings that carry a grid "
                        "(engine.types.PatchGrid)")
            else:
                import shlex  # noqa: PLC0415

                where, folder = shlex.quote(path), shlex.quote(str(self.directory))
                hint = (f"re-index it: `pagelens remove {where} --index {folder}` then "
                        f"`pagelens index {where} --index {folder}` (an unchanged file is otherwise skipped)")
            raise HeatmapUnavailable(hint=hint)
        labels = None
        if isinstance(query_or_embedding, Embedding):
            query = query_or_embedding
            check_embedding(query, "the query embedding", store.single_dim, store.multi_dim, stored=False,
                            single_width=getattr(store, "single_width", None))
        else:
            text = clean_query(query_or_embedding)
            if self.identity is None and self._encoder is None:
                raise self._no_model()
            encoder = self.encoder
            (query,) = encoder.encode_queries([text], batch_size=1, show_progress_bar=False)
            if hasattr(encoder, "query_tokens"):
                (labels,) = encoder.query_tokens([text])
        return compute_heatmap(page_id, np.asarray(query.multi, np.float32), np.asarray(page_multi, np.float32),
                               grid, labels, token=token)

    def _hits(self, scored: Sequence[tuple[int, float]]) -> list[Hit]:
        if not scored:
            return []
        ids = np.asarray([pid for pid, _ in scored], dtype=np.int64)
        places = self._store.pages_info(ids)
        return [
            Hit(rank=i + 1, score=float(score), path=path, page=int(page), page_id=int(pid))
            for i, ((pid, score), (path, page)) in enumerate(zip(scored, places))
        ]
