"""The `pagelens` command line: each command is a thin layer over one `pagelens.Index` method."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from pagelens import __version__
from engine.errors import UserError
from pagelens.errors import EXIT_ERROR, EXIT_NOTHING_USABLE, EXIT_OK, EXIT_SOME_FAILED

app = typer.Typer(
    name="pagelens",
    help=(
        "Visual document retrieval: index folders of PDFs and page images, then find the page that "
        "answers a question, by how it looks as well as what it says.\n\n"
        "Exit codes: 0 done; 1 some inputs failed (the rest was indexed); 2 bad command line; "
        "3 nothing usable was indexed; 4 error (missing index, model unavailable, encoder mismatch)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

IndexOption = typer.Option(
    ...,
    "--index",
    "-i",
    envvar="PAGELENS_INDEX",
    help="Index directory (default: $PAGELENS_INDEX).",
)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
DeviceOption = typer.Option(None, "--device", help="Torch device for the model: cpu, cuda, cuda:1 (default: cuda if present).")


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _fail(error: UserError) -> None:
    """Print a user error as one message (and its hint), never a traceback."""
    _err(f"Error: {error.message}")
    if error.hint:
        _err(f"Hint: {error.hint}")
    raise typer.Exit(EXIT_ERROR)


def _run(fn, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except UserError as error:
        _fail(error)
    except OSError as error:  # disk full, permissions, a vanished index directory
        _err(f"Error: {error.strerror or error} ({error.filename or 'I/O'})")
        _err("Hint: every finished document is kept; fix the cause (free space, permissions) and run the same command again.")
        raise typer.Exit(EXIT_ERROR)
    except MemoryError:
        _err("Error: out of memory.")
        _err("Hint: every finished document is kept; try a smaller --batch-size or --max-pixels and run again.")
        raise typer.Exit(EXIT_ERROR)
    except KeyboardInterrupt:
        _err("Interrupted: the index holds every document finished so far; run the same command to resume.")
        raise typer.Exit(130)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pagelens {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """pagelens: visual document retrieval over PDFs."""


@app.command("index")
def index_command(
    paths: List[Path] = typer.Argument(..., help="PDFs, page images (png, jpg, tiff) or folders (searched recursively)."),
    index: Path = IndexOption,
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        envvar="PAGELENS_MODEL",
        help="Hugging Face repo id (from the local cache) or a local checkpoint folder "
        "(default: jinaai/jina-embeddings-v4 for a new index, the index's own model otherwise).",
    ),
    task: Optional[str] = typer.Option(
        None, "--task", help="LoRA task adapter: retrieval, text-matching or code (default: retrieval)."
    ),
    dpi: Optional[int] = typer.Option(None, "--dpi", help="Render resolution for PDF pages (default: 144; the encoder's pixel cap still applies)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Pixel cap per page for the encoder (default: the model's)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Pages per encoder batch."),
    search_dim: Optional[int] = typer.Option(
        None, "--search-dim",
        help="Matryoshka width of the single-vector prefilter (128, 256, 512, 1024; default: full). "
        "Fixed when the index is created.",
    ),
    device: Optional[str] = DeviceOption,
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: bf16 on CUDA, fp32 on CPU)."),
    password: Optional[str] = typer.Option(None, "--password", help="Password for encrypted PDFs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    as_json: bool = JsonOption,
) -> None:
    """Index PDFs and page images into DIR, embedding only new or changed files."""
    from pagelens.api import Index
    from pagelens.progress import progress_reporter

    def work() -> Any:
        idx = Index.open_or_create(
            index, model=model, task=task, device=device, dtype=dtype, max_pixels=max_pixels, search_dim=search_dim
        )
        with idx, progress_reporter(enabled=not quiet and not as_json) as on_event:
            return idx.add(paths, dpi=dpi, batch_size=batch_size, password=password, on_event=on_event)

    report = _run(work)
    if as_json:
        _print_json(_report_dict(report))
    elif not quiet:
        for path, reason in report.failed:
            _err(f"failed: {path}: {reason}")
        _err(
            f"{len(report.added)} added ({report.pages_added} pages), {len(report.skipped)} unchanged, "
            f"{len(report.removed)} removed, {len(report.failed)} failed in {report.elapsed:.1f}s"
        )
    raise typer.Exit(_OUTCOME_EXIT[report.outcome])


_OUTCOME_EXIT = {"all_indexed": EXIT_OK, "some_failed": EXIT_SOME_FAILED, "nothing_usable": EXIT_NOTHING_USABLE}


def _report_dict(report: Any) -> dict:
    return {
        "outcome": report.outcome,
        "added": [{"path": p, "pages": n} for p, n in report.added],
        "skipped": list(report.skipped),
        "failed": [{"path": p, "reason": r} for p, r in report.failed],
        "removed": [{"path": p, "pages": n} for p, n in report.removed],
        "duplicates": [{"path": p, "same_as": q} for p, q in report.duplicates],
        "pages_added": report.pages_added,
        "pages_encoded": report.pages_encoded,
        "elapsed_s": round(report.elapsed, 3),
    }


@app.command("search")
def search_command(
    query: str = typer.Argument(..., help="What you are looking for, in any language."),
    index: Path = IndexOption,
    k: int = typer.Option(10, "-k", "--k", help="Number of pages to return."),
    candidates: Optional[int] = typer.Option(None, "--candidates", help="Pages the pooled-token stage proposes for the exact MaxSim rerank; the single-vector "
        "stage adds a quarter as many (default: 200).",),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="Score every page by exact MaxSim (slow; ground truth)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", envvar="PAGELENS_MODEL",
        help="Where the index's model is now, if it moved (default: the location recorded in the index).",
    ),
    device: Optional[str] = DeviceOption,
    as_json: bool = JsonOption,
) -> None:
    """Find the pages that best answer QUERY."""
    from pagelens.api import Index

    def work() -> Any:
        with Index.open(index, model=model, device=device) as idx:
            return idx.search(query, k=k, candidates=candidates, exhaustive=exhaustive)

    hits = _run(work)
    if as_json:
        _print_json([{"rank": h.rank, "score": h.score, "path": h.path, "page": h.page} for h in hits])
        return
    if not hits:
        _err("No pages in the index yet: add some with `pagelens index PATH... --index DIR`.")
        return
    for h in hits:
        typer.echo(f"{h.rank:>3}  {h.score:8.4f}  {h.path}  page {h.page}")


@app.command("info")
def info_command(index: Path = IndexOption, as_json: bool = JsonOption) -> None:
    """Show documents, pages, vectors, bytes on disk, the encoder identity and the format version."""
    from pagelens.api import Index

    def work() -> Any:
        with Index.open(index) as idx:
            return idx.info()

    info = _run(work)
    if as_json:
        _print_json(info.to_dict())
        return
    typer.echo(f"index:      {info.directory} (format {info.format_version})")
    typer.echo(f"documents:  {info.documents} ({info.failed_documents} failed)")
    typer.echo(f"pages:      {info.pages}")
    typer.echo(f"vectors:    {info.vectors}")
    for part, size in info.bytes_on_disk.items():
        typer.echo(f"bytes:      {part:<16} {size:>14,}")
    if info.identity:
        for key in ("model", "revision", "task", "single_dim", "multi_dim", "max_pixels", "image_processor"):
            if key in info.identity:
                typer.echo(f"encoder:    {key:<16} {info.identity[key]}")
    else:
        typer.echo("encoder:    none (embeddings are brought by the user)")


@app.command("remove")
def remove_command(
    paths: List[Path] = typer.Argument(..., help="Documents (or folders of documents) to remove from the index."),
    index: Path = IndexOption,
    as_json: bool = JsonOption,
) -> None:
    """Remove documents' pages from the index."""
    from pagelens.api import Index

    def work() -> Any:
        with Index.open(index, writable=True) as idx:
            return idx.remove(paths)

    removed = _run(work)
    if as_json:
        _print_json({"pages_removed": removed})
    else:
        typer.echo(f"removed {removed} pages")


@app.command("compact")
def compact_command(index: Path = IndexOption, as_json: bool = JsonOption) -> None:
    """Reclaim the disk space of removed pages now (it also happens automatically past a threshold)."""
    from pagelens.api import Index

    def work() -> Any:
        with Index.open(index, writable=True) as idx:
            return idx.compact()

    result = _run(work)
    if as_json:
        _print_json({"bytes_reclaimed": result})
    else:
        typer.echo(f"reclaimed {result:,} bytes")


def main() -> None:
    app(prog_name="pagelens")


if __name__ == "__main__":
    sys.exit(main())
