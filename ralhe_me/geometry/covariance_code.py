"""Covariance section: a VQ codeword per Gaussian plus an entropy-coded scalar residual.

Plain VQ (``covariance_vq``) cannot keep the shapes of real models: on the donut (hair
strands, thin and precisely oriented) a 4096-word codebook costs 20 bits per Gaussian and
still renders at 31.7 dB against 43.0 dB unquantized, because 12 bits of index cannot name
orientations finely enough. Uniform scalar quantization of the same 7 numbers, entropy
coded, reaches 41.9 dB at 31 bits. Here the codeword is a prediction and the residual
``shape - codeword`` is quantized with a log-scale step and a quaternion step: the error is
set by the steps alone (step^2 / 12 per component) and the codebook only lowers the
residual's entropy, so its size is chosen by bytes once the steps are chosen by quality.
A step of 0 sends no residual (plain VQ, the paper's scheme). With a gain map, each point's
steps are multiplied by its gain ``g_i`` (the decoder has the map before the covariances):
coarse where the shape does not show in the renders.

Reconstruction, identical in encoder and decoder (float32 arithmetic):
``log_scales = codeword_log_scales[i] + (r_s * step_s) * g``, ``quats = codeword_quats[i] + (r_q * step_q) * g``
(the renderer normalizes quaternions). The residual of a quaternion is taken against the
sign of ``q`` nearer to its codeword (``q`` and ``-q`` are the same rotation).

Stream: version byte; flags byte (bit 0: steps scaled per point by the gain map); float32 steps (log-scale, quaternion); varint length + the VQ stream
of ``covariance_vq``; if a step is nonzero: per component its zigzag offset (varint) and the
residual symbols, coded by the static categorical coder with one context per component.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..entropy.categorical import CategoricalError, CorruptStreamError, decode_categorical, encode_categorical, \
    read_varint, write_varint
from .covariance_vq import (MAX_CODEBOOK_SIZE, CovarianceCodebook, CovarianceStreamError, CovarianceVQError,
                            canonical_quats, decode_covariance_indices, encode_covariance_indices)

FORMAT_VERSION = 1
MAX_RESIDUAL_ALPHABET = MAX_CODEBOOK_SIZE  # categorical coder limit on one component's symbol range


@dataclass(frozen=True)
class ResidualSteps:
    """Quantization steps of the residual (0: that part is not refined)."""

    log_scale: float = 0.0
    quat: float = 0.0

    def __post_init__(self) -> None:
        for name in ("log_scale", "quat"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise CovarianceVQError(f"residual step {name} must be finite and >= 0, got {v}")
        if self.quat > 0.5:
            raise CovarianceVQError(f"the quaternion step must be <= 0.5 (a unit quaternion's components), got "
                                    f"{self.quat}")
        # stored as float32: keep exactly what the decoder reads
        object.__setattr__(self, "log_scale", float(np.float32(self.log_scale)))
        object.__setattr__(self, "quat", float(np.float32(self.quat)))

    @classmethod
    def from_ratio(cls, log_scale: float, quat_ratio: float = 0.2) -> "ResidualSteps":
        """One knob: a log-scale step and the quaternion step ``quat_ratio`` times it (0.2 measured
        on the donut: 0.2/0.04 gave the best PSNR per bit of the pairs tried)."""
        return cls(log_scale, log_scale * quat_ratio)


@dataclass
class CovarianceCode:
    """Everything the covariance section holds."""

    codebook: CovarianceCodebook
    indices: np.ndarray  # [M] int64
    residual_log_scales: np.ndarray  # [M, 3] int64 (zeros when the step is 0)
    residual_quats: np.ndarray  # [M, 4] int64
    steps: ResidualSteps
    point_scale: Optional[np.ndarray] = None  # [M] per-point step factor (the gain map's gains), not stored

    def offsets(self) -> Tuple[np.ndarray, np.ndarray]:  # [M, 3], [M, 4] float32
        """The residuals in parameter units (added to the codewords)."""
        ds = self.residual_log_scales.astype(np.float32) * np.float32(self.steps.log_scale)
        dq = self.residual_quats.astype(np.float32) * np.float32(self.steps.quat)
        if self.point_scale is not None:
            g = np.asarray(self.point_scale, dtype=np.float32)[:, None]
            ds, dq = ds * g, dq * g
        return ds, dq

    def shapes(self, codebook: Optional[CovarianceCodebook] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(log-scales [M, 3], quats [M, 4]) float32, exactly as decoded (with ``codebook`` if given)."""
        book = codebook or self.codebook
        ds, dq = self.offsets()
        return book.log_scales[self.indices] + ds, book.quats[self.indices] + dq


