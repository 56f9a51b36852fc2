"""Budgets a rendering child process sets on itself (an address-space cap and a wall-clock alarm),
and the parent's clean-up of its pipes.

Shared by the indexer's render worker (``render_worker.py``) and the server's page renderer
(``pagelens/pages.py``): a hostile PDF can make MuPDF allocate or loop without end, and both run it
in a child that these limits (plus the parent's watchdog) bound.
"""

from __future__ import annotations

import os
import signal


def address_space() -> int | None:
    """This process's current virtual size in bytes (the base the cap is added to), or None."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def limit_memory(limit: int | None) -> None:
    """Cap RLIMIT_AS at ``limit`` bytes (never above the hard limit); None lifts the cap again."""
    try:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if limit is not None and hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (hard if limit is None else limit, hard))
    except (ImportError, OSError, ValueError):
        pass  # no RLIMIT_AS here: the time budget and the parent's watchdog still hold


def alarm(seconds: float) -> None:
    """SIGALRM after ``seconds`` (0 cancels); with SIG_DFL it ends the child even inside MuPDF."""
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, max(0.0, seconds))


def close_quietly(*connections) -> None:
    """Close the parent's pipe ends to a child (None skipped); a pipe already broken is fine."""
    for conn in connections:
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass


__all__ = ["address_space", "alarm", "close_quietly", "limit_memory"]
