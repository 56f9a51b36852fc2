"""Compressed multi-vectors in the store: codec state files, training, and fp16 -> codec conversion.

A *codec state* is a ``indexer.codecs`` codec plus the pool factor its rows were pooled with,
saved once as ``codec-v<V>.npz`` in the index folder (the name is the format's: the version V is
all the catalogue records, never a path). A coded multi shard ``multi-N.c<V>`` holds rows of
state V; a raw ``multi-N.f16`` shard holds float16 tokens, unpooled. Rows of both kinds may live
in one store at once (a residual codec not trained yet, a conversion under way).

Conversion (``convert_raw_pages``) re-encodes the pages still stored raw, in batches: each batch is
appended to a coded shard, fsynced, then one catalogue transaction moves those pages (location,
token count, checksum, grid) and the shard's watermark. A kill -9 at any moment leaves every page
either raw or coded, never both or neither; running it again continues with the raw ones. Raw
shards no page uses any more are dropped at the end (their files deleted after the commit).
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from indexer.errors import CorruptIndexError
from indexer.manifest import MAX_POOL_FACTOR
from indexer.shards import check_regular_or_absent, fsync_dir, open_nofollow, page_crc
from indexer.codecs import Codec, CodecError, TokenSampler, load_codec, make_codec
from indexer.token_pooling import pool_tokens

if TYPE_CHECKING:
    from indexer.store import Store

CODEC_FILE = re.compile(r"\Acodec-v([1-9]\d{0,5})\.npz\Z")
MAX_CODEC_BYTES = 64 << 20  # 65,536 centroids of 128 floats are 32 MiB: anything far larger is not ours
SAMPLE_TOKENS = 1 << 17  # training reservoir: 64 MiB of float32 at d=128, whatever the collection's size
CONVERT_BATCH_PAGES = 64  # pages per conversion commit (the unit a kill -9 can lose and redo)
_HINT = "restore the index folder from a backup, or rebuild it by indexing into a new --index folder"


def codec_file_name(version: int) -> str:
    return f"codec-v{int(version)}.npz"


def parse_codec_file_name(name: str) -> int | None:
    m = CODEC_FILE.match(name) if isinstance(name, str) else None
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class CodecState:
    """One stored codec state: rows of shards ``multi-N.c<version>`` were pooled then encoded so."""

    version: int
    codec: Codec
    pool_factor: int

    @property
    def name(self) -> str:
        return self.codec.name

    @property
    def bytes_per_token(self) -> int:
        return self.codec.bytes_per_token

    def encode_pages(self, pages: list[np.ndarray]) -> list[np.ndarray]:
        """``[encode(p) for p in pages]`` in one codec call: every codec encodes token by token, so
        the records are the same bytes, and one call over a document's pages instead of one per page
        spares FAISS's per-call cost (64-token pages: 2.5-5 ms a page alone, 0.7 ms batched)."""
        xs = [pool_tokens(p, self.pool_factor) if self.pool_factor > 1 else p for p in pages]
        if not xs:
            return []
        ends = np.cumsum([len(x) for x in xs])
        return np.split(self.codec.encode(np.concatenate(xs, axis=0)), ends[:-1])

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """uint8 records -> float32 tokens. Not narrowed to float16 like raw shards: numpy's fp32 ->
        fp16 cast took 45% of a compact search (benchmarks/compact_search.py) and MaxSim widens
        the rows to float32 again anyway."""
        return self.codec.decode(codes)


def write_codec_state(directory: str, version: int, codec: Codec, pool_factor: int) -> str:
    """Save a codec state once: tmp -> fsync -> rename -> directory fsync. An existing file of
    that version is never replaced (the caller picks a version no file has)."""
    path = os.path.join(directory, codec_file_name(version))
    if os.path.lexists(path):
        raise FileExistsError(f"{codec_file_name(version)} already exists")
    arrays = dict(codec.to_arrays(), pool_factor=np.array([int(pool_factor)], np.int64))
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with open(fd, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)
    return path


