"""The manifest (format version + encoder identity), the writer lock, and the identity check."""

from __future__ import annotations

import fcntl
import json
import os

from indexer.errors import (
    CorruptIndexError, EncoderMismatchError, IndexFormatError, IndexLockedError, NotAnIndexError,
)
from indexer.shards import check_regular_or_absent, open_nofollow
from indexer.sources import display_path

FORMAT_NAME = "pagelens-index"
FORMAT_VERSION = 3  # 3: single vectors may be stored narrower (Matryoshka) or in fp16 (docs/index-format.md)
CODEC_FORMAT_VERSION = 2  # 2: multi-vectors may be stored coded or pooled (docs/index-format.md, "Compression")
PLAIN_FORMAT_VERSION = 1  # an fp16, unpooled index is still written as version 1: older pagelens reads it
SINGLE_PRECISIONS = ("fp32", "fp16")  # how single vectors are stored (indexer.single_store)
COMPRESSIONS = ("fp16", "int8", "residual-1", "residual-2", "residual-4", "pq-16", "pq-32")  # indexer.codecs.CODECS
MAX_POOL_FACTOR = 64
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "writer.lock"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few hundred bytes: a huge one is not ours
MAX_DIM = 65536
DERIVED_DIR = "derived"  # reserved for search artefacts (FAISS, token candidates); never touched here
# The same checkpoint may sit at another path or run on another device or dtype: not a mismatch.
IGNORED_IDENTITY_KEYS = frozenset({"model", "device", "dtype", "engine"})


def _describe(identity: dict | None) -> str:
    if identity is None:
        return "no model (embeddings supplied by the user)"
    name = identity.get("model") or identity.get("name") or "an unnamed encoder"
    extra = [f"{k}={identity[k]}" for k in ("revision", "task", "single_dim") if k in identity]
    return f"{name} ({', '.join(extra)})" if extra else str(name)


def read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isdir(directory):
        raise NotAnIndexError(f"{display_path(directory)} does not exist", "create it with `pagelens index`")
    if not os.path.lexists(path):
        raise NotAnIndexError(f"{display_path(directory)} is not a pagelens index (no {MANIFEST_NAME})",
                              "check the --index directory, or create an index there with `pagelens index`")
    check_regular_or_absent(path)
    try:
        fd = open_nofollow(path, os.O_RDONLY)
        with open(fd, encoding="utf-8") as fh:
            text = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(text) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(text)
    except (OSError, ValueError, RecursionError) as exc:
        raise CorruptIndexError(f"cannot read {MANIFEST_NAME}: {exc}", "restore it from a backup") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise NotAnIndexError(f"{display_path(directory)} is not a pagelens index", "check the --index directory")
    version = manifest.get("format_version")
    if not _is_int(version) or version < 1:
        raise CorruptIndexError(f"{MANIFEST_NAME} has no valid format_version ({version!r})", "restore it from a backup")
    if version > FORMAT_VERSION:
        raise IndexFormatError(
            f"the index has format version {version}; this pagelens reads up to {FORMAT_VERSION}",
            "upgrade pagelens to open it")
    for key in ("single_dim", "multi_dim"):
        if not _is_int(manifest.get(key)) or not 1 <= manifest[key] <= MAX_DIM:
            raise CorruptIndexError(f"{MANIFEST_NAME} has an invalid {key} ({manifest.get(key)!r})",
                                    "restore it from a backup")
    if manifest.get("identity") is not None and not isinstance(manifest["identity"], dict):
        raise CorruptIndexError(f"{MANIFEST_NAME} has an invalid identity", "restore it from a backup")
    if not isinstance(manifest.get("settings") or {}, dict):
        raise CorruptIndexError(f"{MANIFEST_NAME} has invalid settings", "restore it from a backup")
    compression, pool_factor = manifest.get("compression", "fp16"), manifest.get("pool_factor", 1)
    if not isinstance(compression, str) or compression not in COMPRESSIONS:
        raise CorruptIndexError(f"{MANIFEST_NAME} names an unknown compression {str(compression)[:40]!r}",
                                f"this pagelens knows {', '.join(COMPRESSIONS)}; restore the file from a backup "
                                "or upgrade pagelens")
    if not _is_int(pool_factor) or not 1 <= pool_factor <= MAX_POOL_FACTOR:
        raise CorruptIndexError(f"{MANIFEST_NAME} has an invalid pool_factor ({str(pool_factor)[:40]!r})",
                                f"it must be an integer 1..{MAX_POOL_FACTOR}; restore the file from a backup")
    if version < CODEC_FORMAT_VERSION and (compression, pool_factor) != ("fp16", 1):
        raise CorruptIndexError(f"{MANIFEST_NAME} is format version {version} but names compression {compression} "
                                f"with pool factor {pool_factor}, which need version {CODEC_FORMAT_VERSION}",
                                "restore it from a backup")
    _check_single_settings(manifest, version)
    if "index_id" in manifest and not (isinstance(manifest["index_id"], str) and len(manifest["index_id"]) <= 64):
        raise CorruptIndexError(f"{MANIFEST_NAME} has an invalid index_id", "restore it from a backup")
    return manifest


