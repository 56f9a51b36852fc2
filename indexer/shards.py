"""Append-only vector shard files, read through memory maps, and durable-write helpers.

A shard is a headerless file of fixed-size rows: ``multi`` shards hold float16 rows of
``multi_dim`` values (one row per token), ``single`` shards hold float32 (``.f32``) or float16
(``.f16``) rows of the index's stored single width (one row per page). How many rows are committed lives in the catalogue (the watermark);
anything past it is a torn tail from an interrupted write and is cut on the next writable open.
"""

from __future__ import annotations

import json
import os
import re
import stat
import zlib

import numpy as np

from indexer.errors import CorruptIndexError

SHARD_DIR = "shards"
DTYPES = {"multi": np.dtype("<f2"), "single": np.dtype("<f4")}
KINDS = tuple(DTYPES)
# The only names a shard file can have. Names read from the catalogue are data: one that does not
# match (an absolute path, "../x", a link) means the index is corrupt or hostile, never a path to use.
# ``multi-N.f16`` holds raw float16 tokens (the format since version 1); ``multi-N.c<V>`` holds
# records of codec state V (``codec-v<V>.npz``: a indexer.codecs codec plus a pool factor).
# ``single-N.f32`` holds float32 page vectors (the format since version 1), ``single-N.f16`` float16
# ones (format version 3); their width is the manifest's (``Store.shard_layout``), never the file's.
SHARD_NAME = re.compile(r"\A(multi|single)-(\d{6,19})\.(f16|f32|c[1-9]\d{0,5})\Z")
MAX_CODEC_VERSION = 999999
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_REPAIR_HINT = "restore the index directory from a backup, or rebuild it by indexing into a new --index folder"


def shard_file_name(kind: str, shard_id: int, codec_version: int | None = None, *, half: bool = False) -> str:
    """The format's name of a shard; ``codec_version`` (multi shards only) names coded rows,
    ``half`` (single shards only) float16 page vectors."""
    if codec_version is not None:
        if kind != "multi" or not 1 <= int(codec_version) <= MAX_CODEC_VERSION:
            raise ValueError(f"no coded {kind} shard of codec version {codec_version!r}")
        return f"{kind}-{shard_id:06d}.c{int(codec_version)}"
    if kind == "single":
        return f"{kind}-{shard_id:06d}.{'f16' if half else 'f32'}"
    if half:
        raise ValueError("multi shards are float16 already: no half variant")
    return f"{kind}-{shard_id:06d}.f16"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    """(kind, shard id) of a well-formed shard file name, else None."""
    m = SHARD_NAME.match(name) if isinstance(name, str) else None
    if m is None:
        return None
    ext = m.group(3)
    if m.group(1) == "multi" and ext == "f32" or m.group(1) == "single" and ext not in ("f32", "f16"):
        return None
    return m.group(1), int(m.group(2))


def shard_codec_version(name: str) -> int | None:
    """The codec version a well-formed coded shard name carries (``multi-N.c3`` -> 3); None for
    raw float16/float32 shards (and for names that are not the format's)."""
    m = SHARD_NAME.match(name) if isinstance(name, str) else None
    if m is None or not m.group(3).startswith("c") or m.group(1) != "multi":
        return None
    return int(m.group(3)[1:])


def is_half_single(name: str) -> bool:
    """Whether a well-formed shard name is a float16 single shard (``single-N.f16``)."""
    m = SHARD_NAME.match(name) if isinstance(name, str) else None
    return m is not None and m.group(1) == "single" and m.group(3) == "f16"


