"""Rendering in a child process, so that no single input can hang, exhaust or crash an indexing run.

MuPDF cannot be interrupted from Python: a page of nested form XObjects can render for ever and
take gigabytes. So the pipeline renders in a long-lived child (a fresh interpreter running
``indexer.render_worker.main``, started with ``subprocess``: never a fork of a parent holding torch
and threads) and watches it:

- **time**: each step (opening a file, each page) has ``timeout`` seconds. Past that the child is
  killed, the file fails ("page 3 took longer than 60 s to render") and the next file gets a new
  child. The child also arms an alarm of its own (``timeout`` + a grace), so it dies even when its
  parent is gone.
- **memory**: the child's address space is capped (``RLIMIT_AS``) per file at what it uses at rest,
  plus the file's size, plus ``memory``; a page past that fails the file ("rendering page 2 ran
  out of memory"), and the child is replaced.
- **crashes**: a child that dies (a segfault in MuPDF, the kernel's OOM killer) fails the file it
  was rendering ("renderer crashed: ... (SIGSEGV)") and is replaced.

The child reads each file into memory, checks its SHA-256 against the one the caller hashed and
renders those very bytes, so stored pages always belong to the stored hash; a file that changed
in between is answered with ``ContentChanged`` (the caller hashes it again).

Pages come back as raw RGB bytes, streamed: the child renders page n+1 while the parent takes
page n. They travel through two page-sized slots of shared memory (a ``memfd``; one copy each
side) that the parent hands back with an ``ack``, so the child is at most two pages ahead; where
there is no ``memfd``, or a page is larger than a slot, the bytes go through the pipe. Idle
children are kept in a small pool for the next run and exit on their own after ``_IDLE_EXIT_S``
or when the parent goes.

Protocol (parent -> child, pickled tuples): ``("open", path bytes, kind, sha256, dpi, cap,
password, memory, timeout, shared bytes)`` and ``("ack", slot)``. Child -> parent: ``("ready",)``
once at start, then per file ``("changed", sha256)`` | ``("error", class name, detail, hint,
fatal)`` | ``("opened", pages)`` followed by ``("page", number, width, height, slot, content box)`` per page
(slot -1: one bytes message follows; the box: where the page sits in a padded image), then ``("end",)`` or an ``("error", ...)``.
"""

from __future__ import annotations

import atexit
import hashlib
import mmap
import os
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

from PIL import Image

from indexer import errors as _errors
from indexer.errors import BrokenFileError, IndexerError, PdfError
from indexer.child_limits import address_space, alarm, close_quietly, limit_memory
from indexer.render import RenderedPage
from indexer.sources import SourceFile

DEFAULT_RENDER_TIMEOUT = 60.0  # seconds to open one file, and to render each page
DEFAULT_RENDER_MEMORY = 2 << 30  # bytes of address space beyond the child's own at rest and the file
_GRACE_S = 5.0  # the child's own alarm fires this long after the parent's watchdog would have
_START_TIMEOUT_S = 60.0  # for a fresh child to import PyMuPDF and say "ready"
_IDLE_EXIT_S = 300.0  # an idle child exits on its own after this long
_POOL_SIZE = 2  # idle children kept for the next run


class RenderLimitError(PdfError):
    """A page (or opening a file) took longer than the time budget, or more than the memory budget."""

    kind = "too costly"


class RendererCrashedError(PdfError):
    """The rendering process died while it rendered this file."""

    kind = "renderer crashed"


class RendererUnavailableError(IndexerError):
    """The rendering process cannot be started at all: nothing could be rendered."""


class ContentChanged(Exception):
    """The file's bytes no longer have the SHA-256 the caller hashed."""

    def __init__(self, sha256: str):
        super().__init__(sha256)
        self.sha256 = sha256


_TIME_HINT = "raise the render time limit if such pages are expected"
_MEMORY_HINT = "raise the render memory limit if such pages are expected"


# --- parent side ---------------------------------------------------------------------------------


