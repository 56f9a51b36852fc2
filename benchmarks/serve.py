"""HTTP API benchmark (issue 10, section 4): what `pagelens serve` adds to a warm search, and how
many requests per second it answers for 1, 4 and 16 concurrent clients.

One run, on the tiny random checkpoint (engine.testing) over generated PDFs:

1. builds an index (``--docs`` PDFs of ``--pages`` pages) with the tiny model;
2. starts ``pagelens serve`` on 127.0.0.1 (a free port) in its own process, as a user would;
3. opens the same index through the Python API in this process, with the same model;
4. times the same warm query in alternating blocks: ``--block`` searches through the Python API,
   then ``--block`` GET /api/search over one keep-alive connection, ``--rounds`` times, so both see
   the same machine load; prints p50 / p95 of each and the difference of the p50s (the target:
   HTTP adds at most 5 ms at p50);
5. for 1, 4 and 16 client threads (each its own keep-alive connection), ``--requests`` requests
   in all: requests per second, and p50 / p95 latency.

    python benchmarks/serve.py [--docs 4 --pages 5 --rounds 6 --block 25 --requests 200 --threads 1]

Only 127.0.0.1 is ever bound or connected to; every run is bounded by the request counts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERY = "revenue by region in 2023"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _build(root: Path, docs: int, pages: int) -> tuple[str, Path]:
    import pagelens
    from engine.testing import write_tiny_checkpoint
    from tests.indexer.indexer_fakes import make_pdf

    tiny = str(write_tiny_checkpoint(root / "jina-v4-tiny"))
    folder = root / "docs"
    folder.mkdir()
    for i in range(docs):
        make_pdf(folder / f"doc{i}.pdf", pages=pages, seed=i, size=(300, 400))
    index = root / "idx"
    with pagelens.Index.open_or_create(index, model=tiny) as idx:
        idx.add([folder])
    return tiny, index


def _start(index: Path, model: str, threads: int | None = None) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    proc = subprocess.Popen([sys.executable, "-m", "pagelens.cli", "serve", "--index", str(index), "--model", model,
                             "--host", "127.0.0.1", "--port", "0"], cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        found = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, int(found.group(1))
    proc.kill()
    raise SystemExit("the server did not start")


class Client:
    """One keep-alive HTTP/1.1 connection to the server."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def search(self, query: str, k: int) -> dict:
        self.conn.request("GET", "/api/search?" + urllib.parse.urlencode({"q": query, "k": k}))
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"HTTP {response.status}: {body[:200]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.conn.close()


def _latency(idx, port: int, rounds: int, block: int, k: int) -> dict:
    client = Client(port)
    # warm both: the model, the search structures, the connection
    expected = [h.page_id for h in idx.search(QUERY, k=k)]
    got = [h["page_id"] for h in client.search(QUERY, k)["hits"]]
    if got != expected:
        raise SystemExit(f"HTTP and the Python API disagree: {got} vs {expected}")
    for _ in range(5):
        idx.search(QUERY, k=k)
        client.search(QUERY, k)
    api, over_http = [], []
    for _ in range(rounds):
        for _ in range(block):
            start = time.perf_counter()
            idx.search(QUERY, k=k)
            api.append((time.perf_counter() - start) * 1000)
        for _ in range(block):
            start = time.perf_counter()
            client.search(QUERY, k)
            over_http.append((time.perf_counter() - start) * 1000)
    client.close()
    return {"api": api, "http": over_http}


def _throughput(port: int, clients: int, requests: int, k: int) -> dict:
    per = max(1, requests // clients)
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def work() -> None:
        client = Client(port)
        client.search(QUERY, k)  # connect before the clock starts
        mine = []
        barrier.wait()
        try:
            for _ in range(per):
                start = time.perf_counter()
                client.search(QUERY, k)
                mine.append((time.perf_counter() - start) * 1000)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            client.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} client(s) failed: {errors[0]}")
    return {"clients": clients, "requests": per * clients, "seconds": elapsed, "rps": per * clients / elapsed,
            "p50": _pct(latencies, 0.5), "p95": _pct(latencies, 0.95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--pages", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level, in all")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in the server and in this process alike (0: torch's default); "
                        "two processes each spinning on every core would measure contention, not HTTP")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch loads, here and in the server

    import pagelens

    root = Path(tempfile.mkdtemp(prefix="pagelens-serve-bench-"))
    proc = None
    try:
        t0 = time.perf_counter()
        tiny, index = _build(root, args.docs, args.pages)
        print(f"index: {args.docs * args.pages} pages, tiny model, built in {time.perf_counter() - t0:.1f} s; "
              f"torch threads: {args.threads or 'default'} per process")
        proc, port = _start(index, tiny, args.threads)
        with pagelens.Index.open(index, model=tiny) as idx:
            lat = _latency(idx, port, args.rounds, args.block, args.k)
        api_p50, http_p50 = statistics.median(lat["api"]), statistics.median(lat["http"])
        print(f"\nwarm query {QUERY!r}, k={args.k}, {args.rounds} alternating blocks of {args.block}:")
        print(f"  {'':<12}{'p50 ms':>9}{'p95 ms':>9}{'n':>6}")
        for name, values in (("Python API", lat["api"]), ("HTTP", lat["http"])):
            print(f"  {name:<12}{statistics.median(values):9.2f}{_pct(values, 0.95):9.2f}{len(values):6d}")
        print(f"  HTTP adds {http_p50 - api_p50:+.2f} ms at p50 (target: at most 5 ms)")
        print(f"\nthroughput, {args.requests} requests per level, keep-alive connections, 127.0.0.1:")
        print(f"  {'clients':>7}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}")
        for clients in (1, 4, 16):
            r = _throughput(port, clients, args.requests, args.k)
            print(f"  {r['clients']:>7}{r['rps']:9.1f}{r['p50']:9.2f}{r['p95']:9.2f}")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
