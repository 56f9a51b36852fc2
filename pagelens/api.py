"""The Python API: an `Index` is a store on disk, the encoder that made it, and its search structures.

Every `pagelens` CLI command is a thin layer over one method here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from engine.types import Embedding
from pagelens.errors import IndexNotFoundError, NoModelError, PagelensError
from pagelens.results import Hit, IndexInfo

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


def _is_index_dir(directory: Path) -> bool:
    return (directory / "manifest.json").is_file()


class Index:
    """A page index on disk.

    >>> index = Index.create("my-index", model="jinaai/jina-embeddings-v4")   # doctest: +SKIP
    >>> index.add(["reports/"])                                              # doctest: +SKIP
    >>> index.search("revenue by region in 2023", k=5)                       # doctest: +SKIP
    """

    def __init__(self, directory: Path, store: Any, *, encoder: Any = None, device=None, dtype=None):
        self.directory = Path(directory)
        self._store = store
        self._encoder = encoder
        self._device = device
        self._dtype = dtype
        self._retriever = None
        self._dirty = False
        self._model: str | None = None  # overrides the recorded model location when set

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
    ) -> "Index":
        """Create a new, empty index.

        Give an ``encoder`` (from `pagelens.load_encoder`) or a ``model`` id/folder to embed pages
        here; or neither, with ``single_dim`` and ``multi_dim``, for an index that stores embeddings
        made elsewhere (`add_embeddings`, `search_embedding`).

        ``search_dim`` is the Matryoshka width of the single-vector FAISS index (default: full; the
        stored vectors stay full width). ``prefilter`` is its kind: "auto" (exact below 5k pages,
        HNSW above), "flat", "hnsw" or "ivf". Both are fixed at creation.
        """
        directory = Path(directory)
        if _is_index_dir(directory):
            raise PagelensError(
                f"an index already exists at {directory}",
                "Open it with Index.open(), or choose another directory.",
            )
        if encoder is None and model is not None:
            encoder = _load_encoder(model, task=task, device=device, dtype=dtype, max_pixels=max_pixels)
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
        if prefilter not in ("auto", "flat", "hnsw", "ivf"):
            raise PagelensError(f"unknown prefilter {prefilter!r}", "Choose auto, flat, hnsw or ivf.")
        settings = {"search_dim": search_dim, "prefilter": prefilter}
        store = _store_module().Store.create(
            directory, identity=identity, single_dim=single_dim, multi_dim=multi_dim, settings=settings
        )
        return cls(directory, store, encoder=encoder, device=device, dtype=dtype)

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
        index = cls(directory, store, device=device, dtype=dtype)
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
    ) -> "Index":
        """Open the index at ``directory`` for adding, or create it with ``model`` (default jina-v4).

        On an existing index, a ``model``, ``task`` or ``max_pixels`` given explicitly must match the
        index's own encoder: adding pages from another encoder is refused, never mixed in."""
        directory = Path(directory)
        if not _is_index_dir(directory):
            return cls.create(
                directory, model=model or DEFAULT_MODEL, task=task or "retrieval",
                device=device, dtype=dtype, max_pixels=max_pixels, search_dim=search_dim,
            )
        index = cls.open(directory, device=device, dtype=dtype, writable=True)
        if model is not None or task is not None or max_pixels is not None:
            identity = index.identity or {}
            encoder = _load_encoder(
                model or identity.get("model", DEFAULT_MODEL),
                task=task or identity.get("task", "retrieval"),
                device=device, dtype=dtype,
                max_pixels=max_pixels or identity.get("max_pixels"),
            )
            try:
                index._check_encoder(encoder, for_adding=True)
            except BaseException:
                index.close()
                raise
            index._encoder = encoder
        return index

    def close(self) -> None:
        """Bring the search structures in step with what this handle wrote, then release the index."""
        if self._dirty and self._store is not None:
            self.sync()
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
        if self._encoder is None:
            identity = self.identity
            if identity is None:
                raise NoModelError(
                    f"the index at {self.directory} was created without a model",
                    "Use add_embeddings() and search_embedding() with embeddings made elsewhere.",
                )
            encoder = _load_encoder(
                self._model or identity["model"],
                task=identity["task"],
                device=self._device,
                dtype=self._dtype,
                max_pixels=identity.get("max_pixels"),
            )
            self._check_encoder(encoder, for_adding=False)
            self._encoder = encoder
        return self._encoder

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
    ):
        """Index PDFs, folders of PDFs and page images. Unchanged files are skipped; see IndexReport."""
        from indexer.pipeline import index_paths  # noqa: PLC0415

        store = self._writable()
        encoder = self.encoder  # index_paths refuses an encoder whose identity differs from the index's
        kwargs: dict[str, Any] = {"batch_size": batch_size, "password": password, "on_event": on_event}
        if dpi is not None:
            kwargs["dpi"] = dpi
        report = index_paths(store, encoder, [os.fspath(p) for p in paths], **kwargs)
        self.sync()
        return report

    def add_embeddings(self, path: str, pages: Sequence[Embedding]) -> list[int]:
        """Store a document whose page i+1 is ``pages[i]``, embedded elsewhere. Returns page ids."""
        store = self._writable()
        for i, page in enumerate(pages):
            if page.single.shape[0] != store.single_dim or page.multi.shape[1] != store.multi_dim:
                raise PagelensError(
                    f"page {i + 1} of {path} has single {page.single.shape[0]}-d / multi {page.multi.shape[1]}-d, "
                    f"the index stores {store.single_dim}-d / {store.multi_dim}-d",
                    "Embed with the same model and widths the index was created with.",
                )
        page_ids = store.add_document(path, list(pages))
        self._dirty = True  # search structures catch up once, at the next search or close()
        return page_ids

    def remove(self, paths: Iterable[str | os.PathLike]) -> int:
        """Remove documents by the path they were indexed under, or every document under a folder.

        Returns the number of pages removed."""
        store = self._writable()
        removed = 0
        for path in paths:
            target = os.path.abspath(os.fspath(path))
            prefix = target.rstrip(os.sep) + os.sep
            matches = [d.path for d in store.documents() if d.path == target or d.path.startswith(prefix)]
            for doc_path in matches:
                removed += store.remove_document(doc_path)
        self._dirty = self._dirty or removed > 0
        return removed

    def compact(self) -> int:
        """Reclaim the space of removed pages now; returns the bytes reclaimed."""
        return self._writable().compact()

    # ---- reading ---------------------------------------------------------------------------

    def info(self) -> IndexInfo:
        stats = self._store.stats()
        return IndexInfo(
            directory=str(self.directory),
            format_version=stats.format_version,
            documents=stats.documents,
            pages=stats.pages,
            vectors=stats.vectors,
            bytes_on_disk={**stats.bytes_by_part, "total": stats.total_bytes, "dead (reclaimable)": stats.dead_bytes},
            identity=stats.identity,
            failed_documents=stats.failed_documents,
            extra={"settings": self._store.settings},
        )

    def _retrieval(self):
        if self._retriever is None:
            from pagelens.retrieval import Retriever  # noqa: PLC0415

            # exact MaxSim follows the model onto the GPU; candidate structures stay on the CPU
            device = str(self._device) if self._device and str(self._device).startswith("cuda") else "cpu"
            settings = self._store.settings
            self._retriever = Retriever(
                self.directory / "derived", self._store, device=device,
                single_dim=settings.get("search_dim"), prefilter=settings.get("prefilter") or "auto",
            )
        return self._retriever

    def sync(self) -> None:
        """Bring the derived search structures (FAISS, pooled tokens) in step with the stored pages.

        Searches do this by themselves; writers call it once after a batch of changes so that
        readers find the structures ready."""
        self._retrieval().sync()
        self._dirty = False

    def search(self, query: str, *, k: int = 10, candidates: int | None = None, exhaustive: bool = False) -> list[Hit]:
        """Find the k pages that best answer ``query``, best first."""
        return self.search_batch([query], k=k, candidates=candidates, exhaustive=exhaustive)[0]

    def search_batch(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        candidates: int | None = None,
        exhaustive: bool = False,
        batch_size: int = 8,
    ) -> list[list[Hit]]:
        """Search many queries at once; the encoder batches them."""
        embeddings = self.encoder.encode_queries(list(queries), batch_size=batch_size, show_progress_bar=False)
        return self.search_embeddings(embeddings, k=k, candidates=candidates, exhaustive=exhaustive)

    def search_embedding(
        self, embedding: Embedding, *, k: int = 10, candidates: int | None = None, exhaustive: bool = False
    ) -> list[Hit]:
        """Search with a query embedding made elsewhere (bring your own)."""
        return self.search_embeddings([embedding], k=k, candidates=candidates, exhaustive=exhaustive)[0]

    def search_embeddings(
        self,
        embeddings: Sequence[Embedding],
        *,
        k: int = 10,
        candidates: int | None = None,
        exhaustive: bool = False,
    ) -> list[list[Hit]]:
        if k < 1:
            raise PagelensError(f"k must be at least 1, got {k}")
        store = self._store
        for emb in embeddings:
            if emb.single.shape[0] != store.single_dim or emb.multi.shape[1] != store.multi_dim:
                raise PagelensError(
                    f"query embedding is single {emb.single.shape[0]}-d / multi {emb.multi.shape[1]}-d, "
                    f"the index stores {store.single_dim}-d / {store.multi_dim}-d",
                    "Encode queries with the model the index was built with.",
                )
        store.refresh()  # a long-lived reader sees pages committed since it opened
        retriever = self._retrieval()
        self.sync()
        results = retriever.search_batch(
            [np.asarray(e.multi, np.float32) for e in embeddings],
            [np.asarray(e.single, np.float32) for e in embeddings],
            k=k,
            candidates=candidates,
            exhaustive=exhaustive,
        )
        return [self._hits(scored) for scored in results]

    def _hits(self, scored: Sequence[tuple[int, float]]) -> list[Hit]:
        if not scored:
            return []
        ids = np.asarray([pid for pid, _ in scored], dtype=np.int64)
        places = self._store.pages_info(ids)
        return [
            Hit(rank=i + 1, score=float(score), path=path, page=int(page), page_id=int(pid))
            for i, ((pid, score), (path, page)) in enumerate(zip(scored, places))
        ]
