"""`pagelens serve`: the index and its model loaded once, answering HTTP (FastAPI + uvicorn).

The contract is docs/http-api.md. How it holds up:

- **Read-only.** The index is opened as a reader (`Index.open`, not writable): its search
  structures are built in memory, never saved, and SQLite is opened ``mode=ro``. Every search and
  page lookup first moves to the latest committed state, so pages that another process indexes
  meanwhile appear without a restart.
- **One search at a time, off the event loop.** The encoder and the search structures are not
  thread-safe and are CPU-bound: every call into the `Index` runs in one worker thread, under one
  lock. Requests waiting for it are counted; past ``Limits.max_waiting`` the answer is 503 ``busy``
  rather than an unbounded queue. ``/api/health`` never waits for that lock.
- **Pages by id only.** No request names a path: a page id leads to the file the catalogue names,
  shown only while its SHA-256 matches the recorded one (`pagelens.pages`), rendered in budgeted
  child processes, cached by (page id, SHA-256, width) within a byte budget.
- **Errors** are JSON ``{"error": {"code", "message", "hint"}}`` with the CLI's messages and hints
  (`pagelens.messages`); limits are checked before any work.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import UserError
from engine.types import Embedding
from pagelens.api import Index, clean_query
from pagelens.errors import BadEmbeddingError, EncoderOutputError, NoModelError, PagelensError
from pagelens.messages import describe
from pagelens.pages import (
    FileMissingError, NoSuchPageError, PageChangedError, PngCache, RendererPool, RenderFailedError, open_verified,
)
from pagelens.results import Hit, PageInfo

log = logging.getLogger("pagelens.server")
STATIC_DIR = Path(__file__).with_name("static")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask (docs/http-api.md, "Limits")."""

    max_query_chars: int = 1000
    max_k: int = 1000
    max_candidates: int = 10_000
    max_queries: int = 64
    max_body_bytes: int = 8 << 20
    min_width: int = 32
    max_width: int = 2000
    default_width: int = 800
    max_waiting: int = 32  # requests queued for the search worker (or for renderers) before 503 busy
    png_cache_bytes: int = 64 << 20
    render_workers: int = 2
    render_timeout: float = 20.0
    render_memory: int = 1 << 30


