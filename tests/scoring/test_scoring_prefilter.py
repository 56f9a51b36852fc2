import numpy as np
import pytest

from scoring.prefilter import SinglePrefilter, truncate


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("codec", ["flat", "fp16"])
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_add_remove_search(rng, kind, codec):
    v = unit(rng, 300, 32)
    ids = np.arange(10, 310, dtype=np.int64)
    pf = SinglePrefilter(32, kind=kind, nprobe=1000, codec=codec)
    pf.add(ids[:200], v[:200])
    pf.add(ids[200:], v[200:])
    assert len(pf) == 300 and pf.current_kind == kind
    got, scores = pf.search(v[5], 1)
    assert got[0, 0] == ids[5] and scores[0, 0] == pytest.approx(1.0, abs=1e-5 if codec == "flat" else 2e-3)
    pf.remove(ids[5:6])
    got, _ = pf.search(v[5], 20)
    assert ids[5] not in got and len(pf) == 299
    np.testing.assert_array_equal(pf.ids(), np.delete(ids, 5))
    # removing many forces the HNSW rebuild path; all survivors stay findable
    pf.remove(ids[100:200])
    assert len(pf) == 199 and not np.isin(pf.search(v[150], 50)[0], ids[100:200]).any()
    assert pf.search(v[250], 1)[0][0, 0] == ids[250]


def test_matryoshka_width_truncates_and_renormalises(rng):
    v = unit(rng, 50, 64)
    pf = SinglePrefilter(16)
    pf.add(np.arange(50), v)
    q = v[7]
    got, scores = pf.search(q, 3)
    t = truncate(v, 16)
    expected = np.argsort(-(t @ truncate(q, 16)))[:3]
    np.testing.assert_array_equal(got[0], expected)
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_auto_switches_to_hnsw_past_threshold(monkeypatch, rng):
    import scoring.prefilter as mod

    monkeypatch.setattr(mod, "AUTO_FLAT_MAX", 100)
    pf = SinglePrefilter(8)
    v = unit(rng, 150, 8)
    pf.add(np.arange(90), v[:90])
    assert pf.current_kind == "flat"
    pf.add(np.arange(90, 150), v[90:])
    assert pf.current_kind == "hnsw" and len(pf) == 150
    assert pf.search(v[3], 1)[0][0, 0] == 3


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_serialise_round_trip(rng, kind):
    v = unit(rng, 80, 16)
    pf = SinglePrefilter(16, kind=kind)
    pf.add(np.arange(80), v)
    pf.remove(np.array([3]))
    back = SinglePrefilter.from_bytes(pf.to_bytes())
    assert back.current_kind == kind and len(back) == 79
    a, b = pf.search(v[:5], 10), back.search(v[:5], 10)
    np.testing.assert_array_equal(a[0], b[0])
    assert 3 not in b[0]


def test_empty_and_bad_kind():
    pf = SinglePrefilter(8)
    ids, scores = pf.search(np.ones(8), 4)
    assert (ids == -1).all() and np.isneginf(scores).all()
    with pytest.raises(ValueError, match="choose one of"):
        SinglePrefilter(8, kind="lsh")


@pytest.mark.parametrize("codec,dim,code_size", [("pq32", 128, 32), ("pq32", 16, 16)])
def test_product_quantised_lists_search_remove_grow_and_round_trip(rng, codec, dim, code_size):
    """IVF lists of product-quantised residuals ("pqN": N bytes a vector, or as many sub-vectors as
    divide a narrower width): vectors find themselves, removal and a 4x regrowth (lists decoded and
    re-encoded) keep exactly the live ids, and a saved index searches alike."""
    import faiss

    centres = unit(rng, 64, dim)
    v = centres[rng.integers(0, 64, 16_000)] + 0.3 * rng.standard_normal((16_000, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = np.arange(16_000, dtype=np.int64) * 7
    pf = SinglePrefilter(dim, kind="ivf", nprobe=64, lists_per_sqrt=2.0, codec=codec)
    pf.add(ids[:3000], v[:3000])
    ivf = faiss.downcast_index(pf._index)
    assert isinstance(ivf, faiss.IndexIVFPQ) and ivf.code_size == code_size
    found = np.mean([pf.search(v[i], 5)[0][0].tolist().count(ids[i]) for i in range(0, 3000, 30)])
    assert found >= 0.9
    pf.remove(ids[:100])
    pf.add(ids[3000:], v[3000:])  # past 4x what the lists were trained on: rebuilt over decoded vectors
    assert pf._trained_at == 15_900
    np.testing.assert_array_equal(pf.ids(), ids[100:])
    assert not np.isin(pf.search(v[:100], 50)[0], ids[:100]).any()
    found = np.mean([pf.search(v[i], 5)[0][0].tolist().count(ids[i]) for i in range(3000, 16_000, 130)])
    assert found >= 0.9
    back = SinglePrefilter.from_bytes(pf.to_bytes())
    assert back.codec == codec and len(back) == len(pf)
    np.testing.assert_array_equal(back.search(v[:8], 10)[0], pf.search(v[:8], 10)[0])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_fp16_codec_holds_float16_values_at_half_the_bytes(rng, kind):
    """Single vectors a store keeps in float16: the prefilter holds them at float16 precision (its
    renormalised copy rounds again, ~1e-3) in half the bytes of float32, and ranks alike."""
    v = unit(rng, 2000, 128).astype(np.float16).astype(np.float32)
    full, half = SinglePrefilter(128, kind=kind), SinglePrefilter(128, kind=kind, codec="fp16")
    for pf in (full, half):
        pf.add(np.arange(2000), v)
    a, b = full.search(v[:20], 10), half.search(v[:20], 10)
    np.testing.assert_array_equal(a[0][:, 0], b[0][:, 0])
    assert np.mean([len(set(x) & set(y)) for x, y in zip(a[0], b[0])]) >= 9
    np.testing.assert_allclose(a[1], b[1], atol=2e-3)
    saved = len(full.to_bytes()) - len(half.to_bytes())
    assert saved >= 0.95 * 2000 * 128 * 2  # 2 B a dimension
    back = SinglePrefilter.from_bytes(half.to_bytes())
    assert back.codec == "fp16"
    np.testing.assert_array_equal(back.search(v[:20], 10)[0], b[0])
