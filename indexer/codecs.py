"""Multi-vector codecs: how each token vector is stored, chosen once when an index is created.

Every codec turns float32 tokens [T, d] into **one fixed-width little-endian record per token**:
``codes`` is uint8 [T, bytes_per_token], C-contiguous, so pages concatenate, a page's codes are a
row range, and any row subset decodes on its own (no per-page side data; the page's token count
lives with the page, as today). Records, field by field:

=============  ===================================================  ====================  =========
name           record (offsets in bytes)                            decode                d=128
=============  ===================================================  ====================  =========
``fp16``       [0, 2d) the token as ``<f2``                          exact (lossless)      256 B
``int8``       [0, 2) scale ``<f2`` (max abs / 127); [2, 2+d) int8  ``q * scale``         130 B
``residual-b`` [0, 2) centroid id ``<u2``; [2, 2+d*b/8) residual     ``c + w[bucket]``,    18 / 34 /
(b=1, 2, 4)    buckets, b bits per dimension, packed high bits       renormalised          66 B
               first: byte j holds dims j*k .. j*k+k-1, k = 8/b
``pq-M``       [0, 2) centroid id ``<u2``; [2, 2+M) one codeword    c + its M codewords   18 / 34 B
(M=16, 32)     index (``u1``) per sub-quantiser m, which codes      end to end,
               dims m*d/M .. (m+1)*d/M-1 of the residual; M | d     renormalised
=============  ===================================================  ====================  =========

The residual codec is PLAID's (Santhanam et al., 2022): spherical k-means centroids trained on a
sample of the collection's tokens; each token keeps its nearest centroid and, per dimension, which
of 2^b buckets its residual (token - centroid) falls in. Unlike PLAID, whose cut-offs and bucket
weights are shared by all dimensions, they are learned **per dimension** (cut-offs: the sample
residual's quantiles at i/2^b; weights: the mean residual inside each bucket), which costs
d * (2^(b+1) - 1) floats and matters for PCA-like embeddings whose dimensions differ in spread.
Decode renormalises ``c + w[bucket]`` to a unit vector, as PLAID does (the bucket means shrink
every residual a little); ``renormalise=False`` keeps it as it is. On the real-text set
(benchmarks/compact.py, pool factor 1) renormalising raised recall@10 by 0.004-0.013 and MRR@10
by 0.6-1.4% of fp16's for 1, 2 and 4 bits, so it is the default; on the synthetic set it lowered
recall@10 by about 0.03 (MRR unchanged at 1.0): re-measure on jina-v4 page embeddings. Only a codec with
``renormalise=False`` has the asymmetric scoring path (scoring/coded_maxsim.py): it would
otherwise need each token's norm, and it measured 2-4x slower than decoding anyway.

The pq codec (``ResidualPQCodec``) keeps the same coarse centroid (the same k-means, shared code:
``train_centroids``, ``CentroidCodec``) and codes the residual with a product quantiser instead of
scalar buckets: the residual is cut into M sub-vectors of d/M dimensions and each is replaced by the
nearest of 256 codewords learned for its slot (FAISS ``ProductQuantizer(d, M, 8)``: its k-means,
code computation and decoding; the state keeps the codewords as a plain array). On the real-text set
(benchmarks/compact.py, 3,000 pages, 300 queries, exhaustive MaxSim over decoded codes, one
4096-centroid codebook for all) recall@10 against fp16 was: residual-1 0.833, **pq-16 0.869** (both
18 B at d=128); residual-2 0.901, **pq-32 0.935** (both 34 B); MRR@10 0.913 / 0.920 and 0.930 / 0.930
(fp16 0.930). Renormalising the decoded token helps pq too, so it is the default: without it pq-16
fell to 0.849 and pq-32 to 0.921 (MRR unchanged). pq has no asymmetric scoring path (decoding is
the fast one, as for residual-b). Decode speed was within the noise of residual-b's on the loaded
2-core machine (a 250-page shortlist: 33-140 ms for every centroid codec).

State (``to_arrays`` / ``load_codec``): ``header`` int64 [6] (format version, kind, dim, bits,
centroids, renormalise), ``training`` float64 [3] (sample tokens, collection tokens when trained,
relative squared reconstruction error on the sample) and, for ``residual-b``, ``centroids`` float32
[C, d] (unit rows), ``cutoffs`` float32 [d, 2^b - 1], ``weights`` float32 [d, 2^b]. A ``pq-M``
state has a seven-field header (kind 4, bits 8 per code, then M as the seventh field; every other
kind keeps six, so states written before pq load and write byte for byte as before), ``centroids``
and ``pq_centroids`` float32 [M, 256, d/M]. Everything is checked on load (names, dtypes, shapes,
ranges, finiteness, order, M dividing d): state read from an index folder is hostile until then.

**Training and growth.** ``TokenSampler`` keeps a uniform reservoir of at most ``max_tokens``
tokens from pages streamed past it, so training never needs the collection in RAM. New pages are
always encoded with the codec they find: every token has a nearest centroid and out-of-range
residuals fall in the outer buckets, so a codec never stops working as the collection grows. It
only gets coarser when the collection drifts from its sample: ``should_retrain`` says yes once the
collection has grown ``RETRAIN_GROWTH``-fold since training (more tokens deserve more centroids),
or when freshly encoded tokens reconstruct ``RETRAIN_ERROR``-times worse than the training sample
did. Retraining means re-encoding every page (from fp16 if kept, else from decoded codes, which
adds one quantisation step). ``ResidualCodec.train(sample, centroids=old.centroids)`` is the cheap
middle way: keep the centroids, refit only the buckets. All of this holds for ``pq-M`` alike
(``ResidualPQCodec.train(sample, centroids=...)`` refits only the codewords): every residual has a
nearest codeword, however far it falls from the sample's.

Scoring on codes lives in ``scoring/coded_maxsim.py``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

FORMAT_VERSION = 1
CODECS = ("fp16", "int8", "residual-1", "residual-2", "residual-4", "pq-16", "pq-32")
MIN_CENTROIDS, MAX_CENTROIDS = 1 << 12, 1 << 16
RETRAIN_GROWTH = 4.0
RETRAIN_ERROR = 1.5
_KINDS = {"fp16": 1, "int8": 2, "residual": 3, "pq": 4}
_PQ_CODEWORDS = 256  # 8-bit sub-quantiser codes
_MAX_DIM = 65536
_NORM_TOL = 1e-3


class CodecError(ValueError):
    """Bad codec name, state or codes; the message says what is wrong and what to do."""


def suggest_centroids(n_tokens: int) -> int:
    """A power of two near sqrt(tokens), clipped to [2^12, 2^16]. PLAID uses 16*sqrt; on a CPU
    each token costs centroids*d*2 FLOPs to assign (65,536 centroids: 17 MFLOP a token, 0.4 s a
    768-token page on one core here), so the codebook stays as small as fidelity allows."""
    c = 2 ** int(round(np.log2(max(np.sqrt(max(int(n_tokens), 1)), 1.0))))
    return int(min(max(c, MIN_CENTROIDS), MAX_CENTROIDS))


def _as_tokens(tokens, dim: int) -> np.ndarray:
    x = np.asarray(tokens)
    if x.ndim != 2 or x.shape[1] != dim:
        raise CodecError(f"tokens must be [T, {dim}], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise CodecError(f"tokens must be floating point, got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise CodecError("tokens contain NaN or infinity; check the encoder output")
    return x


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class Codec:
    """One codec; see the module docstring for the record layouts."""

    name: str
    bits: int = 0
    renormalise: bool = False

    def __init__(self, dim: int):
        if not isinstance(dim, (int, np.integer)) or not 8 <= int(dim) <= _MAX_DIM or int(dim) % 8:
            raise CodecError(f"dim must be a multiple of 8 in [8, {_MAX_DIM}], got {dim!r}")
        self.dim = int(dim)
        self.training = np.zeros(3, np.float64)  # sample tokens, collection tokens, relative error

    # -- the interface --------------------------------------------------------------------------
    @property
    def bytes_per_token(self) -> int:
        raise NotImplementedError

    @property
    def trained(self) -> bool:
        return True

    def train(self, sample: np.ndarray, *, collection_tokens: int | None = None) -> dict[str, np.ndarray]:
        """Fit the codec's state on a sample [N, d]; returns ``to_arrays()``."""
        x = _as_tokens(sample, self.dim)
        self._fit(x)
        self.training = np.array([len(x), collection_tokens or len(x), self.relative_error(x) if len(x) else 0.0])
        return self.to_arrays()

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """float [T, d] -> uint8 [T, bytes_per_token]."""
        self._need_trained()
        x = _as_tokens(tokens, self.dim)
        out = np.empty((len(x), self.bytes_per_token), np.uint8)
        if len(x):
            self._encode(x, out)
        return out

    def decode(self, codes: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 [T, bytes_per_token] -> float32 [T, d], into ``out`` when given (a reused buffer)."""
        self._need_trained()
        c = self.check_codes(codes)
        if out is None:
            out = np.empty((len(c), self.dim), np.float32)
        elif out.dtype != np.float32 or out.shape != (len(c), self.dim) or not out.flags.c_contiguous:
            raise CodecError(f"out must be C-contiguous float32 [{len(c)}, {self.dim}], got {out.dtype} {out.shape}")
        if len(c):
            self._decode(c, out)
        return out

    def relative_error(self, tokens: np.ndarray) -> float:
        """sum ||x - decode(encode(x))||^2 / sum ||x||^2 over the rows: the drift signal."""
        x = _as_tokens(tokens, self.dim)
        if not len(x):
            return 0.0
        err = x - self.decode(self.encode(x))
        return float(np.einsum("ij,ij->", err, err) / max(np.einsum("ij,ij->", x, x), 1e-30))

    def should_retrain(self, collection_tokens: int, recent_error: float | None = None) -> bool:
        """The growth policy of the module docstring. Codecs without state never need it."""
        if not self.needs_training:
            return False
        grown = collection_tokens >= RETRAIN_GROWTH * max(self.training[1], 1.0)
        drifted = recent_error is not None and recent_error > RETRAIN_ERROR * max(self.training[2], 1e-12)
        return bool(grown or drifted)

    needs_training = False

    def to_arrays(self) -> dict[str, np.ndarray]:
        header = np.array([FORMAT_VERSION, _KINDS[self.name.split("-")[0]], self.dim, self.bits,
                           getattr(self, "n_centroids", 0), int(self.renormalise), *self._header_extra()], np.int64)
        return {"header": header, "training": self.training.copy(), **self._state()}

    def check_codes(self, codes) -> np.ndarray:
        """codes as uint8 [T, bytes_per_token] (each row contiguous), or CodecError."""
        c = np.asarray(codes)
        if c.dtype != np.uint8 or c.ndim != 2 or c.shape[1] != self.bytes_per_token:
            raise CodecError(f"{self.name} codes must be uint8 [T, {self.bytes_per_token}], got {c.dtype} {c.shape};"
                             " were they written by another codec?")
        if c.strides[1] != 1:
            c = np.ascontiguousarray(c)
        return c

    # -- hooks ----------------------------------------------------------------------------------
    def _fit(self, x: np.ndarray) -> None:
        pass

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _header_extra(self) -> tuple[int, ...]:
        return ()  # header fields past the six every codec has (pq: M), so older states load unchanged

    def _need_trained(self) -> None:
        if not self.trained:
            raise CodecError(f"codec {self.name} is not trained: call train(sample) or load_codec(arrays) first")

    def _encode(self, x: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError

    def _decode(self, codes: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError


class Fp16Codec(Codec):
    name = "fp16"
    bits = 16

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.dim

    def _encode(self, x, out):
        out.view("<f2")[:] = x

    def _decode(self, codes, out):
        out[:] = codes.view("<f2")


class Int8Codec(Codec):
    """Symmetric per-token scale: q = round(x / s), s = max|x| / 127 (fp16)."""

    name = "int8"
    bits = 8

    @property
    def bytes_per_token(self) -> int:
        return 2 + self.dim

    def scales(self, codes: np.ndarray) -> np.ndarray:
        """The per-token scales of valid codes, float32 [T]."""
        s = codes[:, :2].view("<f2")[:, 0].astype(np.float32)
        if not np.isfinite(s).all() or (s < 0).any():
            raise CodecError("int8 codes hold a negative or non-finite scale: the codes are damaged; re-encode the pages")
        return s

    def values(self, codes: np.ndarray) -> np.ndarray:
        return codes[:, 2:].view(np.int8)

    def _encode(self, x, out):
        s = (np.abs(x).max(axis=1) / 127.0).astype(np.float16)
        s16 = s.astype(np.float32)
        # divide by the fp16-rounded scale that decode will use, so decode error stays <= s/2
        q = np.rint(x / np.where(s16 > 0, s16, 1.0)[:, None])
        out[:, :2].view("<f2")[:, 0] = s
        out[:, 2:].view(np.int8)[:] = np.clip(q, -127, 127)

    def _decode(self, codes, out):
        np.multiply(self.values(codes), self.scales(codes)[:, None], out=out)


def train_centroids(x: np.ndarray, n_centroids: int | None = None, *, niter: int = 10, seed: int = 0,
                    points_per_centroid: int = 64) -> np.ndarray:
    """Spherical k-means centroids of a sample [N, d]: unit float32 [C, d], C = ``n_centroids`` or
    ``suggest_centroids(N)``, at most N. Shared by every codec whose record starts with a centroid id."""
    if len(x) == 0:
        raise CodecError("the training sample is empty: add pages before training a centroid codec")
    c = min(n_centroids or suggest_centroids(len(x)), len(x))
    import faiss  # FAISS's own k-means driver (the store's layer may not import scoring's helpers)

    x = np.ascontiguousarray(x, dtype=np.float32)
    clustering = faiss.Clustering(x.shape[1], int(c))
    clustering.niter, clustering.seed, clustering.spherical, clustering.verbose = int(niter), int(seed), True, False
    clustering.max_points_per_centroid, clustering.min_points_per_centroid = int(points_per_centroid), 1
    index = faiss.IndexFlatIP(x.shape[1])
    clustering.train(x, index)
    # read back from the index (which ends holding the final centroids), never through the
    # std::vector ``clustering.centroids``: once PyMuPDF's SWIG module has made a std::vector<float>,
    # FAISS's vector_to_array meets PyMuPDF's proxy class and fails (faiss.Kmeans does exactly that)
    return _normalise(index.reconstruct_n(0, index.ntotal))


def _check_unit_centroids(centroids: np.ndarray, dim: int, what: str) -> None:
    if centroids.ndim != 2 or centroids.shape[1] != dim or not 1 <= len(centroids) <= MAX_CENTROIDS:
        raise CodecError(f"{what} must be [C <= {MAX_CENTROIDS}, {dim}], got {centroids.shape}")
    if not np.isfinite(centroids).all() or (np.abs(np.linalg.norm(centroids, axis=1) - 1) > _NORM_TOL).any():
        raise CodecError(f"{what} are not finite unit vectors: the state is damaged; retrain the codec")


class CentroidCodec(Codec):
    """Base of the codecs whose record starts with the token's nearest centroid, [0, 2) ``<u2``,
    followed by some code of the residual (token - centroid). It owns the coarse codebook
    (training, assignment, ``centroid_ids``); a subclass fits and codes the residual."""

    needs_training = True

    def __init__(self, dim: int, *, n_centroids: int | None = None, niter: int = 10, seed: int = 0,
                 points_per_centroid: int = 64, renormalise: bool = True):
        super().__init__(dim)
        if n_centroids is not None and not 1 <= int(n_centroids) <= MAX_CENTROIDS:
            raise CodecError(f"n_centroids must be in [1, {MAX_CENTROIDS}], got {n_centroids!r}")
        self.renormalise = bool(renormalise)
        self.requested_centroids, self.niter, self.seed = n_centroids, int(niter), int(seed)
        self.points_per_centroid = int(points_per_centroid)
        self.centroids: np.ndarray | None = None
        self._quantiser = None
        self._given: np.ndarray | None = None  # centroids handed to train(), if any

    @property
    def trained(self) -> bool:
        return self.centroids is not None

    @property
    def n_centroids(self) -> int:
        return 0 if self.centroids is None else len(self.centroids)

    def train(self, sample, *, collection_tokens=None, centroids: np.ndarray | None = None):
        """As ``Codec.train``; ``centroids`` [C, d] (e.g. an older codec's) skips k-means and
        refits only the residual code."""
        self._given = None if centroids is None else np.asarray(centroids, np.float32)
        return super().train(sample, collection_tokens=collection_tokens)

    def _fit(self, x):
        if len(x) == 0:
            raise CodecError(f"the training sample is empty: add pages before training a {self.name} codec")
        if self._given is not None:
            _check_unit_centroids(self._given, self.dim, "given centroids")
            centroids = self._given  # kept bit for bit: codes of the old codec keep their meaning
        else:
            centroids = train_centroids(x, self.requested_centroids, niter=self.niter, seed=self.seed,
                                        points_per_centroid=self.points_per_centroid)
        self._set_centroids(centroids)
        self._fit_residuals(x - self.centroids[self.assign(x)])

    def _fit_residuals(self, r: np.ndarray) -> None:
        raise NotImplementedError

    def _set_centroids(self, centroids: np.ndarray) -> None:
        self.centroids, self._quantiser = np.ascontiguousarray(centroids, np.float32), None

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Nearest centroid (inner product; unit centroids) of each row, int64 [N]."""
        import faiss

        if self._quantiser is None:
            self._quantiser = faiss.IndexFlatIP(self.dim)
            self._quantiser.add(self.centroids)
        _, idx = self._quantiser.search(np.ascontiguousarray(x, np.float32), 1)
        return idx[:, 0].astype(np.int64)

    def centroid_ids(self, codes: np.ndarray) -> np.ndarray:
        """The centroid id of each token of valid codes, int64 [T]; an id past the codebook is CodecError."""
        cid = codes[:, :2].view("<u2")[:, 0].astype(np.intp)
        if len(cid) and int(cid.max()) >= self.n_centroids:
            raise CodecError(f"codes name centroid {int(cid.max())} but the codec has {self.n_centroids}: they were"
                             " written by another codec state; re-encode the pages or restore the codec state")
        return cid

    def _finish(self, out: np.ndarray) -> None:
        if self.renormalise:
            out /= np.maximum(np.sqrt(np.einsum("ij,ij->i", out, out)), 1e-12)[:, None]


class ResidualCodec(CentroidCodec):
    """PLAID-style centroid + b-bit residual per dimension; see the module docstring."""

    def __init__(self, dim: int, bits: int, *, n_centroids: int | None = None, niter: int = 10, seed: int = 0,
                 points_per_centroid: int = 64, renormalise: bool = True):
        if bits not in (1, 2, 4):
            raise CodecError(f"residual bits must be 1, 2 or 4, got {bits!r}")
        super().__init__(dim, n_centroids=n_centroids, niter=niter, seed=seed,
                         points_per_centroid=points_per_centroid, renormalise=renormalise)
        self.bits, self.name = int(bits), f"residual-{bits}"
        self.cutoffs = self.weights = None

    @property
    def bytes_per_token(self) -> int:
        return 2 + self.dim * self.bits // 8

    @property
    def per_byte(self) -> int:
        return 8 // self.bits

    def _fit_residuals(self, r):
        levels = 1 << self.bits
        cut = np.quantile(r, np.arange(1, levels) / levels, axis=0).T.astype(np.float32)  # [d, L-1]
        mid = np.quantile(r, (np.arange(levels) + 0.5) / levels, axis=0).T  # fallback for empty buckets
        buckets = self._bucketise(r, cut)
        weights = np.empty((self.dim, levels), np.float64)
        for level in range(levels):
            mask = buckets == level
            n = mask.sum(axis=0)
            s = np.where(mask, r, 0.0).sum(axis=0)
            weights[:, level] = np.where(n > 0, s / np.maximum(n, 1), mid[:, level])
        self._set_buckets(cut, np.maximum.accumulate(weights.astype(np.float32), axis=1))

    def _set_buckets(self, cutoffs: np.ndarray, weights: np.ndarray) -> None:
        self.cutoffs, self.weights = np.ascontiguousarray(cutoffs), np.ascontiguousarray(weights)
        # decode table: for byte position j and byte value v, the k residual values it stands for
        k, b = self.per_byte, self.bits
        v = np.arange(256)
        shifts = 8 - b * (np.arange(k) + 1)
        buckets = (v[:, None] >> shifts[None, :]) & ((1 << b) - 1)  # [256, k]
        dims = np.arange(self.dim).reshape(-1, k)  # [n_bytes, k]
        self.byte_table = np.ascontiguousarray(weights[dims[:, None, :], buckets[None, :, :]], np.float32)  # [n_bytes, 256, k]
        self._row_base = (np.arange(dims.shape[0]) * 256).astype(np.intp)

    @staticmethod
    def _bucketise(r: np.ndarray, cutoffs: np.ndarray) -> np.ndarray:
        out = np.zeros(r.shape, np.uint8)
        for level in range(cutoffs.shape[1]):  # cut-offs ascend, so a count of those passed is the bucket
            out += r > cutoffs[None, :, level]
        return out

    def _encode(self, x, out):
        cid = self.assign(x)
        buckets = self._bucketise(x - self.centroids[cid], self.cutoffs).reshape(len(x), -1, self.per_byte)
        packed = np.zeros(buckets.shape[:2], np.uint8)
        for i in range(self.per_byte):
            packed |= buckets[:, :, i] << np.uint8(8 - self.bits * (i + 1))
        out[:, :2].view("<u2")[:, 0] = cid
        out[:, 2:] = packed

    def residual_rows(self, codes: np.ndarray) -> np.ndarray:
        """Row indices into ``byte_table.reshape(-1, per_byte)`` for each residual byte, intp [T, n_bytes]."""
        return codes[:, 2:] + self._row_base[None, :]

    def _decode(self, codes, out):
        np.take(self.centroids, self.centroid_ids(codes), axis=0, out=out)
        table = self.byte_table.reshape(-1, self.per_byte)
        out += np.take(table, self.residual_rows(codes), axis=0).reshape(len(codes), self.dim)
        self._finish(out)

    def _state(self):
        return {"centroids": self.centroids.copy(), "cutoffs": self.cutoffs.copy(), "weights": self.weights.copy()}


class ResidualPQCodec(CentroidCodec):
    """Centroid id + a product quantiser of the residual ("pq-M"); see the module docstring.

    The PQ is FAISS's ``ProductQuantizer(d, M, 8)`` (its C++ k-means, code computation and
    decoding); the state keeps only its codebooks as a plain array, from which ``load_codec``
    rebuilds it."""

    bits = 8  # of each sub-quantiser code: 256 codewords, one byte

    def __init__(self, dim: int, subquantisers: int, *, n_centroids: int | None = None, niter: int = 10,
                 seed: int = 0, points_per_centroid: int = 64, renormalise: bool = True, pq_niter: int = 25):
        if isinstance(subquantisers, bool) or not isinstance(subquantisers, (int, np.integer)) \
                or not 1 <= int(subquantisers) <= 256:
            raise CodecError(f"pq sub-quantisers M must be an integer in [1, 256], got {subquantisers!r}")
        super().__init__(dim, n_centroids=n_centroids, niter=niter, seed=seed,
                         points_per_centroid=points_per_centroid, renormalise=renormalise)
        if self.dim % int(subquantisers):
            raise CodecError(f"pq-{subquantisers} needs a width divisible by {subquantisers}; these vectors are"
                             f" {self.dim}-d: choose another M")
        self.subquantisers, self.name = int(subquantisers), f"pq-{int(subquantisers)}"
        self.pq_niter = int(pq_niter)
        self.pq_centroids: np.ndarray | None = None
        self._pq = None

    @property
    def bytes_per_token(self) -> int:
        return 2 + self.subquantisers

    @property
    def sub_dim(self) -> int:
        return self.dim // self.subquantisers

    @property
    def trained(self) -> bool:
        return self.centroids is not None and self._pq is not None

    def _fit_residuals(self, r):
        import faiss

        pq = faiss.ProductQuantizer(self.dim, self.subquantisers, self.bits)
        pq.cp.niter, pq.cp.seed = self.pq_niter, self.seed
        pq.cp.min_points_per_centroid = 1  # a small sample is fine (and FAISS would warn on stderr)
        r = np.ascontiguousarray(r, np.float32)
        if len(r) < pq.ksub:  # FAISS's k-means needs a point per codeword: repeat a tiny sample
            r = np.ascontiguousarray(np.tile(r, (-(-pq.ksub // len(r)), 1)))
        pq.train(r)
        self._set_pq(self._codewords(pq).copy().reshape(self.subquantisers, pq.ksub, self.sub_dim))

    @staticmethod
    def _codewords(pq) -> np.ndarray:
        """A float32 view of the PQ's codebook, [M * 256 * d/M] in FAISS's [M, 256, d/M] order. Through
        the raw pointer, never ``pq.centroids``: that std::vector can meet PyMuPDF's SWIG proxy class
        (see ``train_centroids``), which breaks vector_to_array / copy_array_to_vector."""
        import faiss

        return faiss.rev_swig_ptr(pq.get_centroids(0, 0), pq.M * pq.ksub * pq.dsub)

    def _set_pq(self, pq_centroids: np.ndarray) -> None:
        import faiss

        self.pq_centroids = np.ascontiguousarray(pq_centroids, np.float32)
        pq = faiss.ProductQuantizer(self.dim, self.subquantisers, self.bits)  # sizes its codebook
        self._codewords(pq)[:] = self.pq_centroids.ravel()
        self._pq = pq

    def sub_codes(self, codes: np.ndarray) -> np.ndarray:
        """The PQ codes of valid codes, uint8 [T, M] (column m: the codeword of dimensions m*d/M ..)."""
        return codes[:, 2:]

    def _encode(self, x, out):
        cid = self.assign(x)
        out[:, :2].view("<u2")[:, 0] = cid
        out[:, 2:] = self._pq.compute_codes(np.ascontiguousarray(x - self.centroids[cid]))

    def _decode(self, codes, out):
        import faiss

        cid = self.centroid_ids(codes)
        sub = np.ascontiguousarray(self.sub_codes(codes))
        self._pq.decode_c(faiss.swig_ptr(sub), faiss.swig_ptr(out), len(sub))  # straight into the caller's buffer
        out += np.take(self.centroids, cid, axis=0)
        self._finish(out)

    def _header_extra(self) -> tuple[int, ...]:
        return (self.subquantisers,)

    def _state(self):
        return {"centroids": self.centroids.copy(), "pq_centroids": self.pq_centroids.copy()}


def make_codec(name: str, dim: int = 128, **options) -> Codec:
    """An untrained codec by name (``CODECS``; also "pq-M" for another M dividing ``dim``);
    ``options`` go to ``ResidualCodec`` / ``ResidualPQCodec``."""
    if name == "fp16" and not options:
        return Fp16Codec(dim)
    if name == "int8" and not options:
        return Int8Codec(dim)
    if isinstance(name, str) and name.startswith("residual-") and name[9:] in ("1", "2", "4"):
        return ResidualCodec(dim, int(name[9:]), **options)
    if isinstance(name, str) and name.startswith("pq-") and name[3:].isdigit() and name[3] != "0" and len(name) <= 6:
        return ResidualPQCodec(dim, int(name[3:]), **options)
    if name in ("fp16", "int8"):
        raise CodecError(f"codec {name} takes no options, got {sorted(options)}")
    raise CodecError(f"unknown codec {name!r}; choose one of {list(CODECS)}")


# -- loading hostile state ------------------------------------------------------------------------
def _field(arrays: Mapping, key: str, dtype, shape: tuple) -> np.ndarray:
    if key not in arrays:
        raise CodecError(f"codec state has no {key!r} array: the state is damaged; retrain the codec")
    a = arrays[key]
    if not isinstance(a, np.ndarray):
        raise CodecError(f"codec state {key!r} is a {type(a).__name__}, not an array")
    if a.dtype != np.dtype(dtype):
        raise CodecError(f"codec state {key!r} has dtype {a.dtype}, expected {np.dtype(dtype)}: damaged or from another version")
    if a.shape != shape:
        raise CodecError(f"codec state {key!r} has shape {a.shape}, expected {shape}: damaged or from another version")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise CodecError(f"codec state {key!r} holds NaN or infinity: the state is damaged; retrain the codec")
    return np.array(a)  # an owned copy: a memory map or a caller's array may change under us


def load_codec(arrays: Mapping[str, np.ndarray]) -> Codec:
    """A codec from ``to_arrays()`` output, every array checked; anything off is CodecError."""
    if not isinstance(arrays, Mapping):
        raise CodecError(f"codec state must be a mapping of arrays, got {type(arrays).__name__}")
    # six fields for every codec; pq states add a seventh (M), so states written before pq load as ever
    given = arrays.get("header")
    header = _field(arrays, "header", np.int64, (7,) if getattr(given, "shape", None) == (7,) else (6,))
    version, kind, dim, bits, n_centroids, renorm = (int(v) for v in header[:6])
    if version > FORMAT_VERSION:
        raise CodecError(f"codec state format {version} is newer than this pagelens ({FORMAT_VERSION}): upgrade pagelens")
    if version != FORMAT_VERSION:
        raise CodecError(f"codec state format {version} is not one this pagelens knows ({FORMAT_VERSION})")
    names = {v: k for k, v in _KINDS.items()}
    if kind not in names:
        raise CodecError(f"codec state names an unknown codec kind {kind}; expected one of {sorted(names)}")
    if not 8 <= dim <= _MAX_DIM or dim % 8:
        raise CodecError(f"codec state has dim {dim}; expected a multiple of 8 in [8, {_MAX_DIM}]")
    training = _field(arrays, "training", np.float64, (3,))
    if (training < 0).any():
        raise CodecError("codec state 'training' holds negative figures: the state is damaged")
    if (len(header) == 7) != (kind == _KINDS["pq"]):
        raise CodecError(f"codec state header {header.tolist()} is inconsistent for codec {names[kind]}:"
                         " only pq states have a seventh field (M)")
    expected = {"header", "training"}
    if kind == _KINDS["residual"]:
        expected |= {"centroids", "cutoffs", "weights"}
    elif kind == _KINDS["pq"]:
        expected |= {"centroids", "pq_centroids"}
    extra = set(arrays) - expected
    if extra:
        raise CodecError(f"codec state has unexpected arrays {sorted(extra)}: it was not written by this codec")
    if kind == _KINDS["pq"]:
        return _load_pq(arrays, header, training)
    if kind != _KINDS["residual"]:
        want = 16 if kind == _KINDS["fp16"] else 8
        if bits != want or n_centroids != 0 or renorm != 0:
            raise CodecError(f"codec state header {header.tolist()} is inconsistent for codec {names[kind]}")
        codec = make_codec(names[kind], dim)
        codec.training = training
        return codec
    if bits not in (1, 2, 4) or not 1 <= n_centroids <= MAX_CENTROIDS or renorm not in (0, 1):
        raise CodecError(f"codec state header {header.tolist()} is out of range: bits 1/2/4, centroids 1..{MAX_CENTROIDS}")
    levels = 1 << bits
    centroids = _unit_centroids_field(arrays, n_centroids, dim)
    cutoffs = _field(arrays, "cutoffs", np.float32, (dim, levels - 1))
    weights = _field(arrays, "weights", np.float32, (dim, levels))
    if (np.diff(cutoffs, axis=1) < 0).any() or (np.diff(weights, axis=1) < 0).any():
        raise CodecError("codec state cut-offs or bucket weights do not ascend: the state is damaged; retrain the codec")
    if (np.abs(weights) > 2).any() or (np.abs(cutoffs) > 2).any():
        raise CodecError("codec state bucket weights exceed the range of a unit vector's residual (|w| <= 2): damaged")
    codec = ResidualCodec(dim, bits)
    codec.renormalise = bool(renorm)
    codec._set_centroids(centroids)
    codec._set_buckets(cutoffs, weights)
    codec.training = training
    return codec


def _unit_centroids_field(arrays: Mapping, n_centroids: int, dim: int) -> np.ndarray:
    centroids = _field(arrays, "centroids", np.float32, (n_centroids, dim))
    norms = np.linalg.norm(centroids, axis=1)
    if (np.abs(norms - 1) > _NORM_TOL).any():
        raise CodecError("codec state centroids are not unit vectors: the state is damaged; retrain the codec")
    return centroids


def _load_pq(arrays: Mapping, header: np.ndarray, training: np.ndarray) -> ResidualPQCodec:
    _version, _kind, dim, bits, n_centroids, renorm, m = (int(v) for v in header)
    if bits != 8 or not 1 <= n_centroids <= MAX_CENTROIDS or renorm not in (0, 1) or not 1 <= m <= 256:
        raise CodecError(f"codec state header {header.tolist()} is out of range for pq: bits 8, centroids"
                         f" 1..{MAX_CENTROIDS}, M 1..256")
    if dim % m:
        raise CodecError(f"codec state header {header.tolist()}: M {m} does not divide the width {dim}; damaged")
    centroids = _unit_centroids_field(arrays, n_centroids, dim)
    pq_centroids = _field(arrays, "pq_centroids", np.float32, (m, _PQ_CODEWORDS, dim // m))
    if (np.abs(pq_centroids) > 2).any():
        raise CodecError("codec state pq codewords exceed the range of a unit vector's residual (|w| <= 2): damaged")
    codec = ResidualPQCodec(dim, m, renormalise=bool(renorm))
    codec._set_centroids(centroids)
    codec._set_pq(pq_centroids)
    codec.training = training
    return codec


class TokenSampler:
    """A uniform sample of at most ``max_tokens`` token rows from pages streamed past it
    (reservoir sampling, Vitter's algorithm R, one vectorised step per page), in bounded memory."""

    def __init__(self, max_tokens: int, dim: int = 128, *, seed: int = 0):
        if max_tokens < 1:
            raise CodecError(f"max_tokens must be at least 1, got {max_tokens}")
        self.buffer = np.empty((int(max_tokens), dim), np.float32)
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def add(self, tokens: np.ndarray) -> None:
        x = _as_tokens(tokens, self.buffer.shape[1])
        cap, n = len(self.buffer), self.seen
        fill = max(0, min(cap - n, len(x)))
        self.buffer[n : n + fill] = x[:fill]
        rest = x[fill:]
        if len(rest):
            # token number i (0-based, over the whole stream) replaces slot j ~ U[0, i] when j < cap
            pos = n + fill + np.arange(len(rest))
            slot = (self.rng.random(len(rest)) * (pos + 1)).astype(np.int64)
            keep = slot < cap
            slot, rows = slot[keep], rest[keep]
            # a later token replacing the same slot wins, as in the sequential algorithm
            last = len(slot) - 1 - np.unique(slot[::-1], return_index=True)[1]
            self.buffer[slot[last]] = rows[last]
        self.seen += len(x)

    def sample(self) -> np.ndarray:
        return self.buffer[: min(self.seen, len(self.buffer))].copy()


__all__ = ["CODECS", "CentroidCodec", "Codec", "CodecError", "Fp16Codec", "Int8Codec", "ResidualCodec",
           "ResidualPQCodec", "TokenSampler", "load_codec", "make_codec", "suggest_centroids", "train_centroids",
           "RETRAIN_GROWTH", "RETRAIN_ERROR"]