class RenderWorker:
    """One child process, used by one thread at a time (``kill`` may come from any thread)."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._to: Connection | None = None
        self._from: Connection | None = None
        self._busy = False  # a document is open (the child may be streaming its pages)
        self._closed = False
        self._memfd: int | None = None  # the two page slots shared with the child
        self._shared: mmap.mmap | None = None
        self._shared_size = 0
        self._lock = threading.Lock()
        self.pid_owner = os.getpid()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and not self._closed

    def reusable(self) -> bool:
        return self.alive() and not self._busy

    def _start(self) -> None:
        with self._lock:
            if self._closed:
                raise RendererCrashedError("", "the renderer was stopped")
            to_child_r, to_child_w = os.pipe()
            from_child_r, from_child_w = os.pipe()
            self._memfd = _memfd()
            self._shared, self._shared_size = None, 0
            passed = (to_child_r, from_child_w) + ((self._memfd,) if self._memfd is not None else ())
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            code = (f"import sys; sys.path.insert(0, {root!r}); "
                    "from indexer.render_worker import main; sys.exit(main())")
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", code, str(to_child_r), str(from_child_w),
                     str(self._memfd if self._memfd is not None else -1)],
                    pass_fds=passed, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
            except OSError as exc:
                for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                    os.close(fd)
                self._close_shared()
                raise RendererUnavailableError(f"the rendering process could not be started: {exc}",
                                               "check that this Python can run subprocesses") from None
            finally:
                if self._proc is not None:
                    os.close(to_child_r)
                    os.close(from_child_w)
            self._to = Connection(to_child_w, readable=False)
            self._from = Connection(from_child_r, writable=False)
        try:
            ready = self._from.poll(_START_TIMEOUT_S)
            msg = self._from.recv() if ready else None
        except (EOFError, OSError):
            msg = None
        if msg != ("ready",):
            code = self._reap()
            raise RendererUnavailableError(
                f"the rendering process did not start (exit status {code})",
                "check that PyMuPDF imports in this Python: python -c 'import pymupdf'")

    def _reap(self, wait: float = 5.0) -> int | None:
        """Kill the child (if still running) and collect its exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass
        try:
            code = proc.wait(wait)
        except subprocess.TimeoutExpired:
            code = None
        close_quietly(self._to, self._from)
        self._proc, self._to, self._from, self._busy = None, None, None, False
        self._close_shared()
        return code

    def _close_shared(self) -> None:
        if self._shared is not None:
            try:
                self._shared.close()
            except BufferError:  # a view still exported; the mapping goes with it
                pass
        if self._memfd is not None:
            os.close(self._memfd)
        self._memfd, self._shared, self._shared_size = None, None, 0

    def _share(self, max_pixels: int) -> int:
        """Grow the shared slots to hold two pages of ``max_pixels``; returns their size (0: none)."""
        if self._memfd is None:
            return 0
        want = 2 * 3 * (int(max_pixels * 1.05) + (1 << 16))
        if want > self._shared_size:
            try:
                os.ftruncate(self._memfd, want)
                if self._shared is not None:
                    self._shared.close()
                self._shared, self._shared_size = mmap.mmap(self._memfd, want), want
            except (OSError, ValueError, BufferError):
                self._close_shared()  # no shared memory after all: pages come through the pipe
                return 0
        return self._shared_size

    def _page_bytes(self, slot: int, nbytes: int, path: str, timeout: float, doing: str):
        """The bytes of a page announced in ``slot`` (-1: the next pipe message)."""
        if slot < 0:
            return self._receive_bytes(path, timeout, doing)
        half = self._shared_size // 2
        if self._shared is None or nbytes > half:
            self._reap()
            raise RendererCrashedError(path, f"the renderer sent a bad page slot for {doing}")
        return memoryview(self._shared)[slot * half: slot * half + nbytes]

    def _ack(self, slot: int) -> None:
        if slot >= 0 and self._to is not None:
            try:
                self._to.send(("ack", slot))
            except (OSError, ValueError):
                pass  # the child is gone: the next receive says so

    def kill(self) -> None:
        """Stop the child now and for good (any thread): a blocked ``open`` or page read returns."""
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None and not self._busy and self._to is not None:
            try:
                self._to.send(("quit",))
                self._proc.wait(2)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        self._closed = True
        self._reap()

    def open(self, source: SourceFile, *, dpi: float, max_pixels: int, password: str | None = None,
             timeout: float = DEFAULT_RENDER_TIMEOUT, memory: int = DEFAULT_RENDER_MEMORY) -> "WorkerDocument":
        """Open ``source`` in the child. Raises ``ContentChanged`` or a ``PdfError``."""
        if self._busy or (self._proc is not None and self._proc.poll() is not None):
            self._reap()
        if self._proc is None:
            try:
                self._start()
            except RendererUnavailableError:
                self._start()  # once more: a child lost at start-up (the OOM killer, say) is not the rule
        try:
            self._to.send(("open", os.fsencode(source.path), source.kind, source.sha256, float(dpi),
                           int(max_pixels), password, int(memory), float(timeout), self._share(max_pixels)))
        except (OSError, ValueError):
            self._reap()
            raise RendererCrashedError(source.path, "the renderer stopped before it could open the file") from None
        self._busy = True
        msg = self._receive(source.path, timeout, "opening the file")
        if msg[0] == "changed":
            self._busy = False
            raise ContentChanged(msg[1])
        if msg[0] != "opened":
            raise RendererCrashedError(source.path, f"the renderer answered {msg[0]!r} to open")
        return WorkerDocument(self, source, int(msg[1]), timeout)

    def _receive(self, path: str, timeout: float, doing: str):
        """The child's next message within ``timeout``; a timeout or a dead child fails the file."""
        conn = self._from
        try:
            ready = conn.poll(timeout)
        except (OSError, EOFError, ValueError, AttributeError):
            ready = True  # closed under us: recv says so
        if not ready:
            self._reap()
            raise RenderLimitError(path, _too_long(doing, timeout), _TIME_HINT)
        try:
            msg = conn.recv()
        except (EOFError, OSError, ValueError, AttributeError):
            raise self._died(path, doing) from None
        if msg[0] == "error":
            _tag, name, detail, hint, fatal = msg
            self._busy = False
            if fatal:  # out of memory: the child exits; start afresh for the next file
                self._reap()
            cls = globals().get(name) or getattr(_errors, name, None)
            if not (isinstance(cls, type) and issubclass(cls, PdfError)):
                cls = BrokenFileError
            raise cls(path, detail, hint)
        return msg

    def _receive_bytes(self, path: str, timeout: float, doing: str) -> bytes:
        conn = self._from
        try:
            if not conn.poll(timeout):
                self._reap()
                raise RenderLimitError(path, _too_long(doing, timeout), _TIME_HINT)
            return conn.recv_bytes()
        except (EOFError, OSError, ValueError, AttributeError):
            raise self._died(path, doing) from None

    def _died(self, path: str, doing: str) -> PdfError:
        closed = self._closed
        code = self._reap()
        doing = _while(doing)
        if closed:
            return RendererCrashedError(path, f"the renderer was stopped while {doing}")
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            if -code == signal.SIGKILL:
                return RenderLimitError(path, f"{doing} ran out of memory (the renderer was killed)", _MEMORY_HINT)
            if -code == getattr(signal, "SIGALRM", None):
                return RenderLimitError(path, f"{doing} took too long (the renderer timed out)", _TIME_HINT)
            return RendererCrashedError(path, f"while {doing} ({name})")
        return RendererCrashedError(path, f"while {doing} (exit status {code})")


