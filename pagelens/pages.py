"""Indexed pages as pictures: the file checked against the SHA-256 recorded at indexing, then
rendered by PyMuPDF in a budgeted child process, at a requested width.

Used by the HTTP server (`pagelens.server`) and anything else that shows a page to a person.
Every step treats the file as hostile:

- **which file**: only the path the catalogue names for a page id (`Index.page`), and only while
  it is still a regular file whose SHA-256 is the recorded one. A file that is gone (or is now a
  folder, a FIFO, a device) is `FileMissingError`; one whose bytes changed is `PageChangedError`:
  never another file's page. Verified hashes are cached by (device, inode, size, mtime_ns), so an
  unchanged file is hashed once and a changed one again.
- **what is rendered**: exactly the bytes that were hashed. The parent reads and hashes them and
  hands those bytes to the child; the child never opens a path.
- **how long and how much**: MuPDF cannot be interrupted from Python, so a hostile page could
  render forever or take gigabytes. The child renders under an address-space cap (RLIMIT_AS: its
  size at rest, twice the file, plus ``memory``) and an alarm; the parent kills it past
  ``timeout``. Either fails the request (`RenderFailedError`), the child is replaced, the server
  goes on. The same design as the indexer's `indexer.render_worker` (which streams whole
  documents at the indexing resolution and so cannot serve one page at a chosen width).
- **how big**: the picture is at most ``width`` wide and at most ``max_pixels`` in all (a page of
  10 x 36,000 pt asked at 2,000 px wide would otherwise be 7 gigapixels).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import signal
import stat
import subprocess
import sys
import threading
from collections import OrderedDict
from multiprocessing.connection import Connection
from typing import BinaryIO

from indexer.child_limits import address_space, alarm, close_quietly, limit_memory
from pagelens.errors import PagelensError

DEFAULT_RENDER_TIMEOUT = 20.0  # seconds for one page; a real page renders in well under one
DEFAULT_RENDER_MEMORY = 1 << 30  # bytes of address space per render, beyond the child at rest and the file
DEFAULT_MAX_PIXELS = 16_000_000  # a 2000 px wide A4 page is 5.7 MP
_GRACE_S = 5.0  # the child's own alarm fires this long after the parent's watchdog
_START_TIMEOUT_S = 60.0  # a fresh child imports PyMuPDF and says "ready"
_HASH_CHUNK = 1 << 20


class NoSuchPageError(PagelensError):
    """No live page has this id (never was, or its document was removed or re-indexed)."""


class FileMissingError(PagelensError):
    """The indexed file is gone, or is no longer a regular file."""


class PageChangedError(PagelensError):
    """The indexed file's bytes no longer hash to the SHA-256 recorded at indexing."""


class RenderFailedError(PagelensError):
    """The page could not be rendered within the time and memory budget (or is not renderable)."""


# ---- the file, checked ---------------------------------------------------------------------------


