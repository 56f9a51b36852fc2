"""``benchmarks/encode.py --real-size``: the encoder at the real jina-embeddings-v4 size, against its floor.

A random checkpoint with every tensor at its published shape (engine.testing.REAL: 3.75B base
parameters in bf16 plus r=32 LoRA for three tasks) is written once into bench-data/real-size-ckpt
(gitignored; about 7.4 GiB, a few minutes, a few hundred MB of memory) and reused. Speed and memory
do not depend on weight values, so this measures the real model's cost.

Measured in one process: load time and memory (peak while loading against resident after loading),
queries/s at batch 1 and 8, passages/s (with the task adapter and with it switched off: the LoRA
overhead), pages/s at 50,176 / 200,704 / 602,112 pixels, peak memory; each beside its arithmetic
floor: FLOPs per input from the geometry divided by the best plain matmul rate of the model's
dtype measured in the same run, at the model's own shapes (and, for text, the time to read the
weights once at the memory bandwidth measured in the same run, whichever is larger).

On a CPU the figures are CPU seconds (process time) per input: run with ``--threads 1`` on a shared
machine. On CUDA (``--device cuda``) they are wall seconds after synchronising.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn import functional as F

from engine.testing import PROJECTOR_DIM, REAL, write_real_size_checkpoint

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "bench-data" / "real-size-ckpt"
PIXELS = (50176, 200704, 602112)
_STAMP = "real-size-stamp.json"


# -- the checkpoint -----------------------------------------------------------------------------
def _stamp() -> dict:
    return {"geometry": json.loads(json.dumps(asdict(REAL))), "seed": 0, "writer": "engine.testing/2"}


def ensure_real_size_checkpoint(folder: Path = DEFAULT_DIR, *, log: Callable[[str], None] = print) -> Path:
    """The cached checkpoint; written (into a .partial folder, renamed when complete) if absent or stale."""
    folder = Path(folder)
    stamp = folder / _STAMP
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == _stamp():
                return folder
        except (OSError, ValueError):
            pass
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"writing the real-size random checkpoint to {folder} (once: about 7.4 GiB, a few minutes)")
    t0 = time.perf_counter()
    write_real_size_checkpoint(tmp)
    (tmp / _STAMP).write_text(json.dumps(_stamp(), indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    log(f"  written in {time.perf_counter() - t0:.0f} s")
    return folder


# -- arithmetic of the geometry -----------------------------------------------------------------
def _text_linear_params(geo=REAL) -> int:
    t = geo.text
    h, kv = t["hidden"], t["kv_heads"] * geo.head_dim
    return t["layers"] * (2 * h * h + 2 * h * kv + 3 * h * t["inter"])


def _lora_params(geo=REAL) -> int:
    t, r = geo.text, geo.lora_r
    h, kv, i = t["hidden"], t["kv_heads"] * geo.head_dim, t["inter"]
    per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))
    return t["layers"] * per_layer + r * (h + PROJECTOR_DIM)


def text_flops(tokens: int, geo=REAL, lora: bool = True) -> float:
    """Multiply-adds x2 of one text sequence (attention counted in full, an upper bound for causal)."""
    t = geo.text
    linear = 2 * tokens * _text_linear_params(geo)
    attn = t["layers"] * 4 * tokens * tokens * t["hidden"]
    proj = 2 * tokens * t["hidden"] * PROJECTOR_DIM
    return linear + attn + proj + (2 * tokens * _lora_params(geo) if lora else 0)


def vision_flops(patches: int, geo=REAL) -> float:
    v = geo.vision
    h, i, merge = v["hidden"], v["inter"], v["merge"] ** 2
    per_block = 2 * patches * (3 * h * h + h * h + 3 * h * i)
    window = (112 // v["patch"]) ** 2  # patches per attention window
    full = len(geo.fullatt_blocks)
    attn = full * 4 * patches * patches * h + (v["depth"] - full) * 4 * patches * min(window, patches) * h
    embed = 2 * patches * h * 3 * v["temporal"] * v["patch"] ** 2
    merger = 2 * (patches // merge) * ((h * merge) ** 2 + h * merge * v["out"])
    return v["depth"] * per_block + attn + embed + merger


def image_flops(image_tokens: int, geo=REAL, lora: bool = True) -> float:
    return vision_flops(4 * image_tokens, geo) + text_flops(image_tokens + 11, geo, lora)


def text_weight_bytes(itemsize: int, geo=REAL) -> int:
    """Bytes of weights one text forward reads (decoder matrices, LoRA, projector)."""
    return itemsize * (_text_linear_params(geo) + _lora_params(geo) + geo.text["hidden"] * PROJECTOR_DIM)


# -- measuring ----------------------------------------------------------------------------------
def proc_status() -> dict[str, float]:
    """VmHWM/VmRSS/RssAnon/RssFile in GiB (Linux), {} elsewhere."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 2**20
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Clock:
    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float, float]:
        """(result, seconds, wall seconds); seconds are CPU seconds on a CPU, wall on CUDA."""
        if self.cuda:
            torch.cuda.synchronize()
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - w0
        return out, (wall if self.cuda else time.process_time() - c0), wall


