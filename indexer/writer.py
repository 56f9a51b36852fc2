"""Streaming writes of one document: shard bytes as pages arrive, catalogue commits in chunks.

Write order (see docs/index-format.md): append multi and single rows past the watermarks ->
fsync both shard files -> one SQLite transaction that writes the document row and its new pages
and moves the watermarks. A short document is one such commit. A long one commits every
``Store.checkpoint_pages`` pages with ``complete = 0`` (searches do not see it) and the last chunk
sets ``complete = 1``; a run that stopped midway resumes after the committed pages. On any
exception the bytes appended since the last commit are cut back (a crash leaves them as a torn
tail, cut on reopen). Uses only the store's public methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.types import Embedding, PatchGrid
from indexer.errors import DimensionMismatchError
from indexer.shards import page_crc
from indexer.sources import SourceFile

if TYPE_CHECKING:
    from indexer.store import Store


def as_embedding(item) -> tuple[int | None, int | None, Embedding]:
    """Accept an Embedding or a (width, height, Embedding) triple."""
    if isinstance(item, Embedding):
        return None, None, item
    width, height, emb = item
    if not isinstance(emb, Embedding):
        raise TypeError(f"expected an Embedding or (width, height, Embedding), got {type(item).__name__}")
    return width, height, emb


def grid_columns(grid, n_tokens: int) -> tuple:
    """The catalogue's grid columns for a page: (offset, rows, cols, x0, y0, x1, y1), or NULLs when
    the page has no grid, or one that does not fit its token vectors (never stored half-right)."""
    if not isinstance(grid, PatchGrid) or not grid.fits(n_tokens):
        return (None,) * 7
    return (grid.offset, grid.rows, grid.cols, *grid.box)


class DocumentWriter:
    """Use through ``Store.document_writer(source)``; commits on a clean ``with`` exit."""

    def __init__(self, store: "Store", source: SourceFile, *, resume: bool = False):
        self.store, self.source = store, source
        point = store.resume_point(source) if resume else None
        self._multi, self._single = store.open_appenders()
        self._start = (self._multi.rows, self._single.rows)  # where uncommitted bytes begin
        self._rows: list[tuple] = []  # pages appended since the last commit
        self._done = False
        self.pages_replaced = 0
        self.document_id, committed, self.page_ids = (point if point is not None else (None, 0, []))
        self.first_page = committed + 1  # the next page this writer expects (1 unless resuming)
        self._committed = committed

    @property
    def page_count(self) -> int:
        return self._committed + len(self._rows)

    def add_page(self, page_number: int, width: int | None, height: int | None, embedding: Embedding) -> None:
        self.add_pages([(page_number, width, height, embedding)])

    def add_pages(self, pages) -> None:
        """``add_page`` for each ``(page_number, width, height, embedding)`` in order, the token
        vectors of all of them encoded in one codec call. Every page is checked before any is
        appended, so a bad page appends nothing of its batch."""
        if self._done:
            raise RuntimeError("this document writer is closed")
        checked = [self._checked(self.page_count + 1 + i, *page) for i, page in enumerate(pages)]
        if not checked:
            return
        store = self.store
        # raw float16 rows, or the codec's records (pooled first when the index pools tokens);
        # the checksum covers what is stored
        stored_rows, keeps_grid = store.encode_multi_pages(self._multi, [multi for _n, _w, _h, _s, multi, _e in checked])
        for (page_number, width, height, single, _multi, embedding), stored in zip(checked, stored_rows):
            multi_at = self._multi.append(stored)
            single_at = self._single.append(single)
            grid = getattr(embedding, "grid", None) if keeps_grid else None  # pooled tokens have no grid
            self._rows.append((page_number, width, height, self._multi.shard_id, multi_at, stored.shape[0],
                               self._single.shard_id, single_at, page_crc(stored, single[0]),
                               *grid_columns(grid, stored.shape[0])))
            if len(self._rows) >= store.checkpoint_pages:
                self._commit_chunk(complete=False)

    def _checked(self, expected: int, page_number: int, width, height, embedding: Embedding) -> tuple:
        """(number, width, height, single as stored, float16 tokens, embedding) of a valid page."""
        if page_number != expected:
            raise ValueError(f"pages must arrive in order: expected page {expected}, got {page_number}")
        single = np.asarray(embedding.single, dtype=np.float32).reshape(1, -1)
        multi = np.asarray(embedding.multi, dtype=np.float16)
        store = self.store
        # a single vector of the encoder's full width, or one already at the index's stored width
        if single.shape[1] not in (store.single_dim, store.single_width) or multi.ndim != 2 \
                or multi.shape[1] != store.multi_dim:
            raise DimensionMismatchError(
                f"page {page_number} of {self.source.display_path} has a {single.shape[1]}-d single vector and "
                f"{multi.shape[-1]}-d token vectors; this index stores {store.single_dim} and {store.multi_dim}",
                "use the encoder the index was created with, or create a new index",
            )
        if multi.shape[0] == 0:
            raise ValueError(f"page {page_number} has no token vectors")
        # at the index's width and precision, as stored
        return page_number, width, height, store.encode_single(single), multi, embedding

    def _commit_chunk(self, *, complete: bool) -> None:
        try:
            self._multi.sync()
            self._single.sync()
            doc_id, ids, replaced = self.store.commit_pages(
                self.source, self._rows, (self._multi, self._single), document_id=self.document_id,
                page_count=self.page_count, complete=complete)
        except BaseException:
            self.abort()
            raise
        if self.document_id is None:
            self.pages_replaced = replaced
        self.document_id = doc_id
        self.page_ids.extend(ids)
        self._committed += len(self._rows)
        self._rows = []
        self._start = (self._multi.rows, self._single.rows)

    def commit(self) -> list[int]:
        """Make the document visible; returns its page ids in page order."""
        if self._done:
            raise RuntimeError("this document writer is closed")
        if self.page_count == 0:
            self.abort()
            raise ValueError(f"{self.source.display_path}: a document needs at least one page")
        try:
            self._commit_chunk(complete=True)
        except BaseException:
            self.page_ids = []
            raise
        self._done = True
        self.store.release_appenders(changed=True)
        return self.page_ids

    def abort(self) -> None:
        """Forget the pages since the last commit: cut the appended bytes back. Chunks already
        committed stay (invisible to search) so that the next run can resume after them."""
        if self._done:
            return
        self._done = True
        self._multi.rollback(self._start[0])
        self._single.rollback(self._start[1])
        self.store.release_appenders(changed=self._committed > 0)

    def __enter__(self) -> "DocumentWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self._done:
                self.commit()
        else:
            self.abort()