class ApiError(Exception):
    """An HTTP error with the JSON body of docs/http-api.md."""

    def __init__(self, status: int, code: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint


def bind_warning(host: str) -> str | None:
    """The warning for a host other than the loopback one (None for 127.0.0.1, localhost, ::1)."""
    if host in LOCAL_HOSTS:
        return None
    return (f"Warning: serving on {host}, not 127.0.0.1: the index, and every file it names, can be read by "
            "anyone who can reach this address. Bind 127.0.0.1 unless that is what you want.")


# ---- JSON ------------------------------------------------------------------------------------------


def json_bytes(data: Any) -> bytes:
    """UTF-8 JSON; lone surrogates (file names that were not UTF-8) as ``\\udcXX`` escapes, which
    ``json.loads`` turns back into the exact path (as `pagelens search --json` writes them)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode("utf-8")


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json_bytes(data), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, hint: str | None = None) -> Response:
    return json_response({"error": {"code": code, "message": message, "hint": hint}}, status)


def classify(error: BaseException) -> tuple[int, str]:
    """The HTTP status and code of a failure (the message and hint come from `describe`)."""
    if isinstance(error, ApiError):
        return error.status, error.code
    table = ((NoSuchPageError, 404, "no_such_page"), (FileMissingError, 404, "file_missing"),
             (PageChangedError, 410, "page_changed"), (RenderFailedError, 422, "render_failed"),
             (NoModelError, 503, "no_model"), (BadEmbeddingError, 400, "bad_request"))
    for cls, status, code in table:
        if isinstance(error, cls):
            return status, code
    from pagelens.heatmap import HeatmapUnavailable  # noqa: PLC0415 - numpy only

    if isinstance(error, HeatmapUnavailable):
        return 409, "heatmap_unavailable"
    if type(error) is PagelensError:  # the API's own argument checks (empty query, k, candidates, token)
        return 400, "bad_request"
    if isinstance(error, UserError):  # the index or the model cannot be used: not the request's fault
        return 500, "index_error"
    return 500, "internal"


# ---- request bodies (the OpenAPI page shows these) ------------------------------------------------


class EmbeddingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    multi: list[list[float]] = Field(description="token vectors, one row per query token")
    single: list[float] = Field(description="the single vector")


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: Optional[list[str]] = Field(None, description="text queries (the index's model encodes them)")
    embedding: Optional[EmbeddingIn] = Field(None, description="a query embedding made elsewhere")
    k: int = 10
    candidates: Optional[int] = None
    exhaustive: bool = False


# ---- the service behind the routes ---------------------------------------------------------------


class Service:
    """The index, its model, the renderers and the caches; shared by every request."""

    def __init__(self, index: Index, limits: Limits, *, owns_index: bool):
        self.index, self.limits, self.owns_index = index, limits, owns_index
        self.lock = threading.Lock()  # around every use of `index` (encoder, store, retriever)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pagelens-search")
        self.render_threads = ThreadPoolExecutor(max_workers=limits.render_workers, thread_name_prefix="pagelens-render")
        self.renderers = RendererPool(limits.render_workers, timeout=limits.render_timeout,
                                      memory=limits.render_memory)
        self.hashes = self.renderers.hashes
        self.pngs = PngCache(limits.png_cache_bytes)
        self.has_model = index.identity is not None
        self.model_loaded = False
        self._waiting = {"search": 0, "render": 0}
        self._count_lock = threading.Lock()
        self._health = {"pages": 0, "at": 0.0}

    def warm_up(self) -> None:
        """Load the model and build the search structures now, so the first query is warm."""
        with self.lock:
            if self.has_model:
                self.index.encoder  # noqa: B018 - loads it (and checks it fits the index)
                self.model_loaded = True
            self.index.sync()
            self._health = {"pages": self.index.info().pages, "at": time.monotonic()}

    def waiting(self, kind: str) -> int:
        """Requests of ``kind`` ("search" or "render") running or queued now."""
        with self._count_lock:
            return self._waiting[kind]

    async def _bounded(self, kind: str, executor: ThreadPoolExecutor, fn: Callable[[], Any]) -> Any:
        with self._count_lock:
            if self._waiting[kind] >= self.limits.max_waiting:
                raise ApiError(503, "busy", f"the server has {self._waiting[kind]} {kind} requests waiting",
                               "try again in a moment")
            self._waiting[kind] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn)
        finally:
            with self._count_lock:
                self._waiting[kind] -= 1

    async def call(self, fn: Callable[[Index], Any]) -> Any:
        """``fn(index)`` in the search worker, under the index lock."""
        def locked() -> Any:
            with self.lock:
                return fn(self.index)
        return await self._bounded("search", self.worker, locked)

    async def off_loop(self, fn: Callable[[], Any]) -> Any:
        """Rendering and file work, in the render threads (never under the index lock)."""
        return await self._bounded("render", self.render_threads, fn)

    def health(self) -> dict:
        # never wait for a search in progress: answer the last count instead
        if self.lock.acquire(blocking=False):
            try:
                if time.monotonic() - self._health["at"] > 0.5:
                    self._health = {"pages": self.index.info().pages, "at": time.monotonic()}
            finally:
                self.lock.release()
        return {"status": "ok", "pages": int(self._health["pages"]), "model_loaded": self.model_loaded}

    def page_png(self, info: PageInfo, width: int) -> bytes:
        """The page at ``width``, checked against its SHA-256 even when cached (a file that changed
        since must answer 410, not yesterday's picture)."""
        from indexer.sources import file_kind  # noqa: PLC0415

        key = (info.page_id, info.sha256, width)
        png = self.pngs.get(key)
        if png is not None:
            open_verified(info.path, info.sha256 or "", self.hashes).close()
            return png
        png, _w, _h = self.renderers.render(info.path, info.sha256 or "", file_kind(info.path) or "pdf", info.page, width)
        self.pngs.put(key, png)
        return png

    def close(self) -> None:
        self.renderers.close()
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.render_threads.shutdown(wait=False, cancel_futures=True)
        if self.owns_index:
            with self.lock:
                self.index.close()


# ---- checks of request parameters ------------------------------------------------------------------


def _bad(message: str, hint: str) -> ApiError:
    return ApiError(400, "bad_request", message, hint)


def check_query(q: Any, limits: Limits, what: str = "the query") -> str:
    text = clean_query(q, what)  # the API's own check: the same message as the CLI's
    if len(text) > limits.max_query_chars:
        raise _bad(f"{what} is {len(text):,} characters long; at most {limits.max_query_chars:,} are accepted",
                   "shorten the query (pagelens serve --max-query-chars raises the limit)")
    return text


def check_search(k: Any, candidates: Any, limits: Limits) -> None:
    for name, value, top, flag in (("k", k, limits.max_k, "--max-k"),
                                   ("candidates", candidates, limits.max_candidates, "--max-candidates")):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad(f"{name} must be an integer of at least 1, got {value!r}", f"give {name}=1 or more")
        if value > top:
            raise _bad(f"{name} must be at most {top:,}, got {value:,}",
                       f"ask for fewer (pagelens serve {flag} raises the limit)")


def check_width(width: int, limits: Limits) -> int:
    if not limits.min_width <= width <= limits.max_width:
        raise _bad(f"width must be from {limits.min_width} to {limits.max_width} pixels, got {width}",
                   f"ask for e.g. width={limits.default_width}")
    return width


def hit_json(hit: Hit, query: str | None) -> dict:
    from indexer.sources import display_path, file_kind  # noqa: PLC0415

    base = f"/api/pages/{hit.page_id}"
    pdf = file_kind(hit.path) != "image"
    return {
        "rank": hit.rank, "score": hit.score, "path": hit.path,
        "name": os.path.basename(display_path(hit.path)), "page": hit.page, "page_id": hit.page_id,
        "image_url": f"{base}/image",
        "heatmap_url": f"{base}/heatmap?q={urllib.parse.quote(query, safe='')}" if query is not None else None,
        "pdf_url": f"{base}/pdf#page={hit.page}" if pdf else f"{base}/pdf",
    }


def _embedding(body: EmbeddingIn) -> Embedding:
    import numpy as np  # noqa: PLC0415

    try:
        multi = np.asarray(body.multi, dtype=np.float32)
        single = np.asarray(body.single, dtype=np.float32)
    except (ValueError, TypeError):
        raise _bad("embedding.multi must be rows of equal length", "give one row of floats per query token") from None
    if multi.ndim != 2:
        raise _bad("embedding.multi must be a list of rows (one per query token)", "give at least one row of floats")
    return Embedding(single=single, multi=multi)


# ---- middleware: request size ------------------------------------------------------------------------


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether Content-Length says so up
    front or a chunked body grows past it: the body is read here, within the limit, and handed on
    whole (so nothing downstream ever holds more than ``limit`` bytes of it)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, "too_large", f"the request body is over the {self.limit:,}-byte limit",
                                   "send fewer queries per request (pagelens serve --max-body-bytes raises the limit)")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_large(scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.limit:
                return await too_large(scope, receive, send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # then, e.g., the client's disconnect

        await self.app(scope, replay, send)


# ---- the app -------------------------------------------------------------------------------------------


def create_app(index: Index | str | os.PathLike, *, model: str | None = None, device: str | None = None,
               limits: Limits | None = None, warm: bool = True) -> FastAPI:
    """The ASGI app over ``index`` (a folder, opened read-only here and closed at shutdown; or an
    open `Index`, which the caller keeps). ``warm`` loads the model and the search structures now."""
    limits = limits or Limits()
    owns = not isinstance(index, Index)
    if owns:
        index = Index.open(index, model=model, device=device)
    service = Service(index, limits, owns_index=owns)
    try:
        if warm:
            service.warm_up()
    except BaseException:
        service.close()
        raise

    async def lifespan(_app):
        yield
        service.close()

    app = FastAPI(title="pagelens", version=_version(), lifespan=lifespan,
                  description="Search an index of PDF pages; see docs/http-api.md.")
    app.state.service = service
    _install_errors(app)
    _routes(app, service, limits)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    return app


def _version() -> str:
    from pagelens import __version__  # noqa: PLC0415

    return __version__


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        hint = "see /docs for the parameters each endpoint takes"
        if first.get("type") == "json_invalid":
            why = (first.get("ctx") or {}).get("error", "")
            return error_response(400, "bad_request", f"the request body is not valid JSON ({why})".replace(" ()", ""), hint)
        loc = [str(p) for p in first.get("loc", ())]
        where = ".".join(loc[1:] if loc and loc[0] in ("query", "body", "path") else loc) or "the request body"
        return error_response(400, "bad_request", f"{where}: {first.get('msg', 'invalid value')}", hint)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return error_response(404, "not_found", f"no such endpoint: {request.method} {request.url.path}",
                                  "see /docs for the API")
        if exc.status_code == 405:
            return error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}",
                                  "see /docs for the API")
        return error_response(exc.status_code, "http_error", str(exc.detail), None)

    @app.exception_handler(ApiError)
    async def _api(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.hint)

    async def _known(request: Request, exc: Exception):
        status, code = classify(exc)
        message, hint = describe(exc, index=request.app.state.service.index.directory)
        if code == "no_model":
            hint = f"{hint} Over HTTP: POST /api/search with {{\"embedding\": {{\"multi\": [[...]], \"single\": [...]}}}}."
        if status == 500:  # the index or a bug, not the request
            log.error("%s %s: %s", request.method, request.url.path, message)
        return error_response(status, code, message, hint)

    # failures with a known cause: answered here, no traceback; anything else is a bug, which
    # the generic handler answers as JSON too (and the server logs with its traceback)
    for cls in (UserError, EncoderOutputError, sqlite3.Error, OSError, MemoryError):
        app.add_exception_handler(cls, _known)
    app.add_exception_handler(Exception, _known)


def _routes(app: FastAPI, service: Service, limits: Limits) -> None:
    @app.get("/", include_in_schema=False)
    async def home():
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return HTMLResponse(page.read_text(encoding="utf-8"))
        return HTMLResponse("<!doctype html><title>pagelens</title><h1>pagelens</h1>"
                            "<p>The web page is not installed. The API is described at <a href=\"/docs\">/docs</a>.</p>")

    @app.get("/api/health")
    async def health():
        return json_response(await asyncio.get_running_loop().run_in_executor(None, service.health))

    @app.get("/api/info")
    async def info():
        return json_response((await service.call(lambda idx: idx.info())).to_dict())

    @app.get("/api/search")
    async def search_get(q: str, k: int = 10, candidates: Optional[int] = None, exhaustive: bool = False):
        query = check_query(q, limits)
        check_search(k, candidates, limits)
        start = time.perf_counter()
        hits = await service.call(lambda idx: idx.search(query, k=k, candidates=candidates, exhaustive=exhaustive))
        took = (time.perf_counter() - start) * 1000
        return json_response({"query": query, "k": k, "took_ms": round(took, 3),
                              "hits": [hit_json(h, query) for h in hits]})

    @app.post("/api/search")
    async def search_post(body: SearchIn):
        check_search(body.k, body.candidates, limits)
        if (body.queries is None) == (body.embedding is None):
            raise _bad("give either queries or embedding", 'e.g. {"queries": ["wiring diagram"], "k": 10}')
        kwargs = {"k": body.k, "candidates": body.candidates, "exhaustive": body.exhaustive}
        start = time.perf_counter()
        if body.queries is not None:
            if not 1 <= len(body.queries) <= limits.max_queries:
                raise _bad(f"queries must hold 1 to {limits.max_queries} queries, got {len(body.queries)}",
                           "split them over several requests (pagelens serve --max-queries raises the limit)")
            many = len(body.queries) > 1
            queries = [check_query(q, limits, f"query {i + 1}" if many else "the query") for i, q in enumerate(body.queries)]
            results = await service.call(lambda idx: idx.search_batch(queries, **kwargs))
        else:
            queries = [None]
            embedding = _embedding(body.embedding)
            results = await service.call(lambda idx: [idx.search_embedding(embedding, **kwargs)])
        took = (time.perf_counter() - start) * 1000
        return json_response({"results": [{"query": q, "hits": [hit_json(h, q) for h in hits]}
                                          for q, hits in zip(queries, results)], "took_ms": round(took, 3)})

    @app.get("/api/pages/{page_id}")
    async def page(page_id: int):
        return json_response((await service.call(lambda idx: idx.page(page_id))).to_dict())

    @app.get("/api/pages/{page_id}/image", response_class=Response,
             responses={200: {"content": {"image/png": {}}, "description": "the page as PNG"}})
    async def page_image(page_id: int, width: int = Query(limits.default_width)):
        check_width(width, limits)
        info_ = await service.call(lambda idx: idx.page(page_id))
        png = await service.off_loop(lambda: service.page_png(info_, width))
        return _png(png)

    @app.get("/api/pages/{page_id}/heatmap", response_class=Response,
             responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def page_heatmap(page_id: int, q: str, width: int = Query(limits.default_width),
                           token: Optional[int] = None, format: str = "png"):  # noqa: A002 - the documented name
        query = check_query(q, limits)
        check_width(width, limits)
        if token is not None and token < 0:
            raise _bad(f"token must be 0 or more, got {token}", "leave it out for all query tokens")
        if format not in ("png", "json"):
            raise _bad(f"format must be png or json, got {format!r}", "leave it out for a PNG")
        info_, heat = await service.call(lambda idx: (idx.page(page_id), idx.explain(query, page_id, token=token)))
        if format == "json":
            return json_response(heat.to_dict())
        png = await service.off_loop(lambda: _overlay(service.page_png(info_, width), heat, token))
        return _png(png)

    @app.get("/api/pages/{page_id}/pdf", response_class=StreamingResponse,
             responses={200: {"content": {"application/pdf": {}}, "description": "the indexed file"}})
    async def page_pdf(page_id: int):
        info_ = await service.call(lambda idx: idx.page(page_id))
        fh = await service.off_loop(lambda: open_verified(info_.path, info_.sha256 or "", service.hashes))
        return _file_response(fh, info_)


def _png(png: bytes) -> Response:
    # the same id and width always show the same bytes (the hash is checked on every request)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60",
                                                          "X-Content-Type-Options": "nosniff"})


