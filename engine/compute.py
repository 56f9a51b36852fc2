"""How the network computes on a CPU: which dtype by default, and weights kept as stored.

Two facts decide the CPU default (measured with ``benchmarks/encode.py --real-size``):

* bf16 arithmetic is fast only where the CPU has it (AVX-512 BF16, AMX, or Arm's BF16 extension).
  Elsewhere torch emulates it: a bf16 matmul ran 6-8x slower than float32 on an AVX2 machine.
* The published weights are bf16. Upcasting them to float32 is exact, so float32 arithmetic over
  the bf16 weights *as stored* gives the float32 model's numbers at half its memory.

So on a CPU the default is bf16 when the CPU computes bf16 natively and the checkpoint is bf16,
and float32 otherwise. float32 over a bf16 (or fp16) checkpoint keeps every large weight matrix as
stored and converts it, one cache-sized block of rows at a time, into a reused float32 buffer right
before its matmul (``StoredWeightLinear``): under 8 GiB resident for the real model instead of
15-18 GiB, no transient full copy while loading, and matmul time within 0-5% of float32-held
weights from 22 tokens up (a lone one-token matrix-vector product pays about 1.5x).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

#: float32 values converted per block (8 MiB, within the L3 cache between conversion and matmul), and
#: at least MIN_BLOCK_ROWS rows (fewer made the matmul of an 11008-wide down_proj 20-30% slower).
BLOCK_VALUES = 1 << 21
MIN_BLOCK_ROWS = 256
_CPUINFO = Path("/proc/cpuinfo")
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_ARM_BF16_FEATURES = ("bf16",)
_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86: AVX-512 BF16 or AMX; Arm: the BF16 extension)."""
    probe = getattr(torch, "cpu", None)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(probe, name, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except Exception:  # private helpers: treat any failure as "unknown", read cpuinfo
                pass
    return _cpuinfo_says_bf16(_read_cpuinfo())


def _read_cpuinfo() -> str:
    try:
        return _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpuinfo_says_bf16(text: str) -> bool:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        words = set(value.split())
        if key == "flags" and any(f in words for f in _NATIVE_BF16_FLAGS):
            return True
        if key == "features" and any(f in words for f in _ARM_BF16_FEATURES):
            return True
    return False


def stored_dtype(headers: dict) -> torch.dtype:
    """The dtype holding most bytes of the base weight files (their safetensors headers)."""
    size: dict[str, int] = {}
    for header in headers.values():
        for key, info in header.items():
            if key == "__metadata__":
                continue
            start, end = info["data_offsets"]
            size[info["dtype"]] = size.get(info["dtype"], 0) + int(end) - int(start)
    if not size:
        return torch.float32
    return _SAFETENSORS_DTYPES.get(max(size, key=size.get), torch.float32)


def default_dtype(device: torch.device, stored: torch.dtype) -> torch.dtype:
    """bf16 on CUDA; on a CPU bf16 only where it is native and the weights are bf16, else float32."""
    if device.type == "cuda":
        return torch.bfloat16
    if stored == torch.bfloat16 and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def storage_dtype(device: torch.device, compute: torch.dtype, stored: torch.dtype) -> torch.dtype:
    """Keep float32 arithmetic's weights as stored when that loses nothing (bf16/fp16 files on a CPU)."""
    if device.type == "cpu" and compute == torch.float32 and stored in (torch.bfloat16, torch.float16):
        return stored
    return compute


# -- float32 arithmetic over weights kept as stored ---------------------------------------------
_scratch = threading.local()


def _buffer(values: int, device: torch.device) -> torch.Tensor:
    """A float32 scratch buffer per thread and device, grown on demand and reused."""
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    buf = bufs.get(device)
    if buf is None or buf.numel() < values:
        # a normal tensor even when first needed under inference_mode: an inference tensor could
        # not be written by a later call made outside it (torch.no_grad, say)
        with torch.inference_mode(False):
            buf = bufs[device] = torch.empty(values, dtype=torch.float32, device=device)
    return buf


def block_rows(in_features: int) -> int:
    """Weight rows converted per block for a matrix ``in_features`` wide."""
    return max(MIN_BLOCK_ROWS, BLOCK_VALUES // max(in_features, 1))


def stored_weight_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x.float(), weight.float(), bias)`` without ever holding ``weight`` in float32 whole."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return F.linear(x.float(), weight.float(), bias)  # autograd cannot write into out= slices
    n_out, n_in = weight.shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, n_in)
    if x2.dtype != torch.float32:
        x2 = x2.float()
    out = torch.empty((x2.shape[0], n_out), dtype=torch.float32, device=x.device)
    if x2.shape[0]:
        rows = block_rows(n_in)
        buf = _buffer(min(rows, n_out) * n_in, x.device)
        for start in range(0, n_out, rows):
            m = min(rows, n_out - start)
            block = buf[: m * n_in].view(m, n_in)
            block.copy_(weight[start : start + m])
            torch.mm(x2, block.t(), out=out[:, start : start + m])
        if bias is not None:
            out += bias
    return out.view(*lead, n_out)


class StoredWeightLinear(nn.Linear):
    """An nn.Linear whose weight stays in its stored dtype while the arithmetic runs in float32.

    Same parameters and state-dict keys as nn.Linear (peft wraps it like any Linear); the bias, if
    any, is float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == torch.float32:
            return F.linear(x, self.weight, self.bias)
        return stored_weight_linear(x, self.weight, self.bias)


class StoredWeightEmbedding(nn.Embedding):
    """An nn.Embedding kept in its stored dtype that hands out float32 rows (exact)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(torch.float32)


def keep_weights_as_stored(module: nn.Module, compute: torch.dtype = torch.float32) -> nn.Module:
    """Switch a loaded module to ``compute`` arithmetic, leaving Linear/Embedding weights as stored.

    Every other parameter and floating buffer (norms, biases, the patch-embedding convolution,
    rotary tables) is small and becomes ``compute``. Changes ``module`` in place; returns it.
    """
    if compute != torch.float32:
        raise ValueError("weights kept as stored are only implemented for float32 arithmetic")
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = StoredWeightLinear
        elif type(sub) is nn.Embedding:
            sub.__class__ = StoredWeightEmbedding
        keep = "weight" if isinstance(sub, (StoredWeightLinear, StoredWeightEmbedding)) else None
        for name, param in list(sub.named_parameters(recurse=False)):
            if name != keep and param.is_floating_point() and param.dtype != compute:
                setattr(sub, name, nn.Parameter(param.detach().to(compute), requires_grad=False))
        for name, buf in list(sub.named_buffers(recurse=False)):
            if buf is not None and buf.is_floating_point() and buf.dtype != compute:
                sub._buffers[name] = buf.to(compute)
    return module


def weights_dtype(module: nn.Module) -> torch.dtype:
    """The dtype holding most parameter values of ``module`` (what its weights take in memory)."""
    count: dict[torch.dtype, int] = {}
    for p in module.parameters():
        count[p.dtype] = count.get(p.dtype, 0) + p.numel()
    return max(count, key=count.get) if count else torch.float32