def matmul_rates(device: str, dtype: torch.dtype, clock: Clock, repeats: int = 3) -> dict[str, float]:
    """Best plain matmul GFLOP/s at the model's own shapes (weights already in ``dtype``)."""
    shapes = {"text 748x2048->11008": (748, 2048, 11008), "text 748x11008->2048": (748, 11008, 2048),
              "vision 2944x1280->3420": (2944, 1280, 3420), "square 2048^3": (2048, 2048, 2048)}
    rates = {}
    for name, (m, k, n) in shapes.items():
        x = torch.randn(m, k, device=device).to(dtype)
        w = (0.02 * torch.randn(n, k, device=device)).to(dtype)
        F.linear(x, w)
        best = min(clock(lambda: F.linear(x, w))[1] for _ in range(repeats))
        rates[name] = 2 * m * k * n / best / 1e9
        del x, w
    return rates


def read_bandwidth(device: str, clock: Clock, mib: int = 256, repeats: int = 5) -> float:
    """GB/s reading a buffer far larger than the caches (float32 sum)."""
    buf = torch.ones(mib * 2**18, device=device)
    buf.sum()
    best = min(clock(lambda: buf.sum())[2] for _ in range(repeats))
    return buf.numel() * 4 / best / 1e9


def kernel_table(clock: Clock, repeats: int = 3) -> list[dict]:
    """float32 arithmetic: weights held in float32 (the old CPU default) vs bf16 as stored (now)."""
    from engine.compute import stored_weight_linear

    rows = []
    for m, k, n in ((22, 2048, 11008), (748, 2048, 11008), (748, 11008, 2048), (2944, 1280, 3420)):
        w16 = (0.02 * torch.randn(n, k)).to(torch.bfloat16)
        w32 = w16.float()
        x = torch.randn(m, k)
        t32 = t16 = float("inf")
        for _ in range(repeats):  # interleaved, so load on a shared machine hits both alike
            t32 = min(t32, clock(lambda: F.linear(x, w32))[1])
            t16 = min(t16, clock(lambda: stored_weight_linear(x, w16, None))[1])
        fl = 2 * m * k * n
        rows.append({"shape": f"{m}x{k}->{n}", "float32_weights_gflops": fl / t32 / 1e9,
                     "bf16_stored_gflops": fl / t16 / 1e9, "ratio": t16 / t32})
        del w16, w32, x
    return rows


def _synthetic_passage(n: int, seed: int) -> str:
    import random

    from encode import WORDS

    rnd = random.Random(seed)
    return " ".join(rnd.choice(WORDS) for _ in range(n)) + "."


