"""load_encoder: resolve, check, load, wrap. The only entry point that builds an Encoder."""

from __future__ import annotations

from typing import Any

from engine import checkpoint
from engine.config import read_config
from engine.encoder import Encoder, unknown_task
from engine.errors import EngineError

_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def _pick_device(device: Any):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise EngineError(f"unknown device {device!r}", "Use 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} requested but CUDA is not available",
                          "Use device='cpu', or install a CUDA build of torch on a machine with a GPU.")
    if dev.type not in ("cpu", "cuda"):
        raise EngineError(f"device type {dev.type!r} is not supported", "Use 'cpu' or 'cuda'.")
    return dev


def _pick_dtype(dtype: Any, device, stored=None):
    import torch

    from engine.compute import default_dtype

    if dtype is None:
        return default_dtype(device, stored if stored is not None else torch.float32)
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = _DTYPES.get(str(dtype).lower().removeprefix("torch."), "")
    if name not in ("float32", "bfloat16", "float16"):
        raise EngineError(f"unsupported dtype {dtype!r}", "Use 'float32', 'bfloat16' or 'float16'.")
    return getattr(torch, name)


def load_encoder(
    model: str = checkpoint.DEFAULT_MODEL,
    *,
    task: str = "retrieval",
    device: Any = None,
    dtype: Any = None,
    max_pixels: int | None = None,
) -> Encoder:
    """Load jina-embeddings-v4 (repo id or local folder) with stock transformers + peft.

    Default device is CUDA (in bfloat16) when available, else the CPU. On a CPU the default dtype is
    bfloat16 where the CPU computes bf16 natively (AVX-512 BF16, AMX, Arm BF16) and the checkpoint
    is stored in bf16, float32 elsewhere; float32 over a bf16 checkpoint keeps the weights as stored
    (half the memory, same numbers). ``max_pixels`` defaults to the checkpoint's own preprocessor
    cap (602112 for the real model).
    Every user-facing failure raises EngineError with a hint.
    """
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels <= 0):
        raise EngineError(f"max_pixels must be a positive integer, got {max_pixels!r}",
                          "Pass e.g. max_pixels=602112 (the model default) or leave it unset.")
    ref = checkpoint.resolve(str(model))
    files = checkpoint.inspect(ref.folder)
    cfg = read_config(files.config)
    if task not in cfg.task_names:
        raise unknown_task(task, cfg.task_names)
    revision = ref.snapshot or checkpoint.fingerprint(files)

    from engine.adapters import attach_task_adapters
    from engine.compute import storage_dtype, stored_dtype
    from engine.network import load_network, quiet_transformers
    from engine.processor import InputProcessor

    dev = _pick_device(device)
    stored = stored_dtype({p: files.headers[p] for p in files.shards})
    torch_dtype = _pick_dtype(dtype, dev, stored)
    storage = storage_dtype(dev, torch_dtype, stored)
    with quiet_transformers():
        processor = InputProcessor.load(ref.folder, max_pixels=max_pixels, image_token_id=cfg.image_token_id)
        net = load_network(files, cfg, torch_dtype, storage=storage)
        adapters = attach_task_adapters(net, files.adapter_weights.parent, cfg.task_names, task,
                                        dtype=torch_dtype)
    adapters.to(dev)
    return Encoder(net=net, adapters=adapters, processor=processor, config=cfg, model=ref.model,
                   revision=revision, task=task, device=dev, dtype=torch_dtype)
