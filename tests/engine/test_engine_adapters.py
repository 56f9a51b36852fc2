"""The three task adapters: loaded completely, each distinct, each equal to its merged weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from engine.errors import EngineError
from engine.loader import load_encoder
from engine.network import embed, hidden_states
from tests.engine.conftest import page

TEXTS = ["what is the revenue in the second quarter?", "hi there", "def f(x): return x"]
TASKS = ("retrieval", "text-matching", "code")


def _outputs(enc):
    return enc.encode_queries(TEXTS) + enc.encode_images([page(200, 260, 1), page(400, 120, 2)])


def test_every_file_tensor_is_loaded(enc, tiny_dir):
    state = load_file(str(tiny_dir / "adapters" / "adapter_model.safetensors"))
    params = dict(enc._adapters.named_parameters())
    assert set(state) <= set(params)
    for key, value in state.items():
        np.testing.assert_array_equal(params[key].detach().numpy(), value)


def test_tasks_differ_from_each_other(enc):
    outs = {}
    for task in TASKS:
        enc.set_task(task)
        outs[task] = _outputs(enc)
    for a in TASKS:
        for b in TASKS:
            if a < b:
                for x, y in zip(outs[a], outs[b]):
                    assert not np.allclose(x.single, y.single, atol=1e-4)
                    assert not np.allclose(x.multi, y.multi, atol=1e-4)


@pytest.mark.parametrize("task", TASKS)
def test_task_equals_its_merged_weights(enc, tiny_dir, task):
    enc.set_task(task)
    live = _outputs(enc)
    copy = load_encoder(str(tiny_dir), task=task)
    merged = copy._adapters.merge_and_unload()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    proc, cfg = enc._processor, enc._config
    batches = [(proc.text_batch(proc.tokenize(["Query: " + t])), False) for t in TEXTS]
    batches += [(proc.image_batch([page(200, 260, 1)]), True), (proc.image_batch([page(400, 120, 2)]), True)]
    with torch.no_grad():
        for (batch, is_image), want in zip(batches, live):
            single, multi = embed(merged, batch, cfg, is_image)
            np.testing.assert_allclose(single[0].numpy(), want.single, atol=1e-5)
            np.testing.assert_allclose(multi[0].numpy(), want.multi, atol=1e-5)


def test_projector_lora_is_applied_with_its_scaling(enc, tiny_dir):
    proc = enc._processor
    batch = proc.text_batch(proc.tokenize(["Passage: " + TEXTS[0]]))
    state = load_file(str(tiny_dir / "adapters" / "adapter_model.safetensors"))
    conf = json.loads((tiny_dir / "adapters" / "adapter_config.json").read_text())
    scaling = conf["lora_alpha"] / conf["r"]
    projector = enc._net.multi_vector_projector
    with torch.no_grad():
        hidden = hidden_states(enc._net, batch)
        base = projector.base_layer(hidden).numpy()
        for task in TASKS:
            enc.set_task(task)
            a = state[f"base_model.model.multi_vector_projector.lora_A.{task}.weight"]
            b = state[f"base_model.model.multi_vector_projector.lora_B.{task}.weight"]
            adapted = projector(hidden).numpy()
            np.testing.assert_allclose(adapted - base, hidden.numpy() @ a.T @ b.T * scaling, atol=1e-5)
    enc.set_task("retrieval")
    with enc._adapters.disable_adapter():
        plain = enc.encode_passages(TEXTS[:1])[0].multi
    assert not np.allclose(plain, enc.encode_passages(TEXTS[:1])[0].multi, atol=1e-4)


def _rewrite_adapter(folder, change):
    path = folder / "adapters" / "adapter_model.safetensors"
    save_file(change(load_file(str(path))), str(path))


@pytest.mark.parametrize(
    "change, message",
    [
        # legacy module names: peft alone would warn and then silently do nothing
        (lambda s: {k.replace("model.language_model.layers", "model.layers"): v for k, v in s.items()},
         "match no module"),
        (lambda s: {k: v for k, v in s.items() if ".code." not in k}, "no weights for task"),
        (lambda s: {**s, **{k.replace(".code.", ".summarise."): v for k, v in s.items() if ".code." in k}},
         "does not list"),
        (lambda s: {k: v for k, v in s.items() if "layers.1.mlp.up_proj.lora_B.retrieval" not in k}, "absent"),
        (lambda s: {**s, "base_model.model.multi_vector_projector.weight": s[next(iter(s))]}, "not jina LoRA"),
        (lambda s: {k: (v[:, :2] if "lora_B" in k and "q_proj" in k else v) for k, v in s.items()},
         "does not fit"),
    ],
    ids=["renamed", "missing-task", "extra-task", "missing-key", "foreign-key", "wrong-shape"],
)
def test_broken_adapter_file_is_refused(tiny_copy, change, message):
    _rewrite_adapter(tiny_copy, change)
    with pytest.raises(EngineError, match=message) as err:
        load_encoder(str(tiny_copy))
    assert err.value.hint


def test_truncated_adapter_file_is_refused(tiny_copy):
    path = tiny_copy / "adapters" / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(EngineError, match="truncated"):
        load_encoder(str(tiny_copy))


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json"])
def test_missing_adapter_file_is_refused(tiny_copy, name):
    (tiny_copy / "adapters" / name).unlink()
    with pytest.raises(EngineError, match="missing"):
        load_encoder(str(tiny_copy))


def test_config_without_visual_exclusion_still_loads_the_same(tiny_copy, enc):
    cfg_path = tiny_copy / "adapters" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("exclude_modules")
    cfg["target_modules"] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                             "multi_vector_projector"]
    cfg_path.write_text(json.dumps(cfg))
    other = load_encoder(str(tiny_copy))
    a, b = enc.encode_queries(TEXTS[:1])[0], other.encode_queries(TEXTS[:1])[0]
    np.testing.assert_allclose(a.single, b.single, atol=1e-5)
    np.testing.assert_allclose(a.multi, b.multi, atol=1e-5)


def test_lora_is_added_in_place_and_equals_peft_own_forward(enc):
    """The adapter is accumulated into the base output by one matmul; peft's forward gives the same."""
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    from engine.adapters import _fused_lora_linear

    fused = _fused_lora_linear()
    layers = [m for m in enc._adapters.modules() if isinstance(m, PeftLoraLinear)]
    assert len(layers) == 2 * 7 + 1 and all(type(m) is fused for m in layers)  # 2 layers x 7 + projector
    g = torch.Generator().manual_seed(0)
    for task in TASKS:
        enc.set_task(task)
        for layer in (layers[0], layers[-1]):
            x = torch.randn(2, 5, layer.in_features, generator=g)
            with torch.no_grad():
                mine, theirs = layer(x), PeftLoraLinear.forward(layer, x)
            torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-6)
            assert not torch.allclose(mine, layer.base_layer(x), atol=1e-4)  # the adapter did something
    with torch.no_grad(), enc._adapters.disable_adapter():
        torch.testing.assert_close(layers[0](x := torch.randn(3, layers[0].in_features)), layers[0].base_layer(x))
