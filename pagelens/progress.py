"""Turns indexing events into a progress bar on a terminal, or plain lines when piped.

The library never prints; this is the only place that draws indexing progress. Paths and reasons
are shown through `pagelens.results.printable`, so a file name holding a newline or an ANSI escape
sequence cannot break or recolour the screen.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from indexer.report import FileDone, FileFailed, FileRemoved, FileSkipped, FileStarted, PageDone, RunStarted
from pagelens.results import ModelLoaded, ModelLoading, printable


@contextmanager
def progress_reporter(enabled: bool = True, stream=None) -> Iterator[Callable[[Any], None] | None]:
    """Yields an ``on_event`` callback (or None when disabled) for `Index.add` and `Index.open_or_create`."""
    if not enabled:
        yield None
        return
    stream = stream or sys.stderr
    if stream.isatty():
        with _bar(stream) as on_event:
            yield on_event
    else:
        yield _lines(stream)


def model_notice(event: Any) -> str | None:
    """The line shown for a model-loading event, or None for any other event."""
    if isinstance(event, ModelLoading):
        return f"loading model {printable(event.model)} ..."
    if isinstance(event, ModelLoaded):
        return f"model loaded in {event.seconds:.1f}s"
    return None


class Eta:
    """One estimate of the time left for the whole run, over every page known so far.

    Pages known: those of the documents started so far, plus, for each file not reached yet, the
    average page count of the documents started so far (a file's page count is known only once it
    is opened). The rate is pages encoded per second since the first document started (so the
    model's load time does not count). Files skipped as unchanged or failed take no page time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.files_total: int | None = None
        self.files_finished = 0
        self.files_started = 0
        self.open_file = False
        self.pages_started = 0  # pages of the documents started so far
        self.pages_done = 0
        self.start: float | None = None

    def update(self, event: Any) -> None:
        if isinstance(event, RunStarted):
            self.files_total = event.files_total
        elif isinstance(event, FileStarted):
            if self.start is None:
                self.start = self.clock()
            self.files_started += 1
            self.pages_started += event.page_count
            self.open_file = True
        elif isinstance(event, PageDone):
            self.pages_done = event.pages_done
        elif isinstance(event, (FileDone, FileSkipped, FileFailed)):
            self.files_finished = event.files_done
            self.files_total = event.files_total
            self.open_file = False

    @property
    def rate(self) -> float | None:
        """Pages per second, or None before the first page."""
        if self.start is None or self.pages_done == 0:
            return None
        return self.pages_done / max(self.clock() - self.start, 1e-9)

    @property
    def pages_known(self) -> float:
        ahead = max(0, (self.files_total or 0) - self.files_finished - (1 if self.open_file else 0))
        per_file = self.pages_started / self.files_started if self.files_started else 0.0
        return self.pages_started + ahead * per_file

    def seconds_left(self) -> float | None:
        rate = self.rate
        if rate is None:
            return None
        return max(0.0, self.pages_known - self.pages_done) / rate

    def describe(self) -> str:
        """e.g. "about 2m05s left" ("" before there is an estimate)."""
        left = self.seconds_left()
        if left is None:
            return ""
        return "under 1s left" if left < 0.5 else f"about {format_duration(left)} left"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _lines(stream, clock: Callable[[], float] = time.monotonic) -> Callable[[Any], None]:
    eta = Eta(clock)

    def counter(event: Any) -> str:
        return f"[{event.files_done}/{event.files_total}]"

    def on_event(event: Any) -> None:
        eta.update(event)
        notice = model_notice(event)
        if notice is not None:
            print(notice, file=stream)
        elif isinstance(event, FileDone):
            left = eta.describe() if event.files_done < event.files_total else ""
            print(f"{counter(event)} indexed {printable(event.path)} ({event.pages} pages)"
                  + (f", {left}" if left else ""), file=stream)
        elif isinstance(event, FileSkipped):
            print(f"{counter(event)} unchanged {printable(event.path)}", file=stream)
        elif isinstance(event, FileFailed):
            print(f"{counter(event)} failed {printable(event.path)}: {printable(event.reason)}", file=stream)
        elif isinstance(event, FileRemoved):
            print(f"removed {printable(event.path)} ({event.pages} pages): no longer on disk", file=stream)
        elif isinstance(event, PageDone) and event.pages_done % 100 == 0:
            rate = eta.rate or 0.0
            left = eta.describe()
            print(f"  {event.pages_done} pages, {rate:.1f} pages/s" + (f", {left}" if left else ""), file=stream)
        stream.flush()

    return on_event


@contextmanager
def _bar(stream) -> Iterator[Callable[[Any], None]]:
    from rich.console import Console  # rich comes with typer
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(file=stream)
    progress = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}", markup=False),
        TextColumn("{task.fields[eta]}", markup=False),
        console=console,
        transient=False,
    )
    files = progress.add_task("files", total=None, rate="", eta="")
    pages = progress.add_task("pages", total=None, rate="", eta="")
    eta = Eta()

    def on_event(event: Any) -> None:
        eta.update(event)
        notice = model_notice(event)
        if notice is not None:
            progress.console.print(notice, markup=False, highlight=False)
        elif isinstance(event, RunStarted):
            progress.update(files, total=event.files_total)
        elif isinstance(event, FileStarted):
            progress.update(pages, total=round(eta.pages_known), description=f"pages  {_short(event.path)}")
        elif isinstance(event, PageDone):
            rate = eta.rate or 0.0
            progress.update(pages, completed=event.pages_done, total=max(round(eta.pages_known), event.pages_done),
                            rate=f"{rate:.1f} pages/s", eta=eta.describe())
        elif isinstance(event, (FileDone, FileSkipped, FileFailed)):
            progress.update(files, completed=event.files_done, total=event.files_total)
            progress.update(pages, total=max(round(eta.pages_known), eta.pages_done), eta=eta.describe())
            if isinstance(event, FileFailed):
                progress.console.print(
                    f"[red]failed[/red] {escape(printable(event.path))}: {escape(printable(event.reason))}",
                    markup=True, highlight=False,
                )
        elif isinstance(event, FileRemoved):
            progress.console.print(f"removed {printable(event.path)} ({event.pages} pages): no longer on disk",
                                   markup=False, highlight=False)

    with progress:
        yield on_event


def _short(path: str, width: int = 40) -> str:
    path = printable(path)
    return path if len(path) <= width else "..." + path[-(width - 3):]
