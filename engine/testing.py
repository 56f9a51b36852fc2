"""Random jina-embeddings-v4 checkpoints for tests and benchmarks: the tiny one and the real size.

The files follow the published layout exactly (legacy base keys in two shards, a top-level
multi_vector_projector, one adapter file holding all three tasks), so a random checkpoint loads
through the very same ``load_encoder`` as the real one. Weights come from a seeded numpy generator
and are streamed into safetensors files in row chunks (no torch import, deterministic for a seed,
peak memory a few MB above the largest chunk whatever the geometry).

``TINY`` (the test checkpoint): text 2 layers, hidden 64, 4 heads (head_dim 16), 2 KV heads; vision
depth 2, hidden 32, 2 heads, out_hidden 64; multi_vector_projector_dim 128 (as the real model);
matryoshka [16, 32, 64]; LoRA r=4, alpha=8 (scaling 2, so a scaling bug shows); weights float32
(``weights_dtype="bfloat16"`` stores the same values rounded, as the published files are stored);
max_pixels 100352 (<= 128 merged image tokens per image). Writes in well under a second.

``REAL`` (``write_real_size_checkpoint``): every tensor at the published shape (3.75B base parameters
plus r=32 LoRA for three tasks, 0.18B), bf16, std 0.02 (keeps bf16 activations finite). Speed and
memory do not depend on the values, so it measures the real model's cost; about 7.4 GiB on disk and
a few minutes to write. Its tokenizer is the tiny trained BPE (ids far below the real vocabulary of
151,936 rows, which the embedding table still has): token counts of texts differ from Qwen's own.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

TASK_NAMES = ("retrieval", "text-matching", "code")
MATRYOSHKA_DIMS = (16, 32, 64)
PROJECTOR_DIM = 128
LORA_R, LORA_ALPHA = 4, 8
MAX_PIXELS = 100352  # 128 * 28 * 28
MIN_PIXELS = 3136

# Qwen's special tokens, in Qwen's own order, appended after the trained byte-level vocabulary.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
_QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_CORPUS = (
    "Query: what is the revenue in the second quarter?",
    "Passage: The annual report shows revenue growth of twelve percent.",
    "Describe the image. A chart with bars, a table of numbers and a title.",
    "def encode(texts): return [model(t) for t in texts]  # code search",
    "Invoices, receipts, scanned contracts and slides are documents too.",
    "The quick brown fox jumps over the lazy dog 0123456789 times.",
)
TEXT = dict(hidden=64, inter=128, layers=2, heads=4, kv_heads=2)
VISION = dict(depth=2, hidden=32, inter=64, heads=2, out=64, patch=14, temporal=2, merge=2)
_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_CHUNK_VALUES = 1 << 22  # values drawn per chunk while streaming a tensor (16 MB of float32)


@dataclass(frozen=True)
class Geometry:
    """Every size a checkpoint writer needs; ``TINY`` and ``REAL`` are the two in use."""

    text: dict
    vision: dict
    vocab_size: int | None  # None: the tokenizer's own size (every row is a real token)
    fullatt_blocks: tuple[int, ...]
    mrope_section: tuple[int, int, int]
    matryoshka_dims: tuple[int, ...]
    lora_r: int
    lora_alpha: int
    max_pixels: int
    weights_dtype: str = "float32"  # "float32" or "bfloat16", for base and adapter files alike
    std: float = 0.08
    lora_std: float = 0.1
    second_shard_from_layer: int | None = None  # None: only the last layer goes to shard 2
    fast_random: bool = False  # draw float32 normals directly (values then differ from float64 draws)
    extra: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.text["hidden"] // self.text["heads"]


TINY = Geometry(
    text=TEXT, vision=VISION, vocab_size=None, fullatt_blocks=(1,), mrope_section=(2, 3, 3),
    matryoshka_dims=MATRYOSHKA_DIMS, lora_r=LORA_R, lora_alpha=LORA_ALPHA, max_pixels=MAX_PIXELS,
)
# The published geometry (docs: jina-v4 reference, sections 1 and 3).
REAL = Geometry(
    text=dict(hidden=2048, inter=11008, layers=36, heads=16, kv_heads=2),
    vision=dict(depth=32, hidden=1280, inter=3420, heads=16, out=2048, patch=14, temporal=2, merge=2),
    vocab_size=151936, fullatt_blocks=(7, 15, 23, 31), mrope_section=(16, 24, 24),
    matryoshka_dims=(128, 256, 512, 1024, 2048), lora_r=32, lora_alpha=32, max_pixels=602112,
    weights_dtype="bfloat16", std=0.02, lora_std=0.02, second_shard_from_layer=20, fast_random=True,
)


def write_tiny_checkpoint(path: str | Path, *, config_style: str = "nested", seed: int = 0,
                          weights_dtype: str = "float32") -> Path:
    """Write the tiny checkpoint into ``path`` (created if needed) and return it as a Path."""
    return write_checkpoint(path, replace(TINY, weights_dtype=weights_dtype), config_style=config_style, seed=seed)


def write_real_size_checkpoint(path: str | Path, *, seed: int = 0) -> Path:
    """Random weights at the real jina-embeddings-v4 shapes (about 7.4 GiB, a few minutes)."""
    return write_checkpoint(path, REAL, seed=seed)


def write_checkpoint(path: str | Path, geometry: Geometry = TINY, *, config_style: str = "nested",
                     seed: int = 0) -> Path:
    """Write a random checkpoint of ``geometry`` in the published layout; returns the folder."""
    if config_style not in ("nested", "flat"):
        raise ValueError(f"config_style must be 'nested' or 'flat', got {config_style!r}")
    if geometry.weights_dtype not in _ST_DTYPES:
        raise ValueError(f"weights_dtype must be one of {sorted(_ST_DTYPES)}, got {geometry.weights_dtype!r}")
    out = Path(path)
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    tok_size = _write_tokenizer(out)
    vocab_size = geometry.vocab_size or tok_size
    if vocab_size < tok_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer ({tok_size})")
    ids = {tok: tok_size - len(SPECIAL_TOKENS) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    rng = np.random.default_rng(seed)
    _write_base_weights(out, rng, vocab_size, geometry)
    _write_adapters(out, rng, geometry)
    _write_config(out, config_style, vocab_size, ids, geometry)
    _write_preprocessor(out, geometry)
    return out


# -- streaming safetensors ----------------------------------------------------------------------
_ST_DTYPES = {"float32": ("F32", 4), "bfloat16": ("BF16", 2)}


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (the values are finite)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)


class _SafetensorsWriter:
    """Header first (all shapes are known), then each tensor's bytes appended in header order."""

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]], dtype: str):
        self.path, self.shapes = path, shapes
        self.code, self.itemsize = _ST_DTYPES[dtype]
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in shapes.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * self.itemsize
            header[name] = {"dtype": self.code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.fh = path.open("wb")
        self.fh.write(struct.pack("<Q", len(blob)) + blob)
        self.expected = list(shapes)
        self.total = offset

    def write(self, name: str, chunks: Iterator[np.ndarray]) -> None:
        if not self.expected or self.expected[0] != name:
            raise RuntimeError(f"tensor {name!r} written out of header order in {self.path}")
        self.expected.pop(0)
        for chunk in chunks:
            data = _to_bf16_bits(chunk) if self.code == "BF16" else np.ascontiguousarray(chunk, dtype=np.float32)
            self.fh.write(data.tobytes())

    def close(self) -> None:
        self.fh.close()
        if self.expected:
            raise RuntimeError(f"{len(self.expected)} tensors never written to {self.path}")


def _draws(rng: np.random.Generator, shape: tuple[int, ...], scale: float, offset: float,
           fast: bool) -> Iterator[np.ndarray]:
    """offset + scale * N(0, 1) in row chunks; the chunks concatenate to one draw of ``shape``."""
    rows = shape[0]
    per_row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, _CHUNK_VALUES // max(per_row, 1))
    for start in range(0, rows, step):
        part = (min(step, rows - start), *shape[1:])
        if fast:
            x = rng.standard_normal(part, dtype=np.float32)
            x *= np.float32(scale)
            if offset:
                x += np.float32(offset)
            yield x
        else:  # float64 draws, as the first tiny checkpoints were written: same values per seed
            yield ((offset + scale * rng.standard_normal(part)) if offset else (scale * rng.standard_normal(part))
                   ).astype(np.float32)


def _write_tokenizer(out: Path) -> int:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # The image prompt is in the corpus often enough that "user", "Describe", " the", " image" become
    # single tokens: the prompt then has the real model's 11 non-image tokens.
    tok.train_from_iterator(list(_CORPUS) * 4 + ["user\nDescribe the image."] * 50, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    _dump(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": added,
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "model_max_length": 32768,
            "padding_side": "right",
            "errors": "replace",
            "clean_up_tokenization_spaces": False,
        },
    )
    _dump(
        out / "special_tokens_map.json",
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
         "additional_special_tokens": list(SPECIAL_TOKENS[1:])},
    )
    return tok.get_vocab_size()


