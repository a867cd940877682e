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
coarse where the shape does not show in the renders. Or the section carries its own per-point
step exponents ``e_i`` (``g_i = 2^(e_i / 2)``), set from each shape's own rendering sensitivity
(``encode/shape_sensitivity.py``): a shape error is not an attribute error, and the two
sensitivities differ (the gain map's attribute weights made the donut's shapes worse, see
``encode.encoder.covariance_gains``).

Reconstruction, identical in encoder and decoder (float32 arithmetic):
``log_scales = codeword_log_scales[i] + (r_s * step_s) * g``, and (version 2) ``quats = c * (1, t)``,
the quaternion product of the codeword ``c`` with ``(1, t)``, ``t = (r_q * step_q) * g`` in a fixed
order of float32 operations (:func:`compose_rotation`; the renderer normalizes quaternions).
``t`` is the Rodrigues vector (axis times tan(angle / 2)) of the rotation from the codeword to the
Gaussian's, ``vec(c^-1 q) / scal(c^-1 q)``: 3 numbers for a rotation's 3 degrees of freedom.
Version 1 coded the 4 components of ``q - c``, which spends bits on the quaternion's norm: on the
donut (depth 11, 64 or 256 codewords) the Rodrigues section is 6-10% smaller, 1.5 bits per
Gaussian less at a log-scale step of 0.4 (quaternion step 0.08) up to 4.4 at 0.05, at a smaller
mean angular error (4.20 against 4.38 degrees at 0.4, 256 codewords). Why not the tangent of
``q - c`` alone: its error grows with the residual's size (1.5 against 0.55 degrees at a
quaternion step of 0.01), the Rodrigues one does not. A Gaussian whose
rotation is over 151 degrees from its codeword takes the codeword nearest in rotation instead
(unless the indices are given); when even that one is that far (a tiny codebook), the section
falls back to version 1.