def _overlay(png: bytes, heat: Any, token: int | None) -> bytes:
    from PIL import Image  # noqa: PLC0415

    with Image.open(io.BytesIO(png)) as img:
        blended = heat.overlay(img.convert("RGB"), token=token)
    out = io.BytesIO()
    blended.save(out, format="PNG")
    return out.getvalue()


_MEDIA = {".pdf": "application/pdf", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
          ".tif": "image/tiff", ".tiff": "image/tiff"}


def _file_response(fh, info: PageInfo) -> StreamingResponse:
    """Stream the verified open file (the same descriptor that was hashed: a rename onto the
    path meanwhile does not change what is sent)."""
    size = os.fstat(fh.fileno()).st_size

    def chunks():
        try:
            while chunk := fh.read(1 << 20):
                yield chunk
        finally:
            fh.close()

    media = _MEDIA.get(os.path.splitext(info.path)[1].lower(), "application/octet-stream")
    name = urllib.parse.quote(info.name, safe="")
    return StreamingResponse(chunks(), media_type=media, headers={
        "Content-Length": str(size), "Content-Disposition": f"inline; filename*=UTF-8''{name}",
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-cache"})


# ---- running it ----------------------------------------------------------------------------------------


def serve(index: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, model: str | None = None,
          device: str | None = None, limits: Limits | None = None, log_level: str = "warning",
          on_ready: Callable[[str], None] | None = None) -> None:
    """Open ``index`` read-only, load its model, and answer HTTP on ``host``:``port`` until
    interrupted (port 0: any free port). ``on_ready`` gets the URL once it listens (default:
    printed to stderr). Binding anything but the loopback address prints a warning."""
    import socket  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415

    warning = bind_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    app = create_app(index, model=model, device=device, limits=limits)
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        app.state.service.close()
        raise
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/"
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on"))
    ready = on_ready or (lambda u: print(f"pagelens: serving {index} at {u} (API at {u}docs); Ctrl-C stops",
                                         file=sys.stderr, flush=True))

    async def run():
        config_started = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not config_started.done():
            await asyncio.sleep(0.02)
        if server.started:
            ready(url)
        await config_started

    try:
        asyncio.run(run())
    finally:
        sock.close()
