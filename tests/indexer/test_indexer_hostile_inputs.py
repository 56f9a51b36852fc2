"""Hostile inputs: no single file stops, hangs or corrupts an indexing run.

Each test names the finding it guards: a lying page tree, pages of extreme shape, non-regular
files and Ctrl-C, pages that never finish rendering (or eat memory, or kill the renderer), an
encoder that refuses one image, a file replaced between hashing and rendering, and a folder that
cannot be read.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from indexer import pipeline
from indexer.pipeline import index_paths
from indexer.render import MIN_SIDE, render_pages
from indexer.report import NOTHING_USABLE, SOME_FAILED, FileDone
from indexer.sources import SourceFile, read_source
from indexer.store import Store
from tests.indexer.indexer_fakes import (
    FakeEncoder, StrictFakeEncoder, lying_page_tree_pdf, make_pdf, make_pdf_sizes, make_png, nested_xobject_pdf,
)


def name(path: str) -> str:
    return os.path.basename(os.fsencode(path)).decode("utf-8", "replace")


def reasons(report) -> dict[str, str]:
    return {name(p): r for p, r in report.failed}


def added(report) -> dict[str, int]:
    return {name(p): n for p, n in report.added}


def run_bounded(fn, timeout: float, on_hang=None):
    """Run ``fn`` in a daemon thread; fail (instead of hanging the suite) when it takes longer."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    t0 = time.monotonic()
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if on_hang is not None:
            on_hang()
        thread.join(5)
        pytest.fail(f"still running after {timeout:g} s")
    box["elapsed"] = time.monotonic() - t0
    return box


def legal(width: int, height: int, cap: int) -> bool:
    return (min(width, height) >= MIN_SIDE and max(width, height) / min(width, height) <= 200
            and width * height <= cap * 1.01)


# --- 1. a page tree that lies -------------------------------------------------------------------


def test_a_lying_page_tree_is_indexed_by_its_real_pages_and_the_run_goes_on(tmp_path, store, encoder):
    (tmp_path / "count-million.pdf").write_bytes(lying_page_tree_pdf(1_000_000))
    (tmp_path / "count-zero.pdf").write_bytes(lying_page_tree_pdf(0))
    (tmp_path / "count-negative.pdf").write_bytes(lying_page_tree_pdf(-3))
    (tmp_path / "cycle.pdf").write_bytes(lying_page_tree_pdf(1_000_000, kids=b"[3 0 R 2 0 R]"))
    make_pdf(tmp_path / "good.pdf", 2, seed=1)
    report = index_paths(store, encoder, [tmp_path], dpi=72)
    assert added(report) == {"count-million.pdf": 1, "count-zero.pdf": 1, "count-negative.pdf": 1, "good.pdf": 2}
    why = reasons(report)
    assert list(why) == ["cycle.pdf"] and why["cycle.pdf"].startswith("broken:") and "\n" not in why["cycle.pdf"]
    assert report.outcome == SOME_FAILED and store.stats().pages == 5
    again = index_paths(store, encoder, [tmp_path], dpi=72)  # re-runs no longer crash either
    assert len(again.skipped) == 4 and list(reasons(again)) == ["cycle.pdf"]


# --- 2. pages and images of extreme shape --------------------------------------------------------

PDF_SHAPES = [(2, 600), (600, 2), (14400, 2), (2, 14400), (1, 1), (3, 3), (5, 3000), (14400, 14400), (200, 260)]
PNG_SHAPES = [(1, 60000), (60000, 1), (1, 1), (5, 21948), (27, 27), (30, 6001), (6001, 30), (2000, 3000)]


def hostile_shapes(folder) -> dict[str, int]:
    """PDFs and page images of extreme shapes; returns name -> page count."""
    os.makedirs(folder, exist_ok=True)
    made = {}
    for i, (w, h) in enumerate(PDF_SHAPES):
        make_pdf_sizes(os.path.join(folder, f"page-{w}x{h}pt.pdf"), [(w, h)], seed=i)
        made[f"page-{w}x{h}pt.pdf"] = 1
    for i, (w, h) in enumerate(PNG_SHAPES):
        make_png(os.path.join(folder, f"image-{w}x{h}px.png"), seed=i, size=(w, h))
        made[f"image-{w}x{h}px.png"] = 1
    return made


