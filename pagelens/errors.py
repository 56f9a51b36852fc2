"""The error tree users see, and the one place that maps errors to CLI exit codes."""

from __future__ import annotations

from engine.errors import UserError
from indexer.errors import IndexExistsError as _StoreIndexExistsError


class PagelensError(UserError):
    """A user-facing failure of the API: what went wrong, and a hint saying what to do next."""


class IndexNotFoundError(PagelensError):
    """The index directory does not exist or holds no pagelens index."""


class IndexExistsError(PagelensError, _StoreIndexExistsError):
    """`Index.create` on a folder that already holds an index (also an `indexer.errors.IndexExistsError`,
    which the store raises when it finds the index under its writer lock)."""


class NoModelError(PagelensError):
    """The index was created without a model, so it cannot embed text or pages itself."""


class BadEmbeddingError(PagelensError):
    """An embedding the index cannot use: wrong widths, no token vectors, NaN or inf values."""


class EncoderOutputError(ValueError):
    """The encoder returned, for one input, an embedding the index cannot store (NaN or inf, no
    token vectors, values beyond float16). Deliberately not a UserError: the indexing pipeline then
    fails that input's document and goes on, and stops the run only when the encoder refuses page
    after page. Carries ``message`` and ``hint`` like the others."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


# Exit codes of the `pagelens` CLI (documented in README.md).
EXIT_OK = 0  # everything asked for was done
EXIT_SOME_FAILED = 1  # `index`: some inputs failed, the rest was indexed
EXIT_USAGE = 2  # bad command line (typer/click's own code)
EXIT_NOTHING_USABLE = 3  # `index`: no input could be indexed
EXIT_ERROR = 4  # a user-facing error: missing index, encoder mismatch, model unavailable, unreadable catalogue...
EXIT_DAMAGED = 5  # `verify`: stored pages fail their checksum (or the index has problems); see its report
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2; every finished document is kept
EXIT_TERMINATED = 143  # SIGTERM: 128 + 15; every finished document is kept