def _base_shapes(vocab_size: int, geo: Geometry = TINY) -> dict[str, tuple[int, ...]]:
    t, v = geo.text, geo.vision
    kv = t["kv_heads"] * geo.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, t["hidden"])}
    for n in range(t["layers"]):
        p = f"model.layers.{n}."
        shapes.update({
            p + "self_attn.q_proj.weight": (t["hidden"], t["hidden"]), p + "self_attn.q_proj.bias": (t["hidden"],),
            p + "self_attn.k_proj.weight": (kv, t["hidden"]), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, t["hidden"]), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (t["hidden"], t["hidden"]),
            p + "mlp.gate_proj.weight": (t["inter"], t["hidden"]),
            p + "mlp.up_proj.weight": (t["inter"], t["hidden"]),
            p + "mlp.down_proj.weight": (t["hidden"], t["inter"]),
            p + "input_layernorm.weight": (t["hidden"],), p + "post_attention_layernorm.weight": (t["hidden"],),
        })
    shapes["model.norm.weight"] = (t["hidden"],)
    h = v["hidden"]
    shapes["visual.patch_embed.proj.weight"] = (h, 3, v["temporal"], v["patch"], v["patch"])
    for n in range(v["depth"]):
        p = f"visual.blocks.{n}."
        shapes.update({
            p + "norm1.weight": (h,), p + "norm2.weight": (h,),
            p + "attn.qkv.weight": (3 * h, h), p + "attn.qkv.bias": (3 * h,),
            p + "attn.proj.weight": (h, h), p + "attn.proj.bias": (h,),
            p + "mlp.gate_proj.weight": (v["inter"], h), p + "mlp.gate_proj.bias": (v["inter"],),
            p + "mlp.up_proj.weight": (v["inter"], h), p + "mlp.up_proj.bias": (v["inter"],),
            p + "mlp.down_proj.weight": (h, v["inter"]), p + "mlp.down_proj.bias": (h,),
        })
    merged = h * v["merge"] ** 2
    shapes.update({
        "visual.merger.ln_q.weight": (h,),
        "visual.merger.mlp.0.weight": (merged, merged), "visual.merger.mlp.0.bias": (merged,),
        "visual.merger.mlp.2.weight": (v["out"], merged), "visual.merger.mlp.2.bias": (v["out"],),
        "multi_vector_projector.weight": (PROJECTOR_DIM, t["hidden"]),
        "multi_vector_projector.bias": (PROJECTOR_DIM,),
    })
    return shapes


