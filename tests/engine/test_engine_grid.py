"""The tiny real encoder records each page image's patch grid, consistent with what the processor
and the model really produce: image_grid_thw / merge 2, the image-pad token positions, the tokens kept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.prompts import IMAGE_PROMPT, IMAGE_PAD
from engine.types import Embedding, PatchGrid
from tests.engine.conftest import page


def _picture(width: int, height: int) -> Image.Image:
    """Any size, down to the 28 px minimum (conftest's page() draws bars that need room)."""
    rng = np.random.default_rng(width * 7919 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _expected(tiny_dir, width: int, height: int):
    """(offset, rows, cols, n_tokens) computed independently: transformers' smart_resize for the
    grid, the tokenizer on the prompt around the image pads for the offset and the length."""
    import json

    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    pre = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    h, w = smart_resize(height, width, factor=28, min_pixels=pre["min_pixels"], max_pixels=pre["max_pixels"])
    rows, cols = h // 28, w // 28
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    before, after = IMAGE_PROMPT.split(IMAGE_PAD)
    offset = len(tok(before)["input_ids"])
    return offset, rows, cols, offset + rows * cols + len(tok(after)["input_ids"])


@pytest.mark.parametrize("size", [(200, 260), (600, 300), (28, 28), (5600, 28), (33, 800)])
def test_page_images_carry_a_grid_consistent_with_their_tokens(enc, tiny_dir, size):
    (emb,) = enc.encode_images([_picture(*size)])
    offset, rows, cols, n_tokens = _expected(tiny_dir, *size)
    assert emb.grid == PatchGrid(offset, rows, cols)
    assert emb.multi.shape[0] == n_tokens  # every real token is kept, the image tokens among them
    assert emb.grid.fits(emb.multi.shape[0]) and emb.grid.box == (0.0, 0.0, 1.0, 1.0)


def test_grids_survive_batching_with_pages_of_other_sizes(enc):
    images = [page(200, 260, 1), page(600, 300, 2), _picture(28, 28), page(300, 90, 4)]
    alone = [enc.encode_images([im])[0] for im in images]
    together = enc.encode_images(images, batch_size=4)  # right-padded: offsets do not move
    for a, b in zip(alone, together):
        assert a.grid == b.grid and a.multi.shape == b.multi.shape
        grid = a.grid
        # the patch tokens are the page's own: the same vectors whatever else is in the batch
        np.testing.assert_allclose(a.multi[grid.offset:grid.offset + grid.n_patches],
                                   b.multi[grid.offset:grid.offset + grid.n_patches], atol=1e-5)


def test_the_processor_grid_follows_the_image_pad_tokens(enc, tiny_dir):
    from engine.config import read_config
    from engine.processor import InputProcessor

    cfg = read_config(tiny_dir / "config.json")
    proc = InputProcessor.load(tiny_dir, max_pixels=None, image_token_id=cfg.image_token_id)
    batch = proc.image_batch([page(300, 200).convert("RGB"), page(90, 500).convert("RGB")])
    for row, grid in enumerate(proc.grids(batch)):
        ids = batch["input_ids"][row]
        pads = (ids == cfg.image_token_id).nonzero().flatten().tolist()
        assert pads == list(range(grid.offset, grid.offset + grid.n_patches))
        t, h, w = batch["image_grid_thw"][row].tolist()
        assert (t, grid.rows, grid.cols) == (1, h // 2, w // 2)
    # a span that does not add up is "no grid", never a guess
    broken = dict(batch)
    broken["image_grid_thw"] = batch["image_grid_thw"].clone()
    broken["image_grid_thw"][0, 1] += 2
    assert proc.grids(broken)[0] is None and proc.grids(broken)[1] is not None


def test_text_has_no_grid_and_query_tokens_label_each_row(enc):
    text = "where is the wiring diagram?"
    (q,) = enc.encode_queries([text])
    (p,) = enc.encode_passages([text])
    assert q.grid is None and p.grid is None
    (labels,) = enc.query_tokens([text])
    assert len(labels) == q.multi.shape[0]
    assert "".join(labels) == "Query: " + text  # every row labelled, in order, prompt prefix included
    (plabels,) = enc.passage_tokens([text])
    assert "".join(plabels) == "Passage: " + text and len(plabels) == p.multi.shape[0]
    assert enc.query_tokens([]) == []
    with pytest.raises(Exception, match="list of strings"):
        enc.query_tokens(text)


def test_embedding_refuses_a_grid_that_does_not_fit():
    single, multi = np.ones(4, np.float32), np.ones((10, 4), np.float32)
    assert Embedding(single, multi).grid is None  # backward compatible: no grid by default
    assert Embedding(single, multi, PatchGrid(2, 2, 4)).grid.n_patches == 8
    with pytest.raises(ValueError, match="past the 10 token vectors"):
        Embedding(single, multi, PatchGrid(3, 2, 4))
    for bad in [dict(offset=-1, rows=1, cols=1), dict(offset=0, rows=0, cols=1), dict(offset=0, rows=1, cols=10**6),
                dict(offset=0.5, rows=1, cols=1), dict(offset=0, rows=True, cols=1),
                dict(offset=0, rows=1, cols=1, box=(0.5, 0, 0.5, 1)), dict(offset=0, rows=1, cols=1, box=(0, 0, 1, 2)),
                dict(offset=0, rows=1, cols=1, box=(0, 0, 1)), dict(offset=0, rows=1, cols=1, box=(0, 0, float("nan"), 1))]:
        with pytest.raises(ValueError):
            PatchGrid(**bad)
    with pytest.raises(ValueError, match="PatchGrid or None"):
        Embedding(single, multi, (0, 2, 2))