def _too_long(doing: str, timeout: float) -> str:
    rendering = doing.startswith("page") or doing == "the image"
    return f"{doing} took longer than {timeout:g} s" + (" to render" if rendering else "")


def _while(doing: str) -> str:
    return f"rendering {doing}" if doing.startswith("page") or doing == "the image" else doing


class WorkerDocument:
    """A file open in the child: ``page_count``, then pages in order by iterating."""

    def __init__(self, worker: RenderWorker, source: SourceFile, page_count: int, timeout: float):
        self.worker, self.source, self.page_count, self.timeout = worker, source, page_count, timeout
        self._finished = False

    def __iter__(self):
        worker, path = self.worker, self.source.path
        for number in range(1, self.page_count + 1):
            doing = "the image" if self.source.kind == "image" else f"page {number}"
            msg = worker._receive(path, self.timeout, doing)
            if msg[0] != "page" or msg[1] != number:
                worker._reap()
                raise RendererCrashedError(path, f"the renderer sent {msg[0]!r} for {doing}")
            _tag, _n, width, height, slot, box = msg
            data = worker._page_bytes(slot, 3 * width * height, path, self.timeout, doing)
            try:
                img = Image.frombytes("RGB", (width, height), data)
            except ValueError:  # not width x height RGB pixels: the child is not to be trusted further
                del data
                worker._reap()
                raise RendererCrashedError(path, f"the renderer sent damaged pixels for {doing}") from None
            del data
            worker._ack(slot)
            if not valid_content_box(box, width, height):
                worker._reap()
                raise RendererCrashedError(path, f"the renderer sent a damaged content box for {doing}")
            yield RenderedPage(page_number=number, image=img, width=width, height=height, content=tuple(box))
        msg = worker._receive(path, self.timeout, "closing the file")
        if msg[0] != "end":
            worker._reap()
            raise RendererCrashedError(path, f"the renderer sent {msg[0]!r} after the last page")
        worker._busy = False
        self._finished = True

    def close(self) -> None:
        """Abandon the file: a child still streaming its pages is replaced."""
        if not self._finished and self.worker._busy:
            self.worker._reap()

    def __enter__(self) -> "WorkerDocument":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# the pool: idle children kept between runs (starting one costs a few hundred ms)