def _random(rng: np.random.Generator, name: str, shape: tuple[int, ...], geo: Geometry = TINY) -> Iterator[np.ndarray]:
    if "norm" in name or "ln_q" in name:
        return _draws(rng, shape, 0.1, 1.0, geo.fast_random)
    return _draws(rng, shape, geo.std, 0.0, geo.fast_random)


def _write_base_weights(out: Path, rng: np.random.Generator, vocab_size: int, geo: Geometry = TINY) -> None:
    shapes = _base_shapes(vocab_size, geo)
    # Mirror the real split: embeddings + early layers in shard 1; later layers, norm, projector in 2.
    first_late = geo.second_shard_from_layer
    if first_late is None:
        first_late = geo.text["layers"] - 1
    late = tuple(f"model.layers.{n}." for n in range(first_late, geo.text["layers"]))
    second = {k for k in shapes if k.startswith((*late, "model.norm.", "multi_vector_projector."))}
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    writers = {
        names[0]: _SafetensorsWriter(out / names[0], {k: v for k, v in shapes.items() if k not in second},
                                     geo.weights_dtype),
        names[1]: _SafetensorsWriter(out / names[1], {k: v for k, v in shapes.items() if k in second},
                                     geo.weights_dtype),
    }
    weight_map = {}
    try:
        for name, shape in shapes.items():  # one global draw order, whatever the shard
            fname = names[1] if name in second else names[0]
            writers[fname].write(name, _random(rng, name, shape, geo))
            weight_map[name] = fname
    finally:
        for w in writers.values():
            w.fh.close()
    for w in writers.values():
        w.close()
    total = sum(w.total for w in writers.values())
    _dump(out / "model.safetensors.index.json",
          {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def _write_adapters(out: Path, rng: np.random.Generator, geo: Geometry = TINY) -> None:
    t = geo.text
    kv = t["kv_heads"] * geo.head_dim
    dims = {  # (in, out) per adapted module
        "self_attn.q_proj": (t["hidden"], t["hidden"]), "self_attn.k_proj": (t["hidden"], kv),
        "self_attn.v_proj": (t["hidden"], kv), "self_attn.o_proj": (t["hidden"], t["hidden"]),
        "mlp.gate_proj": (t["hidden"], t["inter"]), "mlp.up_proj": (t["hidden"], t["inter"]),
        "mlp.down_proj": (t["inter"], t["hidden"]),
    }
    modules = {f"model.language_model.layers.{n}.{m}": d for n in range(t["layers"]) for m, d in dims.items()}
    modules["multi_vector_projector"] = (t["hidden"], PROJECTOR_DIM)
    shapes = {}
    for task in TASK_NAMES:
        for mod, (d_in, d_out) in modules.items():
            p = f"base_model.model.{mod}"
            shapes[f"{p}.lora_A.{task}.weight"] = (geo.lora_r, d_in)
            shapes[f"{p}.lora_B.{task}.weight"] = (d_out, geo.lora_r)
    writer = _SafetensorsWriter(out / "adapters" / "adapter_model.safetensors", shapes, geo.weights_dtype)
    try:
        for name, shape in shapes.items():
            # Non-zero B: a zero B (peft's default init) makes every adapter a silent no-op.
            writer.write(name, _draws(rng, shape, geo.lora_std, 0.0, geo.fast_random))
    finally:
        writer.fh.close()
    writer.close()
    _dump(
        out / "adapters" / "adapter_config.json",
        {
            "peft_type": "LORA",
            "task_type": "FEATURE_EXTRACTION",
            "base_model_name_or_path": None,
            "r": geo.lora_r,
            "lora_alpha": geo.lora_alpha,
            "lora_dropout": 0.1,
            "bias": "none",
            "target_modules": [*_LORA_TARGETS, "single_vector_projector", "multi_vector_projector"],
            "exclude_modules": ".*visual.*",
            "inference_mode": True,
            "use_rslora": False,
            "use_dora": False,
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "modules_to_save": None,
        },
    )


def _write_config(out: Path, style: str, vocab_size: int, ids: dict[str, int], geo: Geometry = TINY) -> None:
    t, v = geo.text, geo.vision
    text = {
        "vocab_size": vocab_size, "hidden_size": t["hidden"], "intermediate_size": t["inter"],
        "num_hidden_layers": t["layers"], "num_attention_heads": t["heads"],
        "num_key_value_heads": t["kv_heads"], "hidden_act": "silu", "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "use_sliding_window": False,
        "sliding_window": 32768, "max_window_layers": t["layers"], "attention_dropout": 0.0,
        # sum(mrope_section) must equal head_dim // 2.
        "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": list(geo.mrope_section)},
    }
    vision = {
        "depth": v["depth"], "hidden_size": v["hidden"], "intermediate_size": v["inter"],
        "num_heads": v["heads"], "out_hidden_size": v["out"], "hidden_act": "silu",
        "fullatt_block_indexes": list(geo.fullatt_blocks), "window_size": 112, "patch_size": v["patch"],
        "spatial_patch_size": v["patch"], "temporal_patch_size": v["temporal"],
        "spatial_merge_size": v["merge"], "in_chans": 3, "tokens_per_second": 2,
    }
    cfg = {
        "architectures": ["JinaEmbeddingsV4Model"],
        "model_type": "qwen2_5_vl",
        "torch_dtype": geo.weights_dtype,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "tie_word_embeddings": True,
        "task_names": list(TASK_NAMES),
        "matryoshka_dims": list(geo.matryoshka_dims),
        "multi_vector_projector_dim": PROJECTOR_DIM,
        "single_vector_pool_strategy": "mean",
        "truncate_dim": None,
        "verbosity": 1,
        "vision_config": vision,
    }
    text.update(bos_token_id=cfg["bos_token_id"], eos_token_id=cfg["eos_token_id"])
    if style == "nested":
        cfg["text_config"] = {**text, "tie_word_embeddings": True}
    else:
        cfg.update(text)
    _dump(out / "config.json", cfg)


def _write_preprocessor(out: Path, geo: Geometry = TINY) -> None:
    _dump(
        out / "preprocessor_config.json",
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "rescale_factor": 0.00392156862745098, "resample": 3,
            "min_pixels": MIN_PIXELS, "max_pixels": geo.max_pixels,
            "patch_size": geo.vision["patch"], "temporal_patch_size": geo.vision["temporal"],
            "merge_size": geo.vision["merge"],
        },
    )


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
