"""Indexing throughput: rendering alone, render + store with a trivial encoder, and the tiny model.

    python benchmarks/index.py [--pages 200] [--dpi 144]

Prints pages/s for each stage measured side by side in one run, the share of wall time spent
outside the encoder, bytes on disk per page, and an estimate of the pipeline's cost next to the
real model's encoder time (see the printed assumptions).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.types import Embedding  # noqa: E402
from indexer.pipeline import index_paths  # noqa: E402
from indexer.render import DocumentPages  # noqa: E402
from indexer.sources import expand_paths, read_source  # noqa: E402
from indexer.store import Store  # noqa: E402

REAL_MAX_PIXELS = 602_112  # jina-embeddings-v4's preprocessor cap
REAL_TOKENS = REAL_MAX_PIXELS // (28 * 28)  # ~768 visual tokens per full-size page
REAL_SINGLE, REAL_MULTI = 2048, 128
# Assumed real-model throughput (pages/s), batch 8, bf16: a 3.8B Qwen2.5-VL backbone at ~770 visual tokens
# per page; our assumption from published ColQwen2.5/jina-v4 indexing figures, not measured here.
REAL_RATES = {"L4-class GPU": 2.5, "H100-class GPU": 10.0}


def make_collection(folder: str, pages: int, per_doc: int = 20) -> None:
    import pymupdf

    rng = np.random.default_rng(0)
    words = "invoice total revenue quarter figure table pressure valve results method sample".split()
    for d in range((pages + per_doc - 1) // per_doc):
        doc = pymupdf.open()
        for i in range(min(per_doc, pages - d * per_doc)):
            page = doc.new_page(width=595, height=842)  # A4
            text = " ".join(rng.choice(words, 400))
            page.insert_textbox(pymupdf.Rect(50, 60, 545, 500), text, fontsize=9)
            for _ in range(6):
                x, y = rng.uniform(60, 480, 2)
                page.draw_rect(pymupdf.Rect(x, 520 + y / 4, x + 50, 560 + y / 4), fill=tuple(rng.uniform(0, 1, 3)))
            pix = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 64, 64), False)
            pix.set_rect(pix.irect, tuple(int(c) for c in rng.integers(0, 255, 3)))
            page.insert_image(pymupdf.Rect(400, 700, 520, 820), pixmap=pix)
        doc.save(os.path.join(folder, f"doc{d:03d}.pdf"))


class TrivialEncoder:
    """Returns realistic-size embeddings (2048-d single, ~768 x 128 multi) at almost no cost."""

    identity = {"model": "trivial", "revision": "0"}
    max_pixels = REAL_MAX_PIXELS

    def __init__(self):
        rng = np.random.default_rng(0)
        s = rng.standard_normal(REAL_SINGLE).astype(np.float32)
        m = rng.standard_normal((REAL_TOKENS, REAL_MULTI)).astype(np.float32)
        self._e = Embedding(s / np.linalg.norm(s), m / np.linalg.norm(m, axis=1, keepdims=True))
        self.seconds = 0.0

    def encode_images(self, images, batch_size=8, show_progress_bar=None):
        t = time.perf_counter()
        out = [self._e for _ in images]
        self.seconds += time.perf_counter() - t
        return out


class Timed:
    """Wraps an encoder and adds up the time spent inside it."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0
        self.identity, self.max_pixels = inner.identity, getattr(inner, "max_pixels", None)

    def encode_images(self, images, batch_size=8, show_progress_bar=None):
        t = time.perf_counter()
        out = self.inner.encode_images(images, batch_size=batch_size, show_progress_bar=False)
        self.seconds += time.perf_counter() - t
        return out