@pytest.mark.parametrize("cap", [100_352, 400_000, 12_000_000])
def test_every_rendered_page_has_a_shape_the_image_processor_accepts(tmp_path, cap):
    hostile_shapes(tmp_path)
    for entry in sorted(os.listdir(tmp_path)):
        (page,) = render_pages(read_source(str(tmp_path / entry)), dpi=144, max_pixels=cap)
        assert (page.width, page.height) == page.image.size and page.image.mode == "RGB"
        assert legal(page.width, page.height, cap), (entry, page.width, page.height)
        colours = {c for _n, c in page.image.getcolors(page.width * page.height)}
        assert colours - {(255, 255, 255)}, entry  # the content is there, not only padding


def test_a_long_thin_page_is_padded_not_squashed(tmp_path):
    make_png(tmp_path / "strip.png", size=(2, 1200))
    (page,) = render_pages(read_source(str(tmp_path / "strip.png")), max_pixels=400_000)
    assert legal(page.width, page.height, 400_000) and page.height >= 1200
    pixels = np.asarray(page.image)
    assert (pixels[:, 0] == 255).all() and (pixels[:, -1] == 255).all()  # white on both long edges
    assert (pixels[:, page.width // 2] != 255).any(axis=1).all()  # the strip runs the whole length


def test_extreme_shapes_are_indexed_not_fatal(tmp_path, store):
    made = hostile_shapes(tmp_path / "docs")
    report = index_paths(store, StrictFakeEncoder(), [tmp_path / "docs"], dpi=144)
    assert report.failed == [] and added(report) == made


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """The real engine with the tiny random jina-v4 checkpoint (loading takes seconds: once a module)."""
    import torch

    from engine.loader import load_encoder
    from engine.testing import write_tiny_checkpoint

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "jina-v4-tiny")
    yield load_encoder(str(folder), device="cpu")
    torch.set_num_threads(before)


def test_the_real_image_processor_accepts_every_extreme_shape(tmp_path, tiny_encoder):
    made = hostile_shapes(tmp_path / "docs")
    store = Store.create(tmp_path / "index", identity=tiny_encoder.identity, single_dim=tiny_encoder.single_dim,
                         multi_dim=tiny_encoder.multi_dim)
    try:
        report = index_paths(store, tiny_encoder, [tmp_path / "docs"], dpi=144, batch_size=8)
        assert report.failed == [] and added(report) == made
        assert store.verify() == len(made)
    finally:
        store.close()


# --- 3. FIFOs, sockets, devices; Ctrl-C ----------------------------------------------------------


def test_a_fifo_socket_or_device_named_like_a_pdf_is_reported_not_opened(tmp_path, store, encoder):
    docs = tmp_path / "docs"
    docs.mkdir()
    os.mkfifo(docs / "fifo.pdf")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(docs / "socket.pdf"))
    os.symlink("/dev/zero", docs / "zero.pdf")  # a character device that never ends
    make_pdf(docs / "good.pdf", 2)

    def release_fifo():  # a reader blocked in open() gets EOF once a writer comes and goes
        os.close(os.open(docs / "fifo.pdf", os.O_WRONLY | os.O_NONBLOCK))

    try:
        box = run_bounded(lambda: index_paths(store, encoder, [docs, docs / "fifo.pdf"], dpi=72), 30, release_fifo)
        for kind in ("fifo", "socket", "zero"):
            got = run_bounded(lambda: read_source(str(docs / f"{kind}.pdf")), 10, release_fifo)
            assert getattr(got.get("error"), "reason", None) == "unreadable: not a regular file", (kind, got)
    finally:
        sock.close()
    assert "error" not in box, box.get("error")
    report = box["result"]
    assert reasons(report) == {n: "unreadable: not a regular file" for n in ("fifo.pdf", "socket.pdf", "zero.pdf")}
    assert added(report) == {"good.pdf": 2}