def quantize_shapes(log_scales: np.ndarray, quats: np.ndarray, codebook: CovarianceCodebook,
                    steps: ResidualSteps = ResidualSteps(),
                    indices: Optional[np.ndarray] = None,
                    point_scale: Optional[np.ndarray] = None) -> CovarianceCode:
    """Code shapes ``log_scales`` [M, 3], ``quats`` [M, 4] against ``codebook`` (nearest codewords
    unless ``indices`` [M] are given) with residual ``steps``, times ``point_scale`` [M] > 0 per
    point if given."""
    s = np.asarray(log_scales, dtype=np.float32)
    q = canonical_quats(quats) if len(quats) else np.asarray(quats, np.float32)
    idx = codebook.assign(s, q) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
    if idx.shape != (len(s),):
        raise CovarianceVQError(f"indices must have shape [{len(s)}], got {idx.shape}")
    if len(idx) and (idx.min() < 0 or idx.max() >= codebook.size):
        raise CovarianceVQError(f"indices must lie in [0, {codebook.size})")
    g = np.ones((len(s), 1))
    if point_scale is not None:
        point_scale = np.asarray(point_scale, dtype=np.float32)
        if point_scale.shape != (len(s),) or not np.all(np.isfinite(point_scale)) or np.any(point_scale <= 0):
            raise CovarianceVQError(f"point_scale must be [{len(s)}], finite and > 0")
        g = point_scale.astype(np.float64)[:, None]
    rs = np.zeros((len(s), 3), np.int64)
    rq = np.zeros((len(s), 4), np.int64)
    if steps.log_scale > 0:
        rs = np.rint((s.astype(np.float64) - codebook.log_scales[idx]) / (steps.log_scale * g)).astype(np.int64)
    if steps.quat > 0:
        c = codebook.quats[idx].astype(np.float64)
        qq = q.astype(np.float64)
        qq = np.where((qq * c).sum(axis=1, keepdims=True) < 0, -qq, qq)
        rq = np.rint((qq - c) / (steps.quat * g)).astype(np.int64)
    return CovarianceCode(codebook, idx, rs, rq, steps, point_scale)


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(z: int) -> int:
    return z // 2 if z % 2 == 0 else -(z + 1) // 2


def encode_shapes(code: CovarianceCode) -> bytes:
    """The covariance section's bytes."""
    vq = encode_covariance_indices(code.codebook, code.indices)
    out = bytearray([FORMAT_VERSION, 1 if code.point_scale is not None else 0])
    out += struct.pack("<ff", code.steps.log_scale, code.steps.quat)
    out += write_varint(len(vq)) + vq
    parts = [(code.steps.log_scale, code.residual_log_scales), (code.steps.quat, code.residual_quats)]
    columns = [r[:, j] for step, r in parts if step > 0 for j in range(r.shape[1])]
    if not columns or len(code.indices) == 0:
        return bytes(out)
    lows = [int(c.min()) for c in columns]
    span = max(int(c.max()) - lo for c, lo in zip(columns, lows)) + 1
    if span > MAX_RESIDUAL_ALPHABET:
        raise CovarianceVQError(f"residuals span {span} steps (limit {MAX_RESIDUAL_ALPHABET}): the step is too "
                                "small for this codebook")
    for lo in lows:
        out += write_varint(_zigzag(lo))
    out += write_varint(span)
    symbols = np.concatenate([c - lo for c, lo in zip(columns, lows)])
    contexts = np.repeat(np.arange(len(columns)), len(code.indices))
    out += encode_categorical(symbols, span, contexts)
    return bytes(out)


