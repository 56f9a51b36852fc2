"""Heatmaps test the geometry, not just the plumbing.

PDFs with a dark square at a known place (portrait, landscape, tiny, and a strip the renderer must
pad) go through the real pipeline (render worker, padding, store) with an encoder that uses the real
InputProcessor of the tiny checkpoint (smart_resize, patch order, the image prompt) and gives each
image token a vector made from its own 28 x 28 patch's pixels: how dark it is, plus a code of its
position. A query token along "dark" must then peak on the patch holding the square, and the
overlay on a fresh rendering of the page at another width must be hottest on the square.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import pagelens
from engine.config import read_config
from engine.processor import InputProcessor
from engine.testing import write_tiny_checkpoint
from engine.types import Embedding, PatchGrid
from pagelens.heatmap import COLORMAP, Heatmap, HeatmapUnavailable, compute_heatmap
from indexer.store import Store
from pagelens.pages import NoSuchPageError

DIM = 16
_DARK, _ROW, _COL, _OTHER = 0, (1, 2), (3, 4), DIM - 1


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def position_code(rows: int, cols: int) -> np.ndarray:
    """[rows, cols, DIM]: (row, col) on two circles, so the code of one patch best matches itself."""
    code = np.zeros((rows, cols, DIM), np.float32)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    code[..., _ROW[0]], code[..., _ROW[1]] = np.cos(2 * np.pi * r / max(rows, 2)), np.sin(2 * np.pi * r / max(rows, 2))
    code[..., _COL[0]], code[..., _COL[1]] = np.cos(2 * np.pi * c / max(cols, 2)), np.sin(2 * np.pi * c / max(cols, 2))
    return code


class PatchPixelEncoder:
    """The real processor's geometry; each image token's vector comes from its own patch's pixels.

    The processor hands over ``pixel_values`` 4 rows (one 2 x 2 merge block of 14 px patches) per
    merged token, in the order the model embeds them; the grid comes from the processor's
    ``grids``, as the real encoder's does. So if the grid said the wrong place, or the order were
    not row-major, the heatmap would peak elsewhere."""

    def __init__(self, folder):
        cfg = read_config(folder / "config.json")
        self.processor = InputProcessor.load(folder, max_pixels=None, image_token_id=cfg.image_token_id)
        self.max_pixels = self.processor.max_pixels
        self.single_dim = self.multi_dim = DIM
        self.identity = {"model": "patch-pixels", "revision": "1", "task": "retrieval", "single_dim": DIM,
                         "multi_dim": DIM, "max_pixels": self.max_pixels}
        self.grids_seen: list[PatchGrid] = []

    def encode_images(self, images, batch_size=8, show_progress_bar=None):
        return [self._one(img) for img in images]

    def _one(self, img) -> Embedding:
        batch = self.processor.image_batch([img.convert("RGB")])
        (grid,) = self.processor.grids(batch)
        assert grid is not None
        self.grids_seen.append(grid)
        n = int(batch["attention_mask"].sum())
        pixels = batch["pixel_values"].numpy().reshape(grid.n_patches, -1)  # one merged patch per row
        darkness = np.clip((1.9 - pixels.mean(axis=1)) / 3.7, 0.0, 1.0)  # CLIP-normalised white ~1.9, black ~-1.8
        multi = np.zeros((n, DIM), np.float32)
        multi[:, _OTHER] = 1.0  # prompt tokens: unrelated to anything on the page
        image = 0.3 * position_code(grid.rows, grid.cols).reshape(grid.n_patches, DIM)
        image[:, _DARK] = darkness
        image[:, _OTHER] = 0.05
        multi[grid.offset:grid.offset + grid.n_patches] = image
        multi = _unit(multi)
        return Embedding(single=_unit(multi.mean(axis=0)), multi=multi, grid=grid)


def dark_query(rows: int | None = None, cols: int | None = None, at: tuple[int, int] | None = None) -> Embedding:
    """Token 0 asks for "dark"; token 1 (when ``at`` is given) for the position of patch ``at``."""
    tokens = [np.eye(DIM, dtype=np.float32)[_DARK]]
    if at is not None:
        tokens.append(_unit(position_code(rows, cols)[at]))
    multi = np.stack(tokens)
    return Embedding(single=_unit(multi.mean(axis=0)), multi=multi)


# (page width, height in points), the dark square (x0, y0, x1, y1) in points
PAGES = {
    "portrait": ((300, 400), (190, 60, 260, 130)),
    "landscape": ((520, 260), (40, 150, 130, 240)),
    "tiny": ((10, 10), (5, 5, 10, 10)),  # drawn at 28 x 28 px, encoded as 2 x 2 patches: the square is one
    "strip": ((1000, 5), (850, 0, 900, 5)),  # 200:1 > the cap's aspect limit: padded above and below
}


def _pdf(path, size, square):
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page(width=size[0], height=size[1])
    page.draw_rect(pymupdf.Rect(*square), color=None, fill=(0, 0, 0))
    data = doc.tobytes()
    doc.close()
    path.write_bytes(data)
    return str(path)


def fresh_render(path: str, width: int):
    """The page as the server and `pagelens show` draw it: its own rectangle, at ``width`` pixels."""
    import pymupdf
    from PIL import Image

    with pymupdf.open(path) as doc:
        page = doc.load_page(0)
        zoom = width / page.rect.width
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples), zoom


def heat_from_overlay(overlay, page, alpha: float) -> np.ndarray:
    """Undo the blend: the colour each pixel was given, looked up in the colour map -> 0..1."""
    over = np.asarray(overlay, np.float32)
    base = np.asarray(page, np.float32)
    colour = (over - (1 - alpha) * base) / alpha
    lut = COLORMAP.astype(np.float32)
    flat = colour.reshape(-1, 3)
    best = np.empty(len(flat), np.int64)
    for start in range(0, len(flat), 65536):  # nearest colour-map entry, in chunks
        chunk = flat[start:start + 65536]
        best[start:start + 65536] = ((chunk[:, None, :] - lut[None]) ** 2).sum(-1).argmin(1)
    return (best / 255.0).reshape(over.shape[:2])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "jina-v4-tiny")


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("heat")
    docs = root / "docs"
    docs.mkdir()
    paths = {name: _pdf(docs / f"{name}.pdf", size, square) for name, (size, square) in PAGES.items()}
    encoder = PatchPixelEncoder(tiny_dir)
    index = pagelens.Index.create(root / "idx", encoder=encoder)
    report = index.add([docs])
    assert report.outcome == "all_indexed", report.failed
    index.close()
    index = pagelens.Index.open(root / "idx", encoder=encoder)
    store = Store.open(root / "idx")  # a second reader: the catalogue's own view of the pages
    ids = {name: int(store.page_ids_of(path)[0]) for name, path in paths.items()}
    yield index, paths, ids, encoder, store
    store.close()
    index.close()


def _square_patches(heat: Heatmap, size, square) -> set[tuple[int, int]]:
    """Patches whose area on the page overlaps the square (through the box)."""
    x0, y0, x1, y1 = heat.box
    out = set()
    for r in range(heat.rows):
        for c in range(heat.cols):
            # the patch's extent in fractions of the page
            px0, px1 = ((c / heat.cols) - x0) / (x1 - x0), (((c + 1) / heat.cols) - x0) / (x1 - x0)
            py0, py1 = ((r / heat.rows) - y0) / (y1 - y0), (((r + 1) / heat.rows) - y0) / (y1 - y0)
            sx0, sy0, sx1, sy1 = (square[0] / size[0], square[1] / size[1], square[2] / size[0], square[3] / size[1])
            if px0 < sx1 and sx0 < px1 and py0 < sy1 and sy0 < py1:
                out.add((r, c))
    return out


@pytest.mark.parametrize("name", list(PAGES))
def test_the_peak_lands_on_the_patch_holding_the_square(built, name):
    index, _paths, ids, _encoder, store = built
    size, square = PAGES[name]
    heat = index.explain(dark_query(), ids[name])
    assert heat.patch_scores.shape == (heat.rows, heat.cols) and heat.patch_scores.dtype == np.float32
    peak = heat.peak()
    assert peak in _square_patches(heat, size, square), (name, peak, heat.rows, heat.cols, heat.box)
    # and it is a clear peak: the square's darkest patch against the page's white
    assert float(heat.patch_scores[peak]) > float(np.median(heat.patch_scores)) + 0.3


def test_padded_pages_record_where_the_page_sits(built):
    index, _paths, ids, _encoder, store = built
    strip = store.page_grid(ids["strip"])
    assert strip.box[0] == pytest.approx(0.0, abs=1e-3) and strip.box[2] == pytest.approx(1.0, abs=1e-3)
    assert 0.05 < strip.box[1] < 0.45 and 0.55 < strip.box[3] < 0.95  # white above and below the strip
    assert store.page_grid(ids["portrait"]).box == (0.0, 0.0, 1.0, 1.0)
    tiny = store.page_grid(ids["tiny"])
    assert (tiny.rows, tiny.cols) == (2, 2)  # 28 x 28 px, which smart_resize brings to its 56 x 56 minimum


@pytest.mark.parametrize("name,width", [("portrait", 450), ("landscape", 1100), ("tiny", 300), ("strip", 2400)])
def test_the_overlays_hottest_pixels_land_on_the_square_at_another_width(built, name, width):
    index, paths, ids, _encoder, _store = built
    size, square = PAGES[name]
    heat = index.explain(dark_query(), ids[name])
    page, zoom = fresh_render(paths[name], width)
    alpha = 0.5
    overlay = heat.overlay(page, alpha=alpha)
    assert overlay.size == page.size and overlay.mode == "RGB"
    recovered = heat_from_overlay(overlay, page, alpha)
    expected = heat.resample(page.width, page.height)
    assert np.abs(recovered - expected).mean() < 0.02  # the overlay shows exactly the resampled heat
    hottest = np.argwhere(recovered >= recovered.max() - 0.02)
    sx0, sy0, sx1, sy1 = (v * zoom for v in square)
    slack = 2.0  # pixels: rounding of the page's pixel size
    ys, xs = hottest[:, 0] + 0.5, hottest[:, 1] + 0.5
    inside = (xs >= sx0 - slack) & (xs <= sx1 + slack) & (ys >= sy0 - slack) & (ys <= sy1 + slack)
    assert inside.mean() > 0.99, (name, hottest.min(0), hottest.max(0), (sx0, sy0, sx1, sy1))
    # the page far from the square stays cold
    far = recovered[: max(1, int(sy0) // 2), :] if sy0 > page.height / 3 else recovered[int(sy1) + (page.height - int(sy1)) // 2:, :]
    if far.size and name != "strip":
        assert far.max() < 0.6


def test_each_query_token_gets_its_own_best_patch(built):
    index, _paths, ids, _encoder, store = built
    grid = store.page_grid(ids["portrait"])
    target = (grid.rows - 1, 0)  # bottom-left, far from the square (top right)
    heat = index.explain(dark_query(grid.rows, grid.cols, at=target), ids["portrait"])
    assert heat.token_scores.shape == (2, grid.rows, grid.cols)
    matches = heat.token_matches()
    assert [m.text for m in matches] == ["token 0", "token 1"]  # an embedding has no token strings
    size, square = PAGES["portrait"]
    assert matches[0].best in _square_patches(heat, size, square)
    assert matches[1].best == target
    assert matches[1].score == pytest.approx(float(heat.token_scores[1][target]))
    # all tokens: per patch the best over tokens; one token: its own map
    np.testing.assert_allclose(heat.patch_scores, heat.token_scores.max(axis=0))
    assert heat.peak(token=1) == target
    one = index.explain(dark_query(grid.rows, grid.cols, at=target), ids["portrait"], token=1)
    np.testing.assert_array_equal(one.scores(), heat.token_scores[1])
    data = json.loads(json.dumps(one.to_dict()))
    assert set(data) >= {"page_id", "rows", "cols", "patch_scores", "tokens", "score"}
    assert data["page_id"] == ids["portrait"] and (data["rows"], data["cols"]) == (grid.rows, grid.cols)
    assert np.allclose(np.array(data["patch_scores"]), heat.token_scores[1], atol=1e-5)
    assert data["tokens"][1] == {"index": 1, "text": "token 1", "best": list(target), "score": pytest.approx(matches[1].score, abs=1e-5)}
    # the page's score is its MaxSim score, the one search ranks by
    hit = [h for h in index.search_embedding(dark_query(grid.rows, grid.cols, at=target), k=10, exhaustive=True)
           if h.page_id == ids["portrait"]][0]
    assert data["score"] == pytest.approx(hit.score, abs=1e-3)


def test_bad_token_and_unknown_pages_are_clear_errors(built):
    index, _paths, ids, _encoder, store = built
    with pytest.raises(pagelens.PagelensError, match="token must be an integer from 0 to 0"):
        index.explain(dark_query(), ids["portrait"], token=1)
    heat = index.explain(dark_query(), ids["portrait"])
    for bad in (-1, 1, True, "0", 0.0):
        with pytest.raises(pagelens.PagelensError, match="token must be"):
            heat.overlay(fresh_render(built[1]["portrait"], 100)[0], token=bad)
    for bad in (10**9, -1, 2**63, "1", None, 1.0):
        with pytest.raises(NoSuchPageError):
            index.explain(dark_query(), bad)
    with pytest.raises(pagelens.BadEmbeddingError):
        index.explain(Embedding(single=np.ones(DIM, np.float32), multi=np.ones((1, DIM + 1), np.float32)), ids["tiny"])
    with pytest.raises(pagelens.PagelensError, match="alpha"):
        heat.overlay(fresh_render(built[1]["portrait"], 100)[0], alpha=2.0)


def test_bring_your_own_pages_without_a_grid_say_reindex_and_with_one_work(tmp_path, built):
    _index, _paths, _ids, encoder, _store = built
    byo = pagelens.Index.create(tmp_path / "byo", single_dim=DIM, multi_dim=DIM)
    plain = Embedding(single=_unit(np.ones(DIM, np.float32)), multi=_unit(np.ones((6, DIM), np.float32)))
    (no_grid,) = byo.add_embeddings("s3://bucket/a.pdf", [plain])
    with pytest.raises(HeatmapUnavailable) as info:
        byo.explain(dark_query(), no_grid)
    assert info.value.message == "this page was indexed without a patch grid: re-index to see heatmaps"
    assert "grid" in info.value.hint
    # a page brought with its grid explains like an indexed one
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (280, 280), "white")
    ImageDraw.Draw(img).rectangle([0, 196, 83, 279], fill="black")  # bottom-left 3 x 3 patches
    (emb,) = encoder.encode_images([img])
    (with_grid,) = byo.add_embeddings("s3://bucket/b.pdf", [emb])
    assert byo.page(with_grid).heatmap and not byo.page(no_grid).heatmap
    heat = byo.explain(dark_query(), with_grid)
    assert heat.peak()[0] >= emb.grid.rows - 3 and heat.peak()[1] < 3
    with pytest.raises(pagelens.NoModelError):  # text needs a model to become an embedding
        byo.explain("dark", with_grid)
    byo.close()


def test_an_older_index_still_searches_and_its_heatmaps_say_reindex(tmp_path, built):
    import sqlite3

    _index, paths, _ids, encoder, _store = built
    idx = pagelens.Index.create(tmp_path / "old", encoder=encoder)
    idx.add([paths["portrait"]])
    idx.close()
    db = sqlite3.connect(tmp_path / "old" / "catalogue.sqlite")  # what pagelens wrote before grids
    for column in ("grid_offset", "grid_rows", "grid_cols", "box_x0", "box_y0", "box_x1", "box_y1"):
        db.execute(f"ALTER TABLE pages DROP COLUMN {column}")
    db.execute("DELETE FROM schema_migrations WHERE version = 3")
    db.commit()
    db.close()
    old = pagelens.Index.open(tmp_path / "old")
    (hit,) = old.search_embedding(dark_query(), k=1)
    assert hit.path == paths["portrait"]
    with pytest.raises(HeatmapUnavailable) as info:
        old.explain(dark_query(), hit.page_id)
    assert "re-index" in info.value.message and "pagelens index" in info.value.hint
    assert "pagelens remove" in info.value.hint  # an unchanged file would be skipped otherwise
    assert old.page(hit.page_id).heatmap is False
    old.close()


def test_compute_heatmap_on_hand_made_vectors():
    # 2 prompt tokens, a 2 x 3 grid, 1 trailing token; 2 query tokens
    page = np.zeros((9, 2), np.float32)
    page[2:8] = [[1, 0], [0, 1], [0.5, 0.5], [0, 0], [0.2, 0.9], [0.9, 0.1]]
    page[0] = page[8] = [3, 3]  # prompt tokens match better than any patch: MaxSim counts them, the map does not
    query = np.array([[1, 0], [0, 1]], np.float32)
    heat = compute_heatmap(7, query, page, PatchGrid(2, 2, 3), ["a", "b"])
    np.testing.assert_allclose(heat.token_scores[0], [[1, 0, 0.5], [0, 0.2, 0.9]])
    np.testing.assert_allclose(heat.patch_scores, [[1, 1, 0.5], [0, 0.9, 0.9]])
    assert [(m.text, m.best) for m in heat.token_matches()] == [("a", (0, 0)), ("b", (0, 1))]
    assert heat.score == pytest.approx(6.0)
    with pytest.raises(HeatmapUnavailable):
        compute_heatmap(7, query, page[:7], PatchGrid(2, 2, 3))  # the grid runs past the tokens
    with pytest.raises(HeatmapUnavailable):
        compute_heatmap(7, query, page, None)


def test_resample_maps_through_the_box_of_a_padded_page():
    # the page is the right half of the encoded image (the left half was padding)
    grid = PatchGrid(0, 1, 4, box=(0.5, 0.0, 1.0, 1.0))
    page = np.array([[0, 0], [0, 0], [0, 0], [1, 0]], np.float32)  # patch 3 is the hot one
    heat = compute_heatmap(1, np.array([[1, 0]], np.float32), page, grid)
    # pixel centres at page fractions 1/8, 3/8, 5/8, 7/8 -> patch coordinates 1.75, 2.25, 2.75, 3.25
    np.testing.assert_allclose(heat.resample(4, 1)[0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(heat.resample(4, 3), np.repeat(heat.resample(4, 1), 3, axis=0))
    flat = compute_heatmap(1, np.array([[1, 0]], np.float32), np.zeros((4, 2), np.float32), PatchGrid(0, 1, 4))
    assert not flat.resample(8, 2).any()  # no contrast: nothing is hot
