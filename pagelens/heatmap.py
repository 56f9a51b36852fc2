"""Why a page matched: per image patch, how well it answers the query's tokens.

MaxSim scores a page by giving each query token its best-matching page token. For a page image
those tokens include one per 28 x 28 patch of the encoded image (``engine.types.PatchGrid`` says
where they sit), so the similarities of the query's tokens to the patch tokens form a heatmap over
the page: ``patch_scores`` [rows, cols] is, per patch, its best similarity over the query's tokens;
``token_scores`` [Tq, rows, cols] keeps every query token's own map, and each token has its best
patch (row, col) and score.

The grid covers the whole encoded image; the page itself is ``box`` within it (less than all of
it where the renderer padded a tiny or very long page). `Heatmap.overlay` takes a picture of the
page as PyMuPDF renders it, at any size, and maps the heatmap through the box onto it.

Pure numpy and PIL: nothing here loads a model.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pagelens.errors import PagelensError

REINDEX_HINT = ("re-index the document (`pagelens index PATH --index DIR`) to record its patch grid; pages "
                "brought as embeddings need an Embedding with a grid")
DEFAULT_ALPHA = 0.5


class HeatmapUnavailable(PagelensError):
    """The page was stored without a patch grid (an older index, or embeddings brought without
    one): its token vectors cannot be placed on the page."""

    def __init__(self, message: str = "this page was indexed without a patch grid: re-index to see heatmaps",
                 hint: str | None = REINDEX_HINT):
        super().__init__(message, hint)


# A perceptual dark-blue -> teal -> yellow -> red ramp (anchors of matplotlib's "turbo", simplified):
# cold patches stay readable under the blend, hot ones stand out. 256 distinct RGB entries.
_ANCHOR_AT = np.array([0.0, 0.15, 0.30, 0.45, 0.60, 0.75, 0.90, 1.0])
_ANCHOR_RGB = np.array([(48, 18, 59), (62, 108, 232), (27, 207, 212), (98, 252, 107), (210, 233, 53),
                        (254, 155, 45), (218, 56, 7), (122, 4, 3)], dtype=np.float64)


def _colormap() -> np.ndarray:
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, _ANCHOR_AT, _ANCHOR_RGB[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


COLORMAP = _colormap()  # [256, 3] uint8: value v in 0..1 is COLORMAP[round(v * 255)]


@dataclass(frozen=True)
class TokenMatch:
    index: int  # row of the query's multi-vector
    text: str  # the token as text ("token i" for a query given as an embedding)
    best: tuple[int, int]  # (row, col) of its best patch
    score: float  # its similarity to that patch


@dataclass(frozen=True, eq=False)
class Heatmap:
    """How a query's tokens match one page's image patches (see the module doc)."""

    page_id: int
    rows: int
    cols: int
    patch_scores: np.ndarray  # float32 [rows, cols]: per patch, the best similarity over query tokens
    token_scores: np.ndarray  # float32 [Tq, rows, cols]: per query token, its similarity to each patch
    tokens: tuple[str, ...]  # one label per query token
    score: float  # the page's MaxSim score for the query (over all its tokens, as search ranks it)
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # the page within the encoded image
    token: int | None = None  # the token the views show by default (None: all of them)

    @property
    def best_patches(self) -> np.ndarray:
        """int64 [Tq, 2]: per query token, the (row, col) of its best patch."""
        flat = self.token_scores.reshape(len(self.tokens), -1).argmax(axis=1)
        return np.stack([flat // self.cols, flat % self.cols], axis=1).astype(np.int64)

    @property
    def best_scores(self) -> np.ndarray:
        """float32 [Tq]: per query token, its similarity to its best patch."""
        return self.token_scores.reshape(len(self.tokens), -1).max(axis=1)

    def token_matches(self) -> list[TokenMatch]:
        best, scores = self.best_patches, self.best_scores
        return [TokenMatch(i, self.tokens[i], (int(best[i, 0]), int(best[i, 1])), float(scores[i]))
                for i in range(len(self.tokens))]

    def peak(self, token: int | None = None) -> tuple[int, int]:
        """(row, col) of the hottest patch: over all tokens, or for one."""
        grid = self.scores(token)
        flat = int(np.argmax(grid))
        return flat // self.cols, flat % self.cols

    def check_token(self, token: Any) -> int | None:
        """``token`` as a valid index into the query's tokens (None: all); PagelensError otherwise."""
        if token is None:
            return None
        n = len(self.tokens)
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= int(token) < n:
            raise PagelensError(f"token must be an integer from 0 to {n - 1} (the query has {n} tokens), got {token!r}",
                                "Leave it unset for all tokens, or pick one from the heatmap's token list.")
        return int(token)

    def scores(self, token: int | None = None) -> np.ndarray:
        """float32 [rows, cols]: ``patch_scores``, or one token's map (default: ``self.token``)."""
        token = self.check_token(self.token if token is None else token)
        return self.patch_scores if token is None else self.token_scores[token]

    def resample(self, width: int, height: int, token: int | None = None) -> np.ndarray:
        """float32 [height, width] in 0..1 (the grid's min..max): the heatmap over a picture of the
        page itself ``width`` x ``height`` pixels, mapped through ``box`` and interpolated
        bilinearly between patch centres."""
        width, height = int(width), int(height)
        if width < 1 or height < 1:
            raise PagelensError(f"cannot draw a heatmap {width} x {height} pixels", "Give a picture of at least 1 x 1.")
        grid = self.scores(token).astype(np.float32)
        low, high = float(grid.min()), float(grid.max())
        norm = (grid - low) / (high - low) if high > low else np.zeros_like(grid)
        x0, y0, x1, y1 = self.box
        # pixel centre -> fraction of the page -> fraction of the encoded image -> patch coordinates
        gx = (x0 + (x1 - x0) * (np.arange(width) + 0.5) / width) * self.cols - 0.5
        gy = (y0 + (y1 - y0) * (np.arange(height) + 0.5) / height) * self.rows - 0.5
        along_x = _interp_axis(norm, gx, axis=1)  # [rows, width]
        return _interp_axis(along_x, gy, axis=0).astype(np.float32)  # [height, width]

    def overlay(self, image, token: int | None = None, alpha: float = DEFAULT_ALPHA):
        """``image`` (a PIL image of the page, any size, as PyMuPDF renders it) with the heatmap
        blended over it: ``(1 - alpha) * page + alpha * COLORMAP[heat]``. Returns a new RGB image."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise PagelensError(f"overlay needs a PIL image of the page, got {type(image).__name__}",
                                "Render the page (e.g. with PyMuPDF) and pass it as a PIL image.")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise PagelensError(f"alpha must be a number from 0 to 1, got {alpha!r}", f"Use e.g. {DEFAULT_ALPHA}.")
        heat = self.resample(image.width, image.height, token)
        # colour by palette lookup and blend in PIL's C loops: a 2000 px page in a fraction of a second
        levels = Image.fromarray(np.clip(np.rint(heat * 255), 0, 255).astype(np.uint8), "L")
        levels = levels.convert("P") if levels.mode != "P" else levels
        levels.putpalette(COLORMAP.reshape(-1).tolist())
        return Image.blend(image.convert("RGB"), levels.convert("RGB"), float(alpha))

    def to_png(self, image, token: int | None = None, alpha: float = DEFAULT_ALPHA) -> bytes:
        """PNG bytes of ``overlay(image, token, alpha)``."""
        out = io.BytesIO()
        self.overlay(image, token, alpha).save(out, format="PNG")
        return out.getvalue()

    def to_dict(self, token: int | None = None) -> dict:
        """JSON-ready, as docs/http-api.md gives it: ``patch_scores`` is the map the PNG shows (all
        tokens, or ``token``'s); ``tokens`` lists every query token with its best patch."""
        grid = self.scores(token)
        return {
            "page_id": int(self.page_id),
            "rows": int(self.rows),
            "cols": int(self.cols),
            "patch_scores": [[round(float(v), 6) for v in row] for row in grid],
            "tokens": [{"index": m.index, "text": m.text, "best": [m.best[0], m.best[1]], "score": round(m.score, 6)}
                       for m in self.token_matches()],
            "score": round(float(self.score), 6),
            "token": self.check_token(self.token if token is None else token),
            "box": [round(float(v), 6) for v in self.box],
        }


def _interp_axis(values: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` along ``axis`` at fractional indices ``coords``, clamped
    at the edges (the outer half of each border patch keeps its value)."""
    n = values.shape[axis]
    c = np.clip(coords, 0.0, n - 1)
    i0 = np.floor(c).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    frac = (c - i0).astype(np.float32)
    a, b = np.take(values, i0, axis=axis), np.take(values, i1, axis=axis)
    shape = [1, 1]
    shape[axis] = len(coords)
    frac = frac.reshape(shape)
    return a * (1.0 - frac) + b * frac


def compute_heatmap(page_id: int, query: np.ndarray, page: np.ndarray, grid, tokens: Sequence[str] | None = None,
                    token: int | None = None) -> Heatmap:
    """The heatmap of ``query`` (float [Tq, D]) over ``page`` (float [T, D], its multi-vector),
    whose patch tokens sit where ``grid`` (a PatchGrid) says. ``tokens``: a label per query row
    (default "token i"). Similarities are dot products, as MaxSim scores them."""
    if grid is None:
        raise HeatmapUnavailable()
    q = np.asarray(query, dtype=np.float32)
    d = np.asarray(page, dtype=np.float32)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1] or q.shape[0] == 0:
        raise PagelensError(f"a query of shape {q.shape} cannot be compared with a page of shape {d.shape}",
                            "Use a query embedding of the index's width with at least one token.")
    if not grid.fits(d.shape[0]):
        raise HeatmapUnavailable(
            f"page {page_id}'s patch grid ({grid.rows} x {grid.cols} at token {grid.offset}) does not fit its "
            f"{d.shape[0]} token vectors: re-index to see heatmaps")
    labels = tuple(tokens) if tokens is not None else tuple(f"token {i}" for i in range(q.shape[0]))
    if len(labels) != q.shape[0]:
        labels = tuple(f"token {i}" for i in range(q.shape[0]))  # labels that do not line up would mislead
    sims = q @ d.T  # [Tq, T]
    patches = sims[:, grid.offset:grid.offset + grid.n_patches].reshape(q.shape[0], grid.rows, grid.cols)
    heat = Heatmap(page_id=int(page_id), rows=grid.rows, cols=grid.cols,
                   patch_scores=np.ascontiguousarray(patches.max(axis=0), dtype=np.float32),
                   token_scores=np.ascontiguousarray(patches, dtype=np.float32), tokens=labels,
                   score=float(sims.max(axis=1).sum()), box=tuple(grid.box))
    if token is not None:
        heat = dataclasses.replace(heat, token=heat.check_token(token))
    return heat


# ---- a hit's page with its heatmap (`pagelens show`) ---------------------------------------------

MIN_WIDTH, MAX_WIDTH, DEFAULT_WIDTH = 32, 2000, 800


@dataclass(frozen=True, eq=False)
class ShownHit:
    """What `show` found and drew: the hit, its heatmap, the page as rendered, and the overlay."""

    hit: Any  # pagelens.results.Hit
    heatmap: Heatmap
    page: Any  # PIL image of the page, rendered from the indexed file
    image: Any  # PIL image: ``page`` with the heatmap over it

    def to_dict(self) -> dict:
        return {"rank": self.hit.rank, "score": self.hit.score, "path": self.hit.path, "page": self.hit.page,
                "page_id": self.hit.page_id, "width": self.image.width, "height": self.image.height,
                "heatmap": self.heatmap.to_dict()}


def show(index, query: str, *, rank: int = 1, width: int = DEFAULT_WIDTH, token: int | None = None,
         alpha: float = DEFAULT_ALPHA, candidates: int | None = None, render_timeout: float | None = None) -> ShownHit:
    """Search ``index`` (a `pagelens.Index`) for ``query``, take the hit at ``rank`` (from 1),
    render its page from the indexed file at ``width`` pixels (only while the file's SHA-256 is
    still the one recorded at indexing) and draw its heatmap over it.

    Raises PagelensError for a rank past the hits, `HeatmapUnavailable` for a page without a grid,
    and `pagelens.pages` errors (FileMissingError, PageChangedError, RenderFailedError) when the
    page cannot be shown."""
    from PIL import Image

    from pagelens.api import clean_query
    from pagelens.pages import PageRenderer

    for name, value, low, high in (("rank", rank, 1, None), ("width", width, MIN_WIDTH, MAX_WIDTH)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (high and value > high):
            span = f"at least {low}" if high is None else f"from {low} to {high}"
            raise PagelensError(f"{name} must be an integer {span}, got {value!r}", f"Pass a {name} {span}.")
    text = clean_query(query)
    encoder = index.encoder  # NoModelError for an index of embeddings brought from elsewhere
    # encode once: the same embedding ranks the pages and explains the hit
    (embedding,) = encoder.encode_queries([text], batch_size=1, show_progress_bar=False)
    hits = index.search_embedding(embedding, k=int(rank), candidates=candidates)
    if len(hits) < rank:
        raise PagelensError(
            f"the search found {len(hits)} page(s), so there is no hit at rank {rank}",
            "Ask for a smaller --rank." if hits else "Add pages with `pagelens index PATH... --index DIR` first.")
    hit = hits[int(rank) - 1]
    heat = index.explain(embedding, hit.page_id, token=token)
    labels = encoder.query_tokens([text])[0] if hasattr(encoder, "query_tokens") else None
    if labels is not None and len(labels) == len(heat.tokens):
        heat = dataclasses.replace(heat, tokens=tuple(labels))
    info = index.page(hit.page_id)
    from indexer.sources import file_kind

    kwargs = {} if render_timeout is None else {"timeout": float(render_timeout)}
    renderer = PageRenderer(**kwargs)
    try:
        png, _w, _h = renderer.render(info.path, info.sha256 or "", file_kind(info.path) or "pdf", info.page, int(width))
    finally:
        renderer.close()
    with Image.open(io.BytesIO(png)) as raw:
        page = raw.convert("RGB")
    return ShownHit(hit=hit, heatmap=heat, page=page, image=heat.overlay(page, alpha=alpha))