def run(args) -> int:
    from encode import synthetic_page, synthetic_queries

    from engine.loader import load_encoder
    from engine.processor import InputProcessor

    device = args.device or "cpu"
    clock = Clock(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = ensure_real_size_checkpoint(Path(args.ckpt) if args.ckpt else DEFAULT_DIR)
    report: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_avg_start": os.getloadavg()[0]},
    }
    from engine.compute import cpu_has_native_bf16

    report["machine"]["native_bf16"] = cpu_has_native_bf16()
    print(f"machine    {report['machine']}")
    print(f"checkpoint {folder}")

    # 1. load: peak while loading vs resident after
    gc.collect()
    reset_peak_rss()
    before = proc_status()
    c0, w0 = time.process_time(), time.perf_counter()
    enc = load_encoder(str(folder), device=args.device, dtype=args.dtype, max_pixels=PIXELS[0])
    load_s, load_wall = time.process_time() - c0, time.perf_counter() - w0
    after = proc_status()
    from engine.compute import weights_dtype

    compute = getattr(torch, enc.dtype)
    stored = weights_dtype(enc._net)
    report["load"] = {"cpu_s": load_s, "wall_s": load_wall, "dtype": enc.dtype, "weights": str(stored),
                      "rss_before_gib": before.get("VmRSS"), "peak_while_loading_gib": after.get("VmHWM"),
                      "rss_after_gib": after.get("VmRSS"), "anon_after_gib": after.get("RssAnon"),
                      "file_mapped_after_gib": after.get("RssFile")}
    print(f"load       {load_s:.1f} CPU-s ({load_wall:.1f} s wall), dtype {enc.dtype}, weights held in "
          f"{str(stored).removeprefix('torch.')}; memory before {before.get('VmRSS', 0):.2f} GiB, peak while "
          f"loading {after.get('VmHWM', 0):.2f} GiB, resident after {after.get('VmRSS', 0):.2f} GiB "
          f"(anonymous {after.get('RssAnon', 0):.2f}, file-mapped weights {after.get('RssFile', 0):.2f})")

    # 2. the floor: plain matmul rate of the model's dtype and memory bandwidth, same process
    rates = matmul_rates(device, compute, clock)
    best_rate = max(rates.values())
    bandwidth = read_bandwidth(device, clock)
    report["floor"] = {"matmul_gflops": rates, "best_matmul_gflops": best_rate, "read_gbs": bandwidth}
    print(f"floor      plain {enc.dtype} matmul at the model's shapes: "
          + ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
          + f" GFLOP/s (best {best_rate:.0f}); memory read {bandwidth:.1f} GB/s")
    if device == "cpu" and not args.skip_kernels:
        report["kernels"] = kernel_table(clock)
        print("kernels    float32 arithmetic, GFLOP/s: weights held in float32 (old default) vs bf16 as stored (now)")
        for row in report["kernels"]:
            print(f"           {row['shape']:>18}: {row['float32_weights_gflops']:6.0f} vs {row['bf16_stored_gflops']:6.0f}"
                  f"  (time x{row['ratio']:.2f})")

    itemsize = torch.finfo(stored).bits // 8
    rows: list[dict] = []

    def record(what: str, n_inputs: int, seconds: float, wall: float, total_flops: float, tokens: str,
               weight_bytes: float = 0.0) -> None:
        """Totals over ``n_inputs`` in; per-input figures out."""
        floor = max(total_flops / (best_rate * 1e9), weight_bytes / (bandwidth * 1e9)) / n_inputs
        flops = total_flops / n_inputs
        per = seconds / n_inputs
        row = {"input": what, "tokens": tokens, "seconds_per_input": per, "per_second": n_inputs / seconds,
               "wall_per_input": wall / n_inputs, "tflop_per_input": flops / 1e12, "floor_s": floor,
               "x_floor": per / floor, "gflops": flops / per / 1e9, "rss_gib": proc_status().get("VmRSS")}
        rows.append(row)
        print(f"{what:<34} {tokens:>18} {per:9.2f} {n_inputs / seconds:9.3f} {flops / 1e12:8.2f} "
              f"{floor:8.2f} {per / floor:6.2f}x {flops / per / 1e9:7.0f} {row['rss_gib'] or 0:7.2f}")

    unit = "CPU-s" if device == "cpu" else "s"
    print(f"\n{'input':<34} {'tokens':>18} {unit + '/input':>9} {'inputs/s':>9} {'TFLOP':>8} "
          f"{'floor s':>8} {'vs floor':>7} {'GFLOP/s':>7} {'RSS GiB':>7}")

    queries = synthetic_queries(max(args.queries, 8), seed=1)
    enc.encode_queries(queries[:1])  # warm-up
    lens = [len(r) for r in enc._processor.tokenize([f"Query: {q}" for q in queries])]
    for bs in (1, 8):
        batch = queries[: max(args.queries, bs)]
        n = len(batch) if bs == 8 else args.queries
        batch = batch[:n]
        _, s, w = clock(lambda: enc.encode_queries(batch, batch_size=bs))
        toks = lens[:n]
        flops = sum(text_flops(t) for t in toks)
        reads = text_weight_bytes(itemsize) * -(-n // bs)
        record(f"query, batch {bs}", n, s, w, flops, f"{sum(toks) / n:.0f} avg", reads)

    passages = [_synthetic_passage(args.passage_words, 100 + i) for i in range(args.passages)]
    plens = [len(r) for r in enc._processor.tokenize([f"Passage: {p}" for p in passages])]
    pflops = sum(text_flops(t) for t in plens)
    _, s_on, w_on = clock(lambda: enc.encode_passages(passages, batch_size=args.passages))
    record(f"passage, batch {args.passages}", len(passages), s_on, w_on, pflops, f"{sum(plens) / len(plens):.0f} avg")
    with enc._adapters.disable_adapter():
        _, s_off, w_off = clock(lambda: enc.encode_passages(passages, batch_size=args.passages))
    record(f"passage, batch {args.passages}, LoRA off", len(passages), s_off, w_off,
           sum(text_flops(t, lora=False) for t in plens), f"{sum(plens) / len(plens):.0f} avg")
    report["lora_overhead"] = {"with_s": s_on, "without_s": s_off, "overhead": s_on / s_off - 1,
                               "arithmetic_share": 1 - sum(text_flops(t, lora=False) for t in plens) / pflops}

    page = synthetic_page(0)
    for pixels in args.pixels:
        enc._processor = InputProcessor.load(folder, max_pixels=pixels, image_token_id=enc._config.image_token_id)
        if pixels == args.pixels[0]:
            enc.encode_images([page])  # warm-up
        out, s, w = clock(lambda: enc.encode_images([page]))
        n = out[0].multi.shape[0] - 11
        record(f"page 827x1169 @ {pixels:,} px", 1, s, w, image_flops(n), f"{n + 11} ({4 * n} patches)")

    report["rows"] = rows
    report["peak_gib"] = proc_status().get("VmHWM")
    if device.startswith("cuda"):
        report["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    report["load_avg_end"] = os.getloadavg()[0]
    lo = report["lora_overhead"]
    print(f"\nLoRA       passages {lo['with_s']:.1f} s with the adapter, {lo['without_s']:.1f} s without: "
          f"+{100 * lo['overhead']:.1f}% (LoRA is {100 * lo['arithmetic_share']:.1f}% of the arithmetic)")
    print(f"memory     peak {report['peak_gib']:.2f} GiB over the whole run"
          + (f"; CUDA peak {report['cuda_peak_gib']:.2f} GiB" if 'cuda_peak_gib' in report else ""))
    print(f"load avg   {report['machine']['load_avg_start']:.1f} at start, {report['load_avg_end']:.1f} at end "
          f"on {os.cpu_count()} CPUs (other work on the machine inflates CPU seconds too: caches, memory bandwidth)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"json       {args.json}")
    return 0


def add_arguments(ap) -> None:
    ap.add_argument("--real-size", action="store_true",
                    help="benchmark a random checkpoint of the real model's geometry (written once, cached)")
    ap.add_argument("--ckpt", default=None, help=f"where the real-size checkpoint is cached (default {DEFAULT_DIR})")
    ap.add_argument("--pixels", type=lambda s: [int(p) for p in s.split(",")], default=list(PIXELS),
                    help="page pixel caps to measure with --real-size (default 50176,200704,602112)")
    ap.add_argument("--passages", type=int, default=4, help="passages per batch with --real-size")
    ap.add_argument("--passage-words", type=int, default=60, help="words per synthetic passage with --real-size")
    ap.add_argument("--skip-kernels", action="store_true", help="skip the float32-vs-stored-bf16 kernel table")
    ap.add_argument("--json", default=None, help="also write the --real-size report as JSON here")


if __name__ == "__main__":
    sys.exit(print("run: python benchmarks/encode.py --real-size [--threads 1]") or 2)