_pool_lock = threading.Lock()
_idle: list[RenderWorker] = []


def acquire() -> RenderWorker:
    """An idle worker from the pool, or a new one (its child starts on the first ``open``)."""
    with _pool_lock:
        while _idle:
            worker = _idle.pop()
            if worker.pid_owner == os.getpid() and worker.reusable():
                return worker
            if worker.pid_owner == os.getpid():
                worker.close()
    return RenderWorker()


def release(worker: RenderWorker) -> None:
    """Give ``worker`` back after a run: kept if idle and healthy, else stopped."""
    if worker.pid_owner == os.getpid() and worker.reusable():
        with _pool_lock:
            if len(_idle) < _POOL_SIZE:
                _idle.append(worker)
                return
    worker.close()


@atexit.register
def _shutdown() -> None:
    with _pool_lock:
        workers, _idle[:] = list(_idle), []
    for worker in workers:
        if worker.pid_owner == os.getpid():
            worker.close()


# --- child side ----------------------------------------------------------------------------------





def _memfd() -> int | None:
    try:
        return os.memfd_create("pagelens-pages", getattr(os, "MFD_CLOEXEC", 0))
    except (AttributeError, OSError):
        return None


class _Slots:
    """The child's side of the two shared page slots."""

    def __init__(self, fd: int, inp: Connection):
        self.fd, self.inp = fd, inp
        self.map: mmap.mmap | None = None
        self.size = 0
        self.busy = [False, False]  # written, not yet acknowledged by the parent
        self.next = 0

    def resize(self, size: int) -> None:
        self.busy = [False, False]  # a new file: the parent has taken every earlier page
        if size == self.size:
            return
        if self.map is not None:
            self.map.close()
        self.map, self.size = (mmap.mmap(self.fd, size) if size and self.fd >= 0 else None), size

    def put(self, pixels) -> int:
        """Copy ``pixels`` into a free slot (waiting for the parent's ack if both are taken);
        -1 when there is no slot big enough (the caller sends the bytes down the pipe)."""
        view = memoryview(pixels).cast("B")
        half = self.size // 2
        if self.map is None or view.nbytes > half:
            return -1
        slot = self.next
        while self.busy[slot]:
            msg = self.inp.recv()
            if msg[0] == "ack":
                self.busy[msg[1]] = False
        self.map[slot * half: slot * half + view.nbytes] = view
        self.busy[slot] = True
        self.next = 1 - slot
        return slot


def valid_content_box(box, width: int, height: int) -> bool:
    """A content box of four integers inside a ``width`` x ``height`` image, not empty."""
    if not isinstance(box, tuple) or len(box) != 4 or not all(type(v) is int for v in box):
        return False
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


