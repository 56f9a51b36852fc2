"""Test doubles for the indexer: a deterministic fake encoder and PDF builders (PyMuPDF)."""

from __future__ import annotations

import os
import time

import numpy as np

from engine.types import Embedding



class FakeEncoder:
    """Visibly different pages get different vectors: the single vector projects a 4x4 colour
    thumbnail, each token projects one horizontal strip; the token count depends on the size."""

    def __init__(self, single_dim: int = 32, multi_dim: int = 16, *, delay: float = 0.0,
                 revision: str = "fake-1", model: str = "fake", max_pixels: int = 400_000):
        rng = np.random.default_rng(1234)
        self.single_dim, self.multi_dim, self.delay, self.max_pixels = single_dim, multi_dim, delay, max_pixels
        self._p_single = rng.standard_normal((48, single_dim)).astype(np.float32)
        self._p_multi = rng.standard_normal((12, multi_dim)).astype(np.float32)
        self.identity = {"model": model, "revision": revision, "task": "retrieval",
                         "single_dim": single_dim, "multi_dim": multi_dim, "device": "cpu"}
        self.calls = 0
        self.images_seen = 0

    def encode_images(self, images, batch_size=8, show_progress_bar=None):
        self.calls += 1
        self.images_seen += len(images)
        if self.delay:
            time.sleep(self.delay * len(images))
        return [self.embed(img) for img in images]

    def embed(self, img) -> Embedding:
        rgb = img.convert("RGB")
        w, h = rgb.size
        thumb = np.asarray(rgb.resize((4, 4)), dtype=np.float32).reshape(-1) / 255.0 - 0.5
        single = thumb @ self._p_single
        tokens = 3 + (h * 7 + w) % 5
        strips = np.asarray(rgb.resize((4, tokens)), dtype=np.float32).reshape(tokens, 12) / 255.0 - 0.5
        multi = strips @ self._p_multi + 1e-3
        return Embedding(single=(single / max(np.linalg.norm(single), 1e-6)).astype(np.float32),
                         multi=(multi / np.linalg.norm(multi, axis=1, keepdims=True)).astype(np.float32))


def _colour(seed: int, i: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed * 1000 + i)
    return tuple(float(x) for x in rng.uniform(0.05, 0.95, 3))


def make_pdf(path, pages: int = 3, *, seed: int = 0, size=(200, 260), encrypt_password: str | None = None) -> str:
    """A PDF whose page i has text and a page-specific coloured block (so embeddings differ)."""
    import pymupdf

    doc = pymupdf.open()
    for i in range(pages):
        page = doc.new_page(width=size[0], height=size[1])
        w, h = size
        page.draw_rect(pymupdf.Rect(0, 0, w, h * 0.6), color=None, fill=_colour(seed, i))
        page.draw_circle((w * 0.7, h * 0.8), min(w, h) * 0.1, color=(0, 0, 0), fill=_colour(seed + 7, i))
        page.insert_text((10, h * 0.7), f"doc {seed} page {i + 1}", fontsize=max(2, min(12, h / 10)))
    kwargs = {}
    if encrypt_password:
        kwargs = {"encryption": pymupdf.PDF_ENCRYPT_AES_256, "user_pw": encrypt_password, "owner_pw": "owner"}
    data = doc.tobytes(**kwargs)  # MuPDF cannot save to a non-UTF-8 file name itself
    doc.close()
    with open(path, "wb") as fh:
        fh.write(data)
    return os.fsdecode(path) if isinstance(path, bytes) else str(path)


def make_png(path, seed: int = 0, size=(120, 90)) -> str:
    from PIL import Image

    Image.new("RGB", size, tuple(int(c * 255) for c in _colour(seed, 0))).save(path)
    return str(path)


# --- hostile inputs (tests/indexer/test_indexer_hostile_inputs.py) ----------------------------


def raw_pdf(objects: list[bytes], root: int = 1) -> bytes:
    """A PDF made of ``objects`` (object i+1 is ``objects[i]``) with a correct xref table, written
    by hand so that it can say what no PDF library would write."""
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<</Size %d/Root %d 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, root, xref)
    return bytes(out)


