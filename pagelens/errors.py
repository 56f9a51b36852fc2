"""The error tree users see, and the one place that maps errors to CLI exit codes."""

from __future__ import annotations

from engine.errors import EngineError


class PagelensError(Exception):
    """A user-facing failure: what went wrong, and a hint saying what to do next."""

    exit_code = 4

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


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


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix and print as one message, not a traceback."""
    types: list[type[BaseException]] = [PagelensError, EngineError]
    try:
        from indexer.errors import IndexerError  # noqa: PLC0415 - optional until the indexer lands
    except ImportError:
        pass
    else:
        types.append(IndexerError)
    return tuple(types)


def hint_of(error: BaseException) -> str | None:
    return getattr(error, "hint", None)
