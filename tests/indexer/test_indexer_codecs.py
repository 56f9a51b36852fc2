import numpy as np
import pytest

from indexer.codecs import (
    CODECS, CodecError, RETRAIN_GROWTH, ResidualCodec, TokenSampler, load_codec, make_codec, suggest_centroids,
)
from scoring.coded_maxsim import maxsim_codes, maxsim_codes_batch
from scoring.maxsim import EMPTY_PAGE_SCORE, maxsim_batch
from tests.indexer import indexer_fakes as fakes
from tests.indexer.indexer_fakes import unit

DIM = 16
SCALAR = [n for n in CODECS if not n.startswith("pq-")]  # pq-M codecs: tests/indexer/test_indexer_codecs_pq.py


TOPICS = unit(np.random.default_rng(99).standard_normal((12, DIM)))


def clustered(rng, n):
    return fakes.clustered(rng, n, TOPICS)


@pytest.fixture(scope="module")
def sample():
    return clustered(np.random.default_rng(7), 3000)


@pytest.fixture(scope="module")
def codecs(sample):
    out = {}
    for name in SCALAR:
        c = make_codec(name, DIM, **({"n_centroids": 32} if name.startswith("residual") else {}))
        c.train(sample)
        out[name] = c
    return out


@pytest.fixture(scope="module")
def raw(codecs, sample):
    """The residual codecs without renormalisation (same centroids): the asymmetric path's kind."""
    out = {}
    for b in (1, 2, 4):
        c = ResidualCodec(DIM, b, renormalise=False)
        c.train(sample, centroids=codecs[f"residual-{b}"].centroids)
        out[f"residual-{b}"] = c
    return out


def test_bytes_per_token_at_128():
    sizes = {name: make_codec(name, 128).bytes_per_token for name in CODECS}
    assert sizes == {"fp16": 256, "int8": 130, "residual-1": 18, "residual-2": 34, "residual-4": 66, "pq-16": 18,
                     "pq-32": 34}


def test_fp16_is_exact_and_laid_out_as_documented(codecs, rng):
    x = unit(rng.standard_normal((50, DIM)))
    codes = codecs["fp16"].encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (50, 2 * DIM)
    assert codes.tobytes() == x.astype("<f2").tobytes()
    np.testing.assert_array_equal(codecs["fp16"].decode(codes), x.astype(np.float16).astype(np.float32))


def test_int8_error_bound_and_layout(codecs, rng):
    x = unit(rng.standard_normal((200, DIM)))
    c = codecs["int8"]
    codes = c.encode(x)
    scale = codes[:, :2].copy().view("<f2")[:, 0].astype(np.float32)
    np.testing.assert_allclose(scale, np.abs(x).max(axis=1) / 127, rtol=1e-3)
    q = codes[:, 2:].copy().view(np.int8).astype(np.float32)
    out = c.decode(codes)
    np.testing.assert_array_equal(out, q * scale[:, None])
    assert (np.abs(out - x) <= scale[:, None] / 2 + 1e-6).all()


