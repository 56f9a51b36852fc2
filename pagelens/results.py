"""Plain result types returned by the Python API and printed by the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One ranked page. ``page`` counts from 1; ``page_id`` is the index's stable integer id."""

    rank: int
    score: float
    path: str
    page: int
    page_id: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PageInfo:
    """One indexed page, by its id (`Index.page`): where its document is, and what it was.

    ``path`` is exact, as indexed (may hold surrogate escapes); ``name`` is its printable file name.
    ``width`` / ``height``: the page as rendered for the encoder, in pixels (None where the store
    does not record it). ``sha256``: of the document's bytes when indexed; a file that no longer
    matches it is not this page any more. ``heatmap``: the page has a patch grid to explain
    matches with (`Index.explain`)."""

    page_id: int
    path: str
    name: str
    page: int
    width: int | None
    height: int | None
    sha256: str | None
    heatmap: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IndexInfo:
    """What `pagelens info` reports."""

    directory: str
    format_version: int
    documents: int
    pages: int
    vectors: int
    bytes_on_disk: dict[str, int]
    identity: dict[str, Any] | None
    failed_documents: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DamagedDocument:
    """A document whose stored vectors fail their checksum: re-index it (`pagelens index --repair`)."""

    path: str  # exact, as indexed (may hold surrogate escapes)
    display_path: str  # printable
    pages: list[int]  # page numbers that fail
    reason: str


@dataclass
class VerifyReport:
    """What `Index.verify` / `pagelens verify` found. ``problems`` are index-level (the catalogue, a
    shard file) and need a restore or a rebuild; ``damaged`` documents are fixed by a repair run."""

    directory: str
    pages_checked: int
    damaged: list[DamagedDocument] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems

    @property
    def repair_command(self) -> str | None:
        """The command that re-encodes the damaged documents (None when there are none)."""
        if not self.damaged:
            return None
        return f"pagelens index --repair --index {_shell_quote(self.directory)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "directory": self.directory,
            "pages_checked": self.pages_checked,
            "damaged": [asdict(d) for d in self.damaged],
            "problems": list(self.problems),
            "repair_command": self.repair_command,
        }


@dataclass(frozen=True)
class ModelLoading:
    """Sent to ``on_event`` when a model starts loading (seconds, up to a minute for the real one)."""

    model: str


@dataclass(frozen=True)
class ModelLoaded:
    model: str
    seconds: float


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# bidirectional overrides and isolates, line and paragraph separators: they reorder or break lines
_INVISIBLE = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029\u200e\u200f")


def printable(text: Any) -> str:
    """``text`` safe for a terminal: control characters (newlines, ANSI escape sequences, C1 codes,
    bidi overrides) and lone surrogates (bytes that were not UTF-8) are shown as escapes such as
    ``\\n``, ``\\x1b`` or ``\\udcff``; everything else is left as it is. JSON output does not use this."""
    text = str(text)
    if text.isprintable():  # the common case; everything escaped below is non-printable
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF or ch in _INVISIBLE:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _shell_quote(text: str) -> str:
    import shlex  # noqa: PLC0415

    return shlex.quote(printable(text))
