"""The network: stock Qwen2.5-VL inner model plus jina's multi-vector projector, and the pooling.

The generation head is dropped (tied to the embeddings, and an embedder never needs vocab-sized
logits). The projector sits at the top level so the adapter keys
``base_model.model.multi_vector_projector.lora_*`` line up with a peft wrapper around this module.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch
from safetensors import safe_open
from torch import nn

from engine.checkpoint import CheckpointFiles
from engine.config import EmbedderConfig
from engine.errors import EngineError

log = logging.getLogger(__name__)
_PROJECTOR_KEYS = ("multi_vector_projector.weight", "multi_vector_projector.bias")


class JinaEmbeddingNet(nn.Module):
    def __init__(self, backbone: nn.Module, projector: nn.Linear):
        super().__init__()
        self.model = backbone  # Qwen2_5_VLModel: .visual and .language_model
        self.multi_vector_projector = projector


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """The library never prints: silence transformers' loading bar and its expected reports
    (unused multi_vector_projector.* loaded separately, remote-code config names), then restore."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_network(files: CheckpointFiles, cfg: EmbedderConfig, dtype: torch.dtype,
                 storage: torch.dtype | None = None) -> JinaEmbeddingNet:
    """Load base weights with the stock class (it remaps the legacy key layout itself).

    ``dtype`` is the arithmetic; ``storage`` (default: the same) is what the large weight matrices
    are held in. With float32 arithmetic over a bf16 checkpoint they stay bf16, as loaded (no
    float32 copy of the model is ever made), and are converted block by block at each matmul.
    """
    storage = dtype if storage is None else storage
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    raw = dict(cfg.raw)
    raw["model_type"] = "qwen2_5_vl"  # jina's remote-code type name means nothing to the stock class
    raw.pop("auto_map", None)
    try:
        qcfg = Qwen2_5_VLConfig.from_dict(raw)
    except Exception as exc:
        raise EngineError(f"config.json in {files.folder} is not a valid Qwen2.5-VL config ({exc})",
                          "Download the checkpoint again.") from None
    qcfg.tie_word_embeddings = True
    try:
        full, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(files.folder), config=qcfg, dtype=storage, attn_implementation="sdpa",
            local_files_only=True, use_safetensors=True, output_loading_info=True,
        )
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"the weights in {files.folder} could not be loaded ({type(exc).__name__}: {exc})",
                          "A shard is damaged or does not match config.json: download the checkpoint again.") from None
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("lm_head.")]
    if missing or info.get("mismatched_keys"):
        bad = missing or [str(m) for m in info["mismatched_keys"]]
        raise EngineError(f"{len(bad)} base weights are missing or mis-shaped in {files.folder}, e.g. {bad[:3]}",
                          "The checkpoint is incomplete or not jina-embeddings-v4: download it again.")
    extra = [k for k in info.get("unexpected_keys", []) if k not in _PROJECTOR_KEYS]
    if extra:
        log.warning("ignoring %d unexpected weights, e.g. %s", len(extra), extra[:3])
    backbone = full.model
    del full
    if storage != dtype:
        from engine.compute import keep_weights_as_stored

        keep_weights_as_stored(backbone, dtype)
    projector = _load_projector(files, cfg, dtype)
    net = JinaEmbeddingNet(backbone, projector)
    net.eval()
    return net


def _load_projector(files: CheckpointFiles, cfg: EmbedderConfig, dtype: torch.dtype) -> nn.Linear:
    where = files.key_to_shard()
    tensors = {}
    for key in _PROJECTOR_KEYS:
        with safe_open(str(where[key]), framework="pt") as fh:
            tensors[key] = fh.get_tensor(key)
    weight, bias = tensors[_PROJECTOR_KEYS[0]], tensors[_PROJECTOR_KEYS[1]]
    expected = (cfg.multi_vector_dim, cfg.hidden_size)
    if tuple(weight.shape) != expected or tuple(bias.shape) != (cfg.multi_vector_dim,):
        raise EngineError(f"multi_vector_projector has shape {tuple(weight.shape)}, expected {expected}",
                          "config.json and the weights disagree: download the checkpoint again.")
    projector = nn.Linear(cfg.hidden_size, cfg.multi_vector_dim, bias=True, dtype=dtype)
    with torch.no_grad():
        projector.weight.copy_(weight)
        projector.bias.copy_(bias)
    return projector


def hidden_states(net: JinaEmbeddingNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Last hidden states (after the final norm) [B, L, H]."""
    out = net.model(**batch, use_cache=False, return_dict=True)
    return out.last_hidden_state


def pool_mask(batch: dict[str, torch.Tensor], cfg: EmbedderConfig, is_image: bool) -> torch.Tensor:
    """[B, L] float weights of the tokens averaged into the single vector."""
    mask = batch["attention_mask"].to(torch.float32)
    if not is_image:
        return mask
    ids = batch["input_ids"]
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    big = ids.shape[1]
    start = torch.where(ids == cfg.vision_start_token_id, pos, big).min(dim=1, keepdim=True).values
    end = torch.where(ids == cfg.vision_end_token_id, pos, -1).max(dim=1, keepdim=True).values
    if bool((start >= big).any()) or bool((end < 0).any()):
        raise EngineError("an image sequence has no <|vision_start|> .. <|vision_end|> span",
                          "The tokenizer does not match this model: download the checkpoint again.")
    return ((pos >= start) & (pos <= end)).to(torch.float32) * mask


def embed(net: JinaEmbeddingNet, batch: dict[str, torch.Tensor], cfg: EmbedderConfig, is_image: bool):
    """Single vectors [B, H] and multi-vectors [B, L, D], float32, L2-normalised; mask applies."""
    hidden = hidden_states(net, batch)
    weights = pool_mask(batch, cfg, is_image).to(hidden.device)
    h32 = hidden.to(torch.float32)
    single = (h32 * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)
    single = nn.functional.normalize(single, dim=-1)
    multi = net.multi_vector_projector(hidden).to(torch.float32)
    multi = nn.functional.normalize(multi, dim=-1)
    return single, multi
