"""Append-only vector shard files, read through memory maps, and durable-write helpers.

A shard is a headerless file of fixed-size rows: ``multi`` shards hold float16 rows of
``multi_dim`` values (one row per token), ``single`` shards hold float32 rows of ``single_dim``
values (one row per page). How many rows are committed lives in the catalogue (the watermark);
anything past it is a torn tail from an interrupted write and is cut on the next writable open.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

from indexer.errors import CorruptIndexError

SHARD_DIR = "shards"
DTYPES = {"multi": np.dtype("<f2"), "single": np.dtype("<f4")}


def shard_file_name(kind: str, shard_id: int) -> str:
    return f"{kind}-{shard_id:06d}.{'f16' if kind == 'multi' else 'f32'}"


def row_bytes(kind: str, dim: int) -> int:
    return DTYPES[kind].itemsize * dim


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: str, obj) -> None:
    """tmp -> fsync -> rename -> directory fsync: the file is either the old one or the new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _write_all(fh, data: bytes | memoryview) -> None:
    """The one place shard bytes are written; a seam for tests that simulate a full disk."""
    fh.write(data)


def page_crc(multi: np.ndarray, single: np.ndarray) -> int:
    return zlib.crc32(single.tobytes(), zlib.crc32(multi.tobytes())) & 0xFFFFFFFF


class Appender:
    """Appends rows to one shard file past its committed watermark.

    ``rows`` is where the next row goes. ``sync()`` makes appended rows durable (before the
    catalogue commit names them); ``rollback(rows)`` cuts the file back after a failed write.
    """

    def __init__(self, path: str, kind: str, dim: int, committed_rows: int, shard_id: int = 0):
        self.path, self.kind, self.dim, self.shard_id = path, kind, dim, shard_id
        self.row_bytes = row_bytes(kind, dim)
        self.dtype = DTYPES[kind]
        fresh = not os.path.exists(path)
        self._fh = open(path, "a+b" if fresh else "r+b")
        if fresh:
            fsync_dir(os.path.dirname(path))
        self.rows = committed_rows
        self._fh.seek(committed_rows * self.row_bytes)
        self._dirty = False

    def append(self, rows: np.ndarray) -> int:
        """Write ``rows`` [n, dim] and return the index of the first one."""
        arr = np.ascontiguousarray(rows, dtype=self.dtype)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"{self.kind} rows must be [n, {self.dim}], got {arr.shape}")
        first = self.rows
        self._fh.seek(first * self.row_bytes)
        self._dirty = True
        _write_all(self._fh, memoryview(arr).cast("B"))
        self.rows += arr.shape[0]
        return first

    def sync(self) -> None:
        if self._dirty:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._dirty = False

    def rollback(self, rows: int) -> None:
        """Forget everything past ``rows`` (best effort: a failure here is cut again on reopen)."""
        self.rows = rows
        try:
            self._fh.flush()
        except OSError:
            pass
        try:
            self._fh.truncate(rows * self.row_bytes)
            self._fh.seek(rows * self.row_bytes)
        except OSError:
            pass
        self._dirty = False

    @property
    def size(self) -> int:
        return self.rows * self.row_bytes

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass


def cut_torn_tail(path: str, kind: str, dim: int, committed_rows: int) -> int:
    """Truncate ``path`` to its committed rows; return the bytes cut. Missing data is an error."""
    want = committed_rows * row_bytes(kind, dim)
    try:
        have = os.path.getsize(path)
    except FileNotFoundError:
        if want == 0:
            return 0
        raise CorruptIndexError(
            f"shard {os.path.basename(path)} is missing but the catalogue has {committed_rows} committed rows in it",
            "restore the index directory from a backup or rebuild it with `pagelens index`",
        ) from None
    if have < want:
        raise CorruptIndexError(
            f"shard {os.path.basename(path)} holds {have} bytes but the catalogue committed {want}",
            "the file was truncated outside pagelens; restore it from a backup or rebuild the index",
        )
    if have > want:
        with open(path, "r+b") as fh:
            fh.truncate(want)
            fh.flush()
            os.fsync(fh.fileno())
    return have - want


def map_rows(path: str, kind: str, dim: int, rows: int) -> np.ndarray:
    """A read-only [rows, dim] view of the committed part of a shard (bytes past it are ignored)."""
    dtype = DTYPES[kind]
    if rows == 0:
        return np.zeros((0, dim), dtype=dtype)
    have = os.path.getsize(path)
    if have < rows * dtype.itemsize * dim:
        raise CorruptIndexError(
            f"shard {os.path.basename(path)} holds {have} bytes but the catalogue committed "
            f"{rows * dtype.itemsize * dim}",
            "restore the index directory from a backup or rebuild it with `pagelens index`",
        )
    return np.memmap(path, dtype=dtype, mode="r", shape=(rows, dim))
