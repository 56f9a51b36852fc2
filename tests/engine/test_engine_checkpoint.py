"""Finding and checking checkpoints: config styles, damaged files, the HF cache, no network."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from engine import checkpoint
from engine.config import read_config
from engine.errors import EngineError
from engine.loader import load_encoder
from engine.testing import write_tiny_checkpoint
from tests.engine.conftest import page

TEXTS = ["what is the revenue?", "a passage about slides"]


def test_importing_engine_does_not_import_torch():
    code = "import sys, engine; assert callable(engine.__getattr__); print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_flat_and_nested_configs_give_the_same_outputs(enc, tmp_path):
    flat = write_tiny_checkpoint(tmp_path / "flat", config_style="flat")
    raw = json.loads((flat / "config.json").read_text())
    assert "text_config" not in raw and raw["hidden_size"] == 64
    assert read_config(flat / "config.json").style == "flat"
    other = load_encoder(str(flat))
    for a, b in zip(enc.encode_queries(TEXTS) + enc.encode_images([page(200, 300)]),
                    other.encode_queries(TEXTS) + other.encode_images([page(200, 300)])):
        np.testing.assert_allclose(a.single, b.single, atol=1e-6)
        np.testing.assert_allclose(a.multi, b.multi, atol=1e-6)


def test_writer_is_deterministic_per_seed(tiny_dir, tmp_path):
    again = write_tiny_checkpoint(tmp_path / "again")
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    files = sorted(p.relative_to(tiny_dir) for p in tiny_dir.rglob("*") if p.is_file())
    assert {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors", "adapters/adapter_model.safetensors",
            "adapters/adapter_config.json", "tokenizer.json", "preprocessor_config.json"} <= {f.as_posix() for f in files}
    for f in files:
        assert (tiny_dir / f).read_bytes() == (again / f).read_bytes()
    shard = "model-00001-of-00002.safetensors"
    assert (tiny_dir / shard).read_bytes() != (other / shard).read_bytes()
    headers = checkpoint.inspect(tiny_dir).headers
    keys = {k for h in headers.values() for k in h}
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "visual.blocks.0.attn.qkv.weight" in keys
    assert "multi_vector_projector.bias" in keys and not any(k.startswith("lm_head") for k in keys)


def test_fingerprint_is_stable_and_sensitive(tiny_copy):
    first = checkpoint.fingerprint(checkpoint.inspect(tiny_copy))
    assert first == checkpoint.fingerprint(checkpoint.inspect(tiny_copy))
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg["verbosity"] = 2
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    assert checkpoint.fingerprint(checkpoint.inspect(tiny_copy)) != first


def test_missing_shard_is_refused(tiny_copy):
    (tiny_copy / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(EngineError, match="missing") as err:
        load_encoder(str(tiny_copy))
    assert "download" in err.value.hint


def test_truncated_shard_is_refused(tiny_copy):
    shard = tiny_copy / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4096])
    with pytest.raises(EngineError, match="truncated"):
        load_encoder(str(tiny_copy))


@pytest.mark.parametrize("name, payload, message", [
    ("config.json", "{ not json", "not valid JSON"),
    ("config.json", json.dumps({"task_names": ["retrieval"]}), "hidden_size"),
    ("model.safetensors.index.json", "[]", "weight_map"),
    ("tokenizer.json", "{ broken", "not valid JSON"),
    ("preprocessor_config.json", "", "not valid JSON"),
])
def test_corrupt_small_files_are_refused(tiny_copy, name, payload, message):
    (tiny_copy / name).write_text(payload)
    with pytest.raises(EngineError, match=message):
        load_encoder(str(tiny_copy))


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "preprocessor_config.json"])
def test_missing_small_files_are_refused(tiny_copy, name):
    (tiny_copy / name).unlink()
    with pytest.raises(EngineError, match="missing"):
        load_encoder(str(tiny_copy))


def test_unknown_task_at_load(tiny_dir):
    with pytest.raises(EngineError, match="unknown task") as err:
        load_encoder(str(tiny_dir), task="summarise")
    assert "retrieval, text-matching, code" in err.value.hint


def test_bad_arguments_at_load(tiny_dir, tmp_path):
    with pytest.raises(EngineError, match="dtype"):
        load_encoder(str(tiny_dir), dtype="int8")
    with pytest.raises(EngineError, match="does not exist"):
        load_encoder(str(tmp_path / "nowhere"))
    with pytest.raises(EngineError, match="max_pixels"):
        load_encoder(str(tiny_dir), max_pixels=100)


def test_max_pixels_and_bfloat16_options(tiny_dir):
    small = load_encoder(str(tiny_dir), max_pixels=28 * 28 * 16, dtype="bfloat16")
    assert small.max_pixels == 12544 and small.dtype == "bfloat16" and small.identity["max_pixels"] == 12544
    out = small.encode_images([page(595, 842)])[0]
    assert out.multi.shape[0] <= 16 + 11 and out.single.dtype == np.float32
    assert np.isclose(np.linalg.norm(out.single), 1.0, atol=1e-3)


def test_unavailable_model_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EngineError, match="not in the local Hugging Face cache") as err:
        load_encoder("jinaai/jina-embeddings-v4")
    assert "hf download jinaai/jina-embeddings-v4" in err.value.hint and "HF_HOME" in err.value.hint


def test_unavailable_model_id_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def refuse(self, *args, **kwargs):
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(EngineError, match="could not be downloaded") as err:
        load_encoder("someone/missing-model")
    assert "hf download someone/missing-model" in err.value.hint


def test_repo_id_from_hf_cache_uses_snapshot_hash(tiny_dir, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny-v4"
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_encoder("acme/tiny-v4", task="code")
    assert enc.identity["model"] == "acme/tiny-v4" and enc.identity["revision"] == commit
    assert enc.task == "code"


def test_loading_and_encoding_touch_no_network(tiny_dir, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, *a))
    enc = load_encoder(str(tiny_dir), task="text-matching")
    assert len(enc.encode_passages(TEXTS)) == 2 and len(enc.encode_images([page(120, 90)])) == 1


def test_missing_base_tensor_is_refused(tiny_copy):
    from safetensors.numpy import load_file, save_file

    shard = tiny_copy / "model-00001-of-00002.safetensors"
    tensors = load_file(str(shard))
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_file(tensors, str(shard))
    index = json.loads((tiny_copy / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.0.mlp.up_proj.weight"]
    (tiny_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(EngineError, match="missing or mis-shaped"):
        load_encoder(str(tiny_copy))


def test_index_naming_a_tensor_its_shard_lacks_is_refused(tiny_copy):
    index = json.loads((tiny_copy / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"
    (tiny_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(EngineError, match="not in this shard"):
        load_encoder(str(tiny_copy))


def test_remote_code_style_config_with_both_styles_loads_silently(enc, tiny_copy, capfd):
    """The published config may carry flat and nested text keys, jina's model_type and auto_map."""
    raw = json.loads((tiny_copy / "config.json").read_text())
    raw.update(raw["text_config"])
    raw.update(model_type="jina_embeddings_v4", torch_dtype="bfloat16",
               auto_map={"AutoModel": "modeling_jina_embeddings_v4.JinaEmbeddingsV4Model"})
    raw["vision_config"]["model_type"] = "qwen2_5_vl"
    (tiny_copy / "config.json").write_text(json.dumps(raw))
    capfd.readouterr()
    other = load_encoder(str(tiny_copy))
    out = other.encode_queries(TEXTS)
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""
    for a, b in zip(enc.encode_queries(TEXTS), out):
        np.testing.assert_allclose(a.single, b.single, atol=1e-6)