def open_regular(path: str) -> BinaryIO:
    """``path`` opened for reading if it is a regular file; never blocks on a FIFO or device
    (checked before opening and on the open descriptor). Raises `FileMissingError` otherwise."""
    shown = os.fsencode(path).decode("utf-8", "replace")
    hint = "re-index the folder it was in (`pagelens index ... --index DIR`), or remove it from the index"
    if not os.path.isabs(path):  # the catalogue names local files by absolute path; anything else is an identifier
        raise FileMissingError(f"{shown} is an identifier of embeddings made elsewhere, not a local file",
                               "only files indexed from this machine can be shown")
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise FileMissingError(f"{shown} is no longer a regular file", hint)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileMissingError(f"{shown} is gone: it was moved or deleted since it was indexed", hint) from None
    except NotADirectoryError:
        raise FileMissingError(f"{shown} is gone: a folder on its path is now a file", hint) from None
    except PermissionError:
        raise FileMissingError(f"{shown} cannot be read (permission denied)",
                               "let the user running `pagelens serve` read it") from None
    except OSError as exc:
        raise FileMissingError(f"{shown} cannot be read ({exc.strerror or exc})", hint) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else between stat and open
            raise FileMissingError(f"{shown} is no longer a regular file", hint)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_key(fh: BinaryIO) -> tuple[int, int, int, int]:
    st = os.fstat(fh.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileHashes:
    """Verified SHA-256s by (device, inode, size, mtime_ns): any write, replacement or move onto
    the path changes the key, so the file is hashed again; an unchanged one is not. Thread-safe."""

    def __init__(self, max_entries: int = 4096):
        self.max_entries = int(max_entries)
        self._known: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()
        self.hashed = 0  # files hashed (not answered from the cache): for tests and stats

    def known(self, key: tuple) -> str | None:
        with self._lock:
            digest = self._known.get(key)
            if digest is not None:
                self._known.move_to_end(key)
            return digest

    def remember(self, key: tuple, digest: str) -> None:
        with self._lock:
            self._known[key] = digest
            self._known.move_to_end(key)
            while len(self._known) > self.max_entries:
                self._known.popitem(last=False)

    def digest(self, fh: BinaryIO) -> str:
        """The SHA-256 of the open file ``fh`` (from the cache when its key is unchanged)."""
        key = _file_key(fh)
        digest = self.known(key)
        if digest is None:
            fh.seek(0)
            h = hashlib.sha256()
            while chunk := fh.read(_HASH_CHUNK):
                h.update(chunk)
            digest = h.hexdigest()
            self.hashed += 1
            if _file_key(fh) == key:  # written to while we read: do not vouch for it
                self.remember(key, digest)
        fh.seek(0)
        return digest


def _changed(path: str) -> PageChangedError:
    shown = os.fsencode(path).decode("utf-8", "replace")
    return PageChangedError(
        f"{shown} changed since it was indexed (its SHA-256 differs from the recorded one)",
        "re-index it (`pagelens index PATH --index DIR`) to search and show its current pages",
    )


def _unhashed(path: str, sha256: str | None) -> None:
    if not sha256 and os.path.isabs(path):  # embeddings brought while the file was not there: nothing to check
        shown = os.fsencode(path).decode("utf-8", "replace")
        raise FileMissingError(f"{shown} was not there when its embeddings were added, so no SHA-256 was recorded",
                               "only files whose content the index recorded can be shown")


def open_verified(path: str, sha256: str, hashes: FileHashes) -> BinaryIO:
    """The indexed file, open and positioned at its start, whose bytes hash to ``sha256``.
    Raises `FileMissingError` or `PageChangedError`."""
    _unhashed(path, sha256)
    fh = open_regular(path)
    try:
        if hashes.digest(fh) != sha256:
            raise _changed(path)
    except BaseException:
        fh.close()
        raise
    return fh


def read_verified(path: str, sha256: str, hashes: FileHashes | None = None) -> bytes:
    """The bytes of the indexed file, hashed as read: exactly the content with ``sha256``
    (and ``hashes`` learns the file's key, so the next check of the unchanged file is free)."""
    _unhashed(path, sha256)
    with open_regular(path) as fh:
        key = _file_key(fh)
        data = fh.read()
        unchanged = _file_key(fh) == key
    digest = hashlib.sha256(data).hexdigest()
    if hashes is not None and unchanged:
        hashes.remember(key, digest)
    if digest != sha256:
        raise _changed(path)
    return data


# ---- rendering in a child process ---------------------------------------------------------------


class PageRenderer:
    """One child process rendering pages; one request at a time (the caller serialises)."""

    def __init__(self, *, timeout: float = DEFAULT_RENDER_TIMEOUT, memory: int = DEFAULT_RENDER_MEMORY,
                 max_pixels: int = DEFAULT_MAX_PIXELS, hashes: FileHashes | None = None):
        self.timeout, self.memory, self.max_pixels = float(timeout), int(memory), int(max_pixels)
        self.hashes = hashes if hashes is not None else FileHashes()
        self._proc: subprocess.Popen | None = None
        self._to: Connection | None = None
        self._from: Connection | None = None
        self._loaded: str | None = None  # the sha256 of the document the child holds open
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def holds(self) -> str | None:
        """The SHA-256 of the document the child has open (its next page needs no file read)."""
        return self._loaded

    def _start(self) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                "from pagelens.pages import render_child_main; sys.exit(render_child_main())")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, str(to_r), str(from_w)], pass_fds=(to_r, from_w),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                close_fds=True, start_new_session=True,  # Ctrl-C in the server's terminal is the server's
            )
        finally:
            os.close(to_r)
            os.close(from_w)
        self._to, self._from = Connection(to_w, readable=False), Connection(from_r, writable=False)
        self._loaded = None
        self.starts += 1
        if not self._from.poll(_START_TIMEOUT_S):
            self.kill()
            raise RenderFailedError("the page renderer did not start", "check that PyMuPDF imports on this machine")
        try:
            ready = self._from.recv()
        except (EOFError, OSError):
            ready = None
        if ready != ("ready",):
            self.kill()
            raise RenderFailedError("the page renderer did not start", "check that PyMuPDF imports on this machine")

    def kill(self) -> None:
        """Stop the child now (it is replaced on the next render)."""
        proc, self._proc = self._proc, None
        close_quietly(self._to, self._from)
        self._to = self._from = None
        self._loaded = None
        if proc is not None:
            try:
                proc.kill()
            except OSError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    close = kill

    def render(self, path: str, sha256: str, kind: str, page_number: int, width: int) -> tuple[bytes, int, int]:
        """PNG bytes (and their width and height) of page ``page_number`` of the file at ``path``,
        checked against ``sha256``, at most ``width`` pixels wide. Raises `FileMissingError`,
        `PageChangedError` or `RenderFailedError`."""
        if self._proc is not None and self._proc.poll() is not None:
            self.kill()  # died while idle: forget what it held
        data = b""
        if self._loaded == sha256:  # the child holds these bytes: check the file still has them
            open_verified(path, sha256, self.hashes).close()
        else:  # hand the child exactly the bytes that were hashed
            data = read_verified(path, sha256, self.hashes)
        if self._proc is None:
            self._start()
        request = ("render", sha256, kind, int(page_number), int(width), self.max_pixels, self.timeout,
                   self.memory, len(data))
        try:
            self._to.send(request)
            if data:
                self._to.send_bytes(data)
        except (OSError, ValueError):
            self.kill()
            raise RenderFailedError("the page renderer stopped before it took the page", "try again") from None
        del data
        self._loaded = None  # unknown until the child answers
        try:
            ready = self._from.poll(self.timeout)
        except (OSError, EOFError):
            ready = True
        if not ready:
            self.kill()
            raise RenderFailedError(f"page {page_number} took longer than {self.timeout:g} s to render",
                                    "the page is too costly to show; its text and search results are unaffected")
        try:
            msg = self._from.recv()
        except (EOFError, OSError):
            raise self._died(page_number) from None
        if msg[0] == "error":
            _tag, detail, fatal = msg
            if fatal:
                self.kill()
            raise RenderFailedError(f"page {page_number} cannot be rendered: {detail}",
                                    "the page is too costly or too damaged to show; search results are unaffected")
        if msg[0] != "png":
            self.kill()
            raise RenderFailedError(f"the page renderer answered {msg[0]!r}", "try again")
        _tag, png, w, h = msg
        self._loaded = sha256
        return png, int(w), int(h)

    def _died(self, page_number: int) -> RenderFailedError:
        proc = self._proc
        code = proc.wait(5) if proc is not None else None
        self.kill()
        if code is not None and code < 0:
            if -code == signal.SIGKILL:
                why = "ran out of memory (the renderer was killed)"
            elif -code == getattr(signal, "SIGALRM", None):
                why = "took too long (the renderer timed out)"
            else:
                try:
                    why = f"crashed the renderer ({signal.Signals(-code).name})"
                except ValueError:
                    why = f"crashed the renderer (signal {-code})"
        else:
            why = f"stopped the renderer (exit status {code})"
        return RenderFailedError(f"rendering page {page_number} {why}",
                                 "the page is too costly or too damaged to show; search results are unaffected")