def checked_shard_path(shard_dir: str, shard_id, kind, name) -> str:
    """The path of a shard the catalogue names, after checking that the row is well-formed:
    ``name`` must be exactly the format's name for (kind, id), and the file, if present, a regular
    file (not a link) directly inside ``shard_dir``. Raises CorruptIndexError otherwise."""
    ok = (isinstance(shard_id, int) and not isinstance(shard_id, bool) and shard_id > 0 and kind in KINDS
          and isinstance(name, str)
          and name == shard_file_name(kind, shard_id, shard_codec_version(name), half=is_half_single(name)))
    if not ok:
        raise CorruptIndexError(
            f"the catalogue names a shard file {name!r} ({kind!r}, id {shard_id!r}) that is not a pagelens shard name",
            f"the index may have been tampered with; nothing was touched. {_REPAIR_HINT}")
    path = os.path.join(shard_dir, name)
    check_regular_or_absent(path)
    return path


def check_regular_or_absent(path: str) -> None:
    """An index file must be a plain file if it exists: a link could point anywhere."""
    _check_entry(path, stat.S_ISREG, "not a regular file", "an index's own files must be plain files")


def check_real_directory(path: str) -> None:
    """An index's own folder (shards/, derived/) must be a real folder, not a link out of the index."""
    _check_entry(path, stat.S_ISDIR, "not a folder", "an index's own folders must be real folders")


def _check_entry(path: str, is_kind, otherwise: str, rule: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not is_kind(mode):
        what = "a symbolic link" if stat.S_ISLNK(mode) else otherwise
        raise CorruptIndexError(f"{os.path.basename(path)} in the index folder is {what}",
                                f"{rule}; nothing was touched. {_REPAIR_HINT}")


def open_nofollow(path: str, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses to follow a symbolic link at ``path`` (CorruptIndexError)."""
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if os.path.islink(path):
            raise CorruptIndexError(f"{os.path.basename(path)} in the index folder is a symbolic link",
                                    f"nothing was touched. {_REPAIR_HINT}") from None
        raise exc


def row_bytes(kind: str, dim: int, dtype=None) -> int:
    return np.dtype(dtype or DTYPES[kind]).itemsize * dim


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: str, obj) -> None:
    """tmp -> fsync -> rename -> directory fsync: the file is either the old one or the new one."""
    tmp = f"{path}.tmp"
    try:  # a stale tmp (or a planted link) is removed, never written through
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with open(fd, "w", encoding="utf-8") as fh:
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

    def __init__(self, path: str, kind: str, dim: int, committed_rows: int, shard_id: int = 0, dtype=None):
        # ``dtype``/``dim``: the row layout (coded multi shards: uint8 records of ``dim`` bytes)
        self.path, self.kind, self.dim, self.shard_id = path, kind, dim, shard_id
        self.dtype = np.dtype(dtype or DTYPES[kind])
        self.row_bytes = row_bytes(kind, dim, self.dtype)
        fresh = not os.path.lexists(path)
        self._fh = open(open_nofollow(path, os.O_RDWR | os.O_CREAT), "r+b")
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


def cut_torn_tail(path: str, kind: str, dim: int, committed_rows: int, dtype=None) -> int:
    """Truncate ``path`` to its committed rows; return the bytes cut. Missing data is an error."""
    want = committed_rows * row_bytes(kind, dim, dtype)
    try:
        have = os.path.getsize(path)
    except FileNotFoundError:
        if want == 0:
            return 0
        raise CorruptIndexError(
            f"shard {os.path.basename(path)} is missing but the catalogue has {committed_rows} committed rows in it",
            _REPAIR_HINT,
        ) from None
    if have < want:
        raise CorruptIndexError(
            f"shard {os.path.basename(path)} holds {have} bytes but the catalogue committed {want}",
            "the file was truncated outside pagelens; restore it from a backup or rebuild the index",
        )
    if have > want:
        with open(open_nofollow(path, os.O_RDWR), "r+b") as fh:
            fh.truncate(want)
            fh.flush()
            os.fsync(fh.fileno())
    return have - want


def map_rows(path: str, kind: str, dim: int, rows: int, dtype=None) -> np.ndarray:
    """A read-only [rows, dim] view of the committed part of a shard (bytes past it are ignored)."""
    dtype = np.dtype(dtype or DTYPES[kind])
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
