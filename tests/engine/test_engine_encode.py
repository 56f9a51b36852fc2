"""Encoding behaviour of the tiny checkpoint: shapes, recipe, pooling span, batch invariance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine import prompts
from engine.errors import EngineError
from engine.types import Embedding
from tests.engine.conftest import page

TEXTS = [
    "what is the revenue in the second quarter?",
    "hi",
    "A much longer passage about invoices, receipts, scanned contracts and slides, repeated. " * 3,
    "def encode(texts): return texts",
    "0123456789",
]
SIZES = [(200, 300), (595, 842), (64, 64), (900, 280)]


def _unit_rows(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=-1), 1.0, atol=1e-5))


def test_text_shapes_and_normalisation(enc):
    out = enc.encode_queries(TEXTS) + enc.encode_passages(TEXTS)
    assert len(out) == 2 * len(TEXTS) and all(isinstance(e, Embedding) for e in out)
    for e in out:
        assert e.single.dtype == np.float32 and e.single.shape == (enc.single_dim,) == (64,)
        assert e.multi.dtype == np.float32 and e.multi.shape[1] == enc.multi_dim == 128
        assert _unit_rows(e.single) and _unit_rows(e.multi)


def test_multi_rows_are_the_prompt_tokens_without_bos(enc):
    tok = enc._processor.tokenizer
    for text, e in zip(TEXTS, enc.encode_queries(TEXTS)):
        ids = tok("Query: " + text)["input_ids"]
        assert e.multi.shape[0] == len(ids)
        assert tok.convert_ids_to_tokens(ids[0]) != "<|endoftext|>"


def test_image_shapes_are_n_plus_11_tokens(enc):
    out = enc.encode_images([page(w, h, i) for i, (w, h) in enumerate(SIZES)])
    grids = enc._processor.image_processor(images=[page(w, h) for w, h in SIZES], return_tensors="pt")["image_grid_thw"]
    # the tiny tokenizer splits the image prompt like Qwen's: 11 tokens around the single pad
    assert len(enc._processor.tokenizer(prompts.IMAGE_PROMPT)["input_ids"]) == 12
    for e, grid in zip(out, grids):
        assert e.multi.shape == (int(grid.prod()) // 4 + 11, 128)
        assert e.single.shape == (64,) and _unit_rows(e.single) and _unit_rows(e.multi)


def test_matryoshka_truncation_uses_checkpoint_dims(enc):
    out = enc.encode_queries(TEXTS[:3])
    cut = enc.truncate(out, 32)
    assert cut.shape == (3, 32) and _unit_rows(cut)
    expected = out[0].single[:32] / np.linalg.norm(out[0].single[:32])
    np.testing.assert_allclose(cut[0], expected, atol=1e-6)
    assert enc.truncate(out[1], 16).shape == (16,)
    for bad in (24, 128, 0):
        with pytest.raises(EngineError):
            enc.truncate(out, bad)


@pytest.mark.parametrize("task, passage_prefix", [("retrieval", "Passage: "), ("code", "Passage: "),
                                                  ("text-matching", "Query: ")])
def test_prefixes_per_task(enc, task, passage_prefix):
    enc.set_task(task)
    assert enc.identity["prefixes"]["query"] == "Query: "
    assert enc.identity["prefixes"]["passage"] == passage_prefix
    tok = enc._processor.tokenizer
    p = enc.encode_passages([TEXTS[0]])[0]
    q = enc.encode_queries([TEXTS[0]])[0]
    assert p.multi.shape[0] == len(tok(passage_prefix + TEXTS[0])["input_ids"])
    if task == "text-matching":
        np.testing.assert_array_equal(p.single, q.single)
    else:
        assert not np.allclose(p.single, q.single)


def test_image_single_vector_is_mean_over_vision_span(enc):
    img = page(300, 420, 3)
    ip, tok = enc._processor.image_processor, enc._processor.tokenizer
    feats = ip(images=[img], return_tensors="pt")
    n = int(feats["image_grid_thw"][0].prod()) // 4
    text = prompts.IMAGE_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * n)
    ids = torch.tensor([tok(text)["input_ids"]])
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    with torch.no_grad():
        hidden = enc._net.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                pixel_values=feats["pixel_values"], image_grid_thw=feats["image_grid_thw"],
                                mm_token_type_ids=(ids == image_id).int(), use_cache=False).last_hidden_state[0]
    row = ids[0].tolist()
    start = row.index(tok.convert_tokens_to_ids("<|vision_start|>"))
    end = row.index(tok.convert_tokens_to_ids("<|vision_end|>"))
    assert end - start + 1 == n + 2 and len(row) == n + 11
    span = hidden[start : end + 1].mean(0)
    expected = (span / span.norm()).numpy()
    got = enc.encode_images([img])[0]
    np.testing.assert_allclose(got.single, expected, atol=1e-5)
    everything = hidden.mean(0)
    assert not np.allclose(got.single, (everything / everything.norm()).numpy(), atol=1e-3)


def test_text_batch_invariance(enc):
    alone = [enc.encode_queries([t])[0] for t in TEXTS]
    for bs in (2, 3, len(TEXTS)):
        together = enc.encode_queries(TEXTS, batch_size=bs)
        for a, b in zip(alone, together):
            np.testing.assert_allclose(a.single, b.single, atol=1e-5)
            np.testing.assert_allclose(a.multi, b.multi, atol=1e-5)


def test_image_batch_invariance(enc):
    images = [page(w, h, i) for i, (w, h) in enumerate(SIZES)]
    alone = [enc.encode_images([im])[0] for im in images]
    for bs in (2, 3, len(images)):
        together = enc.encode_images(images, batch_size=bs)
        for a, b in zip(alone, together):
            assert a.multi.shape == b.multi.shape
            np.testing.assert_allclose(a.single, b.single, atol=1e-5)
            np.testing.assert_allclose(a.multi, b.multi, atol=1e-5)


def test_image_paths_equal_pil_images(enc, tmp_path):
    images = [page(320, 200, 1), page(150, 500, 2).convert("L")]
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"p{i}.png")
        im.save(paths[-1])
    from_paths = enc.encode_images([str(paths[0]), paths[1]])
    from_pil = enc.encode_images([im.convert("RGB") for im in images])
    for a, b in zip(from_paths, from_pil):
        np.testing.assert_allclose(a.single, b.single, atol=1e-6)
    with pytest.raises(EngineError, match="not found"):
        enc.encode_images([str(tmp_path / "missing.png")])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(EngineError):
        enc.encode_images([tmp_path / "bad.png"])


def test_empty_inputs_and_bad_arguments(enc):
    assert enc.encode_queries([]) == [] and enc.encode_images([]) == []
    with pytest.raises(EngineError):
        enc.encode_queries("a single string")
    with pytest.raises(EngineError):
        enc.encode_queries(["ok"], batch_size=0)


def test_task_switch_keeps_backbone_and_changes_outputs(enc):
    backbone, embed_tokens = enc._net.model, enc._net.model.language_model.embed_tokens.weight
    before = enc.encode_queries(TEXTS[:2])
    enc.task = "code"
    after = enc.encode_queries(TEXTS[:2])
    assert enc._net.model is backbone and enc._net.model.language_model.embed_tokens.weight is embed_tokens
    assert enc.task == "code" and enc.identity["task"] == "code"
    assert not np.allclose(before[0].single, after[0].single, atol=1e-4)
    enc.set_task("retrieval")
    np.testing.assert_allclose(enc.encode_queries(TEXTS[:2])[0].single, before[0].single, atol=1e-6)


def test_unknown_task_lists_valid_tasks(enc):
    with pytest.raises(EngineError) as err:
        enc.set_task("classification")
    assert "retrieval" in err.value.hint and "text-matching" in err.value.hint and "code" in err.value.hint
    assert enc.task == "retrieval"


def test_identity_fields(enc, tiny_dir):
    ident = enc.identity
    assert json.loads(json.dumps(ident)) == ident
    assert ident["model"] == str(tiny_dir.resolve())
    assert ident["revision"].startswith("sha256:") and len(ident["revision"]) == 71
    assert (ident["single_dim"], ident["multi_dim"], ident["max_pixels"]) == (64, 128, 100352)
    assert ident["image_processor"] in ("fast", "pil") and ident["dtype"] == "float32" and ident["device"] == "cpu"
    assert ident["engine"] == "pagelens-engine/1" and ident["task"] == "retrieval"
    assert enc.tasks == ("retrieval", "text-matching", "code") and enc.matryoshka_dims == (16, 32, 64)


def test_progress_bar_goes_to_stderr_only_when_asked(enc, capsys):
    enc.encode_queries(TEXTS[:2])
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""
    enc.encode_queries(TEXTS[:2], show_progress_bar=True)
    loud = capsys.readouterr()
    assert loud.out == "" and "encoding" in loud.err
