"""Find a jina-embeddings-v4 checkpoint (repo id or folder), check its files, fingerprint it.

Everything here is cheap and torch-free: safetensors headers are parsed by hand so a truncated or
renamed file is caught before a multi-GB load, and the fingerprint reads headers plus the first and
last MiB of each weight file, never the whole 8 GB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineError

DEFAULT_MODEL = "jinaai/jina-embeddings-v4"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MIB = 1 << 20
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "adapters/*"]


@dataclass(frozen=True)
class CheckpointRef:
    """Where the files are and how to name them in an identity."""

    folder: Path
    model: str  # repo id, or the absolute folder
    snapshot: str | None  # HF commit hash when resolved through the cache


@dataclass
class CheckpointFiles:
    folder: Path
    config: Path
    index: Path | None
    shards: list[Path]
    adapter_config: Path
    adapter_weights: Path
    preprocessor: Path
    tokenizer_files: list[Path]
    headers: dict[Path, dict[str, Any]] = field(default_factory=dict)

    def key_to_shard(self) -> dict[str, Path]:
        return {k: p for p in self.shards for k in self.headers[p] if k != "__metadata__"}


def _offline_hint(model: str) -> str:
    return (
        f"Download it once on a machine with internet (`hf download {model}`), or copy the model folder "
        "here and pass its path as the model, or point HF_HOME at a Hugging Face cache that holds it."
    )


def resolve(model: str) -> CheckpointRef:
    """A local folder is used as is; anything shaped like owner/name goes through the HF cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return CheckpointRef(path.resolve(), str(path.resolve()), None)
    if path.exists():
        raise EngineError(f"model path {model!r} is a file, not a folder",
                          "Pass the checkpoint folder (the one holding config.json) or a repo id.")
    if not _REPO_ID.match(model) or model.startswith((".", "/", "~")):
        raise EngineError(f"model folder {model!r} does not exist",
                          f"Pass an existing checkpoint folder or a Hugging Face repo id such as {DEFAULT_MODEL!r}.")
    return _resolve_repo(model)


def _cache_dir() -> str | None:
    """Read the cache location at call time: huggingface_hub fixes it once, at its import."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _resolve_repo(repo_id: str) -> CheckpointRef:
    from huggingface_hub import constants, snapshot_download

    cache = _cache_dir()
    try:
        folder = snapshot_download(repo_id, cache_dir=cache, local_files_only=True, allow_patterns=_DOWNLOAD_PATTERNS)
    except Exception:  # not in the cache (or the cache is unreadable): maybe download
        folder = None
    if folder is None:
        offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        if offline:
            raise EngineError(f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                              _offline_hint(repo_id))
        try:
            folder = snapshot_download(repo_id, cache_dir=cache, allow_patterns=_DOWNLOAD_PATTERNS)
        except Exception as exc:
            raise EngineError(f"model {repo_id!r} is not available offline and could not be downloaded "
                              f"({type(exc).__name__})", _offline_hint(repo_id)) from None
    folder = Path(folder)
    snapshot = folder.name if folder.parent.name == "snapshots" else None
    return CheckpointRef(folder, repo_id, snapshot)


def _missing(path: Path, what: str) -> EngineError:
    return EngineError(f"{what} is missing: {path}",
                       "The checkpoint folder is incomplete: download it again or copy the missing file.")


def _corrupt(path: Path, why: str) -> EngineError:
    return EngineError(f"{path.name} in {path.parent} is corrupt: {why}",
                       "The file is damaged or truncated: download the checkpoint again.")


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and sanity-check a safetensors header; checks the file is long enough for its tensors."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _corrupt(path, "shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 * _MIB):
                raise _corrupt(path, "header length is out of range (not a safetensors file?)")
            header = json.loads(fh.read(n).decode("utf-8"))
    except FileNotFoundError:
        raise _missing(path, "weight file") from None
    except EngineError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"unreadable header ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise _corrupt(path, f"bad header entry for {key!r}") from None
    if 8 + n + end > size:
        raise _corrupt(path, f"file is truncated ({size} bytes, header needs {8 + n + end})")
    return header


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _missing(path, what) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"not valid JSON ({exc})") from None


def inspect(folder: Path) -> CheckpointFiles:
    """Check the published jina-v4 layout; every gap becomes an EngineError naming the file."""
    config = folder / "config.json"
    if not config.is_file():
        raise _missing(config, "config.json")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = _json(index, "weight index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise _corrupt(index, "no 'weight_map'")
        shards = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / "model.safetensors").exists():
        weight_map, shards, index = None, [folder / "model.safetensors"], None
    else:
        raise EngineError(f"no weights in {folder} (neither model.safetensors.index.json nor model.safetensors)",
                          "Only safetensors checkpoints are supported; download the complete checkpoint.")
    headers = {p: read_safetensors_header(p) for p in shards}
    if weight_map is not None:
        for key, name in weight_map.items():
            if key not in headers[folder / name]:
                raise _corrupt(folder / name, f"tensor {key!r} listed in the index is not in this shard")
    keys = {k for h in headers.values() for k in h}
    for needed in ("multi_vector_projector.weight", "multi_vector_projector.bias"):
        if needed not in keys:
            raise EngineError(f"the weights in {folder} have no {needed!r}",
                              "This is not a jina-embeddings-v4 checkpoint (a merged vLLM variant has no "
                              "multi-vector head); use jinaai/jina-embeddings-v4.")
    adapter_config = folder / "adapters" / "adapter_config.json"
    adapter_weights = folder / "adapters" / "adapter_model.safetensors"
    if not isinstance(_json(adapter_config, "adapter config"), dict):
        raise _corrupt(adapter_config, "not a JSON object")
    headers[adapter_weights] = read_safetensors_header(adapter_weights)
    preprocessor = folder / "preprocessor_config.json"
    if not isinstance(_json(preprocessor, "preprocessor_config.json"), dict):
        raise _corrupt(preprocessor, "not a JSON object")
    tok_files = [folder / n for n in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
                 if (folder / n).is_file()]
    if not ((folder / "tokenizer.json").is_file() or {"vocab.json", "merges.txt"} <= {p.name for p in tok_files}):
        raise _missing(folder / "tokenizer.json", "tokenizer (tokenizer.json or vocab.json + merges.txt)")
    for p in tok_files:
        if p.suffix == ".json":
            _json(p, p.name)
    return CheckpointFiles(folder, config, index, shards, adapter_config, adapter_weights, preprocessor,
                           tok_files, headers)


def fingerprint(files: CheckpointFiles) -> str:
    """sha256 over small files whole and over each weight file's name, size, header, first/last MiB."""
    h = hashlib.sha256()
    small = [files.config, files.adapter_config, files.preprocessor, *files.tokenizer_files]
    if files.index is not None:
        small.append(files.index)
    for p in sorted(small):
        h.update(p.relative_to(files.folder).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
    for p in sorted([*files.shards, files.adapter_weights]):
        size = p.stat().st_size
        h.update(f"{p.relative_to(files.folder).as_posix()}\0{size}\0".encode())
        with p.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            h.update(fh.read(n))
            fh.seek(0)
            h.update(fh.read(_MIB))
            fh.seek(max(0, size - _MIB))
            h.update(fh.read(_MIB))
    return "sha256:" + h.hexdigest()
