"""Input paths -> the files to index, and one file -> a SourceFile (stat + streaming SHA-256).

Paths are ``str`` everywhere in the API. A file name that is not valid UTF-8 is carried as the
``str`` that ``os.fsdecode`` gives (lone surrogates, PEP 383), which round-trips exactly through
``os.fsencode``; the catalogue stores the bytes (see ``path_key``) and a printable display name.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
from dataclasses import dataclass, field

from indexer.errors import PdfError, UnreadableError, UnsupportedFileError, VanishedError

PDF_SUFFIXES = (".pdf",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    """One input file as it was when hashed. ``path`` is absolute; see the module note on names."""

    path: str
    size: int
    mtime: float
    sha256: str

    @property
    def kind(self) -> str:
        return file_kind(self.path) or "pdf"

    @property
    def display_path(self) -> str:
        return display_path(self.path)


@dataclass
class Expansion:
    """What a list of PATH arguments expands to.

    ``files``: absolute paths in a stable order, each once. ``folders``: the absolute folder
    arguments (documents that were under one and are gone can be removed). ``missing``:
    (argument, reason) for arguments that are neither a file nor a folder. ``unreadable``:
    (folder, reason) for folders, arguments or below them, that could not be listed (what they
    hold is unknown, so documents under them must be kept).
    """

    files: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


class NotARegularFileError(OSError):
    """A FIFO, socket or device where a file was expected (opening or reading it could block forever)."""


class ChangingFileError(PdfError):
    """The file kept changing between being hashed and being rendered."""

    kind = "changing"


def path_key(path: str) -> bytes:
    """The exact file-system bytes of ``path``: the catalogue's key for a document."""
    return os.fsencode(path)


def display_path(path: str) -> str:
    """A printable form of ``path`` (undecodable bytes shown as U+FFFD)."""
    return os.fsencode(path).decode("utf-8", "replace")


def absolute(path: str | bytes | os.PathLike) -> str:
    """Absolute, normalised, and always ``str`` (bytes paths decode with surrogateescape)."""
    return os.path.abspath(os.fsdecode(os.fspath(path)))


def file_kind(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith(PDF_SUFFIXES):
        return "pdf"
    if lower.endswith(IMAGE_SUFFIXES):
        return "image"
    return None


def expand_paths(paths) -> Expansion:
    """Expand PDFs, page images and folders (searched recursively, symlinked folders not followed)."""
    out = Expansion()
    seen: set[str] = set()

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            out.files.append(p)

    for raw in paths:
        p = absolute(raw)
        if os.path.isdir(p):
            out.folders.append(p)
            for f in _walk(p, out.unreadable):
                add(f)
        elif os.path.lexists(p):
            add(p)  # whatever it is, reading it will say what is wrong with it
        else:
            out.missing.append((p, "not found: no such file or folder"))
    return out


def _walk(folder: str, unreadable: list[tuple[str, str]]):
    """Files of a known kind under ``folder``, sorted by their bytes. A folder that cannot be
    listed goes into ``unreadable`` (one that vanished meanwhile is simply gone)."""
    found = []
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:  # os.scandir looked up at call time: tests patch it
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            unreadable.append((here, folder_reason(exc)))
            continue
        subfolders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
                if is_dir and not entry.is_symlink():  # symlinked folders are not followed
                    subfolders.append(entry.path)
            except OSError:
                is_dir = False
            if not is_dir and file_kind(entry.path) is not None:
                found.append(entry.path)
        stack.extend(sorted(subfolders, key=os.fsencode, reverse=True))
    found.sort(key=os.fsencode)
    return found


def folder_reason(exc: OSError) -> str:
    detail = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
    return UnreadableError("", f"the folder cannot be listed ({detail}); its documents are kept").reason


def _open_binary(path: str):
    """The one place input files are opened; a seam for tests that simulate unreadable files.

    Never blocks: anything but a regular file (a FIFO, socket or device named ``x.pdf``) raises
    ``NotARegularFileError`` before it is read, checked before opening and again on the open
    descriptor (opened non-blocking, so a FIFO swapped in meanwhile cannot hang the open)."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFileError(errno.EINVAL, "not a regular file", path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError(errno.EINVAL, "not a regular file", path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_source(path: str) -> SourceFile:
    """Stat and hash ``path`` in one streaming pass. Raises a PdfError subclass on failure."""
    path = absolute(path)
    if file_kind(path) is None:
        raise UnsupportedFileError(path, "not a PDF or a page image (png, jpg, jpeg, tif, tiff)")
    try:
        with _open_binary(path) as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UnreadableError(path, "not a regular file")
            digest = hashlib.sha256()
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        raise VanishedError(path, "the file disappeared before it could be read") from None
    except IsADirectoryError:
        raise UnreadableError(path, "is a folder, not a file") from None
    except NotARegularFileError:
        raise UnreadableError(path, "not a regular file") from None
    except PermissionError as exc:
        raise UnreadableError(path, f"permission denied ({exc.strerror or exc})",
                              "check the file's permissions") from None
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise VanishedError(path, "the file disappeared before it could be read") from None
        raise UnreadableError(path, f"cannot read: {exc.strerror or exc}") from None
    return SourceFile(path=path, size=st.st_size, mtime=st.st_mtime, sha256=digest.hexdigest())
