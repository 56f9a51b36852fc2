"""SourceFile -> rendered pages, one at a time (a 2,000-page PDF never sits in memory whole).

PDF pages are rasterised by PyMuPDF at ``dpi``, scaled down when the result would exceed
``max_pixels`` (an 18000 x 36000 pt page becomes a few megapixels, not 2.6 gigapixels) and up when
a side would fall under ``MIN_SIDE`` pixels (a 3 pt page still gives the encoder something to see).
Image files are one page each, under the same cap. Failures are typed ``PdfError`` subclasses.

Every page comes out in a shape the Qwen2.5-VL image processor accepts: both sides at least
``MIN_SIDE`` and long/short at most ``max_aspect(cap)`` (``MAX_ASPECT`` = 200, less when the cap is
too small for a 200:1 page with a ``MIN_SIDE`` short side), within the pixel cap. A page or image
longer than that (a 2 x 600 pt strip, a 1 x 60000 px scan line) is drawn as large as the cap allows
and padded with white on its short side; it is never stretched.

A page tree whose /Count lies (MuPDF refuses to open it, or finds no page) is recounted from its
/Kids and the real pages are indexed; a tree that loops back on itself is a ``BrokenFileError``.

This module renders in the calling process, which MuPDF cannot interrupt; the indexing pipeline
calls it from the child process of ``indexer.render_worker``, under a time and memory budget.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Iterator

from PIL import Image

from indexer.errors import (
    BrokenFileError,
    EmptyDocumentError,
    EncryptedError,
    NotAPdfError,
    PdfError,
    UnreadableError,
    VanishedError,
)
from indexer.sources import SourceFile

DEFAULT_DPI = 144
DEFAULT_MAX_PIXELS = 12_000_000
MIN_SIDE = 28  # the smallest side the Qwen2.5-VL image processor accepts
MAX_ASPECT = 200  # the longest long/short ratio it accepts ("aspect ratio must be smaller than 200")
PAD_COLOUR = (255, 255, 255)
_MAX_TREE_NODES = 1_000_000  # page-tree nodes walked when recounting a lying /Count


@dataclass
class RenderedPage:
    page_number: int  # from 1
    image: Image.Image  # RGB
    width: int
    height: int
    # (x0, y0, x1, y1) pixels of ``image`` showing the page itself; None: all of it. Less than all
    # where a tiny or very long page was padded to a legal shape: heatmaps map through it.
    content: tuple[int, int, int, int] | None = None

    def content_fractions(self) -> tuple[float, float, float, float]:
        """``content`` as fractions of the image (what a patch grid over this image records)."""
        if self.content is None or self.width <= 0 or self.height <= 0:
            return (0.0, 0.0, 1.0, 1.0)
        x0, y0, x1, y1 = self.content
        return (x0 / self.width, y0 / self.height, x1 / self.width, y1 / self.height)


# --- shapes --------------------------------------------------------------------------------------


def max_aspect(max_pixels: int) -> float:
    """The longest long/short ratio a page may have: 200, or less when a 200:1 page with a
    ``MIN_SIDE`` short side would not fit under ``max_pixels``."""
    return max(1.0, min(float(MAX_ASPECT), max_pixels / (MIN_SIDE * MIN_SIDE)))


def _longest_padded_side(max_pixels: int) -> float:
    """The longest side a padded (too elongated) page may have: its canvas, ``L`` by
    ``max(MIN_SIDE, ceil(L / aspect))``, stays under the cap even after rounding."""
    a = max_aspect(max_pixels)
    by_ratio = (-a + math.sqrt(a * a + 4 * a * max_pixels)) / 2  # L * (L / a + 1) <= cap
    return max(1.0, min(by_ratio, max_pixels / MIN_SIDE) - 2)  # 2 px for MuPDF's outward rounding


def content_scale(width: float, height: float, max_pixels: int) -> float:
    """The factor taking content of ``width`` x ``height`` (pixels at the target resolution) to the
    size it is drawn at: down to the pixel cap, up (within the cap) to ``MIN_SIDE``, and down again
    for content too elongated to be legal, whose long side must leave room for the padding."""
    width, height = max(width, 1e-3), max(height, 1e-3)
    area = width * height
    fit = math.sqrt(max_pixels / area)
    scale = min(1.0, fit)
    short, long = min(width, height), max(width, height)
    if short * scale < MIN_SIDE:
        scale = min(MIN_SIDE / short, fit)  # never beyond the cap
    if long / short > max_aspect(max_pixels):
        scale = min(scale, _longest_padded_side(max_pixels) / long)
    return scale


def zoom_for(width_pt: float, height_pt: float, dpi: float, max_pixels: int) -> float:
    """The PDF-points -> pixels factor: ``dpi`` capped by ``max_pixels``, floored by ``MIN_SIDE``
    (and lowered for a page too elongated to be legal; it is padded afterwards, see ``legal_size``)."""
    base = dpi / 72.0
    return base * content_scale(max(width_pt, 1e-3) * base, max(height_pt, 1e-3) * base, max_pixels)


def legal_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The canvas a ``width`` x ``height`` picture is padded to: every side >= ``MIN_SIDE`` and the
    short side >= long / ``max_aspect``."""
    a = max_aspect(max_pixels)
    w, h = max(width, MIN_SIDE), max(height, MIN_SIDE)
    if w >= h:
        h = max(h, math.ceil(w / a))
    else:
        w = max(w, math.ceil(h / a))
    return w, h