Stream: version byte (1: quaternion residual ``q - c``, 4 columns; 2: Rodrigues, 3 columns); flags
byte (0: uniform steps; 1: steps scaled per point by the gain map; 2: by the section's own step
exponents); float32 steps (log-scale, quaternion); varint length + the VQ stream of
``covariance_vq``; with flags 2, varint length + the exponents (one per shape,
``entropy/exponents.py``, as the gain map's); if a step is nonzero: per
component its zigzag offset (varint) and the residual symbols, coded by the static categorical
coder with one context per component.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..entropy.categorical import CategoricalError, CorruptStreamError, decode_categorical, encode_categorical, \
    read_varint, write_varint
from ..entropy.exponents import EXPONENT_LIMIT, decode_exponents, encode_exponents, exponent_gains
from .covariance_vq import (MAX_CODEBOOK_SIZE, CovarianceCodebook, CovarianceStreamError, CovarianceVQError,
                            canonical_quats, decode_covariance_indices, encode_covariance_indices)

FORMAT_VERSION = 2
CARTESIAN_VERSION = 1  # still read, and written when the Rodrigues residual cannot serve
#: a rotation this far from its codeword (cos of half the angle, 151 degrees) takes another codeword
MIN_HALF_ANGLE_COSINE = 0.25
MAX_RESIDUAL_ALPHABET = MAX_CODEBOOK_SIZE  # categorical coder limit on one component's symbol range
FLAG_UNIFORM, FLAG_GAIN_MAP, FLAG_OWN_EXPONENTS = 0, 1, 2
STEP_EXPONENT_LIMIT = EXPONENT_LIMIT  # |e| <= 8: per-point steps from 1/16 to 16 times the section's


def check_step_exponents(exponents, count: int) -> np.ndarray:  # -> [count] int64
    e = np.asarray(exponents)
    if e.shape != (count,) or not np.issubdtype(e.dtype, np.integer):
        raise CovarianceVQError(f"step exponents must be [{count}] integers, got {e.dtype} {e.shape}")
    e = e.astype(np.int64)
    if count and (e.min() < -STEP_EXPONENT_LIMIT or e.max() > STEP_EXPONENT_LIMIT):
        raise CovarianceVQError(f"step exponents must lie in [-{STEP_EXPONENT_LIMIT}, {STEP_EXPONENT_LIMIT}], "
                                f"got [{e.min()}, {e.max()}]")
    return e


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
    residual_quats: np.ndarray  # [M, 3] int64 Rodrigues (rodrigues) or [M, 4] q - c
    steps: ResidualSteps
    point_scale: Optional[np.ndarray] = None  # [M] per-point step factor (gain map or own exponents)
    rodrigues: bool = True  # version 2: residual_quats is the Rodrigues vector from the codeword
    step_exponents: Optional[np.ndarray] = None  # [M] int, stored (flags 2); point_scale is their gains

    def offsets(self) -> Tuple[np.ndarray, np.ndarray]:  # [M, 3], [M, 3 or 4] float32
        """The residuals in parameter units: added to the log-scale codewords; composed with the
        quaternion codewords (:func:`compose_rotation`), or added to them in version 1."""
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
        quats = book.quats[self.indices]
        quats = compose_rotation(quats, dq) if self.rodrigues else quats + dq
        return book.log_scales[self.indices] + ds, quats


def compose_rotation(c, t):
    """``c * (1, t)``: quaternions [M, 4] (w, x, y, z) times the rotations of Rodrigues vectors
    ``t`` [M, 3], in this order of float32 (or torch) operations, which the native decoder repeats
    (decode/native/src/covariance.cpp): each product rounded, then the sums from the left."""
    w, x, y, z = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
    a, b, d = t[:, 0], t[:, 1], t[:, 2]
    parts = (((w - a * x) - b * y) - d * z, ((x + a * w) - b * z) + d * y,
             ((y + a * z) + b * w) - d * x, ((z - a * y) + b * x) + d * w)
    if isinstance(c, np.ndarray):
        return np.stack(parts, axis=1)
    import torch

    return torch.stack(parts, dim=1)


def rodrigues_residual(q: np.ndarray, c: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rodrigues vectors [M, 3] of the rotations from codewords ``c`` [M, 4] to ``q`` [M, 4]
    (float64), and the cosine of each half angle (of the unit quaternions) [M]."""
    c = np.asarray(c, np.float64)
    q = np.asarray(q, np.float64)
    cw, cx, cy, cz = c.T
    qw, qx, qy, qz = q.T
    # conj(c) * q
    pw = cw * qw + cx * qx + cy * qy + cz * qz
    px = cw * qx - cx * qw - cy * qz + cz * qy
    py = cw * qy + cx * qz - cy * qw - cz * qx
    pz = cw * qz - cx * qy + cy * qx - cz * qw
    sign = np.where(pw < 0, -1.0, 1.0)  # q and -q are the same rotation
    pw = pw * sign
    norm = np.sqrt(pw * pw + px * px + py * py + pz * pz)
    cosine = np.divide(pw, norm, out=np.zeros_like(pw), where=norm > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.stack([px, py, pz], axis=1) * (sign / pw)[:, None]
    return t, cosine


def _nearest_rotations(q: np.ndarray, quats: np.ndarray) -> np.ndarray:
    """For unit quaternions ``q`` [M, 4], the codeword of ``quats`` [K, 4] nearest in rotation (largest
    |cos| of the half angle between them)."""
    unit = np.asarray(quats, np.float64)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-30)
    return np.argmax(np.abs(np.asarray(q, np.float64) @ unit.T), axis=1)


def quantize_shapes(log_scales: np.ndarray, quats: np.ndarray, codebook: CovarianceCodebook,
                    steps: ResidualSteps = ResidualSteps(),
                    indices: Optional[np.ndarray] = None,
                    point_scale: Optional[np.ndarray] = None, rodrigues: bool = True,
                    step_exponents: Optional[np.ndarray] = None) -> CovarianceCode:
    """Code shapes ``log_scales`` [M, 3], ``quats`` [M, 4] against ``codebook`` (nearest codewords
    unless ``indices`` [M] are given) with residual ``steps``, times ``point_scale`` [M] > 0 per
    point (the gain map's gains, not stored) or ``2^(e / 2)`` of ``step_exponents`` [M] (stored in
    the section) if given; the rotation residual as a Rodrigues vector (version 2) unless
    ``rodrigues`` is False or a rotation is too far from every codeword for it (version 1, ``q - c``)."""
    s = np.asarray(log_scales, dtype=np.float32)
    if step_exponents is not None:
        if point_scale is not None:
            raise CovarianceVQError("give per-point steps as point_scale or as step_exponents, not both")
        step_exponents = check_step_exponents(step_exponents, len(s))
        point_scale = exponent_gains(step_exponents)
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
    if rodrigues and steps.quat > 0 and len(s):
        t, cosine = rodrigues_residual(q, codebook.quats[idx])
        far = ~(cosine >= MIN_HALF_ANGLE_COSINE)
        if np.any(far) and indices is None:  # another codeword: a larger scale residual, a codable rotation one
            idx = idx.copy()
            idx[far] = _nearest_rotations(q[far], codebook.quats)
            t, cosine = rodrigues_residual(q, codebook.quats[idx])
        rodrigues = bool(np.all(cosine >= MIN_HALF_ANGLE_COSINE))
    rs = np.zeros((len(s), 3), np.int64)
    rq = np.zeros((len(s), 3 if rodrigues else 4), np.int64)
    if steps.log_scale > 0:
        rs = np.rint((s.astype(np.float64) - codebook.log_scales[idx]) / (steps.log_scale * g)).astype(np.int64)
    if steps.quat > 0 and rodrigues and len(s):
        rq = np.rint(t / (steps.quat * g)).astype(np.int64)
    elif steps.quat > 0:
        c = codebook.quats[idx].astype(np.float64)
        qq = q.astype(np.float64)
        qq = np.where((qq * c).sum(axis=1, keepdims=True) < 0, -qq, qq)
        rq = np.rint((qq - c) / (steps.quat * g)).astype(np.int64)
    return CovarianceCode(codebook, idx, rs, rq, steps, point_scale, rodrigues, step_exponents)


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(z: int) -> int:
    return z // 2 if z % 2 == 0 else -(z + 1) // 2


def encode_shapes(code: CovarianceCode) -> bytes:
    """The covariance section's bytes."""
    vq = encode_covariance_indices(code.codebook, code.indices)
    version = FORMAT_VERSION if code.rodrigues else CARTESIAN_VERSION
    if code.step_exponents is not None:
        flags = FLAG_OWN_EXPONENTS
    else:
        flags = FLAG_GAIN_MAP if code.point_scale is not None else FLAG_UNIFORM
    out = bytearray([version, flags])
    out += struct.pack("<ff", code.steps.log_scale, code.steps.quat)
    out += write_varint(len(vq)) + vq
    if flags == FLAG_OWN_EXPONENTS:
        e = check_step_exponents(code.step_exponents, len(code.indices))
        ex = encode_exponents(e)
        out += write_varint(len(ex)) + ex
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
    a map (used only when the section says its steps are scaled by it); a
    :class:`CovarianceStreamError` on a bad stream."""
    data = bytes(data)
    if len(data) < 10 or data[0] not in (CARTESIAN_VERSION, FORMAT_VERSION):
        raise CovarianceStreamError("not a covariance section (bad version byte or too short)")
    rodrigues = data[0] == FORMAT_VERSION
    flags = data[1]
    if flags not in (FLAG_UNIFORM, FLAG_GAIN_MAP, FLAG_OWN_EXPONENTS):
        raise CovarianceStreamError(f"unknown covariance flags {flags}")
    if flags == FLAG_GAIN_MAP and point_scale is None:
        raise CovarianceStreamError("the covariance steps are scaled by a gain map, but none was given")
    if flags != FLAG_GAIN_MAP:
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
    exponents = None
    if flags == FLAG_OWN_EXPONENTS:
        try:
            size, pos = read_varint(data, pos)
            if len(data) < pos + size:
                raise CovarianceStreamError("the step exponents are truncated")
            exponents = decode_exponents(data[pos:pos + size])
        except (CategoricalError, CorruptStreamError) as err:
            raise CovarianceStreamError(f"covariance step exponents: {err}") from None
        if exponents.size != m:
            raise CovarianceStreamError(f"covariance step exponents: {exponents.size} for {m} shapes")
        pos += size
        point_scale = exponent_gains(exponents)
    if point_scale is not None:
        point_scale = np.asarray(point_scale, dtype=np.float32)
        if point_scale.shape != (m,):
            raise CovarianceStreamError(f"{m} shapes but {point_scale.shape} gains")
    quat_columns = 3 if rodrigues else 4
    rs = np.zeros((m, 3), np.int64)
    rq = np.zeros((m, quat_columns), np.int64)
    counts = [3 if steps.log_scale > 0 else 0, quat_columns if steps.quat > 0 else 0]
    ncol = sum(counts)
    if codebook is None or ncol == 0:
        if pos != len(data):
            raise CovarianceStreamError("covariance section has trailing data")
        if codebook is None:
            codebook = CovarianceCodebook(np.zeros((1, 3)), np.array([[1.0, 0.0, 0.0, 0.0]]))
        return CovarianceCode(codebook, idx, rs, rq, steps, point_scale, rodrigues, exponents)
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
    return CovarianceCode(codebook, idx, rs, rq, steps, point_scale, rodrigues, exponents)


def decode_shapes(data: bytes, point_scale: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(log-scales [M, 3], quats [M, 4]) float32 of a covariance section (``point_scale``: as
    for :func:`decode_shapes_code`)."""
    return decode_shapes_code(data, point_scale).shapes()
