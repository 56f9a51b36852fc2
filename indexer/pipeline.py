"""PATHs -> SourceFiles -> rendered pages -> embeddings -> the store, streaming and resumable.

A render thread hashes and renders files into a bounded queue while the caller's thread encodes
batches (which may span documents) and writes them, one document at a time, in file order. Memory
is bounded by the queue and one batch, whatever the page count. Each document commits on its own,
so a killed run loses at most the documents in flight, and the next run skips every committed one
(same path, same SHA-256). The encoder is duck-typed: ``encode_images(images, batch_size=,
show_progress_bar=)`` and ``identity``; ``max_pixels`` is used when present.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Callable

from indexer.errors import PdfError, VanishedError
from indexer.render import DEFAULT_DPI, DEFAULT_MAX_PIXELS, DocumentPages
from indexer.report import (
    FileDone, FileFailed, FileRemoved, FileSkipped, FileStarted, IndexReport, PageDone, RunStarted,
)
from indexer.sources import expand_paths, path_key, read_source
from indexer.store import Store

_DONE = ("done",)


def _produce(files, known: dict[str, str], out: queue.Queue, stop: threading.Event, *, dpi, cap, password):
    """Render thread. Puts ("skip"|"copy"|"failed"|"start"|"page"|"end"|"crash", ...) items in file order."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    in_run = set(files)
    hashed: dict[str, str] = {}  # sha256 -> first path with it in this run
    stable_known = {sha: p for p, sha in known.items() if p not in in_run}
    try:
        for path in files:
            if stop.is_set():
                return
            try:
                src = read_source(path)
            except PdfError as exc:
                put(("failed", path, exc, False))
                continue
            if known.get(src.path) == src.sha256:
                hashed.setdefault(src.sha256, src.path)
                put(("skip", src))
                continue
            if src.sha256 in hashed or src.sha256 in stable_known:
                put(("copy", src, hashed.get(src.sha256) or stable_known[src.sha256]))
                continue
            hashed[src.sha256] = src.path
            try:
                with DocumentPages(src, dpi=dpi, max_pixels=cap, password=password) as doc:
                    if not put(("start", src, doc.page_count)):
                        return
                    for page in doc:
                        if not put(("page", src, page)):
                            return
            except PdfError as exc:
                put(("failed", src.path, exc, True))
                continue
            put(("end", src))
    except BaseException as exc:  # MemoryError and friends: the caller re-raises it
        put(("crash", exc))
        return
    put(_DONE)


class _Run:
    """The caller-thread side of a run: applies queue items in order, one open document at most."""

    def __init__(self, store: Store, encoder, batch_size: int, emit, files_total: int):
        self.store, self.encoder, self.batch_size, self.emit = store, encoder, batch_size, emit
        self.files_total, self.files_done = files_total, 0
        self.report = IndexReport()
        self.writer = None
        self.expected_pages = 0

    def finish_file(self, event_cls, path, *args, **kwargs) -> None:
        self.files_done += 1
        self.emit(event_cls(path, *args, files_done=self.files_done, files_total=self.files_total, **kwargs))

    def fail(self, path: str, reason: str) -> None:
        self.report.failed.append((path, reason))
        self.finish_file(FileFailed, path, reason)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def flush(self, pending: list) -> None:
        """Encode the pages in ``pending`` (one batch) and apply every item in order."""
        images = [item[2].image for item in pending if item[0] == "page"]
        embeddings = (self.encoder.encode_images(images, batch_size=self.batch_size, show_progress_bar=False)
                      if images else [])
        if len(embeddings) != len(images):
            raise RuntimeError(f"the encoder returned {len(embeddings)} embeddings for {len(images)} images")
        emb = iter(embeddings)
        for item in pending:
            getattr(self, "_on_" + item[0])(item, emb)

    def _on_start(self, item, _emb) -> None:
        self.writer = self.store.document_writer(item[1])
        self.expected_pages = item[2]
        self.emit(FileStarted(item[1].path, item[2]))

    def _on_page(self, item, emb) -> None:
        page = item[2]
        self.writer.add_page(page.page_number, page.width, page.height, next(emb))
        self.report.pages_encoded += 1
        self.emit(PageDone(item[1].path, page.page_number, self.expected_pages, self.report.pages_encoded))

    def _on_end(self, item, _emb) -> None:
        ids = self.writer.commit()
        self.writer = None
        self.report.added.append((item[1].path, len(ids)))
        self.report.pages_added += len(ids)
        self.finish_file(FileDone, item[1].path, len(ids))

    def _on_failed(self, item, _emb) -> None:
        path, exc, had_writer = item[1], item[2], item[3]
        if had_writer:
            self.abort()
        if isinstance(exc, VanishedError):
            self.store.remove_document(path, compact=False)  # it no longer exists: nothing to keep
        else:
            self.store.record_failure(path, exc.reason)
        self.fail(path, exc.reason)

    def _on_skip(self, item, _emb) -> None:
        self.report.skipped.append(item[1].path)
        self.finish_file(FileSkipped, item[1].path, "unchanged")

    def _on_copy(self, item, _emb) -> None:
        src, first = item[1], item[2]
        original = self.store.find_sha256(src.sha256)
        if original is None:  # the first file with this content failed earlier in this run
            reason = f"same content as {os.fsencode(first).decode('utf-8', 'replace')}, which failed"
            self.store.record_failure(src, reason)
            self.fail(src.path, reason)
            return
        ids = self.store.copy_document(src, original.path)
        self.report.added.append((src.path, len(ids)))
        self.report.duplicates.append((src.path, original.path))
        self.report.pages_added += len(ids)
        self.finish_file(FileDone, src.path, len(ids), copied_from=original.path)