def _send_page(out: Connection, slots: _Slots, number: int, width: int, height: int, pixels, box) -> None:
    slot = slots.put(pixels)
    out.send(("page", number, width, height, slot, tuple(int(v) for v in box)))
    if slot < 0:
        out.send_bytes(pixels)


def _serve(msg, out: Connection, slots: _Slots) -> bool:
    """Render one file for the parent. Returns False when this process should exit (out of memory)."""
    from indexer import render
    from indexer.sources import NotARegularFileError, _open_binary

    _tag, raw_path, kind, sha256, dpi, cap, password, memory, timeout, shared = msg
    path = os.fsdecode(raw_path)
    doing = "opening the file"
    doc = data = None
    try:
        slots.resize(shared)
        alarm(timeout + _GRACE_S)
        try:
            size = os.stat(raw_path).st_size
        except OSError:
            size = 0
        base = address_space()
        if base is not None:
            limit_memory(base + memory + 2 * size)
        try:
            with _open_binary(path) as fh:
                data = fh.read()
        except FileNotFoundError:
            raise _errors.VanishedError(path, "the file disappeared before it could be rendered") from None
        except IsADirectoryError:
            raise _errors.UnreadableError(path, "is a folder, not a file") from None
        except NotARegularFileError:
            raise _errors.UnreadableError(path, "not a regular file") from None
        except OSError as exc:
            raise _errors.UnreadableError(path, f"cannot read: {exc.strerror or exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            alarm(0)
            out.send(("changed", digest))
            return True
        source = SourceFile(path, len(data), 0.0, digest)
        if kind == "image":
            alarm(0)
            out.send(("opened", 1))
            doing = "the image"
            alarm(timeout + _GRACE_S)
            page = render._render_image(path, cap, data)
            payload = page.image.tobytes()
            alarm(0)
            _send_page(out, slots, 1, page.width, page.height, payload, page.content or (0, 0, page.width, page.height))
        else:
            doc = render.DocumentPages(source, dpi=dpi, max_pixels=cap, password=password, data=data)
            alarm(0)
            out.send(("opened", doc.page_count))
            for index in range(doc.page_count):
                doing = f"page {index + 1}"
                alarm(timeout + _GRACE_S)
                width, height, pixels, owner, box = render.render_pdf_pixels_boxed(doc._doc, index, path, dpi, cap)
                alarm(0)
                _send_page(out, slots, index + 1, width, height, pixels, box)
                del pixels, owner
        alarm(0)
        out.send(("end",))
        return True
    except PdfError as exc:
        alarm(0)
        out.send(("error", type(exc).__name__, exc.detail, exc.hint, False))
        return True
    except MemoryError:
        alarm(0)
        doc = data = None
        limit_memory(None)
        limit = f"{memory / (1 << 20):.0f} MiB"
        out.send(("error", "RenderLimitError", f"{_while(doing)} ran out of memory (limit {limit})", _MEMORY_HINT,
                  True))
        return False
    finally:
        alarm(0)
        if doc is not None:
            doc.close()
        doc = data = None
        limit_memory(None)
        try:
            import pymupdf

            pymupdf.TOOLS.store_shrink(100)  # drop MuPDF's caches between files
        except Exception:  # noqa: BLE001 - best effort
            pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the alarm kills even inside MuPDF
    inp = Connection(int(argv[1]), writable=False)
    out = Connection(int(argv[2]), readable=False)
    slots = _Slots(int(argv[3]) if len(argv) > 3 else -1, inp)
    import pymupdf  # noqa: F401 - imported before the first budget starts

    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    try:
        out.send(("ready",))
        while True:
            if not inp.poll(_IDLE_EXIT_S):
                return 0
            msg = inp.recv()
            if msg[0] == "ack":  # for the last pages of the previous file
                continue
            if msg[0] != "open":
                return 0
            if not _serve(msg, out, slots):
                return 0
    except (EOFError, OSError):  # the parent is gone
        return 0


if __name__ == "__main__":
    sys.exit(main())
