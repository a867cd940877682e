"""Vector quantization of the Gaussians' covariance parameters (log-scales and rotations), as in
Niedermayr et al., "Compressed 3D Gaussian Splatting" (CVPR 2024): one k-means codebook over the
shape, a codebook index per Gaussian.

**Clustering space.**  A shape is ``(log-scales [3], unit quaternion [4] with w >= 0)``, mapped to
a 7-vector ``[u, rotation_weight * q]`` where ``u_j = log(s_j + thin_axis_floor * max(s))``:

* log-scales make size errors relative (a 10% error costs the same for big and small Gaussians);
* the soft floor stops k-means from spending codewords on how thin an already flat axis is
  (trained models hold axes 1e-4 to 1e-8 times their longest one, which render alike);
* ``rotation_weight`` sets how many radians of rotation cost as much as a unit of log-scale
  (a quaternion moves by about half the rotation angle).

The defaults (weight 2, floor 0.02) are a compromise measured on the four real models at K = 1024
(``benchmarks/bench_geometry.py --study``): raising the weight from 1 to 2 cuts the median error
of the longest axis' direction by about a quarter (e.g. donut 18.7 -> 13.3 degrees) for a larger
log-scale error; raising the floor lowers the relative covariance error (donut 0.585 -> 0.552 at
0.02, 0.522 at 0.05) at the expense of the thin axes only.  Without a renderer here we stopped at
0.02, so that a disc seen edge-on keeps its thickness; the caller can tune both against rendering
PSNR through :class:`VQConfig`.

The codeword of a cluster is its centroid mapped back to log-scales and a normalized canonical
quaternion, rounded to float16 (the stored values); indices are then recomputed against the
rounded codewords, so what the decoder reconstructs is exactly what the encoder measured.

**k-means.**  Lloyd iterations with exact nearest-codeword search by a k-d tree (7 dimensions,
``O(M log K)`` per pass), seeded by ``seed`` (distinct input shapes chosen at random), empty
clusters refilled with the worst-represented points; optional per-Gaussian importance weights
(Niedermayr's sensitivity) weight the centroids.

**Stream.**  Version byte, varints ``M`` and ``K``; the ``K`` used codewords (float16, sorted by
decreasing use so that CompressAI's linear CDF search stops early on frequent indices), byte
planes entropy coded, behind a varint length; the indices coded with the static categorical coder
(histogram precision chosen by measurement).

**Codebook size.**  :func:`choose_codebook_size` returns the smallest candidate size whose
rendering PSNR, measured by the caller, is at most ``max_drop_db`` below the unquantized model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from ..entropy.categorical import (
    CategoricalError,
    CorruptStreamError,
    decode_categorical,
    encode_categorical,
    read_varint,
    write_varint,
)

FORMAT_VERSION = 1
MAX_CODEBOOK_SIZE = 1 << 15  # categorical coder alphabet limit


class CovarianceVQError(ValueError):
    """Invalid input to the covariance vector quantizer."""


class CovarianceStreamError(CorruptStreamError):
    """A covariance stream is corrupt or truncated."""


@dataclass(frozen=True)
class VQConfig:
    """Clustering-space and k-means settings (encoder only: the stream holds plain codewords)."""

    rotation_weight: float = 2.0
    thin_axis_floor: float = 0.02
    max_iters: int = 12  # Lloyd passes on the sample
    tol: float = 5e-3  # stop when fewer than this fraction of indices change in a pass
    points_per_codeword: int = 16  # sample size = max(this * size, min_sample) ...
    min_sample: int = 65536
    full_iters: int = 2  # ... then this many passes over all points

    def __post_init__(self) -> None:
        if not self.rotation_weight > 0:
            raise CovarianceVQError(f"rotation_weight must be > 0, got {self.rotation_weight}")
        if not 0 <= self.thin_axis_floor < 1:
            raise CovarianceVQError(f"thin_axis_floor must be in [0, 1), got {self.thin_axis_floor}")
        if self.max_iters < 0:
            raise CovarianceVQError(f"max_iters must be >= 0, got {self.max_iters}")


def canonical_quats(quats: np.ndarray) -> np.ndarray:
    """Unit quaternions [M, 4] (w, x, y, z) with w >= 0 (w == 0: first nonzero component > 0)."""
    q = np.asarray(quats, dtype=np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    if np.any(norm == 0) or not np.all(np.isfinite(q)):
        raise CovarianceVQError("quaternions must be finite and nonzero")
    q = q / norm
    lead = q[np.arange(len(q)), np.argmax(q != 0, axis=1)]  # first nonzero component
    sign = np.where(q[:, 0] != 0, np.sign(q[:, 0]), np.sign(lead))
    return (q * sign[:, None]).astype(np.float32)


def _check_shapes(log_scales: np.ndarray, quats: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    s = np.asarray(log_scales, dtype=np.float32)
    q = np.asarray(quats, dtype=np.float32)
    if s.ndim != 2 or s.shape[1] != 3:
        raise CovarianceVQError(f"log_scales must have shape [M, 3], got {s.shape}")
    if q.shape != (len(s), 4):
        raise CovarianceVQError(f"quats must have shape [{len(s)}, 4], got {q.shape}")
    if not np.all(np.isfinite(s)):
        raise CovarianceVQError("log_scales must be finite")
    return s, canonical_quats(q) if len(q) else q


def _features(log_scales: np.ndarray, quats: np.ndarray, config: VQConfig) -> np.ndarray:
    """Clustering-space vectors [M, 7] float64 (see the module docstring)."""
    s = log_scales.astype(np.float64)
    if config.thin_axis_floor > 0:
        top = s.max(axis=1, keepdims=True)
        u = top + np.log(np.exp(s - top) + config.thin_axis_floor)
    else:
        u = s
    return np.concatenate([u, config.rotation_weight * quats.astype(np.float64)], axis=1)


def _from_features(f: np.ndarray, config: VQConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_features` for centroids: (log-scales [K, 3], canonical quats [K, 4])."""
    u = f[:, :3]
    if config.thin_axis_floor > 0:
        # exp(u_j) = s_j + floor * s_max, and the largest u belongs to s_max
        top = u.max(axis=1, keepdims=True)
        rel = np.exp(u - top) * (1 + config.thin_axis_floor) - config.thin_axis_floor  # s_j / s_max
        log_s = top - np.log1p(config.thin_axis_floor) + np.log(np.maximum(rel, 1e-4 * config.thin_axis_floor))
    else:
        log_s = u
    q = f[:, 3:] / config.rotation_weight
    bad = np.linalg.norm(q, axis=1) < 1e-12
    q[bad] = [1.0, 0.0, 0.0, 0.0]
    return log_s.astype(np.float32), canonical_quats(q)


