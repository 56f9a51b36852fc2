"""The `pagelens` command line: each command is a thin layer over one `pagelens.Index` method.

Options are checked before anything heavy loads (a bad value is a usage error, exit 2, naming the
option and what it accepts); torch and the model load only when something must be encoded.
Errors are one message and a hint, never a traceback; Ctrl-C and SIGTERM stop a run cleanly.
Plain-text output escapes control characters in paths and messages; --json output is exact.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, List, NoReturn, Optional

import typer

from pagelens import __version__
from engine.config import DEFAULT_TASKS
from pagelens.errors import (
    EXIT_DAMAGED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NOTHING_USABLE, EXIT_OK, EXIT_SOME_FAILED, EXIT_TERMINATED,
    PagelensError,
)
from pagelens.results import printable

app = typer.Typer(
    name="pagelens",
    help=(
        "Visual document retrieval: index folders of PDFs and page images, then find the page that "
        "answers a question, by how it looks as well as what it says.\n\n"
        "Exit codes: 0 done; 1 some inputs failed (the rest was indexed); 2 bad command line; "
        "3 nothing usable was indexed; 4 error (missing index, model unavailable, encoder mismatch, "
        "unreadable catalogue); 5 verify found damage; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): "
        "every finished document is kept and the same command resumes."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click errors: one line each, no boxes that wrap what a script greps
)

INTERRUPTED_MESSAGE = "Interrupted: the index holds every document finished so far; run the same command to resume."

# The dtype names engine.loader accepts (kept here so checking them does not import torch).
DTYPES = ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16", "half", "float")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


# ---- option checks: run while the command line is parsed, before anything loads ---------------


def _at_least(minimum: int) -> Callable[[Optional[int]], Optional[int]]:
    def check(value: Optional[int]) -> Optional[int]:
        if value is not None and value < minimum:
            raise typer.BadParameter(f"{value} is too small: give an integer of at least {minimum}.")
        return value

    return check


def _check_task(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in DEFAULT_TASKS:
        raise typer.BadParameter(f"{printable(value)!r} is not a task; choose one of: {', '.join(DEFAULT_TASKS)}.")
    return value


COMPRESSION_NAMES = ("fp16", "int8", "residual-1", "residual-2", "residual-4", "pq-16", "pq-32")


def _check_compression(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in COMPRESSION_NAMES:
        raise typer.BadParameter(f"{value!r} is not a compression; choose one of {', '.join(COMPRESSION_NAMES)}.")
    return value


CompressionOption = typer.Option(
    None, "--compression", callback=_check_compression,
    help="How token vectors are stored: fp16 (default, lossless), int8, residual-1, residual-2, residual-4, pq-16"
         " or pq-32.",
)
PoolFactorOption = typer.Option(
    None, "--pool-factor", min=1, max=64,
    help="Pool each page's token vectors N to 1 before storing them (1 = none; lossy, no heatmaps).",
)
COMPACT_NAMES = ("pq-16", 1)  # pagelens.api.COMPACT_PROFILE (kept here: no import before parsing)
CompactOption = typer.Option(False, "--compact", help="Use the recommended compact profile (pq-16: 18 B a token, pool "
                             "factor 1; single vectors 128-d fp16).")
SINGLE_PRECISION_NAMES = ("fp32", "fp16")  # pagelens.api.SINGLE_PRECISIONS (kept here: no import before parsing)


def _check_single_precision(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in SINGLE_PRECISION_NAMES:
        raise typer.BadParameter(f"{printable(value)!r} is not a single-vector precision; choose fp32 or fp16.")
    return value


SingleWidthOption = typer.Option(
    None, "--single-width", min=1,
    help="Store single vectors truncated to this Matryoshka width (128, 256, 512, 1024; renormalised; default: "
         "full); the prefilter searches at most this width.",
)
SinglePrecisionOption = typer.Option(
    None, "--single-precision", callback=_check_single_precision,
    help="How single vectors are stored: fp32 (default) or fp16 (half the bytes).",
)


def _check_dtype(value: Optional[str]) -> Optional[str]:
    if value is not None and value.lower().removeprefix("torch.") not in DTYPES:
        raise typer.BadParameter(
            f"{printable(value)!r} is not a dtype; choose float32, bfloat16 or float16 (or fp32, bf16, fp16)."
        )
    return value


def _check_device(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    device = value.strip().lower()
    if not _DEVICE.match(device):
        raise typer.BadParameter(f"{printable(value)!r} is not a device; choose cpu, cuda or cuda:N.")
    if device.startswith("cuda"):  # only now is torch worth importing: to ask whether CUDA is there
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():
            raise typer.BadParameter(
                f"{value!r} was asked for but CUDA is not available on this machine "
                f"(torch {torch.__version__}); use --device cpu, or leave --device unset."
            )
        count = torch.cuda.device_count()
        number = int(device.partition(":")[2] or 0)
        if number >= count:
            raise typer.BadParameter(f"{value!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}.")
    return device


def _check_query(value: str) -> str:
    from pagelens.api import clean_query  # noqa: PLC0415 - numpy only

    try:
        return clean_query(value)
    except PagelensError as error:
        raise typer.BadParameter(f"{error.message}: say what you are looking for.") from None


# ---- shared options ----------------------------------------------------------------------------

IndexOption = typer.Option(
    ...,
    "--index",
    "-i",
    envvar="PAGELENS_INDEX",
    help="Index directory (default: $PAGELENS_INDEX).",
)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
DeviceOption = typer.Option(
    None, "--device", callback=_check_device,
    help="Torch device for the model: cpu, cuda or cuda:N (default: cuda if present).",
)


# ---- output and errors -------------------------------------------------------------------------


def _err(message: str) -> None:
    typer.echo(printable(message), err=True)


def _out(message: str) -> None:
    typer.echo(printable(message))


def _fail(message: str, hint: Optional[str] = None) -> NoReturn:
    """Print one error message (and its hint), never a traceback, and exit 4."""
    _err(f"Error: {message}")
    if hint:
        _err(f"Hint: {hint}")
    raise typer.Exit(EXIT_ERROR)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _print_json(data: Any) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    # paths that were not UTF-8 hold lone surrogates: write them as JSON escapes (they cannot be
    # encoded as UTF-8); json.loads gives the exact path back
    typer.echo(_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


def _run(fn: Callable[[], Any], *, index: Optional[Path] = None) -> Any:
    """Run a command's work; every failure becomes one message and an exit code (the messages
    live in pagelens.messages, shared with the HTTP server)."""
    from pagelens.messages import describe, is_expected  # noqa: PLC0415

    try:
        return fn()
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM through _on_signal
        _stop(getattr(error, "signum", None))
    except Exception as error:  # noqa: BLE001 - the last safety net: never a raw traceback
        if not is_expected(error) and os.environ.get("PAGELENS_DEBUG"):
            raise
        _fail(*describe(error, index=index))


# ---- signals -----------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM (see `main`)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_signals: dict[str, Any] = {"received": None, "reported": False}


def _on_signal(signum: int, _frame: Any) -> None:
    if _signals["received"] is not None:
        # a second signal while the first one's clean stop runs: stop now. Still safe: every
        # committed document is durable, and the next run cuts whatever was in flight
        first = _signals["received"]
        if not _signals["reported"]:
            os.write(2, (INTERRUPTED_MESSAGE + "\n").encode())
        os._exit(EXIT_TERMINATED if signal.SIGTERM in (first, signum) else EXIT_INTERRUPTED)
    _signals["received"] = signum
    raise Interrupted(signum)


def _install_signal_handlers() -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _on_signal)


def _stop(signum: Optional[int]) -> NoReturn:
    signum = signum or _signals["received"] or signal.SIGINT
    _signals["reported"] = True
    _err(INTERRUPTED_MESSAGE)
    raise typer.Exit(EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pagelens {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """pagelens: visual document retrieval over PDFs."""


def _notices(enabled: bool) -> Optional[Callable[[Any], None]]:
    """An on_event callback that says when the model starts loading (stderr), or None."""
    if not enabled:
        return None
    from pagelens.progress import model_notice  # noqa: PLC0415

    def on_event(event: Any) -> None:
        line = model_notice(event)
        if line is not None:
            typer.echo(line, err=True)

    return on_event


# ---- commands ----------------------------------------------------------------------------------


@app.command("index")
def index_command(
    paths: Optional[List[Path]] = typer.Argument(
        None, help="PDFs, page images (png, jpg, tiff) or folders (searched recursively); optional with --repair.",
    ),
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
        None, "--task", callback=_check_task,
        help=f"LoRA task adapter: {', '.join(DEFAULT_TASKS)} (default: retrieval).",
    ),
    dpi: Optional[int] = typer.Option(
        None, "--dpi", callback=_at_least(1),
        help="Render resolution for PDF pages, at least 1 (default: 144; the encoder's pixel cap still applies).",
    ),
    max_pixels: Optional[int] = typer.Option(
        None, "--max-pixels", callback=_at_least(1),
        help="Pixel cap per page for the encoder, at least 1 (default: the model's).",
    ),
    batch_size: int = typer.Option(8, "--batch-size", callback=_at_least(1), help="Pages per encoder batch, at least 1."),
    search_dim: Optional[int] = typer.Option(
        None, "--search-dim", callback=_at_least(1),
        help="Matryoshka width of the single-vector prefilter (128, 256, 512, 1024; default: full). "
        "Fixed when the index is created.",
    ),
    device: Optional[str] = DeviceOption,
    dtype: Optional[str] = typer.Option(
        None, "--dtype", callback=_check_dtype,
        help="float32, bfloat16 or float16 (default: bf16 on CUDA, fp32 on CPU).",
    ),
    password: Optional[str] = typer.Option(None, "--password", help="Password for encrypted PDFs."),
    repair: bool = typer.Option(
        False, "--repair",
        help="First check every stored page (as `pagelens verify` does) and re-encode the damaged documents; "
        "PATHS may then be left out.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    as_json: bool = JsonOption,
    compression: Optional[str] = CompressionOption,
    pool_factor: Optional[int] = PoolFactorOption,
    compact: bool = CompactOption,
    single_width: Optional[int] = SingleWidthOption,
    single_precision: Optional[str] = SinglePrecisionOption,
) -> None:
    """Index PDFs and page images into DIR, embedding only new or changed files.

    The model loads only when a page must be encoded: a run with nothing new takes a moment."""
    paths = list(paths or [])
    if not paths and not repair:
        raise typer.BadParameter("give the PDFs, page images or folders to index (or --repair alone).", param_hint="PATHS...")
    from pagelens.api import Index
    from pagelens.progress import progress_reporter

    storage: dict[str, Any] = {}
    if compression is not None or pool_factor is not None or compact:
        if compact and (compression not in (None, COMPACT_NAMES[0]) or pool_factor not in (None, COMPACT_NAMES[1])):
            raise typer.BadParameter("--compact picks its own compression and pool factor; give one or the other.",
                                     param_hint="--compact")
        storage = {"compression": compression, "pool_factor": pool_factor, "compact": compact}
        if (index / "manifest.json").exists():  # fixed at creation: a different value is a usage error
            def stored() -> tuple[str, int]:
                with Index.open(index) as idx:
                    info = idx.info()
                return info.extra["compression"], info.extra["pool_factor"]

            have = _run(stored, index=index)
            want = COMPACT_NAMES if compact else (compression or have[0], pool_factor or have[1])
            if want != have:
                raise typer.BadParameter(
                    f"the index stores token vectors as {have[0]} with pool factor {have[1]}, fixed when it was "
                    f"created; convert it with `pagelens recompress --index {index} --compression {want[0]} "
                    f"--pool-factor {want[1]}`, or index into a new --index folder.", param_hint="--compression")

    if single_width is not None or single_precision is not None or compact:
        if compact and (single_width is not None or single_precision is not None):
            raise typer.BadParameter("--compact picks its own single-vector width and precision; give one or the "
                                     "other.", param_hint="--compact")
        if not compact:
            storage.update(single_width=single_width, single_precision=single_precision)
        if (index / "manifest.json").exists():  # fixed at creation: a different value is a usage error
            from pagelens.api import COMPACT_SINGLE, compact_single_width

            def stored_single() -> tuple[int, str, int]:
                with Index.open(index) as idx:
                    info = idx.info()
                identity = info.identity or {}
                dims = tuple(identity.get("matryoshka_dims") or ()) or None
                return info.extra["single_width"], info.extra["single_precision"], compact_single_width(
                    int(info.extra["single_dim"]), dims)

            have_w, have_p, compact_w = _run(stored_single, index=index)
            have = (have_w, have_p)
            want = (compact_w, COMPACT_SINGLE[1]) if compact else (single_width or have[0], single_precision or have[1])
            if want != have:
                raise typer.BadParameter(
                    f"the index stores single vectors at width {have[0]} in {have[1]}, fixed when it was created; "
                    f"convert it with `pagelens recompress --index {index} --single-width {want[0]} "
                    f"--single-precision {want[1]}`, or index into a new --index folder.",
                    param_hint="--single-width")

    def work() -> Any:
        with progress_reporter(enabled=not quiet and not as_json) as on_event:
            if paths:
                idx = Index.open_or_create(
                    index, model=model, task=task, device=device, dtype=dtype, max_pixels=max_pixels,
                    search_dim=search_dim, on_event=on_event, **storage,
                )
            else:  # --repair alone: there must be an index to repair
                idx = Index.open(index, model=model, device=device, dtype=dtype, writable=True, on_event=on_event)
            with idx:
                return idx.add(paths, dpi=dpi, batch_size=batch_size, password=password, on_event=on_event, repair=repair)

    report = _run(work, index=index)
    repaired = list(getattr(report, "repaired", []) or [])
    if as_json:
        data = _report_dict(report)
        if repair:
            data["repaired"] = repaired
        _print_json(data)
    elif not quiet:
        for path, reason in report.failed:
            _err(f"failed: {path}: {reason}")
        _err(
            f"{len(report.added)} added ({report.pages_added} pages), {len(report.skipped)} unchanged, "
            f"{len(report.removed)} removed, {len(report.failed)} failed in {report.elapsed:.1f}s"
        )
        if repair:
            if repaired:
                _err(f"repaired: re-encoded {len(repaired)} damaged document(s): " + ", ".join(repaired))
            else:
                _err("repair: every stored page passes its checksum; nothing to re-encode")
    if repair and not paths and not repaired:
        raise typer.Exit(EXIT_OK)  # nothing was damaged: nothing to do is success
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
        "resumed": [{"path": p, "pages_kept": n} for p, n in report.resumed],
        "pages_added": report.pages_added,
        "pages_encoded": report.pages_encoded,
        "elapsed_s": round(report.elapsed, 3),
    }


@app.command("search")
def search_command(
    query: str = typer.Argument(
        ..., callback=_check_query,
        help="What you are looking for, in any language (not empty; bytes that are not UTF-8 are read as U+FFFD).",
    ),
    index: Path = IndexOption,
    k: int = typer.Option(10, "-k", "--k", callback=_at_least(1), help="Number of pages to return, at least 1."),
    candidates: Optional[int] = typer.Option(
        None, "--candidates", callback=_at_least(1),
        help="Shortlist for the exact MaxSim rerank: pages the token-vector stage proposes (the single-vector "
        "stage adds a quarter as many; on a compact index each of its two generators proposes this many); at least 1, "
        "and raised to -k when smaller (default: 200 up to 6,000 pages, then one per 30 pages, at most 800, or 400 on "
        "a compact index).",
    ),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="Score every page by exact MaxSim (slow; ground truth)."),
    generators: Optional[str] = typer.Option(
        None, "--generators",
        help="Candidate generators, comma-separated, the first filling the shortlist and each other adding its "
        "top quarter: ann, single, tokens, pooled (default ann,single; on a compact index pooled and tokens, each "
        "its top K: README, 'Compact storage'). What an index does not hold yet (pooled on a full-precision "
        "index, single on a compact one) is built on first use.",
    ),
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
        with Index.open(index, model=model, device=device, on_event=_notices(not as_json)) as idx:
            return idx.search(query, k=k, candidates=candidates, exhaustive=exhaustive,
                              generators=None if generators is None else [g.strip() for g in generators.split(",")])

    hits = _run(work, index=index)
    if as_json:
        _print_json([{"rank": h.rank, "score": h.score, "path": h.path, "page": h.page} for h in hits])
        return
    if not hits:
        _err("No pages in the index yet: add some with `pagelens index PATH... --index DIR`.")
        return
    for h in hits:
        _out(f"{h.rank:>3}  {h.score:8.4f}  {h.path}  page {h.page}")


def _width_option(value: int) -> int:
    from pagelens.heatmap import MAX_WIDTH, MIN_WIDTH  # noqa: PLC0415 - numpy only

    if not MIN_WIDTH <= value <= MAX_WIDTH:
        raise typer.BadParameter(f"{value} is out of range: give a width from {MIN_WIDTH} to {MAX_WIDTH} pixels.")
    return value


@app.command("show")
def show_command(
    query: str = typer.Argument(
        ..., callback=_check_query,
        help="What you are looking for (as for `pagelens search`).",
    ),
    index: Path = IndexOption,
    rank: int = typer.Option(1, "--rank", callback=_at_least(1), help="Which hit to show: 1 is the best, at least 1."),
    output: Path = typer.Option(Path("hit.png"), "--output", "-o", help="PNG file to write (default: hit.png)."),
    token: Optional[int] = typer.Option(
        None, "--token", callback=_at_least(0),
        help="Show how one query token matches (its index, from 0, as --json lists them; default: all tokens).",
    ),
    width: int = typer.Option(800, "--width", callback=_width_option, help="Width of the picture in pixels, 32 to 2000."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", envvar="PAGELENS_MODEL",
        help="Where the index's model is now, if it moved (default: the location recorded in the index).",
    ),
    device: Optional[str] = DeviceOption,
    as_json: bool = JsonOption,
) -> None:
    """Write the page of the hit at --rank with its heatmap: where on the page QUERY matched.

    The page is rendered from the indexed file (only while its SHA-256 still matches the index)."""
    from pagelens.api import Index
    from pagelens.heatmap import show

    def work() -> Any:
        with Index.open(index, model=model, device=device, on_event=_notices(not as_json)) as idx:
            shown = show(idx, query, rank=rank, width=width, token=token)
        try:
            shown.image.save(output, format="PNG")
        except OSError as exc:
            raise PagelensError(f"cannot write {output}: {exc.strerror or exc}",
                                "Choose a writable --output path (its folder must exist).") from None
        return shown

    shown = _run(work, index=index)
    if as_json:
        _print_json({**shown.to_dict(), "output": str(output)})
        return
    h = shown.hit
    _out(f"{h.rank:>3}  {h.score:8.4f}  {h.path}  page {h.page}  ->  {output}")


@app.command("info")
def info_command(index: Path = IndexOption, as_json: bool = JsonOption) -> None:
    """Show documents, pages, vectors, bytes on disk, the encoder identity and the format version."""
    from pagelens.api import Index

    def work() -> Any:
        with Index.open(index) as idx:
            return idx.info()

    info = _run(work, index=index)
    if as_json:
        _print_json(info.to_dict())
        return
    _out(f"index:      {info.directory} (format {info.format_version})")
    _out(f"documents:  {info.documents} ({info.failed_documents} failed)")
    _out(f"pages:      {info.pages}")
    _out(f"vectors:    {info.vectors}")
    for part, size in info.bytes_on_disk.items():
        _out(f"bytes:      {part:<16} {size:>14,}")
    extra = info.extra or {}
    if "compression" in extra:
        pending = extra.get("pages_not_yet_compressed") or 0
        _out(f"storage:    {extra['compression']}, pool factor {extra['pool_factor']}"
             + (f" ({pending} pages still fp16: codec not trained yet, or run `pagelens recompress`)" if pending else ""))
        if "single_width" in extra:
            waiting = extra.get("single_pages_not_yet_converted") or 0
            _out(f"singles:    {extra['single_width']}-d {extra['single_precision']}"
                 + (f" ({waiting} pages not converted yet: run the same `pagelens recompress` again)" if waiting else ""))
        for part, size in (extra.get("bytes_per_page") or {}).items():
            _out(f"per page:   {part:<16} {size:>14,.0f}")
        for part, size in (extra.get("derived_bytes_per_page") or {}).items():
            _out(f"  derived:  {part:<16} {size:>14,.0f}")
    if info.identity:
        for key in ("model", "revision", "task", "single_dim", "multi_dim", "max_pixels", "image_processor"):
            if key in info.identity:
                _out(f"encoder:    {key:<16} {info.identity[key]}")
    else:
        _out("encoder:    none (embeddings are brought by the user)")


@app.command("verify")
def verify_command(index: Path = IndexOption, as_json: bool = JsonOption) -> None:
    """Check every stored page against its checksum: say what is damaged and the command that repairs it.

    Exit 0 when every page is intact, 5 when damage or index-level problems were found."""
    from pagelens.api import Index

    def work() -> Any:
        with Index.open(index) as idx:
            return idx.verify()

    report = _run(work, index=index)
    if as_json:
        _print_json(report.to_dict())
    elif report.ok:
        _out(f"ok: {report.pages_checked} pages checked, every one passes its checksum")
    else:
        _out(f"{report.pages_checked} pages checked: {len(report.damaged)} damaged document(s), "
             f"{len(report.problems)} index-level problem(s)")
        for doc in report.damaged:
            pages = ", ".join(str(p) for p in doc.pages)
            _out(f"damaged: {doc.display_path} (page {pages}): {doc.reason}")
        for problem in report.problems:
            _out(f"problem: {problem}")
        if report.damaged:
            _out("Re-encode the damaged documents (nothing else is re-encoded) with:")
            _out(f"  {report.repair_command}")
        if report.problems:
            _out("Index-level problems are not fixed by a repair run: restore the index folder from a backup, "
                 "or rebuild it by indexing into a new --index folder.")
    raise typer.Exit(EXIT_OK if report.ok else EXIT_DAMAGED)


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

    removed = _run(work, index=index)
    if as_json:
        _print_json({"pages_removed": removed})
    else:
        _out(f"removed {removed} pages")


@app.command("compact")
def compact_command(index: Path = IndexOption, as_json: bool = JsonOption) -> None:
    """Reclaim the disk space of removed pages now (it also happens automatically past a threshold)."""
    from pagelens.api import Index

    def work() -> Any:
        with Index.open(index, writable=True) as idx:
            return idx.compact()

    result = _run(work, index=index)
    if as_json:
        _print_json({"bytes_reclaimed": result})
    else:
        _out(f"reclaimed {result:,} bytes")


@app.command("recompress")
def recompress_command(
    index: Path = IndexOption,
    compression: Optional[str] = CompressionOption,
    pool_factor: Optional[int] = PoolFactorOption,
    compact: bool = CompactOption,
    single_width: Optional[int] = SingleWidthOption,
    single_precision: Optional[str] = SinglePrecisionOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    as_json: bool = JsonOption,
) -> None:
    """Convert an index's stored vectors in place (no model runs): fp16 token vectors to a compact
    codec, full-width fp32 single vectors to a narrower width in fp16 (never wider).

    Page ids stay. Interrupted (even kill -9), the index stays usable and the same command finishes it."""
    singles = single_width is not None or single_precision is not None
    if compression is None and not compact and (pool_factor is not None or not singles):
        raise typer.BadParameter("give --compression NAME, --single-width N --single-precision fp16, or --compact.",
                                 param_hint="--compression")
    if compact and singles:
        raise typer.BadParameter("--compact picks its own single-vector width and precision; give one or the other.",
                                 param_hint="--compact")
    if compact and (compression not in (None, COMPACT_NAMES[0]) or pool_factor not in (None, COMPACT_NAMES[1])):
        raise typer.BadParameter("--compact picks its own compression and pool factor; give one or the other.",
                                 param_hint="--compact")
    from pagelens.api import Index

    def progress(stage: str, done: int, total: int) -> None:
        if not quiet and not as_json:
            _err(f"{stage}: {done}/{total} pages")

    def work() -> Any:
        with Index.open(index, writable=True) as idx:
            result = idx.recompress(compression, pool_factor=pool_factor, compact=compact, single_width=single_width,
                                    single_precision=single_precision, on_progress=progress)
            return result

    result = _run(work, index=index)
    summary = {"compression": result.compression, "pool_factor": result.pool_factor,
               "pages_converted": result.pages_converted, "multi_vector_bytes_before": result.bytes_before,
               "multi_vector_bytes_after": result.bytes_after, "single_width": result.single_width,
               "single_precision": result.single_precision, "single_pages_converted": result.single_pages_converted,
               "single_vector_bytes_before": result.single_bytes_before,
               "single_vector_bytes_after": result.single_bytes_after}
    if as_json:
        _print_json(summary)
    elif not quiet:
        _out(f"{result.pages_converted} pages converted to {result.compression} (pool factor {result.pool_factor}); "
             f"multi-vector bytes {result.bytes_before:,} -> {result.bytes_after:,}")
        if singles or compact or result.single_pages_converted:
            _out(f"{result.single_pages_converted} single vectors converted to {result.single_width}-d "
                 f"{result.single_precision}; single-vector bytes {result.single_bytes_before:,} -> "
                 f"{result.single_bytes_after:,}")


@app.command("serve")
def serve_command(
    index: Path = IndexOption,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (anything but 127.0.0.1, "
                             "localhost or ::1 lets others read the index: a warning says so)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0: any free port)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", envvar="PAGELENS_MODEL",
        help="Where the index's model is now, if it moved (default: the location recorded in the index).",
    ),
    device: Optional[str] = DeviceOption,
    max_k: int = typer.Option(1000, "--max-k", callback=_at_least(1), help="Largest k a request may ask for."),
    max_candidates: int = typer.Option(10_000, "--max-candidates", callback=_at_least(1),
                                       help="Largest candidates a request may ask for."),
    max_query_chars: int = typer.Option(1000, "--max-query-chars", callback=_at_least(1),
                                        help="Longest query, in characters."),
    max_queries: int = typer.Option(64, "--max-queries", callback=_at_least(1), help="Most queries in one POST."),
    max_body_bytes: int = typer.Option(8 << 20, "--max-body-bytes", callback=_at_least(1),
                                       help="Largest request body, in bytes (default 8 MiB)."),
) -> None:
    """Answer HTTP: search, page images and the web page, over DIR opened read-only (docs/http-api.md).

    The model loads once, at start; pages that another process indexes into DIR appear without a
    restart. Images are rendered from the indexed files, only while their SHA-256 still matches."""
    from pagelens.server import Limits, serve

    limits = Limits(max_k=max_k, max_candidates=max_candidates, max_query_chars=max_query_chars,
                    max_queries=max_queries, max_body_bytes=max_body_bytes)

    def ready(url: str) -> None:
        _err(f"pagelens: serving {index} at {url} (API at {url}docs); Ctrl-C stops")

    def work() -> None:
        try:
            serve(index, host=host, port=port, model=model, device=device, limits=limits, on_ready=ready)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM is how a server stops: exit 0, nothing to resume
            pass
        if _signals["received"] is not None:
            _signals["reported"] = True
            _err("pagelens: stopped")

    _run(work, index=index)


def main() -> None:
    """The `pagelens` console script: the app, with SIGINT and SIGTERM raising a clean stop."""
    _install_signal_handlers()
    try:
        app(prog_name="pagelens")
    except SystemExit:
        received = _signals["received"]
        if received is not None and not _signals["reported"]:  # stopped outside a command's work
            _signals["reported"] = True
            _err(INTERRUPTED_MESSAGE)
            sys.exit(EXIT_TERMINATED if received == signal.SIGTERM else EXIT_INTERRUPTED)
        raise


if __name__ == "__main__":
    main()
