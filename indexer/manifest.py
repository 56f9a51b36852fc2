"""The manifest (format version + encoder identity), the writer lock, and the identity check."""

from __future__ import annotations

import fcntl
import json
import os

from indexer.errors import (
    CorruptIndexError, EncoderMismatchError, IndexFormatError, IndexLockedError, NotAnIndexError,
)
from indexer.sources import display_path

FORMAT_NAME = "pagelens-index"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "writer.lock"
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
    if not os.path.exists(path):
        raise NotAnIndexError(f"{display_path(directory)} is not a pagelens index (no {MANIFEST_NAME})",
                              "check the --index directory, or create an index there with `pagelens index`")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CorruptIndexError(f"cannot read {MANIFEST_NAME}: {exc}", "restore it from a backup") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise NotAnIndexError(f"{display_path(directory)} is not a pagelens index", "check the --index directory")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise IndexFormatError(
            f"the index has format version {manifest['format_version']}; this pagelens reads up to "
            f"{FORMAT_VERSION}", "upgrade pagelens to open it")
    return manifest


def take_lock(directory: str) -> int:
    fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
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

