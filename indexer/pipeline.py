"""PATHs -> SourceFiles -> rendered pages -> embeddings -> the store, streaming and resumable.

A render thread hashes files and has them rendered, by a child process under a time and memory
budget (``indexer.render_worker``), into a bounded queue while the caller's thread encodes batches
(which may span documents) and writes them, one document at a time, in file order. Memory is
bounded by the queue and one batch, whatever the page count. Each document commits on its own,
so a killed run loses at most the documents in flight, and the next run skips every committed one
(same path, same SHA-256). The encoder is duck-typed: ``encode_images(images, batch_size=,
show_progress_bar=)`` and ``identity``; ``max_pixels`` is used when present.

No single input stops the run: whatever goes wrong with one file (opening, rendering, too slow,
too big, crashing the renderer, changing under us, an image the encoder refuses) is that file's
failure line. What stops it is the run's own trouble: the store (disk full), the encoder as a
whole (out of memory, model unavailable, failing on every page), Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from typing import Callable

from engine.errors import UserError
from indexer import render_worker
from indexer.errors import PdfError, VanishedError
from indexer.render import DEFAULT_DPI, DEFAULT_MAX_PIXELS
from indexer.render_worker import DEFAULT_RENDER_MEMORY, DEFAULT_RENDER_TIMEOUT, ContentChanged
from indexer.report import (
    FileDone, FileFailed, FileRemoved, FileSkipped, FileStarted, IndexReport, PageDone, RunStarted,
)
from indexer.sources import ChangingFileError, expand_paths, path_key, read_source
from indexer.store import Store

_DONE = ("done",)
_HASH_TRIES = 3  # a file that changes between hashing and rendering is hashed again, this often
_STOP_WAIT_S = 2.0  # how long a stopping run waits for the render thread (a daemon) to notice
_FAILURES_IN_A_ROW = 16  # pages refused in a row, none accepted: the encoder is broken, not the pages


def _produce(files, known: dict[str, str], out: queue.Queue, stop: threading.Event, cancelled: set,
             worker: render_worker.RenderWorker, *, dpi, cap, password, timeout, memory, partial=None):
    """Render thread. Puts ("skip"|"copy"|"failed"|"start"|"page"|"end"|"crash", ...) items in file order.

    A path added to ``cancelled`` (its document failed in the caller's thread) gets no more pages.
    ``partial`` (path -> (sha256, pages committed)): a long document whose chunked commit was
    interrupted resumes after its committed pages when its content is unchanged; those pages are
    rendered (cheap) but not sent, so nothing is encoded twice."""
    partial = partial or {}

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
            for _attempt in range(_HASH_TRIES):
                if stop.is_set():
                    return
                try:
                    src = read_source(path)
                except PdfError as exc:
                    put(("failed", path, exc, False))
                    break
                if known.get(src.path) == src.sha256:
                    hashed.setdefault(src.sha256, src.path)
                    put(("skip", src))
                    break
                if src.sha256 in hashed or src.sha256 in stable_known:
                    put(("copy", src, hashed.get(src.sha256) or stable_known[src.sha256]))
                    break
                hashed[src.sha256] = src.path
                done_sha, done_pages = partial.get(src.path, (None, 0))
                resume_after = done_pages if done_sha == src.sha256 else 0
                started = False
                try:
                    with worker.open(src, dpi=dpi, max_pixels=cap, password=password, timeout=timeout,
                                     memory=memory) as doc:
                        started = True
                        if not put(("start", src, doc.page_count, resume_after)):
                            return
                        for page in doc:
                            if src.path in cancelled:
                                break
                            if page.page_number <= resume_after:
                                continue
                            if not put(("page", src, page)):
                                return
                except ContentChanged:  # rendered bytes must be the hashed bytes: hash it again
                    del hashed[src.sha256]
                    continue
                except PdfError as exc:
                    if stop.is_set():
                        return
                    put(("failed", src.path, exc, started))
                    break
                if src.path not in cancelled:
                    put(("end", src))
                break
            else:
                put(("failed", path, ChangingFileError(
                    path, f"the file changed while it was being read, {_HASH_TRIES} times in a row",
                    "index it again once it has been saved"), False))
    except BaseException as exc:  # MemoryError, the renderer unavailable, ...: the caller re-raises it
        if not stop.is_set():
            put(("crash", exc))
        return
    put(_DONE)


def _stops_the_run(exc: BaseException) -> bool:
    """Encoder failures that are the run's, not one image's: out of memory (host or device), I/O,
    and the user-facing errors (model unavailable, mismatch, bad output) of the layers above."""
    return (isinstance(exc, (MemoryError, OSError, UserError)) or not isinstance(exc, Exception)
            or "OutOfMemory" in type(exc).__name__)


class _Run:
    """The caller-thread side of a run: applies queue items in order, one open document at most."""

    def __init__(self, store: Store, encoder, batch_size: int, emit, files_total: int):
        self.store, self.encoder, self.batch_size, self.emit = store, encoder, batch_size, emit
        self.files_total, self.files_done = files_total, 0
        self.report = IndexReport()
        self.writer = None
        self.writer_path: str | None = None
        self.expected_pages = 0
        self.dead: set[str] = set()  # documents failed here (by the encoder): the rest of them is ignored
        self.cancelled: set[str] = set()  # shared with the render thread: render no more of these
        self.refused_in_a_row = 0

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
            self.writer_path = None

    def flush(self, pending: list) -> None:
        """Encode the pages in ``pending`` (one batch) and apply every item in order."""
        wanted = [i for i, item in enumerate(pending) if item[0] == "page" and item[1].path not in self.dead]
        results = dict(zip(wanted, self._encode([pending[i] for i in wanted])))
        for i, item in enumerate(pending):
            getattr(self, "_on_" + item[0])(item, results.get(i))

    def _encode(self, items: list) -> list:
        """One embedding per page item, or for a page the encoder refused, the exception."""
        if not items:
            return []
        images = [item[2].image for item in items]
        try:
            embeddings = self.encoder.encode_images(images, batch_size=self.batch_size, show_progress_bar=False)
        except Exception as exc:
            if _stops_the_run(exc):
                raise
            return self._encode_one_by_one(items)
        if len(embeddings) != len(images):
            raise RuntimeError(f"the encoder returned {len(embeddings)} embeddings for {len(images)} images")
        self.refused_in_a_row = 0
        return list(embeddings)

    def _encode_one_by_one(self, items: list) -> list:
        """The batch failed: find the image(s) it failed on. A document with one refused page is
        not encoded further (None for its other pages)."""
        results, refused = [], set()
        for item in items:
            path = item[1].path
            if path in refused:
                results.append(None)
                continue
            try:
                embeddings = self.encoder.encode_images([item[2].image], batch_size=1, show_progress_bar=False)
            except Exception as exc:
                if _stops_the_run(exc):
                    raise
                self.refused_in_a_row += 1
                if self.refused_in_a_row >= _FAILURES_IN_A_ROW:
                    raise  # not one input's fault: the encoder refuses everything
                refused.add(path)
                results.append(exc)
                continue
            if len(embeddings) != 1:
                raise RuntimeError(f"the encoder returned {len(embeddings)} embeddings for 1 image")
            self.refused_in_a_row = 0
            results.append(embeddings[0])
        return results

    def kill_document(self, src, reason: str) -> None:
        """Fail a document whose pages are (partly) written: cut them back, record, report."""
        if self.writer_path == src.path:
            self.abort()
        self.dead.add(src.path)
        self.cancelled.add(src.path)
        self.store.record_failure(src, reason)
        self.fail(src.path, reason)

    def _on_start(self, item, _result) -> None:
        resume_after = item[3]
        writer = self.store.document_writer(item[1], resume=resume_after > 0)
        if writer.first_page != resume_after + 1:  # cannot happen while we hold the writer lock
            writer.abort()
            raise RuntimeError(f"{item[1].display_path}: expected to resume after page {resume_after}, "
                               f"the index holds {writer.first_page - 1} pages of it")
        self.writer = writer
        if resume_after:
            self.report.resumed.append((item[1].path, resume_after))
        self.writer_path = item[1].path
        self.expected_pages = item[2]
        self.emit(FileStarted(item[1].path, item[2]))

    def _on_page(self, item, result) -> None:
        src, page = item[1], item[2]
        if src.path in self.dead:
            return
        if isinstance(result, BaseException):
            self.kill_document(src, f"cannot be encoded: page {page.page_number}: {_one_line(result)}")
            return
        if getattr(result, "multi", None) is not None and len(result.multi) == 0:
            self.kill_document(src, f"cannot be encoded: page {page.page_number}: the encoder gave no token vectors")
            return
        self.writer.add_page(page.page_number, page.width, page.height, _with_content_box(result, page))
        self.report.pages_encoded += 1
        self.emit(PageDone(src.path, page.page_number, self.expected_pages, self.report.pages_encoded))

    def _on_end(self, item, _result) -> None:
        if item[1].path in self.dead:
            return
        ids = self.writer.commit()
        self.writer = None
        self.writer_path = None
        self.report.added.append((item[1].path, len(ids)))
        self.report.pages_added += len(ids)
        # a codec due for training trains now, not at the end of the run: a first run of a big
        # collection would otherwise store every page raw (196 KB each at 768 tokens) and convert later;
        # mid-run only past Store.train_early_tokens (~1,400 pages of 768 tokens), so that it learns
        # from more than the first document or two (the end of the run trains a smaller collection)
        self.store.maybe_train_codec(early=True)
        self.finish_file(FileDone, item[1].path, len(ids))

    def _on_failed(self, item, _result) -> None:
        path, exc, had_writer = item[1], item[2], item[3]
        if path in self.dead:
            return
        if had_writer:
            self.abort()
        if isinstance(exc, VanishedError):
            self.store.remove_document(path, compact=False)  # it no longer exists: nothing to keep
        else:
            self.store.record_failure(path, exc.reason)
        self.fail(path, exc.reason)

    def _on_skip(self, item, _result) -> None:
        self.report.skipped.append(item[1].path)
        self.finish_file(FileSkipped, item[1].path, "unchanged")

    def _on_copy(self, item, _result) -> None:
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
                on_event: Callable[[object], None] | None = None,
                render_timeout: float = DEFAULT_RENDER_TIMEOUT,
                render_memory: int = DEFAULT_RENDER_MEMORY) -> IndexReport:
    """Index ``paths`` (PDFs, page images, folders) into ``store`` with ``encoder``; see module doc.

    Bad files are reported and skipped; a store or encoder failure (disk full, out of memory,
    wrong dimensions) stops the run and is raised, with every finished document kept.
    ``render_timeout``: seconds to open a file and to render each page; ``render_memory``: bytes
    the renderer may use beyond its own and the file's size. A file past either fails.
    """
    t0 = time.perf_counter()
    store.check_identity(getattr(encoder, "identity", None))
    emit = on_event or (lambda _event: None)
    cap = int(max_pixels or getattr(encoder, "max_pixels", None) or DEFAULT_MAX_PIXELS)
    found = expand_paths(paths)
    run = _Run(store, encoder, max(1, batch_size), emit,
               len(found.files) + len(found.missing) + len(found.unreadable))
    run_id = store.begin_run({"paths": [os.fsencode(os.fspath(p)).decode("utf-8", "replace") for p in paths],
                              "dpi": dpi, "max_pixels": cap, "batch_size": batch_size})
    emit(RunStarted(run.files_total))
    for path, reason in found.missing + found.unreadable:
        run.fail(path, reason)

    q: queue.Queue = queue.Queue(maxsize=max(2, batch_size))
    stop = threading.Event()
    worker = render_worker.acquire()
    thread = threading.Thread(target=_produce, name="pagelens-render", daemon=True,
                              args=(found.files, store.indexed_sha256s(), q, stop, run.cancelled, worker),
                              kwargs={"dpi": dpi, "cap": cap, "password": password,
                                      "timeout": float(render_timeout), "memory": int(render_memory),
                                      "partial": store.partial_documents()})
    thread.start()
    clean = False
    try:
        pending, n_pages, finished = [], 0, False
        while not finished:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                if not thread.is_alive() and q.empty():
                    raise RuntimeError("the render thread stopped without finishing") from None
                continue
            if item[0] == "crash":
                raise item[1]
            finished = item is _DONE
            if not finished:
                pending.append(item)
                n_pages += item[0] == "page"
            if finished or n_pages >= run.batch_size or (n_pages == 0 and item[0] != "start"):
                run.flush(pending)
                pending, n_pages = [], 0
        clean = True
    except BaseException:
        run.abort()
        raise
    finally:
        stop.set()
        if not clean:
            worker.kill()  # unblocks a render thread waiting on the child
        deadline = time.monotonic() + _STOP_WAIT_S  # bounded: Ctrl-C always ends the run promptly
        while thread.is_alive() and time.monotonic() < deadline:
            try:  # unblock a producer waiting on a full queue
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
        if clean and not thread.is_alive():
            render_worker.release(worker)
        else:
            worker.kill()

    report = run.report
    _remove_gone(store, found, report, emit)
    report.bytes_reclaimed = store.maybe_compact()
    # a codec that needs training (residual-b, pq-M) is trained once enough pages are in (raw until
    # then): after each document (above), and here for a run whose pages came by copies alone
    store.maybe_train_codec()
    report.elapsed = time.perf_counter() - t0
    store.finish_run(run_id, {"added": len(report.added), "skipped": len(report.skipped),
                              "failed": len(report.failed), "removed": len(report.removed),
                              "pages_added": report.pages_added, "outcome": report.outcome})
    return report


def _remove_gone(store: Store, found, report: IndexReport, emit) -> None:
    """Documents under a folder argument that the folder no longer holds are removed; not those
    under a folder that could not be listed (they may well be there)."""
    if not found.folders:
        return
    present = {path_key(p) for p in found.files}
    prefixes = tuple(os.path.join(path_key(f), b"") for f in found.folders)
    unknown = tuple(os.path.join(path_key(f), b"") for f, _reason in found.unreadable)
    for doc in store.documents():
        key = path_key(doc.path)
        if key.startswith(prefixes) and key not in present and not (unknown and key.startswith(unknown)):
            pages = store.remove_document(doc.path, compact=False)
            if doc.status == "indexed":
                report.removed.append((doc.path, pages))
                emit(FileRemoved(doc.path, pages))


def _with_content_box(embedding, page):
    """The embedding with its patch grid told where the page sits in the rendered image (the
    renderer pads tiny and very long pages): the encoder's own box, if any, composed with it."""
    grid = getattr(embedding, "grid", None)
    if grid is None or getattr(page, "content", None) is None:
        return embedding
    ex0, ey0, ex1, ey1 = grid.box
    px0, py0, px1, py1 = page.content_fractions()
    box = (ex0 + (ex1 - ex0) * px0, ey0 + (ey1 - ey0) * py0, ex0 + (ex1 - ex0) * px1, ey0 + (ey1 - ey0) * py1)
    try:
        return dataclasses.replace(embedding, grid=grid.with_box(box))
    except (TypeError, ValueError):  # not a dataclass Embedding, or a degenerate box: keep what it said
        return embedding


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:200]
