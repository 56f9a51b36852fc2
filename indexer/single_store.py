"""Single vectors stored at the prefilter's width and precision (docs/index-format.md, "Single vectors").

An index fixes at creation the width its single vectors are stored at (``single_width``: the full
``single_dim`` or a Matryoshka prefix of it) and their precision (``single_precision``: "fp32" or
"fp16"). A narrower vector is the first ``single_width`` values, L2-renormalised: exactly what a
Matryoshka prefilter of that width searches, so storing more pays for values it never reads.

Single shards: ``single-N.f32`` rows are float32, ``single-N.f16`` rows float16. Their width comes
from the manifest, never from the file:
- f16 rows are ``single_width`` wide (they exist only in an index whose precision is fp16);
- f32 rows are ``single_width`` wide in an fp32 index and ``single_dim`` wide in an fp16 one: there
  they are full-width originals a conversion has not reached yet.
Hence a conversion only goes from full-width fp32 to fp16 (at any width up to the full one); an
index stored narrower or in fp16 has lost the values another target would need, and says so.

Conversion (``convert_single_rows``) works like ``codec_store.convert_raw_pages``: rows are
appended to the newest f16 shard in batches, fsynced, then one catalogue transaction moves those
pages (single shard, row, crc32) and the shard's watermark. A kill -9 at any moment leaves every
page on either its old or its new row; the same call continues with the rest. f32 shards no page
uses any more are dropped at the end (files deleted after the commit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from indexer.errors import CorruptIndexError
from indexer.manifest import SINGLE_PRECISIONS
from indexer.shards import is_half_single, page_crc

if TYPE_CHECKING:
    from indexer.store import Store

DTYPES = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2")}
CONVERT_BATCH_PAGES = 256  # single rows per conversion commit (the unit a kill -9 can lose and redo)
_HINT = "restore the index folder from a backup, or rebuild it by indexing into a new --index folder"
_REINDEX = "re-index the documents into a new --index folder with the single-vector settings you want"


def check_single_settings(single_width, single_precision, single_dim: int) -> tuple[int, str]:
    """(width, precision) after checking them against the index's ``single_dim``; ValueError
    naming what is accepted. ``single_width`` None is the full width."""
    width = int(single_dim) if single_width is None else single_width
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 1 <= int(width) <= int(single_dim):
        raise ValueError(f"single_width must be an integer from 1 to the single vectors' {single_dim} values "
                         f"(a Matryoshka width such as 128), got {single_width!r}")
    if not isinstance(single_precision, str) or single_precision not in SINGLE_PRECISIONS:
        raise ValueError(f"unknown single_precision {single_precision!r}; choose one of {', '.join(SINGLE_PRECISIONS)}")
    return int(width), single_precision


def matryoshka(vectors: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` values of each row, L2-renormalised, float32 (a zero row stays zero)."""
    v = np.asarray(vectors, dtype=np.float32)[..., :width]
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(norms, 1e-12)).astype(np.float32)


def stored_rows(vectors: np.ndarray, single_dim: int, width: int, precision: str) -> np.ndarray:
    """The rows to store for single vectors [n, D] (D the full width, or already ``width``):
    full-width fp32 rows exactly as given (the bytes of format version 1), anything else
    truncated, renormalised and cast to the stored precision."""
    v = np.asarray(vectors, dtype=np.float32)
    if not (v.shape[-1] == width == single_dim):
        v = matryoshka(v, width)
    return np.ascontiguousarray(v, dtype=DTYPES[precision])


def shard_layout(name: str, single_dim: int, width: int, precision: str) -> tuple[np.dtype, int]:
    """(dtype, values per row) of the single shard ``name`` in an index stored at (width, precision)."""
    if is_half_single(name):
        if precision != "fp16":
            raise CorruptIndexError(f"the catalogue names a float16 single shard {name} in an index whose "
                                    "manifest stores single vectors in fp32", _HINT)
        return DTYPES["fp16"], width
    return DTYPES["fp32"], (width if precision == "fp32" else single_dim)


def check_conversion(current: tuple[int, str], target: tuple[int, str], single_dim: int) -> None:
    """Refuse, with ValueError saying why, a conversion of single vectors stored as ``current``
    (width, precision) into ``target`` that the stored values cannot give."""
    if target == current:
        return
    (have_w, have_p), (want_w, want_p) = current, target
    if want_w > have_w:
        raise ValueError(f"the single vectors are stored at width {have_w}; they cannot be widened to {want_w} (the "
                         f"values past {have_w} were never stored): {_REINDEX}")
    if have_p == "fp16":
        raise ValueError(f"the single vectors are already stored fp16 at width {have_w}; recompress converts them "
                         f"only from the full-width fp32 originals, which this index no longer holds: {_REINDEX}")
    if have_w != single_dim:
        raise ValueError(f"the single vectors are stored fp32 at width {have_w} (of {single_dim}); recompress "
                         f"converts them only from the full-width fp32 originals: {_REINDEX}")
    if want_p == "fp32":
        raise ValueError(f"single vectors can be narrowed in place only when stored fp16: ask for single precision "
                         f"fp16 with width {want_w}, or {_REINDEX}")


def convert_single_rows(store: "Store", *, batch_pages: int | None = None,
                        progress: Callable[[str, int, int], None] | None = None) -> int:
    """Re-store every single vector still in a shard of the old layout at the store's width and
    precision; returns the pages moved. Copies sharing one stored row keep sharing it."""
    groups = store.single_rows_to_convert()
    total = sum(len(pages) for _loc, pages in groups)
    batch_pages = max(1, int(batch_pages or CONVERT_BATCH_PAGES))
    moved = 0
    for start in range(0, len(groups), batch_pages):
        batch = groups[start:start + batch_pages]
        app = store.single_appender()
        first_row = app.rows
        updates = []
        try:
            for (s_shard, s_row), pages in batch:
                row = store.encode_single(store.single_row(s_shard, s_row).reshape(1, -1))
                at = app.append(row)
                for page_id, m_shard, m_offset, n_tokens in pages:
                    multi = store.stored_multi_rows(m_shard, m_offset, n_tokens)
                    updates.append((app.shard_id, at, page_crc(multi, row[0]), page_id))
            app.sync()
            store.move_single_rows(app, updates)
        except BaseException:
            app.rollback(first_row)
            raise
        moved += len(updates)
        if progress is not None:
            progress("converting single vectors", moved, total)
    store.drop_unused_single_shards()
    return moved