def content_box(width: int, height: int, max_pixels: int) -> tuple[int, int, int, int]:
    """Where a ``width`` x ``height`` picture lands on its ``legal_size`` canvas (``pad_to_legal``
    centres it): (x0, y0, x1, y1) in canvas pixels."""
    size = legal_size(width, height, max_pixels)
    x0, y0 = (size[0] - width) // 2, (size[1] - height) // 2
    return x0, y0, x0 + width, y0 + height


def pad_to_legal(img: Image.Image, max_pixels: int) -> Image.Image:
    """``img`` centred on a white canvas of ``legal_size`` (``img`` itself when it already is)."""
    size = legal_size(img.width, img.height, max_pixels)
    if size == img.size:
        return img
    canvas = Image.new("RGB", size, PAD_COLOUR)
    canvas.paste(img, content_box(img.width, img.height, max_pixels)[:2])
    return canvas


def fit_image(img: Image.Image, max_pixels: int) -> Image.Image:
    """An RGB copy of ``img`` scaled by ``content_scale`` and padded to a legal shape."""
    return fit_image_boxed(img, max_pixels)[0]


def fit_image_boxed(img: Image.Image, max_pixels: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """``fit_image`` and where the picture sits in it (``content_box``)."""
    img = img.convert("RGB")
    w, h = img.size
    scale = content_scale(w, h, max_pixels)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        img = img.resize(size, Image.Resampling.LANCZOS)
    return pad_to_legal(img, max_pixels), content_box(img.width, img.height, max_pixels)


cap_image = fit_image  # the earlier name


# --- documents -----------------------------------------------------------------------------------


class DocumentPages:
    """An opened input file: ``page_count`` now, pages one at a time by iterating. Close when done.

    ``data``: the file's bytes, already read (and hashed) by the caller; rendered instead of
    reading the file again, so the pages are exactly of the content that was hashed."""

    def __init__(self, source: SourceFile, *, dpi: float = DEFAULT_DPI, max_pixels: int | None = None,
                 password: str | None = None, data: bytes | None = None):
        self.source, self.dpi = source, dpi
        self.max_pixels = int(max_pixels or DEFAULT_MAX_PIXELS)
        self._data = data
        self._doc = None
        if source.kind == "image":
            self.page_count = 1
            return
        self._doc = _open_pdf(source.path, password, data)
        try:
            self.page_count = document_page_count(self._doc, source.path)
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[RenderedPage]:
        if self._doc is None:
            yield _render_image(self.source.path, self.max_pixels, self._data)
            return
        for index in range(self.page_count):
            yield _render_pdf_page(self._doc, index, self.source.path, self.dpi, self.max_pixels)

    def close(self) -> None:
        if self._doc is not None:
            self._doc.close()
            self._doc = None

    def __enter__(self) -> "DocumentPages":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def render_pages(
    source: SourceFile,
    *,
    dpi: float = DEFAULT_DPI,
    max_pixels: int | None = None,
    password: str | None = None,
) -> Iterator[RenderedPage]:
    """Yield the pages of ``source`` in order. Raises a PdfError (possibly after some pages)."""
    with DocumentPages(source, dpi=dpi, max_pixels=max_pixels, password=password) as pages:
        yield from pages


def document_page_count(doc, path: str) -> int:
    """``doc.page_count``, or the real count when the page tree's /Count lies; raises
    ``EmptyDocumentError`` / ``BrokenFileError`` when there is no page to index."""
    try:
        count = doc.page_count
    except MemoryError:
        raise
    except Exception as exc:  # "Invalid number of pages": a /Count that is negative or past the kids
        if is_out_of_memory(exc):
            raise MemoryError(str(exc)) from None
        count = None
    if count:
        return count
    recounted = _recount_page_tree(doc, path)
    if recounted:
        try:
            count = doc.page_count
        except Exception as exc:
            raise BrokenFileError(path, f"the page tree is damaged: {_one_line(exc)}") from None
        if count:
            return count
    if count is None:
        raise BrokenFileError(path, "the page tree is damaged: it holds no page")
    if doc.is_repaired:
        raise BrokenFileError(path, "damaged beyond repair: no page could be recovered")
    raise EmptyDocumentError(path, "the PDF has no pages")


_REF = re.compile(r"(\d+)\s+\d+\s+R")


def _recount_page_tree(doc, path: str) -> int:
    """Count the leaves under the catalogue's /Pages and write the true /Count into every node
    (of MuPDF's in-memory copy; the file is not touched). Returns the page count (0 if none)."""
    try:
        kind, value = doc.xref_get_key(doc.pdf_catalog(), "Pages")
    except Exception:
        return 0
    if kind != "xref":
        return 0
    visited = [0]

    def count(xref: int, ancestors: tuple[int, ...]) -> int:
        if xref in ancestors:
            raise BrokenFileError(path, "the page tree is damaged: it loops back on itself")
        visited[0] += 1
        if visited[0] > _MAX_TREE_NODES or len(ancestors) > 256:
            raise BrokenFileError(path, "the page tree is damaged: too large or too deep")
        kids_kind, kids = doc.xref_get_key(xref, "Kids")
        if kids_kind != "array":
            return 1 if doc.xref_get_key(xref, "Type")[1] == "/Page" else 0
        total = sum(count(int(ref), ancestors + (xref,)) for ref in _REF.findall(kids))
        doc.xref_set_key(xref, "Count", str(total))
        return total

    try:
        return count(int(value.split()[0]), ())
    except (PdfError, MemoryError):
        raise
    except Exception as exc:
        raise BrokenFileError(path, f"the page tree is damaged: {_one_line(exc)}") from None


def is_out_of_memory(exc: BaseException) -> bool:
    """A Python MemoryError, or MuPDF failing to allocate ("malloc (N bytes) failed")."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return type(exc).__name__.startswith("FzError") and ("malloc" in text or "out of memory" in text
                                                         or "realloc" in text or "calloc" in text)


def render_pdf_pixels(doc, index: int, path: str, dpi: float, cap: int):
    """Page ``index`` as (width, height, RGB bytes-like, owner): the bytes live as long as ``owner``.

    Already a legal shape (nearly every page): the pixmap's own samples, no copy. Otherwise the
    padded image's bytes. Raises MemoryError when MuPDF runs out of memory."""
    return render_pdf_pixels_boxed(doc, index, path, dpi, cap)[:4]


def render_pdf_pixels_boxed(doc, index: int, path: str, dpi: float, cap: int):
    """``render_pdf_pixels`` plus the page's ``content_box`` in the (possibly padded) image."""
    import pymupdf

    try:
        page = doc.load_page(index)
        rect = page.rect
        zoom = zoom_for(rect.width, rect.height, dpi, cap)
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
    except PdfError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # MuPDF raises plain RuntimeErrors for damaged content
        if is_out_of_memory(exc):
            raise MemoryError(str(exc)) from None
        raise BrokenFileError(path, f"page {index + 1} cannot be rendered: {_one_line(exc)}") from None
    w, h = pix.width, pix.height
    box = content_box(w, h, cap)
    if legal_size(w, h, cap) == (w, h):
        return w, h, pix.samples_mv, pix, box
    img = pad_to_legal(Image.frombytes("RGB", (w, h), pix.samples_mv), cap)
    return img.width, img.height, img.tobytes(), img, box


def _render_pdf_page(doc, index: int, path: str, dpi: float, cap: int) -> RenderedPage:
    w, h, data, _owner, box = render_pdf_pixels_boxed(doc, index, path, dpi, cap)
    img = Image.frombytes("RGB", (w, h), data)
    return RenderedPage(page_number=index + 1, image=img, width=img.width, height=img.height, content=box)


def _render_image(path: str, cap: int, data: bytes | None = None) -> RenderedPage:
    import io

    try:
        with (io.BytesIO(data) if data is not None else _open_file(path)) as fh:
            with Image.open(fh) as raw:
                raw.load()
                img, box = fit_image_boxed(raw, cap)
    except PdfError:
        raise
    except MemoryError:
        raise
    except Image.DecompressionBombError as exc:
        raise BrokenFileError(path, f"image too large to decode safely: {_one_line(exc)}") from None
    except Exception as exc:
        raise BrokenFileError(path, f"not a readable image: {_one_line(exc)}") from None
    return RenderedPage(page_number=1, image=img, width=img.width, height=img.height, content=box)


def _open_file(path: str):
    from indexer import sources  # the seam tests patch for unreadable files

    try:
        return sources._open_binary(path)
    except FileNotFoundError:
        raise VanishedError(path, "the file disappeared before it could be rendered") from None
    except IsADirectoryError:
        raise UnreadableError(path, "is a folder, not a file") from None
    except sources.NotARegularFileError:
        raise UnreadableError(path, "not a regular file") from None
    except OSError as exc:
        raise UnreadableError(path, f"cannot read: {exc.strerror or exc}") from None


def _open_pdf(path: str, password: str | None, data: bytes | None = None):
    import pymupdf

    pymupdf.TOOLS.mupdf_display_errors(False)  # the library never prints; errors come back typed
    pymupdf.TOOLS.mupdf_display_warnings(False)
    if data is None:
        with _open_file(path) as fh:
            head = fh.read(1024)
            data = None if _utf8_ok(path) else head + fh.read()
    else:
        head = data[:1024]
    if b"%PDF-" not in head:
        shown = head[:8].decode("latin-1").encode("unicode_escape").decode("ascii")
        raise NotAPdfError(path, f"no PDF header (starts with {shown!r})")
    try:
        # MuPDF takes UTF-8 file names only; other names go in as bytes
        doc = pymupdf.open(stream=data, filetype="pdf") if data is not None else pymupdf.open(path, filetype="pdf")
    except FileNotFoundError:
        raise VanishedError(path, "the file disappeared before it could be rendered") from None
    except MemoryError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise MemoryError(str(exc)) from None
        if data is None and not os.path.exists(path):
            raise VanishedError(path, "the file disappeared before it could be rendered") from None
        raise BrokenFileError(path, f"cannot be opened as a PDF: {_one_line(exc)}") from None
    if doc.needs_pass:
        if password is None:
            doc.close()
            raise EncryptedError(path, "password-protected", "pass --password to open it")
        if not doc.authenticate(password):
            doc.close()
            raise EncryptedError(path, "password-protected and the given password does not open it")
    return doc


def _utf8_ok(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
