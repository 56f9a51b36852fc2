"""Two side measurements at the real size, beside ``encode.py --real-size`` (same cached checkpoint).

``lora``: passages with the fused in-place LoRA (the engine's), with peft's own LoRA forward, and
with the adapter switched off, interleaved in one process (CPU seconds, 1 torch thread).
``fidelity``: per-token cosine of bf16 against float32 outputs of the same random real-size
checkpoint (one model at a time; bf16 is slow where the CPU emulates it).

    python benchmarks/encode_real_size_extras.py lora [passages words rounds]   # default 4 60 1
    python benchmarks/encode_real_size_extras.py fidelity
"""

from __future__ import annotations

import gc
import sys
import time

import numpy as np
import torch

from encode import synthetic_page
from encode_real_size import DEFAULT_DIR, _synthetic_passage, ensure_real_size_checkpoint, proc_status


def lora(passages: int = 4, words: int = 60, rounds: int = 1) -> None:
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    from engine.adapters import _fused_lora_linear
    from engine.loader import load_encoder

    enc = load_encoder(str(ensure_real_size_checkpoint(DEFAULT_DIR)))
    texts = [_synthetic_passage(words, 100 + i) for i in range(passages)]
    enc.encode_passages(texts[:1])
    fused = _fused_lora_linear()
    layers = [m for m in enc._adapters.modules() if isinstance(m, PeftLoraLinear)]

    def timed(label: str) -> float:
        t = time.process_time()
        enc.encode_passages(texts, batch_size=passages)
        s = time.process_time() - t
        print(f"  {label:<22} {s:7.1f} CPU-s", flush=True)
        return s

    def run_fused() -> float:
        return timed("fused LoRA (engine)")

    def run_peft() -> float:
        for m in layers:
            m.__class__ = PeftLoraLinear
        try:
            return timed("peft's LoRA forward")
        finally:
            for m in layers:
                m.__class__ = fused

    def run_off() -> float:
        with enc._adapters.disable_adapter():
            return timed("adapter off")

    variants = [("fused", run_fused), ("peft", run_peft), ("off", run_off)]
    res: dict[str, list[float]] = {name: [] for name, _ in variants}
    for r in range(rounds):  # the order rotates each round: a slow spell of the machine hits all alike
        for name, fn in variants[r % 3:] + variants[: r % 3]:
            res[name].append(fn())
    off = min(res["off"])
    print(f"lora overhead: fused {100 * (min(res['fused']) / off - 1):+.1f}%, "
          f"peft {100 * (min(res['peft']) / off - 1):+.1f}% (RSS {proc_status().get('VmHWM', 0):.2f} GiB peak)")


def fidelity() -> None:
    from engine.loader import load_encoder

    folder = str(ensure_real_size_checkpoint(DEFAULT_DIR))
    queries = ["what is the revenue in the second quarter?", "warranty period of the device"]
    outs = {}
    for dtype in ("float32", "bfloat16"):
        enc = load_encoder(folder, dtype=dtype, max_pixels=50176)
        t = time.process_time()
        outs[dtype] = enc.encode_queries(queries) + enc.encode_images([synthetic_page(0)])
        print(f"  {dtype}: {time.process_time() - t:.1f} CPU-s for 2 queries + a 50,176-pixel page", flush=True)
        del enc
        gc.collect()
    worst, means = 1.0, []
    for a, b in zip(outs["bfloat16"], outs["float32"]):
        x, y = a.multi.astype(np.float64), b.multi.astype(np.float64)
        cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
        worst, means = min(worst, float(cos.min())), means + [float(cos.mean())]
        single = float(a.single.astype(np.float64) @ b.single.astype(np.float64))
        print(f"  {a.multi.shape[0]:4d} tokens: multi cosine min {cos.min():.5f} mean {cos.mean():.5f}; single {single:.5f}")
    print(f"fidelity: worst per-token cosine {worst:.5f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    what = sys.argv[1] if len(sys.argv) > 1 else "lora"
    if what == "lora":
        lora(*(int(a) for a in sys.argv[2:5]))  # passages, words, rounds
    else:
        fidelity()