@dataclass
class CovarianceCodebook:
    """Codewords exactly as stored (float16 values held as float32)."""

    log_scales: np.ndarray  # [K, 3] float32
    quats: np.ndarray  # [K, 4] float32, normalized before rounding, w >= 0
    config: VQConfig = VQConfig()

    def __post_init__(self) -> None:
        self.log_scales = np.asarray(self.log_scales, dtype=np.float16).astype(np.float32)
        self.quats = np.asarray(self.quats, dtype=np.float16).astype(np.float32)
        if self.log_scales.ndim != 2 or self.log_scales.shape[1] != 3 or self.quats.shape != (len(self.log_scales), 4):
            raise CovarianceVQError(
                f"codebook shapes {self.log_scales.shape}, {self.quats.shape} are not [K, 3], [K, 4]")
        if not 1 <= len(self.log_scales) <= MAX_CODEBOOK_SIZE:
            raise CovarianceVQError(f"codebook size must be in [1, {MAX_CODEBOOK_SIZE}], got {len(self.log_scales)}")
        if not (np.all(np.isfinite(self.log_scales)) and np.all(np.isfinite(self.quats))):
            raise CovarianceVQError("codebook values must be finite in float16")

    @property
    def size(self) -> int:
        return len(self.log_scales)

    def assign(self, log_scales: np.ndarray, quats: np.ndarray) -> np.ndarray:
        """Index [M] of the nearest codeword of each shape in the clustering space."""
        s, q = _check_shapes(log_scales, quats)
        if len(s) == 0:
            return np.zeros(0, dtype=np.int64)
        return _nearest(_features(self.log_scales, self.quats, self.config), _features(s, q, self.config))[0]

    def to_bytes(self) -> bytes:
        """The float16 codewords, coded losslessly: the high and low bytes of each of the 7
        components are 14 contexts of the static categorical coder (about 20% below raw)."""
        half = np.concatenate([self.log_scales, self.quats], axis=1).astype("<f2").view(np.uint16).astype(np.int64)
        ctx = np.broadcast_to(np.arange(7), half.shape)
        planes = np.concatenate([(half >> 8).ravel(), (half & 255).ravel()])
        return encode_categorical(planes, 256, np.concatenate([ctx.ravel(), ctx.ravel() + 7]))

    @classmethod
    def from_bytes(cls, data: bytes, size: int) -> "CovarianceCodebook":
        ctx = np.broadcast_to(np.arange(7), (size, 7)).ravel()
        try:
            planes = decode_categorical(data, 256, np.concatenate([ctx, ctx + 7]))
        except CategoricalError as err:
            raise CovarianceStreamError(f"codebook: {err}") from None
        half = ((planes[: 7 * size] << 8) | planes[7 * size:]).astype(np.uint16)
        v = half.view("<f2").reshape(size, 7).astype(np.float32)
        if not np.all(np.isfinite(v)):
            raise CovarianceStreamError("codebook holds non-finite values")
        return cls(v[:, :3], v[:, 3:])


