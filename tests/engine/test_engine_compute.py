"""CPU arithmetic: the default dtype, float32 over weights kept as stored (bf16), bf16 fidelity, LoRA dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from engine import compute
from engine.loader import load_encoder
from engine.testing import write_tiny_checkpoint
from tests.engine.conftest import page

TEXTS = ["what is the revenue in the second quarter?", "hi",
         "A much longer passage about invoices, receipts, scanned contracts and slides. " * 3]
SIZES = [(200, 300), (595, 842), (64, 64)]


@pytest.fixture(scope="session")
def bf16_dir(tmp_path_factory):
    """The tiny checkpoint stored in bf16, as the published weights are."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bf16") / "jina-v4-tiny-bf16", weights_dtype="bfloat16")


@pytest.fixture(scope="session")
def stored(bf16_dir):
    """float32 arithmetic over the bf16 weights as stored."""
    return load_encoder(str(bf16_dir), dtype="float32")


def _outputs(enc):
    return enc.encode_queries(TEXTS) + enc.encode_passages(TEXTS[:2]) + enc.encode_images(
        [page(w, h, i) for i, (w, h) in enumerate(SIZES)])


def _lora_dtypes(enc) -> set[torch.dtype]:
    return {p.dtype for n, p in enc._adapters.named_parameters() if ".lora_A." in n or ".lora_B." in n}


@pytest.mark.parametrize("text, native", [
    ("flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n", True),
    ("flags\t\t: fpu sse avx2 amx_bf16 amx_tile amx_int8\n", True),
    ("flags\t\t: fpu sse avx2 fma f16c vaes\n", False),  # AVX2 only (e.g. AMD Zen 3): bf16 is emulated
    ("Features\t: fp asimd evtstrm aes sve bf16 i8mm\n", True),  # Arm with the BF16 extension
    ("Features\t: fp asimd evtstrm aes\n", False),
    ("", False),
])
def test_native_bf16_is_read_from_cpu_flags(text, native):
    assert compute._cpuinfo_says_bf16(text) is native


