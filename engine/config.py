"""The embedding fields of a jina-embeddings-v4 config.json, in flat (legacy) or nested style.

Qwen2.5-VL configs were saved flat (text fields at the top level) before transformers 4.52 and
nested (a ``text_config`` block) after; the jina files may carry either or both. Nested wins when
both are present, as it does in transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError

DEFAULT_TASKS = ("retrieval", "text-matching", "code")


@dataclass(frozen=True)
class EmbedderConfig:
    """What the encoder needs to know beyond the stock Qwen2.5-VL config."""

    raw: dict[str, Any]
    hidden_size: int
    task_names: tuple[str, ...]
    matryoshka_dims: tuple[int, ...]
    multi_vector_dim: int
    pool_strategy: str
    image_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int

    @property
    def style(self) -> str:
        return "nested" if isinstance(self.raw.get("text_config"), dict) else "flat"


def read_config(path: Path) -> EmbedderConfig:
    """Parse config.json; any missing or malformed field is an EngineError naming it."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineError(
            f"config.json is missing from {path.parent}",
            "Pass a folder holding the complete jina-embeddings-v4 checkpoint (config.json, weights, "
            "adapters/, tokenizer and preprocessor files).",
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(
            f"config.json in {path.parent} is not valid JSON ({exc})",
            "The file is corrupt or truncated: download the checkpoint again.",
        ) from None
    if not isinstance(raw, dict):
        raise EngineError(f"config.json in {path.parent} is not a JSON object", "Download the checkpoint again.")
    return parse_config(raw, where=str(path))


def parse_config(raw: dict[str, Any], *, where: str = "config.json") -> EmbedderConfig:
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw
    hidden = text.get("hidden_size", raw.get("hidden_size"))
    tasks = raw.get("task_names", list(DEFAULT_TASKS))
    dims = raw.get("matryoshka_dims", [hidden] if hidden else None)
    fields = {
        "hidden_size": hidden,
        "multi_vector_projector_dim": raw.get("multi_vector_projector_dim", 128),
        "image_token_id": raw.get("image_token_id", text.get("image_token_id")),
        "vision_start_token_id": raw.get("vision_start_token_id", text.get("vision_start_token_id")),
        "vision_end_token_id": raw.get("vision_end_token_id", text.get("vision_end_token_id")),
    }
    for name, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise EngineError(
                f"{where}: field {name!r} is missing or not a positive integer (got {value!r})",
                "This does not look like a jina-embeddings-v4 config; check the model path or download "
                "the checkpoint again.",
            )
    if not (isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks)):
        raise EngineError(f"{where}: 'task_names' must be a non-empty list of names, got {tasks!r}",
                          "Download the checkpoint again.")
    if not (isinstance(dims, list) and dims and all(isinstance(d, int) and 0 < d <= hidden for d in dims)):
        raise EngineError(
            f"{where}: 'matryoshka_dims' must be a list of widths up to hidden_size {hidden}, got {dims!r}",
            "Download the checkpoint again.",
        )
    pool = raw.get("single_vector_pool_strategy", "mean")
    if pool != "mean":
        raise EngineError(f"{where}: single_vector_pool_strategy {pool!r} is not supported",
                          "Only 'mean' pooling (the published jina-embeddings-v4 setting) is implemented.")
    return EmbedderConfig(
        raw=raw,
        hidden_size=hidden,
        task_names=tuple(tasks),
        matryoshka_dims=tuple(sorted(dims)),
        multi_vector_dim=fields["multi_vector_projector_dim"],
        pool_strategy=pool,
        image_token_id=fields["image_token_id"],
        vision_start_token_id=fields["vision_start_token_id"],
        vision_end_token_id=fields["vision_end_token_id"],
    )
