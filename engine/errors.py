"""User-facing errors. Each carries a hint that tells the user what to do next.

``UserError`` is the root for every package (indexer and pagelens errors derive from it), so the
CLI turns any of them into one message and an exit code, never a traceback.
"""


class UserError(Exception):
    """A failure the user can fix: what went wrong (``message``) and what to do next (``hint``)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class EngineError(UserError):
    """A user-facing failure of the embedding core (bad task, missing weights, corrupt files)."""