def disk_bytes(store: Store) -> int:
    return store.stats().total_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--dpi", type=int, default=144)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="pagelens-bench-")
    docs = os.path.join(work, "docs")
    os.makedirs(docs)
    make_collection(docs, args.pages)
    files = expand_paths([docs]).files
    print(f"collection: {args.pages} A4 pages (text, shapes, an image each) in {len(files)} PDFs; dpi {args.dpi};"
          f" pixel cap {REAL_MAX_PIXELS} (the real model's)")

    t = time.perf_counter()
    n = 0
    for path in files:
        with DocumentPages(read_source(path), dpi=args.dpi, max_pixels=REAL_MAX_PIXELS) as doc:
            for _page in doc:
                n += 1
    render_s = time.perf_counter() - t
    print(f"render alone (hash + PyMuPDF):       {n / render_s:8.1f} pages/s")

    enc = TrivialEncoder()
    store = Store.create(os.path.join(work, "trivial"), identity=enc.identity, single_dim=REAL_SINGLE,
                         multi_dim=REAL_MULTI)
    report = index_paths(store, enc, [docs], dpi=args.dpi, batch_size=8)
    pipe_s = report.elapsed
    print(f"render + store, trivial encoder:     {report.pages_added / pipe_s:8.1f} pages/s"
          f"  ({REAL_TOKENS} x {REAL_MULTI} fp16 tokens + {REAL_SINGLE}-d float32 per page)")
    store.close()
    store = Store.open(os.path.join(work, "trivial"))
    per_page = disk_bytes(store) / max(1, store.stats().pages)
    print(f"bytes on disk per page:              {per_page:8.0f}  (multi {REAL_TOKENS * REAL_MULTI * 2},"
          f" single {REAL_SINGLE * 4}, catalogue and manifest the rest)")
    store.close()

    emb = enc._e
    writer_store = Store.create(os.path.join(work, "write"), identity=None, single_dim=REAL_SINGLE,
                                multi_dim=REAL_MULTI)
    t = time.perf_counter()
    per_doc = 20
    for d in range(args.pages // per_doc):
        writer_store.add_document(f"/bench/doc{d}.pdf", [emb] * per_doc)
    store_s = (time.perf_counter() - t) / max(1, (args.pages // per_doc) * per_doc)
    writer_store.close()
    print(f"store writes alone (fsync per doc):  {1 / store_s:8.1f} pages/s")

    tiny_line = None
    try:
        from engine.loader import load_encoder
        from engine.testing import write_tiny_checkpoint
    except ImportError as exc:
        print(f"tiny model: skipped (engine.testing / engine.loader not importable: {exc})")
    else:
        ckpt = write_tiny_checkpoint(os.path.join(work, "tiny"))
        tiny = Timed(load_encoder(str(ckpt), device="cpu"))
        store = Store.create(os.path.join(work, "tinyidx"), identity=tiny.identity, single_dim=tiny.inner.single_dim,
                             multi_dim=tiny.inner.multi_dim)
        subset = files[:2]  # the tiny model is slow on CPU: 40 pages tell the share well enough
        report = index_paths(store, tiny, subset, dpi=args.dpi, batch_size=8)
        store.close()
        outside = (report.elapsed - tiny.seconds) / report.elapsed
        tiny_line = (report.pages_added / report.elapsed, tiny.seconds / report.pages_added, outside)
        print(f"render + store + tiny model (CPU):   {tiny_line[0]:8.1f} pages/s; encoder {tiny_line[1] * 1000:.1f}"
              f" ms/page; {outside:.0%} of wall time outside the encoder (pixel cap {tiny.max_pixels})")

    render_per_page = render_s / n
    print("\nestimate for the real model (assumed throughput, see REAL_RATES in this file):")
    for name, rate in REAL_RATES.items():
        enc_s = 1.0 / rate
        # the render thread overlaps encoding; what stays on the encoder's critical path is the store
        # write plus any rendering the encoder would have to wait for
        serial = store_s + max(0.0, render_per_page - enc_s)
        print(f"  {name:15s} {rate:4.1f} pages/s = {enc_s * 1000:5.0f} ms/page; pipeline outside the encoder"
              f" {serial * 1000:5.1f} ms/page = {serial / enc_s:5.1%} of encoder time"
              f" (target < 5%); rendering alone {render_per_page / enc_s:5.1%} of it")
    print(f"  rendering keeps up with a GPU at 10 pages/s: {'yes' if n / render_s >= 10 else 'NO'}"
          f" ({n / render_s:.0f} pages/s on {os.cpu_count()} CPU cores, one render thread)")


if __name__ == "__main__":
    main()
