"""Load jina's all-tasks adapter file into stock peft: one named LoRA adapter per task.

Jina stores every task in one file with the task name where peft puts its adapter name
(``...lora_A.<task>.weight``). Creating one peft adapter per task gives module parameters with
exactly those names, so the file loads as a plain state dict. Peft itself only *warns* about
missing adapter keys and then leaves that LoRA at its init (a silent no-op); here every key must
load and every expected key must be present, or it is an EngineError.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import EngineError

_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<task>[^.]+)\.weight$")
_BROKEN_HINT = "The adapter file is damaged or from another model: download the checkpoint again."


def lora_config(path: Path):
    from peft import LoraConfig

    raw = json.loads(path.read_text(encoding="utf-8"))
    if str(raw.get("peft_type", "LORA")).upper() != "LORA":
        raise EngineError(f"{path} describes a {raw.get('peft_type')} adapter, not LoRA", _BROKEN_HINT)
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    kwargs = {k: v for k, v in raw.items() if k in known}
    # inference only: no dropout, no task head, no training-time initialisers
    kwargs.update(task_type=None, inference_mode=True, lora_dropout=0.0, init_lora_weights=True)
    for drop in ("peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision"):
        kwargs.pop(drop, None)
    if "r" not in kwargs or "target_modules" not in kwargs:
        raise EngineError(f"{path} lacks 'r' or 'target_modules'", _BROKEN_HINT)
    try:
        return LoraConfig(**kwargs)
    except Exception as exc:
        raise EngineError(f"{path} is not a usable LoRA config ({exc})", _BROKEN_HINT) from None


def check_adapter_keys(keys: list[str], task_names: tuple[str, ...], where: Path) -> None:
    """Cheap key-name checks, before any weights load."""
    bad = [k for k in keys if not _KEY.match(k)]
    if bad:
        raise EngineError(f"{where} has {len(bad)} keys that are not jina LoRA weights, e.g. {bad[:3]}", _BROKEN_HINT)
    tasks = {_KEY.match(k)["task"] for k in keys}
    unknown = sorted(tasks - set(task_names))
    if unknown:
        raise EngineError(f"{where} holds adapters for tasks {unknown} that config.json task_names "
                          f"{list(task_names)} does not list", _BROKEN_HINT)
    absent = [t for t in task_names if t not in tasks]
    if absent:
        raise EngineError(f"{where} has no weights for task(s) {absent}", _BROKEN_HINT)


@functools.lru_cache(maxsize=1)
def _fused_lora_linear() -> type:
    """peft's LoRA Linear with the adapter added by one in-place matmul.

    peft computes ``result + lora_B(lora_A(x)) * scaling``: two extra passes over a [tokens, out]
    tensor plus a temporary of that size, for every adapted matrix. Here the low-rank product is
    accumulated straight into the base output (``addmm_`` with beta 1, alpha = scaling), so the
    adapter costs about its arithmetic. Anything unusual (adapters disabled or merged, mixed-task
    batches, dropout, DoRA and other variants, grad) goes to peft's own forward.
    """
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    class FusedLoraLinear(PeftLoraLinear):
        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if (self.disable_adapters or self.merged or args or kwargs or self.lora_variant
                    or torch.is_grad_enabled()):
                return super().forward(x, *args, **kwargs)
            active = [n for n in self.active_adapters if n in self.lora_A]
            if any(not isinstance(self.lora_dropout[n], nn.Identity) for n in active):
                return super().forward(x)
            result = self.base_layer(x)
            if not result.is_contiguous():
                return super().forward(x)
            out2d = result.view(-1, result.shape[-1])
            for name in active:
                a, b = self.lora_A[name].weight, self.lora_B[name].weight
                low = x.reshape(-1, x.shape[-1]).to(a.dtype) @ a.t()  # [tokens, r]
                out2d.addmm_(low.to(out2d.dtype), b.t().to(out2d.dtype), alpha=self.scaling[name])
            return result

    return FusedLoraLinear


def attach_task_adapters(net: nn.Module, adapter_dir: Path, task_names: tuple[str, ...], active: str,
                         dtype: torch.dtype | None = None):
    """Wrap ``net`` in a PeftModel holding one adapter per task; ``active`` is selected.

    The LoRA weights are held in ``dtype``, the model's arithmetic (peft's own default keeps them
    float32 on a bf16 model, and the casts plus float32 matmuls then cost several times LoRA's 2%
    of the arithmetic). None: peft's default.
    """
    from peft import PeftModel
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path = adapter_dir / "adapter_model.safetensors"
    cfg = lora_config(adapter_dir / "adapter_config.json")
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise EngineError(f"{weights_path} could not be read ({exc})", _BROKEN_HINT) from None
    check_adapter_keys(list(state), task_names, weights_path)
    if not getattr(cfg, "exclude_modules", None) and not any(".visual." in k for k in state):
        # A plain target list (gate_proj, up_proj, ...) also names the vision tower's MLP; jina never
        # adapts it, so keep peft off it even when a config omits the exclusion.
        cfg.exclude_modules = r".*visual.*"

    try:
        model = PeftModel(net, cfg, adapter_name=task_names[0], autocast_adapter_dtype=dtype is None)
        for task in task_names[1:]:
            model.add_adapter(task, cfg)
    except Exception as exc:
        raise EngineError(f"LoRA adapters could not be attached ({type(exc).__name__}: {exc})", _BROKEN_HINT) from None
    expected = {name for name, _ in model.named_parameters() if ".lora_A." in name or ".lora_B." in name}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} expected LoRA weights are absent, e.g. {missing[:2]}")
        if unexpected:
            detail.append(f"{len(unexpected)} weights match no module, e.g. {unexpected[:2]}")
        raise EngineError(f"{weights_path} does not fit the model: " + "; ".join(detail), _BROKEN_HINT)
    if dtype is not None:
        for name, param in model.named_parameters():
            if (".lora_A." in name or ".lora_B." in name) and param.dtype != dtype:
                param.data = param.data.to(dtype)
    try:
        with torch.no_grad():
            model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise EngineError(f"{weights_path} does not fit the model ({str(exc).splitlines()[0]})", _BROKEN_HINT) from None
    fused = _fused_lora_linear()
    for module in model.modules():
        if type(module) is fused.__mro__[1]:  # peft's plain LoRA Linear
            module.__class__ = fused
    model.set_adapter(active)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