def test_ctrl_c_stops_a_run_promptly_whatever_the_render_thread_is_stuck_in(tmp_path, store, encoder, monkeypatch):
    a = make_pdf(tmp_path / "a.pdf", 1, seed=1)
    b = make_pdf(tmp_path / "b.pdf", 1, seed=2)
    release = threading.Event()
    real_read = pipeline.read_source

    def hung_share(path):  # b.pdf sits on a network share that stopped answering
        if path.endswith("b.pdf"):
            release.wait(120)
        return real_read(path)

    def ctrl_c(event):
        if isinstance(event, FileDone):
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "read_source", hung_share)
    try:
        box = run_bounded(lambda: index_paths(store, encoder, [a, b], dpi=72, batch_size=1, on_event=ctrl_c), 20)
    finally:
        release.set()
    assert isinstance(box.get("error"), KeyboardInterrupt) and box["elapsed"] < 10
    assert [name(d.path) for d in store.documents()] == ["a.pdf"]  # what was committed stays


# --- 4. pages that never finish, eat memory or kill the renderer ----------------------------------


def test_a_page_that_never_finishes_rendering_fails_its_file_and_the_run_goes_on(tmp_path, store, encoder):
    (tmp_path / "a-bomb.pdf").write_bytes(nested_xobject_pdf(40, 4))
    make_pdf(tmp_path / "b-good.pdf", 2, seed=1)
    t0 = time.monotonic()
    report = index_paths(store, encoder, [tmp_path], dpi=72, render_timeout=2.0)
    assert time.monotonic() - t0 < 30
    why = reasons(report)
    assert list(why) == ["a-bomb.pdf"] and "page 1 took longer than 2 s to render" in why["a-bomb.pdf"]
    assert added(report) == {"b-good.pdf": 2} and report.outcome == SOME_FAILED
    assert store.document(str(tmp_path / "a-bomb.pdf")).status == "failed"


def test_a_page_that_needs_too_much_memory_fails_its_file_and_the_run_goes_on(tmp_path, store, encoder):
    make_pdf(tmp_path / "a-huge.pdf", 1, size=(4000, 4000))  # 8000 x 8000 px at 144 dpi: 192 MB of RGB
    make_pdf(tmp_path / "b-small.pdf", 2, seed=1)
    report = index_paths(store, encoder, [tmp_path], dpi=144, max_pixels=100_000_000, render_memory=64 << 20)
    why = reasons(report)
    assert list(why) == ["a-huge.pdf"] and "ran out of memory" in why["a-huge.pdf"]
    assert added(report) == {"b-small.pdf": 2}