def index_paths(store: Store, encoder, paths, *, dpi: float = DEFAULT_DPI, max_pixels: int | None = None,
                batch_size: int = 8, password: str | None = None,
                on_event: Callable[[object], None] | None = None) -> IndexReport:
    """Index ``paths`` (PDFs, page images, folders) into ``store`` with ``encoder``; see module doc.

    Bad files are reported and skipped; a store or encoder failure (disk full, out of memory,
    wrong dimensions) stops the run and is raised, with every finished document kept.
    """
    t0 = time.perf_counter()
    store.check_identity(getattr(encoder, "identity", None))
    emit = on_event or (lambda _event: None)
    cap = int(max_pixels or getattr(encoder, "max_pixels", None) or DEFAULT_MAX_PIXELS)
    found = expand_paths(paths)
    run = _Run(store, encoder, max(1, batch_size), emit, len(found.files) + len(found.missing))
    run_id = store.begin_run({"paths": [os.fsencode(os.fspath(p)).decode("utf-8", "replace") for p in paths],
                              "dpi": dpi, "max_pixels": cap, "batch_size": batch_size})
    emit(RunStarted(run.files_total))
    for path, reason in found.missing:
        run.fail(path, reason)

    q: queue.Queue = queue.Queue(maxsize=max(2, batch_size))
    stop = threading.Event()
    worker = threading.Thread(target=_produce, name="pagelens-render", daemon=True,
                              args=(found.files, store.indexed_sha256s(), q, stop),
                              kwargs={"dpi": dpi, "cap": cap, "password": password})
    worker.start()
    try:
        pending, n_pages, finished = [], 0, False
        while not finished:
            item = q.get()
            if item[0] == "crash":
                raise item[1]
            finished = item is _DONE
            if not finished:
                pending.append(item)
                n_pages += item[0] == "page"
            if finished or n_pages >= run.batch_size or (n_pages == 0 and item[0] != "start"):
                run.flush(pending)
                pending, n_pages = [], 0
    except BaseException:
        run.abort()
        raise
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.05)

    report = run.report
    _remove_gone(store, found, report, emit)
    report.bytes_reclaimed = store.maybe_compact()
    report.elapsed = time.perf_counter() - t0
    store.finish_run(run_id, {"added": len(report.added), "skipped": len(report.skipped),
                              "failed": len(report.failed), "removed": len(report.removed),
                              "pages_added": report.pages_added, "outcome": report.outcome})
    return report


def _remove_gone(store: Store, found, report: IndexReport, emit) -> None:
    """Documents under a folder argument that the folder no longer holds are removed."""
    if not found.folders:
        return
    present = {path_key(p) for p in found.files}
    prefixes = tuple(os.path.join(path_key(f), b"") for f in found.folders)
    for doc in store.documents():
        key = path_key(doc.path)
        if key.startswith(prefixes) and key not in present:
            pages = store.remove_document(doc.path, compact=False)
            if doc.status == "indexed":
                report.removed.append((doc.path, pages))
                emit(FileRemoved(doc.path, pages))
