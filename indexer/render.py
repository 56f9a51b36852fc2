"""SourceFile -> rendered pages, one at a time (a 2,000-page PDF never sits in memory whole).

PDF pages are rasterised by PyMuPDF at ``dpi``, scaled down when the result would exceed
``max_pixels`` (an 18000 x 36000 pt page becomes a few megapixels, not 2.6 gigapixels) and up when
a side would fall under ``MIN_SIDE`` pixels (a 3 pt page still gives the encoder something to see).
Image files are one page each, under the same cap. Failures are typed ``PdfError`` subclasses.
"""

from __future__ import annotations

import math
import os
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


@dataclass
class RenderedPage:
    page_number: int  # from 1
    image: Image.Image  # RGB
    width: int
    height: int


def zoom_for(width_pt: float, height_pt: float, dpi: float, max_pixels: int) -> float:
    """The PDF-points -> pixels factor: ``dpi`` capped by ``max_pixels``, floored by ``MIN_SIDE``."""
    width_pt, height_pt = max(width_pt, 1e-3), max(height_pt, 1e-3)
    zoom = dpi / 72.0
    area = width_pt * height_pt
    if area * zoom * zoom > max_pixels:
        zoom = math.sqrt(max_pixels / area)
    shortest = min(width_pt, height_pt) * zoom
    if shortest < MIN_SIDE:
        # never beyond the cap: an extreme strip stays under it, thin as it is
        zoom = min(MIN_SIDE / min(width_pt, height_pt), math.sqrt(max_pixels / area))
    return zoom


def cap_image(img: Image.Image, max_pixels: int) -> Image.Image:
    img = img.convert("RGB")
    w, h = img.size
    scale = 1.0
    if w * h > max_pixels:
        scale = math.sqrt(max_pixels / (w * h))
    if min(w, h) * scale < MIN_SIDE:
        scale = min(MIN_SIDE / max(min(w, h), 1), math.sqrt(max_pixels / max(w * h, 1)))
    if abs(scale - 1.0) > 1e-9:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    return img


class DocumentPages:
    """An opened input file: ``page_count`` now, pages one at a time by iterating. Close when done."""

    def __init__(self, source: SourceFile, *, dpi: float = DEFAULT_DPI, max_pixels: int | None = None,
                 password: str | None = None):
        self.source, self.dpi = source, dpi
        self.max_pixels = int(max_pixels or DEFAULT_MAX_PIXELS)
        self._doc = None
        if source.kind == "image":
            self.page_count = 1
            return
        self._doc = _open_pdf(source.path, password)
        self.page_count = self._doc.page_count
        if self.page_count == 0:
            repaired = self._doc.is_repaired
            self.close()
            if repaired:
                raise BrokenFileError(source.path, "damaged beyond repair: no page could be recovered")
            raise EmptyDocumentError(source.path, "the PDF has no pages")

    def __iter__(self) -> Iterator[RenderedPage]:
        if self._doc is None:
            yield _render_image(self.source.path, self.max_pixels)
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


def _render_pdf_page(doc, index: int, path: str, dpi: float, cap: int) -> RenderedPage:
    import pymupdf

    try:
        page = doc.load_page(index)
        rect = page.rect
        zoom = zoom_for(rect.width, rect.height, dpi, cap)
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
        img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    except PdfError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # MuPDF raises plain RuntimeErrors for damaged content
        raise BrokenFileError(path, f"page {index + 1} cannot be rendered: {_one_line(exc)}") from None
    return RenderedPage(page_number=index + 1, image=img, width=img.width, height=img.height)


def _render_image(path: str, cap: int) -> RenderedPage:
    try:
        with _open_file(path) as fh:
            with Image.open(fh) as raw:
                raw.load()
                img = cap_image(raw, cap)
    except PdfError:
        raise
    except Image.DecompressionBombError as exc:
        raise BrokenFileError(path, f"image too large to decode safely: {_one_line(exc)}") from None
    except Exception as exc:
        raise BrokenFileError(path, f"not a readable image: {_one_line(exc)}") from None
    return RenderedPage(page_number=1, image=img, width=img.width, height=img.height)


def _open_file(path: str):
    from indexer import sources  # the seam tests patch for unreadable files

    try:
        return sources._open_binary(path)
    except FileNotFoundError:
        raise VanishedError(path, "the file disappeared before it could be rendered") from None
    except IsADirectoryError:
        raise UnreadableError(path, "is a folder, not a file") from None
    except OSError as exc:
        raise UnreadableError(path, f"cannot read: {exc.strerror or exc}") from None


def _open_pdf(path: str, password: str | None):
    import pymupdf

    pymupdf.TOOLS.mupdf_display_errors(False)  # the library never prints; errors come back typed
    pymupdf.TOOLS.mupdf_display_warnings(False)
    with _open_file(path) as fh:
        head = fh.read(1024)
        data = None if _utf8_ok(path) else head + fh.read()
    if b"%PDF-" not in head:
        shown = head[:8].decode("latin-1").encode("unicode_escape").decode("ascii")
        raise NotAPdfError(path, f"no PDF header (starts with {shown!r})")
    try:
        # MuPDF takes UTF-8 file names only; other names go in as bytes
        doc = pymupdf.open(stream=data, filetype="pdf") if data is not None else pymupdf.open(path, filetype="pdf")
    except FileNotFoundError:
        raise VanishedError(path, "the file disappeared before it could be rendered") from None
    except Exception as exc:
        if not os.path.exists(path):
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