def _render_children(running: bool = True) -> list[int]:
    """Render worker processes started by this process (``running``: only those busy on a CPU)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"indexer.render_worker" in cmdline and (fields[0] == b"R" or not running):
            found.append(int(pid))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the renderer through /proc")
def test_a_renderer_that_crashes_fails_only_the_file_it_was_rendering(tmp_path, store, encoder):
    make_pdf(tmp_path / "warm-up.pdf", 1, seed=2)
    index_paths(store, encoder, [tmp_path / "warm-up.pdf"], dpi=72)  # a renderer started and idle
    warm = set(_render_children(running=False))
    assert warm
    (tmp_path / "a-bomb.pdf").write_bytes(nested_xobject_pdf(40, 4))
    make_pdf(tmp_path / "b-good.pdf", 2, seed=1)
    killed = []

    def crash_it():  # as a MuPDF bug would: a segfault while it renders the bomb
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not killed:
            for pid in set(_render_children()) & warm:
                time.sleep(0.3)
                os.kill(pid, signal.SIGSEGV)
                killed.append(pid)
                break
            time.sleep(0.05)

    killer = threading.Thread(target=crash_it, daemon=True)
    killer.start()
    t0 = time.monotonic()
    report = index_paths(store, encoder, [tmp_path / "a-bomb.pdf", tmp_path / "b-good.pdf"], dpi=72,
                         render_timeout=60)
    killer.join(5)
    assert killed and time.monotonic() - t0 < 30
    why = reasons(report)
    assert list(why) == ["a-bomb.pdf"] and "crashed" in why["a-bomb.pdf"] and "page 1" in why["a-bomb.pdf"]
    assert added(report) == {"b-good.pdf": 2}


# --- 5. the encoder refuses one image --------------------------------------------------------------


class PickyEncoder(FakeEncoder):
    """Raises ValueError, as the image processor does, for any batch holding a 150 px wide image."""

    def encode_images(self, images, batch_size=8, show_progress_bar=None):
        if any(img.width == 150 for img in images):
            raise ValueError("absolute aspect ratio must be smaller than 200, got 300.0")
        return super().encode_images(images, batch_size, show_progress_bar)


def test_an_image_the_encoder_refuses_fails_only_its_document(tmp_path, store):
    ok, bad = (200, 260), (150, 260)
    make_pdf_sizes(tmp_path / "a.pdf", [ok] * 3, seed=1)
    make_pdf_sizes(tmp_path / "b-split.pdf", [ok, bad, ok], seed=2)  # page 1 in batch 1, page 2 in batch 2
    make_pdf_sizes(tmp_path / "c.pdf", [ok] * 3, seed=3)  # split over batches 2 and 3
    make_pdf_sizes(tmp_path / "d-one.pdf", [bad], seed=4)
    make_pdf_sizes(tmp_path / "e.pdf", [ok] * 2, seed=5)
    old_version = SourceFile(str(tmp_path / "d-one.pdf"), 1, 0.0, "0" * 64)  # indexed before, other content
    store.add_document(old_version, [FakeEncoder().embed(Image.new("RGB", (9, 9)))])
    report = index_paths(store, PickyEncoder(), [tmp_path], dpi=72, batch_size=4)
    assert added(report) == {"a.pdf": 3, "c.pdf": 3, "e.pdf": 2}
    why = reasons(report)
    assert sorted(why) == ["b-split.pdf", "d-one.pdf"]
    assert why["b-split.pdf"].startswith("cannot be encoded: page 2:") and "aspect ratio" in why["b-split.pdf"]
    assert why["d-one.pdf"].startswith("cannot be encoded: page 1:")
    assert store.stats().pages == 8 and store.verify() == 8  # nothing of b-split's page 1 is left
    assert store.document(str(tmp_path / "b-split.pdf")).status == "failed"
    assert len(store.page_ids_of(str(tmp_path / "d-one.pdf"))) == 0
    reference = FakeEncoder()
    for doc in ("a.pdf", "c.pdf", "e.pdf"):  # every kept page got its own vector, none shifted
        path = str(tmp_path / doc)
        want = [reference.embed(p.image).single for p in render_pages(read_source(path), dpi=72)]
        np.testing.assert_allclose(store.single_vectors(store.page_ids_of(path)), np.stack(want), atol=1e-5)

    again = index_paths(store, FakeEncoder(), [tmp_path], dpi=72, batch_size=4)
    assert added(again) == {"b-split.pdf": 3, "d-one.pdf": 1} and len(again.skipped) == 3


def test_an_encoder_failing_on_everything_or_out_of_resources_still_stops_the_run(tmp_path, store):
    for i in range(3):
        make_pdf(tmp_path / f"d{i}.pdf", 1, seed=i)

    class DiskFull(FakeEncoder):
        def encode_images(self, images, batch_size=8, show_progress_bar=None):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        index_paths(store, DiskFull(), [tmp_path], dpi=72)

    class Broken(FakeEncoder):  # not one input's fault: every image fails
        def encode_images(self, images, batch_size=8, show_progress_bar=None):
            raise RuntimeError("the model is broken")

    for i in range(3, 40):
        make_pdf(tmp_path / f"d{i}.pdf", 1, seed=i)
    with pytest.raises(RuntimeError, match="the model is broken"):
        index_paths(store, Broken(), [tmp_path], dpi=72)
    assert store.stats().pages == 0


# --- 6. a file replaced between hashing and rendering ---------------------------------------------


def test_a_file_replaced_after_hashing_is_stored_with_the_hash_of_what_was_rendered(tmp_path, store, encoder,
                                                                                   monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    path = make_pdf(tmp_path / "docs" / "report.pdf", 2, seed=1)
    old = (tmp_path / "docs" / "report.pdf").read_bytes()
    make_pdf(tmp_path / "elsewhere" / "v2.pdf", 3, seed=2)
    new = (tmp_path / "elsewhere" / "v2.pdf").read_bytes()
    real_read = pipeline.read_source
    swaps = []

    def save_in_between(p):  # an editor saves (write + rename) just after the file was hashed
        src = real_read(p)
        if not swaps:
            os.replace(tmp_path / "elsewhere" / "v2.pdf", p)
            swaps.append(p)
        return src

    monkeypatch.setattr(pipeline, "read_source", save_in_between)
    report = index_paths(store, encoder, [tmp_path / "docs"], dpi=72)
    monkeypatch.undo()
    assert swaps and added(report) == {"report.pdf": 3}
    doc = store.document(path)
    assert doc.sha256 == hashlib.sha256(new).hexdigest() and doc.page_count == 3

    (tmp_path / "elsewhere" / "old-copy.pdf").write_bytes(old)  # a copy of the old content turns up
    later = index_paths(store, encoder, [tmp_path / "elsewhere" / "old-copy.pdf"], dpi=72)
    assert later.duplicates == [] and added(later) == {"old-copy.pdf": 2} and later.pages_encoded == 2


def test_a_file_that_keeps_changing_is_a_failure_line(tmp_path, store, encoder, monkeypatch):
    path = make_pdf(tmp_path / "live.pdf", 1, seed=1)
    versions = [(tmp_path / "live.pdf").read_bytes(), None]
    make_pdf(tmp_path / "other.pdf", 2, seed=2)
    versions[1] = (tmp_path / "other.pdf").read_bytes()
    os.unlink(tmp_path / "other.pdf")
    real_read = pipeline.read_source
    reads = []

    def rewritten_after_every_read(p):
        src = real_read(p)
        reads.append(p)
        with open(p, "wb") as fh:
            fh.write(versions[len(reads) % 2])
        return src

    monkeypatch.setattr(pipeline, "read_source", rewritten_after_every_read)
    report = index_paths(store, encoder, [path], dpi=72)
    assert report.outcome == NOTHING_USABLE and len(reads) >= 2
    assert list(reasons(report)) == ["live.pdf"] and "changed while" in reasons(report)["live.pdf"]
    assert store.stats().pages == 0


# --- 7. a folder that cannot be read ---------------------------------------------------------------


def test_an_unreadable_folder_is_a_failure_line_and_its_documents_are_kept(tmp_path, store, encoder, monkeypatch):
    docs = tmp_path / "docs"
    (docs / "locked" / "deeper").mkdir(parents=True)
    make_pdf(docs / "a.pdf", 1, seed=1)
    make_pdf(docs / "locked" / "b.pdf", 2, seed=2)
    make_pdf(docs / "locked" / "deeper" / "c.pdf", 3, seed=3)
    first = index_paths(store, encoder, [docs], dpi=72)
    assert len(first.added) == 3
    ids = {p: list(store.page_ids_of(p)) for p, _n in first.added}
    real_scandir = os.scandir
    denied = set()

    def scandir(path="."):  # tests run as root, where chmod 000 does not stop reads
        if os.fspath(path) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    denied.add(str(docs / "locked"))
    second = index_paths(store, encoder, [docs], dpi=72)
    assert second.removed == [] and [name(p) for p in second.skipped] == ["a.pdf"]
    why = reasons(second)
    assert list(why) == ["locked"] and why["locked"].startswith("unreadable") and "ermission denied" in why["locked"]
    assert second.outcome == SOME_FAILED
    assert {p: list(store.page_ids_of(p)) for p in ids} == ids

    denied.add(str(docs))  # the folder argument itself
    third = index_paths(store, encoder, [docs], dpi=72)
    assert third.removed == [] and list(reasons(third)) == ["docs"] and third.outcome == NOTHING_USABLE
    assert {p: list(store.page_ids_of(p)) for p in ids} == ids
    monkeypatch.undo()
    os.unlink(docs / "locked" / "b.pdf")  # readable again: a document really gone is removed
    fourth = index_paths(store, encoder, [docs], dpi=72)
    assert [name(p) for p, _n in fourth.removed] == ["b.pdf"] and fourth.failed == []