# A valid PDF with zero pages and a correct xref table (MuPDF refuses to save one).
EMPTY_PDF = raw_pdf([b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[]/Count 0>>"])


def pdf_stream(dictionary: bytes, content: bytes) -> bytes:
    """A stream object: ``dictionary`` is the opening of its dict (``b"<<..."``, no closing ``>>``)."""
    return dictionary + b"/Length %d>>\nstream\n" % len(content) + content + b"\nendstream"


def lying_page_tree_pdf(count: int = 1_000_000, kids: bytes = b"[3 0 R]") -> bytes:
    """A page tree whose /Count says ``count`` pages; ``kids`` (default: one real page) says otherwise."""
    return raw_pdf([
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids%s/Count %d>>" % (kids, count),
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]/Contents 4 0 R>>",
        pdf_stream(b"<<", b"0 0.4 0.8 rg 20 20 160 100 re f"),
    ])


def nested_xobject_pdf(depth: int = 40, fanout: int = 4) -> bytes:
    """One page drawing form XObject 1, which draws XObject 2 ``fanout`` times, ... ``depth`` deep:
    a few KB that would take fanout**depth drawing operations to render."""
    objs = [b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
            b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]/Contents 4 0 R/Resources<</XObject<</X 5 0 R>>>>>>",
            pdf_stream(b"<<", b"/X Do")]
    step = 1.0 / fanout
    for level in range(depth):
        me = 5 + level
        if level < depth - 1:
            draws = b" ".join(b"q %.4f 0 0 %.4f %.1f 0 cm /X Do Q" % (step, 1.0, 200 * step * i) for i in range(fanout))
            objs.append(pdf_stream(b"<</Type/XObject/Subtype/Form/BBox[0 0 200 200]/Resources<</XObject<</X %d 0 R>>>>"
                                   % (me + 1), draws))
        else:
            objs.append(pdf_stream(b"<</Type/XObject/Subtype/Form/BBox[0 0 200 200]", b"0 0 0 rg 0 0 200 200 re f"))
    return raw_pdf(objs)


def make_pdf_sizes(path, sizes, *, seed: int = 0) -> str:
    """Like ``make_pdf``, one page per (width, height) in ``sizes`` (points)."""
    import pymupdf

    doc = pymupdf.open()
    for i, (w, h) in enumerate(sizes):
        page = doc.new_page(width=w, height=h)
        page.draw_rect(pymupdf.Rect(0, 0, w, h * 0.6), color=None, fill=_colour(seed, i))
        page.insert_text((min(10, w / 4), h * 0.7), f"doc {seed} page {i + 1}", fontsize=max(1, min(12, h / 10, w / 10)))
    data = doc.tobytes()
    doc.close()
    with open(path, "wb") as fh:
        fh.write(data)
    return str(path)


class StrictFakeEncoder(FakeEncoder):
    """FakeEncoder that refuses what the Qwen2.5-VL image processor refuses: an aspect ratio over
    200 (``smart_resize`` raises ValueError) and a side under 28 pixels (it rounds it to 0)."""

    def encode_images(self, images, batch_size=8, show_progress_bar=None):
        for img in images:
            w, h = img.size
            if max(w, h) / min(w, h) > 200:
                raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(w, h) / min(w, h)}")
            if min(w, h) < 28:
                raise ValueError(f"height:{h} or width:{w} must be larger than factor:28")
        return super().encode_images(images, batch_size, show_progress_bar)


# -- vectors and kill -9 rounds shared by the codec and store tests --------------------------------
def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(rng, n, topics):
    """Unit tokens around a few fixed topics, like a real collection (not uniform noise)."""
    return unit(topics[rng.integers(0, len(topics), n)] + 0.35 * rng.standard_normal((n, topics.shape[1])))


def kill_rounds(cmd, pause, rounds=6):
    """Run ``cmd`` ``rounds`` times on one index; every run but the last is killed -9 once it has
    printed its first line and ``pause(proc)`` returned (the output lines ``pause`` read). Yields
    (round, the run's whole stdout, kills so far) after each run, for the caller's checks."""
    import signal
    import subprocess

    kills = 0
    for round_ in range(rounds):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = proc.stdout.readline()
        if round_ < rounds - 1:
            first += pause(proc)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        out, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()
        yield round_, first + out, kills


def assert_store_intact(store, ids, all_ids):
    """After a kill: every page still there once, in its document, and every checksum right."""
    assert sorted(store.live_page_ids().tolist()) == all_ids  # nothing lost, nothing doubled
    assert store.verify() == len(all_ids)
    for doc, doc_ids in ids.items():
        assert list(store.page_ids_of(doc)) == doc_ids


def rename_shard(index_dir, shard_id: int, old: str, new: str) -> None:
    """Rename a shard file and the catalogue row naming it alike (a crafted but consistent index)."""
    import sqlite3

    os.rename(os.path.join(index_dir, "shards", old), os.path.join(index_dir, "shards", new))
    db = sqlite3.connect(os.path.join(index_dir, "catalogue.sqlite"))
    db.execute("UPDATE shards SET file = ? WHERE id = ?", (new, shard_id))
    db.commit()
    db.close()
