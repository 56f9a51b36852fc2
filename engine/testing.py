"""A tiny, random jina-embeddings-v4 checkpoint for tests and benchmarks.

The files follow the published layout exactly (legacy base keys in two shards, a top-level
multi_vector_projector, one adapter file holding all three tasks), so the tiny model loads through
the very same ``load_encoder`` as the real one. Weights come from a seeded numpy generator and are
written with ``safetensors.numpy``: no torch import, deterministic for a seed, well under a second.

Sizes: text 2 layers, hidden 64, 4 heads (head_dim 16), 2 KV heads; vision depth 2, hidden 32,
2 heads, out_hidden 64; multi_vector_projector_dim 128 (as the real model); matryoshka [16, 32, 64];
LoRA r=4, alpha=8 (scaling 2, so a scaling bug shows); weights float32; max_pixels 100352 (<= 128
merged image tokens per image).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

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


def write_tiny_checkpoint(path: str | Path, *, config_style: str = "nested", seed: int = 0) -> Path:
    """Write the tiny checkpoint into ``path`` (created if needed) and return it as a Path."""
    if config_style not in ("nested", "flat"):
        raise ValueError(f"config_style must be 'nested' or 'flat', got {config_style!r}")
    out = Path(path)
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tokenizer(out)
    ids = {tok: vocab_size - len(SPECIAL_TOKENS) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    rng = np.random.default_rng(seed)
    _write_base_weights(out, rng, vocab_size)
    _write_adapters(out, rng)
    _write_config(out, config_style, vocab_size, ids)
    _write_preprocessor(out)
    return out


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


def _base_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    t, v = TEXT, VISION
    head_dim = t["hidden"] // t["heads"]
    kv = t["kv_heads"] * head_dim
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


def _random(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if "norm" in name or "ln_q" in name:
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return (0.08 * rng.standard_normal(shape)).astype(np.float32)


def _write_base_weights(out: Path, rng: np.random.Generator, vocab_size: int) -> None:
    tensors = {name: _random(rng, name, shape) for name, shape in _base_shapes(vocab_size).items()}
    # Mirror the real split: embeddings + early layers in shard 1; last layer, norm, projector in 2.
    last = f"model.layers.{TEXT['layers'] - 1}."
    second = {k for k in tensors if k.startswith((last, "model.norm.", "multi_vector_projector."))}
    shards = {
        "model-00001-of-00002.safetensors": {k: v for k, v in tensors.items() if k not in second},
        "model-00002-of-00002.safetensors": {k: v for k, v in tensors.items() if k in second},
    }
    weight_map = {}
    for fname, part in shards.items():
        save_file(part, str(out / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(int(v.nbytes) for v in tensors.values())
    _dump(out / "model.safetensors.index.json",
          {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def _write_adapters(out: Path, rng: np.random.Generator) -> None:
    t = TEXT
    head_dim = t["hidden"] // t["heads"]
    kv = t["kv_heads"] * head_dim
    dims = {  # (in, out) per adapted module
        "self_attn.q_proj": (t["hidden"], t["hidden"]), "self_attn.k_proj": (t["hidden"], kv),
        "self_attn.v_proj": (t["hidden"], kv), "self_attn.o_proj": (t["hidden"], t["hidden"]),
        "mlp.gate_proj": (t["hidden"], t["inter"]), "mlp.up_proj": (t["hidden"], t["inter"]),
        "mlp.down_proj": (t["inter"], t["hidden"]),
    }
    modules = {f"model.language_model.layers.{n}.{m}": d for n in range(t["layers"]) for m, d in dims.items()}
    modules["multi_vector_projector"] = (t["hidden"], PROJECTOR_DIM)
    tensors = {}
    for task in TASK_NAMES:
        for mod, (d_in, d_out) in modules.items():
            p = f"base_model.model.{mod}"
            # Non-zero B: a zero B (peft's default init) makes every adapter a silent no-op.
            tensors[f"{p}.lora_A.{task}.weight"] = (0.1 * rng.standard_normal((LORA_R, d_in))).astype(np.float32)
            tensors[f"{p}.lora_B.{task}.weight"] = (0.1 * rng.standard_normal((d_out, LORA_R))).astype(np.float32)
    save_file(tensors, str(out / "adapters" / "adapter_model.safetensors"), metadata={"format": "pt"})
    _dump(
        out / "adapters" / "adapter_config.json",
        {
            "peft_type": "LORA",
            "task_type": "FEATURE_EXTRACTION",
            "base_model_name_or_path": None,
            "r": LORA_R,
            "lora_alpha": LORA_ALPHA,
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


def _write_config(out: Path, style: str, vocab_size: int, ids: dict[str, int]) -> None:
    t, v = TEXT, VISION
    text = {
        "vocab_size": vocab_size, "hidden_size": t["hidden"], "intermediate_size": t["inter"],
        "num_hidden_layers": t["layers"], "num_attention_heads": t["heads"],
        "num_key_value_heads": t["kv_heads"], "hidden_act": "silu", "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "use_sliding_window": False,
        "sliding_window": 32768, "max_window_layers": t["layers"], "attention_dropout": 0.0,
        # sum(mrope_section) must equal head_dim // 2 (16 // 2).
        "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [2, 3, 3]},
    }
    vision = {
        "depth": v["depth"], "hidden_size": v["hidden"], "intermediate_size": v["inter"],
        "num_heads": v["heads"], "out_hidden_size": v["out"], "hidden_act": "silu",
        "fullatt_block_indexes": [1], "window_size": 112, "patch_size": v["patch"],
        "spatial_patch_size": v["patch"], "temporal_patch_size": v["temporal"],
        "spatial_merge_size": v["merge"], "in_chans": 3, "tokens_per_second": 2,
    }
    cfg = {
        "architectures": ["JinaEmbeddingsV4Model"],
        "model_type": "qwen2_5_vl",
        "torch_dtype": "float32",
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "tie_word_embeddings": True,
        "task_names": list(TASK_NAMES),
        "matryoshka_dims": list(MATRYOSHKA_DIMS),
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


def _write_preprocessor(out: Path) -> None:
    _dump(
        out / "preprocessor_config.json",
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "rescale_factor": 0.00392156862745098, "resample": 3,
            "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS,
            "patch_size": VISION["patch"], "temporal_patch_size": VISION["temporal"],
            "merge_size": VISION["merge"],
        },
    )


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
