"""Encoding benchmark: pages/s and queries/s per batch size, plus peak memory, in one run.

Pages are synthetic A4-ish images (text lines, boxes, a chart), deterministic for a seed, so runs
compare. Without --model the tiny random checkpoint from engine.testing is written to a temp dir
(figures then measure the loop and the preprocessing, not the real network). With the real model:

    python benchmarks/encode.py --model jinaai/jina-embeddings-v4 --device cuda --batch-sizes 1,4,8

Peak memory: RSS high-water mark (resource.getrusage) on CPU, torch.cuda.max_memory_allocated on
CUDA (reset before each batch size).

At the real model's size, without the weights (a random checkpoint of the published geometry,
written once into bench-data/real-size-ckpt, about 7.4 GiB; see benchmarks/encode_real_size.py):

    python benchmarks/encode.py --real-size --threads 1            # CPU seconds per input, vs the floor
    python benchmarks/encode.py --real-size --device cuda          # the same, unchanged, on a GPU
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time

import torch
from PIL import Image, ImageDraw

from engine.loader import load_encoder
from engine.testing import write_tiny_checkpoint

WORDS = ("revenue quarter invoice total balance report figure table page section results "
         "growth margin cost net tax summary appendix chart customer region").split()


def synthetic_page(seed: int, size: tuple[int, int] = (827, 1169)) -> Image.Image:
    """A4 at 100 dpi: a title, paragraphs of text lines, a table grid and a bar chart."""
    rnd = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((60, 50), f"Annual report {2000 + seed % 25}, section {seed % 9 + 1}", fill="black")
    y = 100
    while y < h * 0.55:
        line = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 14)))
        d.text((60, y), line, fill=(20, 20, 20))
        y += 16 + (14 if rnd.random() < 0.15 else 0)
    top = int(h * 0.6)
    for r in range(6):
        for c in range(4):
            box = [60 + c * 120, top + r * 24, 60 + (c + 1) * 120, top + (r + 1) * 24]
            d.rectangle(box, outline="black")
            d.text((box[0] + 6, box[1] + 6), f"{rnd.randint(0, 9999)}", fill="black")
    for i in range(6):
        bar = rnd.randint(30, 200)
        d.rectangle([580 + i * 35, top + 220 - bar, 600 + i * 35, top + 220],
                    fill=(40 + 30 * i, 90, 200 - 25 * i))
    return img


def synthetic_queries(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 12))) + "?" for _ in range(n)]


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="repo id or folder (default: tiny random checkpoint)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--task", default="retrieval")
    ap.add_argument("--max-pixels", type=int, default=None)
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--pages", type=int, default=16)
    ap.add_argument("--queries", type=int, default=None, help="queries (default 64; 4 at batch 1 with --real-size)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's own choice; 1 avoids OpenMP spinning on a busy machine)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed runs per setting; the best is reported (first runs pay per-shape kernel set-up)")
    import encode_real_size

    encode_real_size.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.real_size:
        args.queries = args.queries or 4
        return encode_real_size.run(args)
    args.queries = args.queries or 64
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model
    tmp = None
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="pagelens-tiny-")
        model = str(write_tiny_checkpoint(tmp.name))
    t0 = time.perf_counter()
    enc = load_encoder(model, task=args.task, device=args.device, dtype=args.dtype, max_pixels=args.max_pixels)
    load_s = time.perf_counter() - t0
    pages = [synthetic_page(i) for i in range(args.pages)]
    queries = synthetic_queries(args.queries)
    is_cuda = enc.device.startswith("cuda")

    def timed(fn):
        if is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if is_cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    enc.encode_images(pages[:1])  # warm-up: kernels, allocator, lazy imports
    enc.encode_queries(queries[:2])
    tokens = enc.encode_images(pages[:1])[0].multi.shape[0]
    print(f"model      {enc.identity['model']}  ({enc.identity['revision'][:20]}...)")
    print(f"device     {enc.device}  dtype {enc.dtype}  image processor {enc.image_processor}  "
          f"max_pixels {enc.max_pixels}")
    print(f"load       {load_s:.2f} s; page 827x1169 -> {tokens} tokens; {args.pages} pages, {args.queries} queries")
    print(f"load avg   {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()} "
          "(other work on the machine skews CPU figures)")
    print(f"{'batch':>5} {'pages/s':>10} {'queries/s':>10} {'peak MiB':>10}")
    base_pps = base_qps = None
    for bs in sizes:
        if is_cuda:
            torch.cuda.reset_peak_memory_stats()
        page_s = min(timed(lambda: enc.encode_images(pages, batch_size=bs))[1] for _ in range(args.repeats))
        query_s = min(timed(lambda: enc.encode_queries(queries, batch_size=bs))[1] for _ in range(args.repeats))
        pps, qps = args.pages / page_s, args.queries / query_s
        base_pps, base_qps = base_pps or pps, base_qps or qps
        print(f"{bs:>5} {pps:>10.2f} {qps:>10.1f} {peak_memory_mib(enc.device):>10.0f}"
              f"   (x{pps / base_pps:.2f} pages, x{qps / base_qps:.2f} queries vs batch {sizes[0]})")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
