"""Turns indexing events into a progress bar on a terminal, or plain lines when piped.

The library never prints; this is the only place that draws indexing progress.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from indexer.report import FileDone, FileFailed, FileRemoved, FileSkipped, FileStarted, PageDone, RunStarted


@contextmanager
def progress_reporter(enabled: bool = True, stream=None) -> Iterator[Callable[[Any], None] | None]:
    """Yields an ``on_event`` callback (or None when disabled) for `Index.add`."""
    if not enabled:
        yield None
        return
    stream = stream or sys.stderr
    if stream.isatty():
        with _bar(stream) as on_event:
            yield on_event
    else:
        yield _lines(stream)


def _lines(stream) -> Callable[[Any], None]:
    start = time.monotonic()

    def on_event(event: Any) -> None:
        if isinstance(event, FileDone):
            print(f"[{event.files_done}/{event.files_total}] indexed {event.path} ({event.pages} pages)", file=stream)
        elif isinstance(event, FileSkipped):
            print(f"[{event.files_done}/{event.files_total}] unchanged {event.path}", file=stream)
        elif isinstance(event, FileFailed):
            print(f"[{event.files_done}/{event.files_total}] failed {event.path}: {event.reason}", file=stream)
        elif isinstance(event, FileRemoved):
            print(f"removed {event.path} ({event.pages} pages): no longer on disk", file=stream)
        elif isinstance(event, PageDone) and event.pages_done % 100 == 0:
            elapsed = time.monotonic() - start
            print(f"  {event.pages_done} pages, {event.pages_done / max(elapsed, 1e-9):.1f} pages/s", file=stream)
        stream.flush()

    return on_event


@contextmanager
def _bar(stream) -> Iterator[Callable[[Any], None]]:
    from rich.console import Console  # rich comes with typer
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(file=stream)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    files = progress.add_task("files", total=None, rate="")
    pages = progress.add_task("pages", total=None, rate="")
    state = {"start": time.monotonic(), "page_total": 0}

    def on_event(event: Any) -> None:
        if isinstance(event, RunStarted):
            progress.update(files, total=event.files_total)
        elif isinstance(event, FileStarted):
            state["page_total"] += event.page_count
            progress.update(pages, total=state["page_total"], description=f"pages  {_short(event.path)}")
        elif isinstance(event, PageDone):
            rate = event.pages_done / max(time.monotonic() - state["start"], 1e-9)
            progress.update(pages, completed=event.pages_done, rate=f"{rate:.1f} pages/s")
        elif isinstance(event, (FileDone, FileSkipped, FileFailed)):
            progress.update(files, completed=event.files_done, total=event.files_total)
            if isinstance(event, FileFailed):
                progress.console.print(f"[red]failed[/red] {event.path}: {event.reason}", markup=True, highlight=False)

    with progress:
        yield on_event


def _short(path: str, width: int = 40) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3):]