def _nearest(centers: np.ndarray, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(index [M], squared distance [M]) of each point's nearest center (exact, k-d tree)."""
    from scipy.spatial import cKDTree

    dist, index = cKDTree(centers).query(points, k=1, workers=-1)
    return index.astype(np.int64), dist ** 2


def fit_codebook(log_scales: np.ndarray, quats: np.ndarray, size: int, seed: int = 0,
                 weights: Optional[np.ndarray] = None, config: VQConfig = VQConfig()) -> CovarianceCodebook:
    """k-means codebook of at most ``size`` codewords for shapes ``log_scales`` [M, 3], ``quats``
    [M, 4] (any sign or norm); ``weights`` [M] >= 0 are optional per-Gaussian importances.
    Fewer distinct shapes than ``size``: the codebook is those shapes (lossless up to float16)."""
    s, q = _check_shapes(log_scales, quats)
    if len(s) == 0:
        raise CovarianceVQError("cannot fit a codebook to zero Gaussians")
    if not 1 <= size <= MAX_CODEBOOK_SIZE:
        raise CovarianceVQError(f"size must be in [1, {MAX_CODEBOOK_SIZE}], got {size}")
    w = np.ones(len(s)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != (len(s),) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
        raise CovarianceVQError(f"weights must be [{len(s)}] finite, >= 0, not all 0")
    x = _features(s, q, config)
    distinct = np.unique(x, axis=0)
    if len(distinct) <= size:
        return CovarianceCodebook(*_from_features(distinct, config), config=config)
    rng = np.random.default_rng(seed)
    centers = distinct[np.sort(rng.choice(len(distinct), size=size, replace=False))]
    sample_size = max(config.points_per_codeword * size, config.min_sample)
    if sample_size < len(x):
        pick = np.sort(rng.choice(len(x), size=sample_size, replace=False))
        centers = _lloyd(centers, x[pick], w[pick], config.max_iters, config.tol)
        centers = _lloyd(centers, x, w, config.full_iters, config.tol)
    else:
        centers = _lloyd(centers, x, w, config.max_iters, config.tol)
    return CovarianceCodebook(*_from_features(centers, config), config=config)


def _lloyd(centers: np.ndarray, x: np.ndarray, w: np.ndarray, iters: int, tol: float) -> np.ndarray:
    """``iters`` Lloyd passes (fewer if converged) of weighted k-means from ``centers`` [K, D]."""
    centers = centers.copy()
    size = len(centers)
    index = np.full(len(x), -1, dtype=np.int64)
    for _ in range(iters):
        new_index, dist = _nearest(centers, x)
        changed = np.count_nonzero(new_index != index)
        index = new_index
        mass = np.bincount(index, weights=w, minlength=size)
        sums = np.stack([np.bincount(index, weights=w * x[:, d], minlength=size) for d in range(x.shape[1])], axis=1)
        filled = mass > 0
        centers[filled] = sums[filled] / mass[filled, None]
        empty = np.flatnonzero(~filled)
        if len(empty):  # refill with the worst-represented points (deterministic order)
            worst = np.argsort(-dist * w, kind="stable")[:len(empty)]
            centers[empty] = x[worst]
        elif changed <= tol * len(x):
            break
    return centers


def encode_covariance_indices(codebook: CovarianceCodebook, indices: np.ndarray) -> bytes:
    """Stream of ``codebook`` (used codewords only, by decreasing use) and ``indices`` [M]."""
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= codebook.size):
        raise CovarianceVQError(f"indices must lie in [0, {codebook.size})")
    counts = np.bincount(idx, minlength=codebook.size)
    order = np.argsort(-counts, kind="stable")[: np.count_nonzero(counts)]
    rank = np.empty(codebook.size, dtype=np.int64)
    rank[order] = np.arange(len(order))
    used = CovarianceCodebook(codebook.log_scales[order], codebook.quats[order]) if len(order) else None
    head = bytes([FORMAT_VERSION]) + write_varint(idx.size) + write_varint(len(order))
    if idx.size == 0:
        return head
    table = used.to_bytes()
    return head + write_varint(len(table)) + table + encode_categorical(rank[idx], len(order))


def encode_covariance(log_scales: np.ndarray, quats: np.ndarray, codebook: CovarianceCodebook) -> bytes:
    """Codebook + nearest-codeword indices of the shapes ``log_scales`` [M, 3], ``quats`` [M, 4]."""
    return encode_covariance_indices(codebook, codebook.assign(log_scales, quats))


def decode_covariance_indices(data: bytes) -> Tuple[Optional[CovarianceCodebook], np.ndarray]:
    """(codebook as stored, or None for M = 0; indices [M] int64) of a covariance stream."""
    data = bytes(data)
    if not data or data[0] != FORMAT_VERSION:
        raise CovarianceStreamError("not a covariance stream (bad version byte)")
    try:
        m, pos = read_varint(data, 1)
        k, pos = read_varint(data, pos)
    except CorruptStreamError as err:
        raise CovarianceStreamError(f"covariance header: {err}") from None
    if m == 0:
        if k or pos != len(data):
            raise CovarianceStreamError("empty covariance stream has trailing data")
        return None, np.zeros(0, dtype=np.int64)
    if not 1 <= k <= min(m, MAX_CODEBOOK_SIZE):
        raise CovarianceStreamError(f"impossible codebook size {k} for {m} Gaussians")
    try:
        n, pos = read_varint(data, pos)
    except CorruptStreamError as err:
        raise CovarianceStreamError(f"covariance header: {err}") from None
    if len(data) < pos + n:
        raise CovarianceStreamError("covariance stream is truncated")
    codebook = CovarianceCodebook.from_bytes(data[pos:pos + n], k)
    try:
        indices = decode_categorical(data[pos + n:], k)
    except CategoricalError as err:
        raise CovarianceStreamError(f"covariance indices: {err}") from None
    if indices.size != m:
        raise CovarianceStreamError(f"stream holds {indices.size} indices, header says {m}")
    return codebook, indices


def decode_covariance(data: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """(log-scales [M, 3] float32, quats [M, 4] float32): the codewords of the stored indices."""
    codebook, indices = decode_covariance_indices(data)
    if codebook is None:
        return np.zeros((0, 3), np.float32), np.zeros((0, 4), np.float32)
    return codebook.log_scales[indices], codebook.quats[indices]


def choose_codebook_size(log_scales: np.ndarray, quats: np.ndarray, quality_fn: Callable[[int], float],
                         reference_quality: float,
                         candidates: Sequence[int] = (256, 512, 1024, 2048, 4096, 8192),
                         max_drop_db: float = 0.1) -> int:
    """Smallest candidate codebook size whose quality is within ``max_drop_db`` of the reference.

    ``quality_fn(size)`` is the caller's rendering PSNR (dB) of the model with its covariance
    quantized by a codebook of ``size`` (the caller owns the renderer); ``reference_quality`` is
    the PSNR of the unquantized model.  Candidates are tried in increasing order and the first
    with ``reference_quality - quality <= max_drop_db`` is returned.  Candidates at or above the
    number of distinct shapes are lossless (up to float16), so the scan stops at the first of them
    (that size is returned without calling ``quality_fn``).  If none passes, the largest candidate.
    """
    s, q = _check_shapes(log_scales, quats)
    sizes = sorted({int(c) for c in candidates})
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_CODEBOOK_SIZE:
        raise CovarianceVQError(f"candidates must be in [1, {MAX_CODEBOOK_SIZE}], got {list(candidates)}")
    if max_drop_db < 0:
        raise CovarianceVQError(f"max_drop_db must be >= 0, got {max_drop_db}")
    distinct = len(np.unique(np.concatenate([s, q], axis=1), axis=0)) if len(s) else 0
    for size in sizes:
        if size >= distinct:
            return size
        if reference_quality - float(quality_fn(size)) <= max_drop_db:
            return size
    return sizes[-1]