def decode_shapes_code(data: bytes, point_scale: Optional[np.ndarray] = None) -> CovarianceCode:
    """Inverse of :func:`encode_shapes`; ``point_scale`` [M]: the file's gain-map gains if it has
    a map (used only when the section says its steps are scaled); a
    :class:`CovarianceStreamError` on a bad stream."""
    data = bytes(data)
    if len(data) < 10 or data[0] != FORMAT_VERSION:
        raise CovarianceStreamError("not a covariance section (bad version byte or too short)")
    if data[1] not in (0, 1):
        raise CovarianceStreamError(f"unknown covariance flags {data[1]}")
    if data[1] == 1 and point_scale is None:
        raise CovarianceStreamError("the covariance steps are scaled by a gain map, but none was given")
    if data[1] == 0:
        point_scale = None  # the file's gain map (if any) does not apply to the covariances
    step_s, step_q = struct.unpack_from("<ff", data, 2)
    try:
        steps = ResidualSteps(step_s, step_q)
        n, pos = read_varint(data, 10)
    except (CovarianceVQError, CorruptStreamError) as err:
        raise CovarianceStreamError(f"covariance section header: {err}") from None
    if len(data) < pos + n:
        raise CovarianceStreamError("covariance section is truncated")
    codebook, idx = decode_covariance_indices(data[pos:pos + n])
    pos += n
    m = len(idx)
    if point_scale is not None:
        point_scale = np.asarray(point_scale, dtype=np.float32)
        if point_scale.shape != (m,):
            raise CovarianceStreamError(f"{m} shapes but {point_scale.shape} gains")
    rs = np.zeros((m, 3), np.int64)
    rq = np.zeros((m, 4), np.int64)
    counts = [3 if steps.log_scale > 0 else 0, 4 if steps.quat > 0 else 0]
    ncol = sum(counts)
    if codebook is None or ncol == 0:
        if pos != len(data):
            raise CovarianceStreamError("covariance section has trailing data")
        if codebook is None:
            codebook = CovarianceCodebook(np.zeros((1, 3)), np.array([[1.0, 0.0, 0.0, 0.0]]))
        return CovarianceCode(codebook, idx, rs, rq, steps, point_scale)
    try:
        lows = []
        for _ in range(ncol):
            z, pos = read_varint(data, pos)
            lows.append(_unzigzag(z))
        span, pos = read_varint(data, pos)
        if not 1 <= span <= MAX_RESIDUAL_ALPHABET:
            raise CovarianceStreamError(f"impossible residual alphabet {span}")
        symbols = decode_categorical(data[pos:], span, np.repeat(np.arange(ncol), m))
    except (CategoricalError, CorruptStreamError) as err:
        raise CovarianceStreamError(f"covariance residuals: {err}") from None
    cols = symbols.reshape(ncol, m) + np.asarray(lows, dtype=np.int64)[:, None]
    if counts[0]:
        rs = np.ascontiguousarray(cols[:3].T)
    if counts[1]:
        rq = np.ascontiguousarray(cols[counts[0]:].T)
    return CovarianceCode(codebook, idx, rs, rq, steps, point_scale)


def decode_shapes(data: bytes, point_scale: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(log-scales [M, 3], quats [M, 4]) float32 of a covariance section (``point_scale``: as
    for :func:`decode_shapes_code`)."""
    return decode_shapes_code(data, point_scale).shapes()
