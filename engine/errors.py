"""Errors raised by the embedding core. Each carries a hint that tells the user what to do next."""


class EngineError(Exception):
    """A user-facing failure of the embedding core (bad task, missing weights, corrupt files)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message