class RendererPool:
    """A few `PageRenderer` children shared by threads: each render takes one, gives it back."""

    def __init__(self, size: int = 2, *, hashes: FileHashes | None = None, **kwargs):
        self.hashes = hashes if hashes is not None else FileHashes()
        self._idle = [PageRenderer(hashes=self.hashes, **kwargs) for _ in range(max(1, int(size)))]
        self._all = list(self._idle)
        self._cond = threading.Condition()
        self._closed = False

    def render(self, path: str, sha256: str, kind: str, page_number: int, width: int) -> tuple[bytes, int, int]:
        with self._cond:
            while not self._idle:
                if self._closed:
                    raise RenderFailedError("the server is shutting down", "try again later")
                self._cond.wait()
            if self._closed:
                raise RenderFailedError("the server is shutting down", "try again later")
            # the child already holding this document, if any (no second read of a large file)
            pick = next((r for r in self._idle if r.holds == sha256), self._idle[-1])
            self._idle.remove(pick)
        try:
            return pick.render(path, sha256, kind, page_number, width)
        finally:
            with self._cond:
                self._idle.append(pick)
                self._cond.notify()

    def pids(self) -> list[int]:
        return [r.pid for r in self._all if r.pid is not None]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for r in self._all:
            r.kill()


class PngCache:
    """Rendered PNGs by (page_id, sha256, width), least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes:
                _k, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


def page_zoom(width_pt: float, height_pt: float, width: int, max_pixels: int) -> float:
    """The points -> pixels factor that makes a page ``width`` pixels wide, lowered to keep the
    whole picture within ``max_pixels``."""
    w, h = max(float(width_pt), 1e-3), max(float(height_pt), 1e-3)
    zoom = width / w
    if w * h * zoom * zoom > max_pixels:
        zoom = math.sqrt(max_pixels / (w * h))
    return zoom


def render_pdf_png(doc, page_number: int, width: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, int, int]:
    """Page ``page_number`` (from 1) of an open PyMuPDF document as PNG bytes. In-process: call
    it from a budgeted child (``PageRenderer``) for files that are not trusted."""
    import pymupdf

    page = doc.load_page(page_number - 1)
    rect = page.rect
    zoom = page_zoom(rect.width, rect.height, width, max_pixels)
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
    return pix.tobytes("png"), pix.width, pix.height


def render_image_png(data: bytes, width: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, int, int]:
    """An indexed page image (png, jpg, tiff) scaled to ``width`` as PNG bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as raw:
        if raw.width * raw.height > 4 * Image.MAX_IMAGE_PIXELS:
            raise ValueError(f"image of {raw.width} x {raw.height} pixels is too large to decode safely")
        zoom = page_zoom(raw.width, raw.height, width, max_pixels)
        size = (max(1, round(raw.width * zoom)), max(1, round(raw.height * zoom)))
        raw.draft("RGB", size)  # JPEG: decode at a reduced scale when that suffices
        img = raw.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue(), img.width, img.height


