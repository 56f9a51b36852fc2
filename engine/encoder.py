"""Encoder: role-named encode calls over one private, length-grouped batch loop."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from engine import prompts
from engine.config import EmbedderConfig
from engine.errors import EngineError
from engine.network import JinaEmbeddingNet, embed
from engine.processor import InputProcessor, open_image, rgb
from engine.types import Embedding, truncate_single

ENGINE_VERSION = "pagelens-engine/1"
log = logging.getLogger("engine")


def unknown_task(task: Any, tasks: Sequence[str]) -> EngineError:
    return EngineError(f"unknown task {task!r}", f"Choose one of: {', '.join(tasks)}.")


class Encoder:
    """jina-embeddings-v4 with one active task adapter; switch tasks with ``set_task``."""

    def __init__(
        self,
        *,
        net: JinaEmbeddingNet,
        adapters: Any,  # peft.PeftModel wrapping ``net`` (None for a merged copy)
        processor: InputProcessor,
        config: EmbedderConfig,
        model: str,
        revision: str,
        task: str,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self._net = net
        self._adapters = adapters
        self._processor = processor
        self._config = config
        self._model = model
        self._revision = revision
        self._device = device
        self._dtype = dtype
        self.tasks: tuple[str, ...] = config.task_names
        self._task = ""
        self.set_task(task)

    # -- task -----------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self._task

    @task.setter
    def task(self, task: str) -> None:
        self.set_task(task)

    def set_task(self, task: str) -> None:
        """Switch the active LoRA adapter; the backbone stays where it is."""
        if task not in self.tasks:
            raise unknown_task(task, self.tasks)
        if self._adapters is not None and task != self._task:
            self._adapters.set_adapter(task)
            for p in self._adapters.parameters():
                p.requires_grad_(False)
        self._task = task

    # -- facts ----------------------------------------------------------------------------------
    @property
    def single_dim(self) -> int:
        return self._config.hidden_size

    @property
    def multi_dim(self) -> int:
        return self._config.multi_vector_dim

    @property
    def max_pixels(self) -> int:
        return self._processor.max_pixels

    @property
    def matryoshka_dims(self) -> tuple[int, ...]:
        return self._config.matryoshka_dims

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def dtype(self) -> str:
        return str(self._dtype).removeprefix("torch.")

    @property
    def image_processor(self) -> str:
        return self._processor.kind

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "model": self._model,
            "revision": self._revision,
            "task": self._task,
            "single_dim": self.single_dim,
            "multi_dim": self.multi_dim,
            "matryoshka_dims": list(self.matryoshka_dims),
            "max_pixels": self.max_pixels,
            "image_processor": self.image_processor,
            "dtype": self.dtype,
            "device": self.device,
            "prefixes": prompts.prefixes(self._task),
            "engine": ENGINE_VERSION,
        }

    def truncate(self, vectors: Any, dim: int) -> np.ndarray:
        """Matryoshka-truncate single vectors to one of this checkpoint's ``matryoshka_dims``."""
        try:
            return truncate_single(vectors, dim, allowed=self.matryoshka_dims)
        except ValueError as exc:
            raise EngineError(str(exc), f"Use one of {list(self.matryoshka_dims)}.") from None

    def __repr__(self) -> str:
        return f"Encoder(model={self._model!r}, task={self._task!r}, device={self.device}, dtype={self.dtype})"

    # -- encoding -------------------------------------------------------------------------------
    def encode_queries(self, texts: Sequence[str], *, batch_size: int = 8,
                       show_progress_bar: bool | None = None) -> list[Embedding]:
        return self._encode_texts(texts, prompts.QUERY, batch_size, show_progress_bar)

    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 8,
                        show_progress_bar: bool | None = None) -> list[Embedding]:
        return self._encode_texts(texts, prompts.PASSAGE, batch_size, show_progress_bar)

    def query_tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """The tokens ``encode_queries`` embeds for each text (its prompt prefix included), as
        strings: one per row of that query's multi-vector, in order."""
        return self._text_tokens(texts, prompts.QUERY)

    def passage_tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """As ``query_tokens``, for ``encode_passages``."""
        return self._text_tokens(texts, prompts.PASSAGE)

    def _text_tokens(self, texts: Sequence[str], role: str) -> list[list[str]]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise EngineError("texts must be a list of strings", "Wrap a single text in a list: [text].")
        if len(texts) == 0:
            return []
        ids = self._processor.tokenize([prompts.text_prompt(self._task, role, t) for t in texts])
        return [self._processor.token_strings(row) for row in ids]

    def encode_images(self, images: Sequence[Any], *, batch_size: int = 8,
                      show_progress_bar: bool | None = None) -> list[Embedding]:
        """PIL images or image file paths; paths are decoded one batch at a time."""
        if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
            raise EngineError("images must be a list of PIL images or paths", "Wrap a single image in a list.")
        opened = [open_image(item) for item in images]
        sizes = [im.width * im.height for im in opened]

        def make(idx: list[int]) -> dict[str, torch.Tensor]:
            return self._processor.image_batch([rgb(opened[i]) for i in idx])

        return self._run(sizes, make, True, batch_size, show_progress_bar, "images")

    def _encode_texts(self, texts: Sequence[str], role: str, batch_size: int, show: bool | None) -> list[Embedding]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise EngineError("texts must be a list of strings", "Wrap a single text in a list: [text].")
        ids = [] if len(texts) == 0 else self._processor.tokenize([prompts.text_prompt(self._task, role, t) for t in texts])

        def make(idx: list[int]) -> dict[str, torch.Tensor]:
            return self._processor.text_batch([ids[i] for i in idx])

        return self._run([len(r) for r in ids], make, False, batch_size, show, role + " texts")

    def _run(self, lengths: list[int], make_batch: Callable[[list[int]], dict[str, torch.Tensor]],
             is_image: bool, batch_size: int, show: bool | None, what: str) -> list[Embedding]:
        """The one batch loop: longest first so memory peaks early, order restored at the end."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise EngineError(f"batch_size must be a positive integer, got {batch_size!r}", "Pass batch_size >= 1.")
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        results: list[Embedding | None] = [None] * len(lengths)
        if show is None:
            show = log.isEnabledFor(logging.INFO)
        from tqdm.auto import tqdm

        with tqdm(total=len(order), desc=f"encoding {what}", unit="input", file=sys.stderr,
                  disable=not show) as bar, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = {k: v.to(self._device) for k, v in make_batch(idx).items()}
                single, multi = embed(self._net, batch, self._config, is_image)
                single = single.cpu().numpy()
                multi = multi.cpu().numpy()
                lens = batch["attention_mask"].sum(dim=1).tolist()
                # rows are right-padded and every real token is kept, so a token's place in the batch
                # row is its place in the page's multi-vector: the grid offsets carry over as they are
                grids = self._processor.grids(batch) if is_image else [None] * len(idx)
                for row, i in enumerate(idx):
                    results[i] = Embedding(single=single[row].copy(), multi=multi[row, : int(lens[row])].copy(),
                                           grid=grids[row])
                bar.update(len(idx))
        return results  # type: ignore[return-value]