def test_default_dtype_policy(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(compute, "cpu_has_native_bf16", lambda: True)
    assert compute.default_dtype(cpu, torch.bfloat16) == torch.bfloat16
    assert compute.default_dtype(cpu, torch.float32) == torch.float32  # a float32 checkpoint stays float32
    monkeypatch.setattr(compute, "cpu_has_native_bf16", lambda: False)
    assert compute.default_dtype(cpu, torch.bfloat16) == torch.float32
    assert compute.default_dtype(cuda, torch.float32) == torch.bfloat16
    # float32 arithmetic keeps bf16/fp16 weights as stored on a CPU only
    assert compute.storage_dtype(cpu, torch.float32, torch.bfloat16) == torch.bfloat16
    assert compute.storage_dtype(cpu, torch.float32, torch.float16) == torch.float16
    assert compute.storage_dtype(cpu, torch.float32, torch.float32) == torch.float32
    assert compute.storage_dtype(cpu, torch.bfloat16, torch.bfloat16) == torch.bfloat16
    assert compute.storage_dtype(cuda, torch.float32, torch.bfloat16) == torch.float32


def test_stored_dtype_reads_the_weight_headers(bf16_dir, tiny_dir):
    from engine import checkpoint

    for folder, want in ((bf16_dir, torch.bfloat16), (tiny_dir, torch.float32)):
        files = checkpoint.inspect(folder)
        assert compute.stored_dtype({p: files.headers[p] for p in files.shards}) == want


@pytest.mark.parametrize("native, dtype, weights, lora", [
    (True, "bfloat16", torch.bfloat16, torch.bfloat16),
    (False, "float32", torch.bfloat16, torch.float32),
])
def test_cpu_default_follows_native_bf16(bf16_dir, monkeypatch, native, dtype, weights, lora):
    monkeypatch.setattr(compute, "cpu_has_native_bf16", lambda: native)
    enc = load_encoder(str(bf16_dir))
    assert enc.dtype == dtype and enc.identity["dtype"] == dtype
    assert compute.weights_dtype(enc._net) == weights  # never a float32 copy of a bf16 checkpoint
    assert _lora_dtypes(enc) == {lora}  # LoRA in the model's arithmetic, not peft's float32
    out = enc.encode_queries(TEXTS[:1])[0]
    assert out.single.dtype == np.float32 and np.isfinite(out.multi).all()


def test_float32_checkpoint_default_is_unchanged(encoder, monkeypatch):
    """The float32 tiny checkpoint loads as before whatever the CPU: float32, nothing kept as stored."""
    monkeypatch.setattr(compute, "cpu_has_native_bf16", lambda: True)
    assert encoder.dtype == "float32" and compute.weights_dtype(encoder._net) == torch.float32
    assert not any(isinstance(m, compute.StoredWeightLinear) for m in encoder._net.modules())


def test_stored_weights_stay_bf16_and_linears_are_converted_blockwise(stored):
    linears = [m for n, m in stored._net.model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".lora_" not in n]  # peft's own LoRA layers are float32
    assert linears and all(isinstance(m, compute.StoredWeightLinear) for m in linears)
    assert all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert all(m.bias is None or m.bias.dtype == torch.float32 for m in linears)
    embed = stored._net.model.language_model.embed_tokens
    assert isinstance(embed, compute.StoredWeightEmbedding) and embed.weight.dtype == torch.bfloat16
    norms = [p for n, p in stored._net.named_parameters() if "norm" in n]
    assert norms and all(p.dtype == torch.float32 for p in norms)
    assert _lora_dtypes(stored) == {torch.float32}


@pytest.mark.parametrize("rows", [None, 7])
def test_float32_over_stored_weights_equals_the_float32_model(bf16_dir, stored, monkeypatch, rows):
    """Upcasting bf16 is exact: the same numbers as a float32 copy of the weights, in one or many blocks."""
    monkeypatch.setattr(compute, "storage_dtype", lambda device, c, s: c)  # the old path: a float32 copy
    full = load_encoder(str(bf16_dir), dtype="float32")
    assert compute.weights_dtype(full._net) == torch.float32
    if rows is not None:
        monkeypatch.setattr(compute, "block_rows", lambda n_in: rows)
    for a, b in zip(_outputs(stored), _outputs(full)):
        np.testing.assert_allclose(a.single, b.single, atol=2e-6)
        np.testing.assert_allclose(a.multi, b.multi, atol=2e-6)


@pytest.mark.parametrize("shape, bias", [((5, 33), True), ((2, 3, 33), False), ((0, 33), True), ((1, 33), True)])
def test_stored_weight_linear_matches_linear(monkeypatch, shape, bias):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(19, 33, generator=g).to(torch.bfloat16)
    b = torch.randn(19, generator=g) if bias else None
    x = torch.randn(*shape, generator=g)
    want = F.linear(x, w.float(), b)
    for rows in (19, 4, 1):
        monkeypatch.setattr(compute, "block_rows", lambda n_in: rows)
        got = compute.stored_weight_linear(x, w, b)
        assert got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_stored_weights_keep_batch_invariance(stored):
    texts = TEXTS + ["def encode(texts): return texts"]
    alone = [stored.encode_queries([t])[0] for t in texts]
    for a, b in zip(alone, stored.encode_queries(texts, batch_size=len(texts))):
        np.testing.assert_allclose(a.single, b.single, atol=1e-5)
        np.testing.assert_allclose(a.multi, b.multi, atol=1e-5)
    images = [page(w, h, i) for i, (w, h) in enumerate(SIZES)]
    alone = [stored.encode_images([im])[0] for im in images]
    for a, b in zip(alone, stored.encode_images(images, batch_size=len(images))):
        np.testing.assert_allclose(a.single, b.single, atol=1e-5)
        np.testing.assert_allclose(a.multi, b.multi, atol=1e-5)


def _token_cosines(a, b) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_bf16_is_as_close_to_float32_as_jinas_own(bf16_dir, stored):
    """Jina's bf16 against its float32 (MZ, vLLM): text cosine >= 0.999 mean; here >= 0.998 per token."""
    bf16 = load_encoder(str(bf16_dir), dtype="bfloat16")
    assert _lora_dtypes(bf16) == {torch.bfloat16}
    worst_multi, worst_single = 1.0, 1.0
    for task in ("retrieval", "code"):
        bf16.set_task(task)
        stored.set_task(task)
        for a, b in zip(_outputs(bf16), _outputs(stored)):
            assert a.multi.shape == b.multi.shape
            worst_multi = min(worst_multi, float(_token_cosines(a.multi, b.multi).min()))
            worst_single = min(worst_single, float(_token_cosines(a.single[None], b.single[None]).min()))
    stored.set_task("retrieval")
    assert worst_multi >= 0.998, worst_multi
    assert worst_single >= 0.998, worst_single


def test_task_switching_is_exact_after_many_switches(stored):
    first = {t: _outputs_small(stored, t) for t in stored.tasks}
    for i in range(30):
        stored.set_task(stored.tasks[i % 3])
    for task in reversed(stored.tasks):
        for a, b in zip(first[task], _outputs_small(stored, task)):
            np.testing.assert_array_equal(a.multi, b.multi)
            np.testing.assert_array_equal(a.single, b.single)
    stored.set_task("retrieval")


def _outputs_small(enc, task):
    enc.set_task(task)
    return enc.encode_queries(TEXTS[:2]) + enc.encode_images([page(200, 300, 1)])