# ---- the child side -------------------------------------------------------------------------------





def _one_line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]


def render_child_main(argv: list[str] | None = None) -> int:
    """The child: ``("render", sha256, kind, page, width, max_pixels, timeout, memory, nbytes)``
    (then the file's bytes when nbytes > 0) -> ``("png", bytes, w, h)`` | ``("error", detail, fatal)``."""
    argv = sys.argv if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the alarm kills even inside MuPDF
    inp, out = Connection(int(argv[1]), writable=False), Connection(int(argv[2]), readable=False)
    import pymupdf

    from indexer.render import document_page_count, is_out_of_memory

    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    held: dict = {"sha": None, "data": None, "doc": None}
    try:
        out.send(("ready",))
        while True:
            msg = inp.recv()
            if msg[0] != "render":
                return 0
            _tag, sha, kind, number, width, max_pixels, timeout, memory, nbytes = msg
            alarm(timeout + _GRACE_S)
            base = address_space()
            if base is not None:
                limit_memory(base + int(memory) + 2 * int(nbytes))
            try:
                if nbytes:
                    if held["doc"] is not None:
                        held["doc"].close()
                    held.update(sha=None, data=None, doc=None)
                    data = inp.recv_bytes()
                    if hashlib.sha256(data).hexdigest() != sha:  # the parent hashed these bytes; so do we
                        raise ValueError("the bytes received do not have the expected SHA-256")
                    doc = None
                    if kind == "pdf":
                        doc = pymupdf.open(stream=data, filetype="pdf")
                        if doc.needs_pass:
                            raise ValueError("the PDF is password-protected; the server cannot open it")
                    held.update(sha=sha, data=data, doc=doc)
                elif held["sha"] != sha:
                    raise ValueError("the renderer does not hold that document")
                if kind == "pdf":
                    count = document_page_count(held["doc"], "")
                    if not 1 <= number <= count:
                        raise ValueError(f"the file has {count} pages, not page {number}")
                    png, w, h = render_pdf_png(held["doc"], number, width, max_pixels)
                else:
                    png, w, h = render_image_png(held["data"], width, max_pixels)
                alarm(0)
                out.send(("png", png, w, h))
            except MemoryError:
                alarm(0)
                held.update(sha=None, data=None, doc=None)
                limit_memory(None)
                out.send(("error", f"ran out of memory (limit {int(memory) >> 20} MiB)", True))
                return 0
            except Exception as exc:  # noqa: BLE001 - every failure goes back as a message
                alarm(0)
                limit_memory(None)
                fatal = is_out_of_memory(exc)
                detail = getattr(exc, "detail", None) or _one_line(exc)
                out.send(("error", "ran out of memory" if fatal else detail, fatal))
                if fatal:
                    return 0
            finally:
                alarm(0)
                limit_memory(None)
    except (EOFError, OSError):  # the parent is gone
        return 0