def reference_residual(codec: ResidualCodec, codes):
    """Independent unpacking: np.unpackbits, then bucket value -> weight per dimension."""
    cid = codes[:, 0].astype(np.int64) | (codes[:, 1].astype(np.int64) << 8)  # little-endian uint16
    bits = np.unpackbits(codes[:, 2:], axis=1).reshape(len(codes), DIM, codec.bits)
    bucket = (bits * (1 << np.arange(codec.bits)[::-1])).sum(axis=2)
    out = codec.centroids[cid] + codec.weights[np.arange(DIM)[None, :], bucket]
    if codec.renormalise:
        out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, cid


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("renormalised", [True, False])
def test_residual_layout_matches_an_independent_unpacker(codecs, raw, rng, bits, renormalised):
    c = (codecs if renormalised else raw)[f"residual-{bits}"]
    assert c.renormalise == renormalised
    x = clustered(rng, 300)
    codes = c.encode(x)
    assert codes.shape == (300, 2 + DIM * bits // 8)
    ref, cid = reference_residual(c, codes)
    np.testing.assert_array_equal(cid, c.assign(x))  # the id really is the nearest centroid
    np.testing.assert_allclose(c.decode(codes), ref, rtol=0, atol=1e-6)


def test_residual_error_shrinks_with_bits_and_is_bounded(codecs, raw, rng):
    x = clustered(rng, 2000)
    errs = [codecs[f"residual-{b}"].relative_error(x) for b in (1, 2, 4)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.02 and errs[0] < 0.3
    assert codecs["int8"].relative_error(x) < 1e-3
    # each decoded residual lands in the token's own bucket's value: below the bucket's width
    c = raw["residual-4"]
    r = x - c.centroids[c.assign(x)]
    err = np.abs(c.decode(c.encode(x)) - x)
    widest_inner = np.diff(c.cutoffs, axis=1).max(axis=1)
    inside = (r > c.cutoffs[:, 0]) & (r <= c.cutoffs[:, -1])
    assert (err[inside] <= np.broadcast_to(widest_inner, r.shape)[inside] + 1e-6).all()


def test_pages_encode_independently(codecs, rng):
    pages = [clustered(rng, n) for n in (5, 1, 40)]
    for c in codecs.values():
        whole = c.encode(np.concatenate(pages))
        np.testing.assert_array_equal(whole, np.concatenate([c.encode(p) for p in pages]))
        assert c.encode(np.zeros((0, DIM), np.float32)).shape == (0, c.bytes_per_token)


def test_state_round_trip_and_determinism(codecs, sample):
    x = sample[:100]
    for name, c in codecs.items():
        again = load_codec(c.to_arrays())
        assert again.name == name and again.bytes_per_token == c.bytes_per_token
        np.testing.assert_array_equal(again.decode(c.encode(x)), c.decode(c.encode(x)))
        np.testing.assert_array_equal(again.encode(x), c.encode(x))
    twin = make_codec("residual-2", DIM, n_centroids=32)
    twin.train(sample)
    for key, value in codecs["residual-2"].to_arrays().items():
        np.testing.assert_array_equal(twin.to_arrays()[key], value)


def test_train_with_given_centroids_keeps_them(codecs, sample):
    old = codecs["residual-1"]
    c = make_codec("residual-4", DIM)
    c.train(sample[:500], centroids=old.centroids)
    np.testing.assert_array_equal(c.centroids, old.centroids)
    assert c.training[0] == 500


def damaged(arrays, key, value):
    out = dict(arrays)
    if value is None:
        del out[key]
    else:
        out[key] = value
    return out


def test_hostile_state_is_refused_with_a_clear_error(codecs):
    good = codecs["residual-2"].to_arrays()
    header = good["header"]
    cases = {
        "no 'centroids'": damaged(good, "centroids", None),
        "dtype float64": damaged(good, "centroids", good["centroids"].astype(np.float64)),
        "shape": damaged(good, "weights", good["weights"][:, :3].copy()),
        "NaN": damaged(good, "cutoffs", np.where(np.arange(good["cutoffs"].size).reshape(good["cutoffs"].shape) == 3,
                                                 np.nan, good["cutoffs"]).astype(np.float32)),
        "not unit": damaged(good, "centroids", good["centroids"] * 2),
        "do not ascend": damaged(good, "weights", good["weights"][:, ::-1].copy()),
        "newer than this pagelens": damaged(good, "header", np.array([2, *header[1:]], np.int64)),
        "unknown codec kind": damaged(good, "header", np.array([1, 9, *header[2:]], np.int64)),
        "out of range": damaged(good, "header", np.array([*header[:3], 3, *header[4:]], np.int64)),
        "unexpected arrays": damaged(good, "extra", np.zeros(1)),
        "not an array": damaged(good, "training", [1.0, 2.0, 3.0]),
        "dim": damaged(good, "header", np.array([1, 3, 12, *header[3:]], np.int64)),
    }
    for needle, arrays in cases.items():
        with pytest.raises(CodecError, match=needle):
            load_codec(arrays)
    with pytest.raises(CodecError, match="mapping"):
        load_codec([good["header"]])
    fp16 = codecs["fp16"].to_arrays()
    with pytest.raises(CodecError, match="unexpected arrays"):
        load_codec({**fp16, "centroids": good["centroids"]})
    with pytest.raises(CodecError, match="inconsistent"):
        load_codec(damaged(fp16, "header", np.array([1, 1, DIM, 8, 0, 0], np.int64)))


def test_hostile_codes_are_refused(codecs, raw, rng):
    c = codecs["residual-1"]
    codes = c.encode(clustered(rng, 4))
    bad = codes.copy()
    bad[1, :2] = np.frombuffer(np.array([c.n_centroids], "<u2").tobytes(), np.uint8)
    with pytest.raises(CodecError, match="centroid 32"):
        c.decode(bad)
    with pytest.raises(CodecError, match="centroid"):
        maxsim_codes(np.ones((1, DIM), np.float32), raw["residual-1"], [bad], path="asymmetric")
    with pytest.raises(CodecError, match="uint8"):
        c.decode(codes[:, :-1])
    with pytest.raises(CodecError, match="uint8"):
        c.decode(codes.astype(np.int16))
    i8 = codecs["int8"].encode(clustered(rng, 3))
    i8[0, :2] = np.frombuffer(np.array([np.nan], "<f2").tobytes(), np.uint8)
    with pytest.raises(CodecError, match="scale"):
        codecs["int8"].decode(i8)


def test_bad_inputs(codecs):
    with pytest.raises(CodecError, match="choose one of"):
        make_codec("residual-3")
    with pytest.raises(CodecError, match="not trained"):
        make_codec("residual-1", DIM).encode(np.ones((1, DIM), np.float32))
    with pytest.raises(CodecError, match="NaN"):
        codecs["int8"].encode(np.full((1, DIM), np.nan, np.float32))
    with pytest.raises(CodecError, match=r"\[T, 16\]"):
        codecs["fp16"].encode(np.ones((2, 8), np.float32))
    with pytest.raises(CodecError, match="empty"):
        make_codec("residual-1", DIM).train(np.zeros((0, DIM), np.float32))
    with pytest.raises(CodecError, match="multiple of 8"):
        make_codec("fp16", 12)


def test_sampler_is_bounded_uniform_and_deterministic():
    rows = np.repeat(np.arange(20_000, dtype=np.float32)[:, None], 8, axis=1)
    picks = []
    for seed in (0, 0, 1):
        s = TokenSampler(1000, 8, seed=seed)
        for a in range(0, len(rows), 700):
            s.add(rows[a : a + 700])
        got = s.sample()
        assert got.shape == (1000, 8) and s.seen == 20_000
        assert len(np.unique(got[:, 0])) == 1000  # rows, not duplicates
        picks.append(got[:, 0])
    np.testing.assert_array_equal(picks[0], picks[1])
    assert not np.array_equal(picks[0], picks[2])
    # uniform over the stream: every fifth of it holds about a fifth of the sample
    share = np.bincount((picks[0] // 4000).astype(int), minlength=5) / 1000
    assert np.abs(share - 0.2).max() < 0.05
    small = TokenSampler(100, 8)
    small.add(rows[:30])
    np.testing.assert_array_equal(small.sample(), rows[:30])


def test_growth_policy(codecs, sample):
    c = codecs["residual-1"]
    trained_on = c.training[1]
    assert not c.should_retrain(int(trained_on * 2))
    assert c.should_retrain(int(trained_on * RETRAIN_GROWTH))
    assert c.should_retrain(int(trained_on), recent_error=c.training[2] * 3)
    assert not c.should_retrain(int(trained_on), recent_error=c.relative_error(sample[:500]))
    assert not codecs["int8"].should_retrain(10**12)
    assert suggest_centroids(10) == 4096 and suggest_centroids(10**9) == 32768


# -- scoring on codes ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCALAR)
@pytest.mark.parametrize("path", ["decode", "asymmetric"])
def test_scores_on_codes_equal_scores_on_decoded_vectors(codecs, raw, rng, name, path):
    c = raw[name] if path == "asymmetric" and name in raw else codecs[name]
    if path == "asymmetric" and name == "fp16":
        with pytest.raises(ValueError, match="no asymmetric path"):
            maxsim_codes(np.ones((1, DIM), np.float32), c, [], path=path)
        return
    pages = [clustered(rng, n) for n in (7, 0, 1, 60, 33, 0, 12)]
    coded = [c.encode(p) for p in pages]
    queries = [clustered(rng, n) for n in (3, 5)]
    ref = maxsim_batch(queries, [c.decode(p) for p in coded], backend="numpy")
    for chunk_tokens, workers in ((4096, 1), (20, 2)):
        got = maxsim_codes_batch(queries, c, coded, path=path, chunk_tokens=chunk_tokens, workers=workers)
        assert got.dtype == np.float32 and got.shape == (2, len(pages))
        assert (got[:, [1, 5]] == EMPTY_PAGE_SCORE).all()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    one = maxsim_codes(queries[1], c, coded, path=path)
    np.testing.assert_allclose(one, ref[1], rtol=1e-5, atol=1e-5)


def test_scores_track_the_original_vectors(codecs, rng):
    pages = [clustered(rng, 30) for _ in range(20)]
    q = clustered(rng, 4)
    exact = maxsim_batch([q], pages)[0]
    for name, tol in (("fp16", 1e-2), ("int8", 0.05), ("residual-4", 0.15)):
        c = codecs[name]
        np.testing.assert_allclose(maxsim_codes(q, c, [c.encode(p) for p in pages]), exact, atol=tol)


def test_renormalised_residual(sample, raw, rng):
    c = ResidualCodec(DIM, 2, n_centroids=16)
    c.train(sample)
    assert c.renormalise and load_codec(c.to_arrays()).renormalise  # the default, kept in the state
    assert not load_codec(raw["residual-2"].to_arrays()).renormalise
    out = c.decode(c.encode(clustered(rng, 50)))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="renormalise=False"):
        maxsim_codes(np.ones((1, DIM), np.float32), c, [c.encode(sample[:3])], path="asymmetric")
    assert maxsim_codes(np.ones((1, DIM), np.float32), c, [c.encode(sample[:3])]).shape == (1,)


def test_scoring_rejects_bad_queries_and_codes(codecs):
    c = codecs["int8"]
    with pytest.raises(ValueError, match="query"):
        maxsim_codes(np.ones((2, 8), np.float32), c, [])
    with pytest.raises(ValueError, match="NaN"):
        maxsim_codes(np.full((2, DIM), np.nan, np.float32), c, [])
    with pytest.raises(CodecError, match="another codec"):
        maxsim_codes(np.ones((2, DIM), np.float32), c, [codecs["fp16"].encode(np.ones((1, DIM), np.float32))])
    with pytest.raises(ValueError, match="unknown path"):
        maxsim_codes(np.ones((2, DIM), np.float32), c, [], path="fast")
