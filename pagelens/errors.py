"""The error tree users see, and the one place that maps errors to CLI exit codes."""

from __future__ import annotations

from engine.errors import UserError


class PagelensError(UserError):
    """A user-facing failure of the API: what went wrong, and a hint saying what to do next."""


class IndexNotFoundError(PagelensError):
    """The index directory does not exist or holds no pagelens index."""


class NoModelError(PagelensError):
    """The index was created without a model, so it cannot embed text or pages itself."""


# Exit codes of the `pagelens` CLI (documented in README.md).
EXIT_OK = 0  # everything asked for was done
EXIT_SOME_FAILED = 1  # `index`: some inputs failed, the rest was indexed
EXIT_USAGE = 2  # bad command line (typer/click's own code)
EXIT_NOTHING_USABLE = 3  # `index`: no input could be indexed
EXIT_ERROR = 4  # a user-facing error: missing index, encoder mismatch, model unavailable...