def read_codec_state(directory: str, version: int, multi_dim: int) -> CodecState:
    """Load and check ``codec-v<version>.npz``: a plain file, a zip of plain .npy arrays (no pickles,
    bounded sizes), a valid codec of the index's width, trained, with a sane pool factor.
    Anything else is CorruptIndexError."""
    name = codec_file_name(version)
    path = os.path.join(directory, name)
    check_regular_or_absent(path)
    if not os.path.lexists(path):
        raise CorruptIndexError(f"the index stores vectors with codec state {name}, which is missing", _HINT)
    try:
        with open(open_nofollow(path, os.O_RDONLY), "rb") as fh:
            data = fh.read(MAX_CODEC_BYTES + 1)
        if len(data) > MAX_CODEC_BYTES:
            raise ValueError(f"larger than {MAX_CODEC_BYTES} bytes")
        arrays = {}
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > 16 or sum(i.file_size for i in infos) > 2 * MAX_CODEC_BYTES:
                raise ValueError("too many or too large members")
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"unexpected member {info.filename[:40]!r}")
                with zf.open(info) as member:
                    arrays[info.filename[:-4]] = np.lib.format.read_array(member, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, RuntimeError, NotImplementedError) as exc:
        raise CorruptIndexError(f"cannot read codec state {name}: {str(exc)[:200]}", _HINT) from None
    pool = arrays.pop("pool_factor", None)
    if (not isinstance(pool, np.ndarray) or pool.dtype != np.int64 or pool.shape != (1,)
            or not 1 <= int(pool[0]) <= MAX_POOL_FACTOR):
        raise CorruptIndexError(f"codec state {name} has no valid pool_factor (int64 [1], 1..{MAX_POOL_FACTOR})",
                                _HINT)
    try:
        codec = load_codec(arrays)
    except CodecError as exc:
        raise CorruptIndexError(f"codec state {name} is not valid: {exc}", _HINT) from None
    if codec.dim != multi_dim:
        raise CorruptIndexError(f"codec state {name} is for {codec.dim}-d vectors; this index stores {multi_dim}-d",
                                _HINT)
    return CodecState(int(version), codec, int(pool[0]))


def train_codec(store: "Store", name: str, pool_factor: int, *, sample_tokens: int = SAMPLE_TOKENS,
                progress: Callable[[str, int, int], None] | None = None) -> Codec:
    """A codec ``name`` trained on a bounded uniform sample of the pages the store holds raw
    (pooled first, as they will be stored); the collection is streamed, never held in RAM."""
    codec = make_codec(name, store.multi_dim)
    if not codec.needs_training:
        return codec
    groups = store.raw_page_groups()
    sampler = TokenSampler(sample_tokens, store.multi_dim, seed=0)
    for i, group in enumerate(groups):
        tokens = store.raw_multi_rows(group.multi_shard, group.multi_offset, group.n_tokens)
        sampler.add(pool_tokens(tokens, pool_factor) if pool_factor > 1 else tokens.astype(np.float32))
        if progress is not None and (i % 64 == 63 or i == len(groups) - 1):
            progress("sampling", i + 1, len(groups))
    if sampler.seen == 0:
        raise CodecError(f"there are no stored pages to train the {name} codec on: add pages first")
    codec.train(sampler.sample(), collection_tokens=sampler.seen)
    return codec


def convert_raw_pages(store: "Store", state: CodecState, *, batch_pages: int | None = None,
                      progress: Callable[[str, int, int], None] | None = None) -> int:
    """Re-encode every page stored raw (float16, unpooled) with ``state``; returns pages moved.
    Copies sharing one stored vector block keep sharing it. See the module docstring for the
    crash-safety argument."""
    groups = store.raw_page_groups()
    total = sum(len(g.page_ids) for g in groups)
    batch_pages = max(1, int(batch_pages or CONVERT_BATCH_PAGES))
    moved = 0
    for start in range(0, len(groups), batch_pages):
        batch = groups[start:start + batch_pages]
        app = store.coded_appender(state.version)
        first_row = app.rows
        updates = []
        try:
            encoded = state.encode_pages([store.raw_multi_rows(g.multi_shard, g.multi_offset, g.n_tokens) for g in batch])
            for g, codes in zip(batch, encoded):
                at = app.append(codes)
                for page_id, (s_shard, s_row) in zip(g.page_ids, g.single_locations):
                    single = store.single_row(s_shard, s_row)
                    updates.append((app.shard_id, at, len(codes), page_crc(codes, single), page_id))
            app.sync()
            store.move_multi_rows(app, updates, drop_grid=state.pool_factor > 1)
        except BaseException:
            app.rollback(first_row)
            raise
        moved += len(updates)
        if progress is not None:
            progress("converting", moved, total)
    store.drop_unused_raw_shards()
    return moved
