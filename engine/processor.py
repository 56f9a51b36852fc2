"""Turn texts and page images into padded model inputs.

Qwen2_5_VLProcessor cannot be built without torchvision (its video processor needs it), so the
tokenizer and the image processor are driven here directly: the image pad is expanded to the
merged patch count, mm_token_type_ids is built from the token ids (the model silently falls back
to 1-D rope without it), and every batch is right-padded so that, with causal attention, no real
token ever sees padding.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from engine.errors import EngineError
from engine.prompts import IMAGE_PAD, image_prompt
from engine.types import PatchGrid

MAX_TEXT_TOKENS = 32768
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _image_processor_class() -> tuple[type, str]:
    """The torchvision-backed ("fast", bicubic + antialias, as jina ran) class when it imports."""
    try:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor, "fast"
    except Exception:  # torchvision missing or broken (e.g. an operator mismatch with torch)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil, "pil"


def checkpoint_max_pixels(preprocessor: dict[str, Any]) -> int:
    size = preprocessor.get("size") if isinstance(preprocessor.get("size"), dict) else {}
    value = preprocessor.get("max_pixels", size.get("longest_edge", size.get("max_pixels", 602112)))
    return int(value)


@dataclass
class InputProcessor:
    tokenizer: Any
    image_processor: Any
    kind: str  # "fast" or "pil"
    max_pixels: int
    image_token_id: int
    merge_size: int

    @classmethod
    def load(cls, folder: Path, *, max_pixels: int | None, image_token_id: int) -> "InputProcessor":
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        except Exception as exc:
            raise EngineError(f"the tokenizer in {folder} could not be loaded ({type(exc).__name__}: {exc})",
                              "The tokenizer files are damaged: download the checkpoint again.") from None
        if tokenizer.convert_tokens_to_ids(IMAGE_PAD) != image_token_id:
            raise EngineError(
                f"tokenizer id of {IMAGE_PAD} ({tokenizer.convert_tokens_to_ids(IMAGE_PAD)}) differs from "
                f"config image_token_id {image_token_id}",
                "The tokenizer does not belong to this model: download the checkpoint again.",
            )
        pre = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
        cap = checkpoint_max_pixels(pre) if max_pixels is None else int(max_pixels)
        min_pixels = int(pre.get("min_pixels", (pre.get("size") or {}).get("shortest_edge", 3136)))
        if cap < min_pixels:
            raise EngineError(f"max_pixels {cap} is below the checkpoint's min_pixels {min_pixels}",
                              f"Pass max_pixels >= {min_pixels} (the model default is {checkpoint_max_pixels(pre)}).")
        merge = int(pre.get("merge_size", 2))
        klass, kind = _image_processor_class()
        image_processor = klass(
            min_pixels=min_pixels,
            max_pixels=cap,
            patch_size=int(pre.get("patch_size", 14)),
            temporal_patch_size=int(pre.get("temporal_patch_size", 2)),
            merge_size=merge,
            image_mean=pre.get("image_mean", _CLIP_MEAN),
            image_std=pre.get("image_std", _CLIP_STD),
            do_convert_rgb=True,
        )
        return cls(tokenizer, image_processor, kind, cap, image_token_id, merge)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0  # pads are masked out; any valid id will do

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(text=list(prompts), truncation=True, max_length=MAX_TEXT_TOKENS)
        return [list(ids) for ids in enc["input_ids"]]

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each token id decoded on its own (a byte-level piece of a longer character may decode
        to U+FFFD): labels for per-token views such as heatmaps, one per multi-vector row."""
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def text_batch(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        input_ids, mask = self._pad(ids)
        return {"input_ids": input_ids, "attention_mask": mask}

    def image_batch(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        feats = self.image_processor(images=list(images), return_tensors="pt")
        grid = feats["image_grid_thw"]
        counts = (grid.prod(dim=-1) // (self.merge_size**2)).tolist()
        ids = self.tokenize([image_prompt(int(n)) for n in counts])
        for row, n in zip(ids, counts):
            if sum(1 for t in row if t == self.image_token_id) != n:
                raise EngineError("the image prompt tokenised with the wrong number of image tokens",
                                  "The tokenizer does not match this model: download the checkpoint again.")
        input_ids, mask = self._pad(ids)
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "pixel_values": feats["pixel_values"],
            "image_grid_thw": grid,
            # text 0, image 1: what the stock processor would hand over, needed for M-RoPE positions
            "mm_token_type_ids": (input_ids == self.image_token_id).to(torch.int32),
        }

    def grids(self, batch: dict[str, torch.Tensor]) -> list[PatchGrid | None]:
        """Per image of an ``image_batch``: where its merged patch tokens sit in the (right-padded,
        unpooled) token sequence. The processor flattens patches merge-block by merge-block,
        row-major over the merged grid, and the vision merger turns each block into one token, so
        token k of the image span covers merged cell (k // cols, k % cols). Anything that does not
        add up (a video-like temporal grid, a span that is not contiguous) gets None, never a guess."""
        out: list[PatchGrid | None] = []
        ids, thw = batch["input_ids"], batch["image_grid_thw"]
        for row in range(ids.shape[0]):
            t, h, w = (int(v) for v in thw[row].tolist())
            where = (ids[row] == self.image_token_id).nonzero().flatten()
            rows, cols = h // self.merge_size, w // self.merge_size
            n = int(where.numel())
            contiguous = n > 0 and int(where[-1]) - int(where[0]) + 1 == n
            if t != 1 or h % self.merge_size or w % self.merge_size or n != rows * cols or not contiguous:
                out.append(None)
                continue
            out.append(PatchGrid(offset=int(where[0]), rows=rows, cols=cols))
        return out

    def _pad(self, ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return input_ids, mask


def open_image(item: Any) -> Image.Image:
    """A PIL image as is, or a path opened lazily (size is known without decoding the pixels)."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (str, os.PathLike)):
        try:
            return Image.open(item)
        except FileNotFoundError:
            raise EngineError(f"image file not found: {item}", "Check the path.") from None
        except Exception as exc:
            raise EngineError(f"cannot read image {item} ({type(exc).__name__}: {exc})",
                              "Pass a readable image file (PNG, JPEG, ...) or a PIL image.") from None
    raise EngineError(f"cannot encode an object of type {type(item).__name__} as an image",
                      "Pass PIL images or image file paths.")


def rgb(image: Image.Image) -> Image.Image:
    try:
        return image if image.mode == "RGB" else image.convert("RGB")
    except Exception as exc:
        raise EngineError(f"cannot decode image ({type(exc).__name__}: {exc})",
                          "The image file is damaged or in an unsupported format.") from None