def _check_single_settings(manifest: dict, version: int) -> None:
    """``single_width`` (absent: the full ``single_dim``) and ``single_precision`` (absent: fp32)
    are data like everything else in the file: an integer 1..single_dim and a known name."""
    width = manifest.get("single_width", manifest["single_dim"])
    precision = manifest.get("single_precision", "fp32")
    if not _is_int(width) or not 1 <= width <= manifest["single_dim"]:
        raise CorruptIndexError(f"{MANIFEST_NAME} has an invalid single_width ({str(width)[:40]!r})",
                                f"it must be an integer 1..single_dim ({manifest['single_dim']}); restore the file "
                                "from a backup")
    if not isinstance(precision, str) or precision not in SINGLE_PRECISIONS:
        raise CorruptIndexError(f"{MANIFEST_NAME} names an unknown single_precision {str(precision)[:40]!r}",
                                f"this pagelens knows {', '.join(SINGLE_PRECISIONS)}; restore the file from a backup "
                                "or upgrade pagelens")
    if version < FORMAT_VERSION and (width, precision) != (manifest["single_dim"], "fp32"):
        raise CorruptIndexError(f"{MANIFEST_NAME} is format version {version} but stores single vectors at width "
                                f"{width} in {precision}, which need version {FORMAT_VERSION}",
                                "restore it from a backup")


def format_version_for(compression: str, pool_factor: int, *, single_narrowed: bool = False) -> int:
    """The lowest format version that describes an index stored this way (older readers refuse
    coded shards, or single vectors narrower or in fp16, by the version, not by a confusing error).
    ``single_narrowed``: single vectors are not stored fp32 at the full width."""
    if single_narrowed:
        return FORMAT_VERSION
    return PLAIN_FORMAT_VERSION if (compression, pool_factor) == ("fp16", 1) else CODEC_FORMAT_VERSION


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def take_lock(directory: str) -> int:
    fd = open_nofollow(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise IndexLockedError(f"{display_path(directory)} is being written by another process",
                               "wait for it to finish; readers can still search meanwhile") from None
    return fd


def check_identity(mine: dict | None, identity: dict | None) -> None:
    """Raise EncoderMismatchError, naming both, unless ``identity`` is the encoder of the index."""
    if mine is None:
        raise EncoderMismatchError(
            f"this index holds embeddings supplied by the user (no model); it cannot take pages "
            f"encoded by {_describe(identity)}",
            "add embeddings with add_embeddings, or index with a model into a new --index directory")
    if identity is None:
        raise EncoderMismatchError(f"the index was built with {_describe(mine)}; no encoder identity was given")
    a = {k: v for k, v in mine.items() if k not in IGNORED_IDENTITY_KEYS}
    b = {k: v for k, v in identity.items() if k not in IGNORED_IDENTITY_KEYS}
    if a != b:
        diff = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        raise EncoderMismatchError(
            f"the index was built with {_describe(mine)} but the encoder is {_describe(identity)} "
            f"(differs in {'; '.join(diff[:4])})",
            "use the same model, task and settings as the index, or index into a new --index directory")

