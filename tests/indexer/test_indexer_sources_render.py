"""Sources (expansion, hashing, odd names) and rendering (dpi, pixel cap, typed errors)."""

import hashlib
import os

import pytest

from indexer import sources
from indexer.errors import (
    BrokenFileError, EmptyDocumentError, EncryptedError, NotAPdfError, UnreadableError, UnsupportedFileError,
    VanishedError,
)
from indexer.render import MIN_SIDE, DocumentPages, render_pages, zoom_for
from indexer.sources import expand_paths, read_source
from tests.indexer.indexer_fakes import EMPTY_PDF, make_pdf, make_png


def test_expand_finds_pdfs_and_images_recursively_in_stable_order(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    make_pdf(tmp_path / "a" / "b" / "z.pdf", 1)
    make_pdf(tmp_path / "a" / "x.PDF", 1)
    make_png(tmp_path / "a" / "p.png")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    single = make_pdf(tmp_path / "single.pdf", 1)
    found = expand_paths([tmp_path / "a", single, single, tmp_path / "nope"])
    names = [os.path.relpath(p, tmp_path) for p in found.files]
    assert names == ["a/b/z.pdf", "a/p.png", "a/x.PDF", "single.pdf"]
    assert found.folders == [str(tmp_path / "a")]
    assert found.missing == [(str(tmp_path / "nope"), "not found: no such file or folder")]


def test_read_source_hashes_streaming_and_keeps_non_utf8_names(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.pdf"
    make_pdf(raw, 2)
    found = expand_paths([os.fsencode(str(tmp_path))])
    assert len(found.files) == 1 and isinstance(found.files[0], str)
    src = read_source(found.files[0])
    assert os.fsencode(src.path) == raw
    with open(raw, "rb") as fh:
        assert src.sha256 == hashlib.sha256(fh.read()).hexdigest()
    assert src.size == os.path.getsize(raw)
    assert "\ufffd" in src.display_path
    pages = list(render_pages(src, dpi=72))
    assert [p.page_number for p in pages] == [1, 2]


def test_unsupported_vanished_and_unreadable_are_typed(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(UnsupportedFileError):
        read_source(str(tmp_path / "a.txt"))
    with pytest.raises(VanishedError) as exc:
        read_source(str(tmp_path / "gone.pdf"))
    assert exc.value.reason.startswith("vanished:")
    (tmp_path / "dir.pdf").mkdir()
    with pytest.raises(UnreadableError):
        read_source(str(tmp_path / "dir.pdf"))
    locked = make_pdf(tmp_path / "locked.pdf", 1)

    def deny(path):  # tests run as root, where chmod 000 does not stop reads
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(sources, "_open_binary", deny)
    with pytest.raises(UnreadableError) as exc:
        read_source(locked)
    assert "permission denied" in exc.value.reason


def test_dpi_is_honoured_and_huge_and_tiny_pages_are_capped(tmp_path):
    src = read_source(make_pdf(tmp_path / "a.pdf", 1, size=(200, 100)))
    (p72,) = render_pages(src, dpi=72)
    (p144,) = render_pages(src, dpi=144)
    assert (p72.width, p72.height) == (200, 100)
    assert (p144.width, p144.height) == (400, 200)
    assert p144.image.mode == "RGB"

    huge = read_source(make_pdf(tmp_path / "huge.pdf", 1, size=(18000, 36000)))
    (page,) = render_pages(huge, dpi=144, max_pixels=2_000_000)
    assert page.width * page.height <= 2_000_000 * 1.01
    assert abs(page.height / page.width - 2.0) < 0.01

    tiny = read_source(make_pdf(tmp_path / "tiny.pdf", 1, size=(3, 3)))
    (page,) = render_pages(tiny, dpi=144)
    assert min(page.width, page.height) >= MIN_SIDE
    assert zoom_for(3, 36000, 144, 1_000_000) * 3 * zoom_for(3, 36000, 144, 1_000_000) * 36000 <= 1_000_001


def test_pdf_failures_are_typed_with_one_line_reasons(tmp_path):
    enc = read_source(make_pdf(tmp_path / "enc.pdf", 2, encrypt_password="pw"))
    with pytest.raises(EncryptedError) as exc:
        list(render_pages(enc, dpi=72))
    assert "--password" in exc.value.reason
    with pytest.raises(EncryptedError):
        list(render_pages(enc, dpi=72, password="wrong"))
    assert len(list(render_pages(enc, dpi=72, password="pw"))) == 2

    (tmp_path / "empty.pdf").write_bytes(EMPTY_PDF)
    with pytest.raises(EmptyDocumentError):
        DocumentPages(read_source(str(tmp_path / "empty.pdf")))
    (tmp_path / "text.pdf").write_text("just some text, not a PDF")
    with pytest.raises(NotAPdfError):
        list(render_pages(read_source(str(tmp_path / "text.pdf"))))
    good = (tmp_path / "enc.pdf").read_bytes()
    make_pdf(tmp_path / "whole.pdf", 3)
    whole = (tmp_path / "whole.pdf").read_bytes()
    (tmp_path / "trunc.pdf").write_bytes(whole[:120])
    (tmp_path / "garbage.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    for name in ("trunc.pdf", "garbage.pdf"):
        with pytest.raises(BrokenFileError) as exc:
            list(render_pages(read_source(str(tmp_path / name)), dpi=72))
        assert "\n" not in exc.value.reason
    assert good  # the encrypted file itself is intact


def test_images_are_one_page_and_broken_images_typed(tmp_path):
    src = read_source(make_png(tmp_path / "p.png", size=(300, 200)))
    pages = list(render_pages(src, max_pixels=15_000))
    assert len(pages) == 1 and pages[0].page_number == 1
    assert pages[0].width * pages[0].height <= 15_000 * 1.02
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(BrokenFileError):
        list(render_pages(read_source(str(tmp_path / "bad.jpg"))))
