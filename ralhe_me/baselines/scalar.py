"""Uniform scalar quantization with the RD-fair step rule, and entropy coding of the quantized
integers over CompressAI's rANS coder; plus the plain scalar baseline (no transform).

Step rule: attribute k with distortion weight w_k (``1/(4 pi)`` per SH coefficient, the opacity
weight for opacity, as in :mod:`ralhe_me.attributes`) gets ``step_k = base_step / sqrt(w_k)``, so
each attribute's weighted error ``w_k MSE_k`` is about ``base_step^2 / 12`` at high rate: one base
step spends distortion evenly in the units RALHE's loss uses.

Integers are coded by magnitude classes: the zigzag value ``u`` (0, -1, 1, -2 ... -> 0, 1, 2,
3 ...) is its own symbol below ``2^DIRECT_LOG2``; above, the symbol names its bit length ``n`` and
its second most significant bit, and the ``n - 2`` lower bits follow raw.  Symbols are coded with
a static (two-pass) histogram per context, fitted by the encoder and sent compactly (per context
its last used symbol, then the counts up to it, at the precision that minimizes the total size),
over the segmented rANS streams of :mod:`ralhe_me.entropy.categorical`.  Backward-adaptive
counts (nothing sent) were measured larger on every test point: the 88-symbol alphabet makes their
learning cost exceed the compact tables.  The tables never give an escape or an unused symbol any
width, so a corrupt stream decodes to garbage or raises, never loops or reads out of bounds.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..attributes import SH_WEIGHT
from ..entropy.categorical import (
    MAX_TABLE_BITS,
    CategoricalError,
    RansStreamReader,
    RansStreamWriter,
    bit_length,
    choose_table_precision,
    dense_unique,
    exp_golomb_decode,
    exp_golomb_encode,
    quantize_frequencies,
    read_varint,
    write_varint,
)

DIRECT_LOG2 = 4  # zigzag values below 2^4 are symbols of their own
MAX_MAGNITUDE_BITS = 40  # |q| < 2^39 (zigzag below 2^40)
ALPHABET = (1 << DIRECT_LOG2) + 2 * (MAX_MAGNITUDE_BITS - DIRECT_LOG2)


class AttributeCodecError(ValueError):
    """Invalid input to a baseline attribute coder; the message says what is wrong."""


class QuantizationRangeError(AttributeCodecError):
    """A quantized value too large to code (step far too small for the signal)."""


class AttributeStreamError(ValueError):
    """A baseline attribute stream is corrupt, truncated, or decoded with the wrong geometry."""


# ---------------------------------------------------------------- step rule and quantization

def attribute_weights(num_sh: int, opacity_weight: float = 0.25) -> np.ndarray:
    """float64 [K + 1]: distortion weight of a unit error per attribute (SH k, then opacity)."""
    return np.concatenate([np.full(int(num_sh), SH_WEIGHT), [float(opacity_weight)]])


def attribute_steps(num_sh: int, base_step: float, opacity_weight: float = 0.25) -> np.ndarray:
    """float64 [K + 1]: ``base_step / sqrt(w_k)``."""
    base_step = float(base_step)
    if not (np.isfinite(base_step) and base_step > 0):
        raise AttributeCodecError(f"base_step must be finite and > 0, got {base_step}")
    if not (np.isfinite(opacity_weight) and opacity_weight > 0):
        raise AttributeCodecError(f"opacity_weight must be finite and > 0, got {opacity_weight}")
    return base_step / np.sqrt(attribute_weights(num_sh, opacity_weight))


def channel_steps(num_sh: int, base_step: float, opacity_weight: float = 0.25) -> np.ndarray:
    """float64 [3 K + 1]: the step of each channel (SH k channels r, g, b, then opacity)."""
    steps = attribute_steps(num_sh, base_step, opacity_weight)
    return np.concatenate([np.repeat(steps[:-1], 3), steps[-1:]])


def quantize(x: np.ndarray, step: np.ndarray, rounding: float = 0.5) -> np.ndarray:
    """int64 ``sign(x) * floor(|x| / step + rounding)``; ``rounding`` 0.5 is plain rounding, less
    widens the dead zone.  Raises QuantizationRangeError for values that cannot be coded."""
    if not 0.0 <= rounding <= 0.5:
        raise AttributeCodecError(f"rounding must be in [0, 0.5], got {rounding}")
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise AttributeCodecError("values to quantize must be finite")
    mag = np.floor(np.abs(x) / step + rounding)
    if mag.size and mag.max() >= 2.0 ** (MAX_MAGNITUDE_BITS - 2):
        raise QuantizationRangeError(
            f"quantized magnitude {mag.max():.3g} exceeds 2^{MAX_MAGNITUDE_BITS - 2}; use a larger step")
    return (np.sign(x) * mag).astype(np.int64)


def dequantize(q: np.ndarray, step: np.ndarray) -> np.ndarray:
    """float64 ``q * step``."""
    return np.asarray(q, dtype=np.float64) * step


# ---------------------------------------------------------------- integer <-> symbols

def zigzag(q: np.ndarray) -> np.ndarray:
    """0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ... (int64)."""
    q = np.asarray(q, dtype=np.int64)
    return (q << 1) ^ (q >> 63)


def unzigzag(u: np.ndarray) -> np.ndarray:
    u = np.asarray(u, dtype=np.int64)
    return (u >> 1) ^ -(u & 1)


def to_symbols(q: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(symbols [N] in [0, ALPHABET), raw bit counts [N], raw bit values [N]) of integers q."""
    q = np.asarray(q, dtype=np.int64)
    if q.size and np.abs(q).max() >= 1 << (MAX_MAGNITUDE_BITS - 1):
        raise QuantizationRangeError(f"integer magnitude exceeds 2^{MAX_MAGNITUDE_BITS - 1}")
    u = zigzag(q)
    d = DIRECT_LOG2
    sym = u.copy()
    nb = np.zeros_like(u)
    raw = np.zeros_like(u)
    big = np.flatnonzero(u >= (1 << d))
    if big.size:
        ub = u[big]
        n = bit_length(ub)
        sym[big] = (1 << d) + 2 * (n - d - 1) + ((ub >> (n - 2)) & 1)
        nb[big] = n - 2
        raw[big] = ub & ((np.int64(1) << (n - 2)) - 1)
    return sym, nb, raw


def from_symbols(sym: np.ndarray, raw_reader: "_BitReader") -> np.ndarray:
    """Integers from symbols and the raw bits that follow them (in symbol order)."""
    d = DIRECT_LOG2
    u = np.asarray(sym, dtype=np.int64).copy()
    big = np.flatnonzero(u >= (1 << d))
    k = u[big] - (1 << d)
    nb = k // 2 + d - 1  # bit length n = k // 2 + d + 1, minus the two modelled bits
    counts = np.zeros_like(u)
    counts[big] = nb
    raw = raw_reader.read(counts)[big]
    u[big] = ((np.int64(2) | (k & 1)) << nb) | raw
    return unzigzag(u)


def pack_bits(counts: np.ndarray, values: np.ndarray) -> bytes:
    """``values`` [N] written MSB-first with ``counts`` [N] bits each (0..62), zero-padded to bytes."""
    counts = np.asarray(counts, dtype=np.int64)
    keep = counts > 0
    counts, values = counts[keep], np.asarray(values, dtype=np.int64)[keep]
    total = int(counts.sum())
    if total == 0:
        return b""
    rep = np.repeat(np.arange(counts.size), counts)
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    bits = ((values[rep] >> (counts[rep] - 1 - within)) & 1).astype(np.uint8)
    return np.packbits(bits).tobytes()


class _BitReader:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, counts: np.ndarray) -> np.ndarray:
        """Values [N] of ``counts`` [N] bits each; the whole data must be used (padding zero)."""
        counts = np.asarray(counts, dtype=np.int64)
        total = int(counts.sum())
        if (total + 7) // 8 != len(self.data):
            raise AttributeStreamError(
                f"raw bit section holds {len(self.data)} bytes, the symbols need {(total + 7) // 8}")
        out = np.zeros(counts.size, dtype=np.int64)
        if total == 0:
            return out
        bits = np.unpackbits(np.frombuffer(self.data, dtype=np.uint8))
        if bits[total:].any():
            raise AttributeStreamError("raw bit section has nonzero padding")
        keep = np.flatnonzero(counts > 0)
        c = counts[keep]
        ends = np.cumsum(c)
        # value = sum over its bits of bit << position; positions from the MSB
        shift = np.repeat(ends, c) - 1 - np.arange(total)
        out[keep] = np.add.reduceat(bits[:total].astype(np.int64) << shift, ends - c)
        return out


# ---------------------------------------------------------------- integer streams

def _quantize_counts(counts: np.ndarray, table_bits: int) -> np.ndarray:
    """Counts [U, A] divided (rounding up) by a power of two per row so every value is at most
    ``2^table_bits`` (positives stay positive); 0 bits: 1 for every symbol up to the row's last used."""
    if table_bits <= 0:
        return (np.arange(counts.shape[1])[None, :] <= _last_used(counts)[:, None]).astype(np.int64)
    shift = np.maximum(bit_length(counts.max(axis=1)) - table_bits, 0)
    return -((-counts) >> shift[:, None])


def _last_used(counts: np.ndarray) -> np.ndarray:
    """[U] index of the last positive entry per row (rows have one)."""
    return counts.shape[1] - 1 - np.argmax(counts[:, ::-1] > 0, axis=1)


def _table_bytes(q: np.ndarray, table_bits: int) -> bytes:
    """Per used context its last symbol, then (unless 0 bits) its values up to it: two
    byte-aligned exp-Golomb runs."""
    last = _last_used(q)
    out = exp_golomb_encode(last)
    if table_bits > 0:
        keep = np.arange(q.shape[1])[None, :] <= last[:, None]
        out += exp_golomb_encode(q[keep])
    return out


def _choose_table(counts: np.ndarray) -> Tuple[int, np.ndarray, bytes]:
    """(precision, frequencies [U, A], table bytes) minimizing table + coded bits."""
    return choose_table_precision(counts, _quantize_counts, _table_bytes)


def _read_table(data: bytes, num_used: int, table_bits: int) -> Tuple[np.ndarray, int]:
    """(frequencies [U, A], bytes used) from what :func:`_table_bytes` wrote."""
    last, pos = exp_golomb_decode(data, num_used)
    if last.size and last.max() >= ALPHABET:
        raise AttributeStreamError("frequency table names a symbol outside the alphabet")
    keep = np.arange(ALPHABET)[None, :] <= last[:, None]
    if table_bits <= 0:
        q = keep.astype(np.int64)
    else:
        vals, n = exp_golomb_decode(data[pos:], int(keep.sum()))
        pos += n
        if vals.size and vals.max() > 1 << table_bits:
            raise AttributeStreamError("frequency table value exceeds its precision")
        q = np.zeros((num_used, ALPHABET), dtype=np.int64)
        q[keep] = vals
        if np.any(q.sum(axis=1) == 0):
            raise AttributeStreamError("a used context has an empty frequency table")
    return quantize_frequencies(q), pos


def encode_integers(q: np.ndarray, contexts: np.ndarray) -> bytes:
    """Integers ``q`` [N] (|q| < 2^39) under ``contexts`` [N] (small ints >= 0), which the decoder
    must know.  Static two-pass model: a histogram per context that occurs, at the precision that
    minimizes the total.  Layout: varint precision, varint table length, tables, varint rANS
    length, rANS segments, raw bits of the large values."""
    q = np.asarray(q, dtype=np.int64).ravel()
    ctx = np.asarray(contexts, dtype=np.int64).ravel()
    if q.shape != ctx.shape:
        raise AttributeCodecError(f"values {q.shape} and contexts {ctx.shape} differ in shape")
    if ctx.size and ctx.min() < 0:
        raise AttributeCodecError("contexts must be >= 0")
    sym, nb, raw = to_symbols(q)
    if q.size == 0:
        return write_varint(0) + write_varint(0) + write_varint(0)
    used, index = dense_unique(ctx)
    counts = np.zeros((used.size, ALPHABET), dtype=np.int64)
    np.add.at(counts, (index, sym), 1)
    table_bits, freqs, table = _choose_table(counts)
    writer = RansStreamWriter(ALPHABET)
    writer.add(sym, index, freqs)
    stream = writer.finish()
    return (write_varint(table_bits) + write_varint(len(table)) + table + write_varint(len(stream)) + stream
            + pack_bits(nb, raw))


def decode_integers(data: bytes, contexts: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_integers` -> int64 [N] (N = len(contexts))."""
    ctx = np.asarray(contexts, dtype=np.int64).ravel()
    data = bytes(data)
    try:
        table_bits, pos = read_varint(data, 0)
        length, pos = read_varint(data, pos)
        if table_bits > MAX_TABLE_BITS or pos + length > len(data):
            raise AttributeStreamError("integer stream header is invalid or truncated")
        if ctx.size == 0:
            if length or data[pos:] != write_varint(0):
                raise AttributeStreamError("an empty integer stream holds data")
            return np.zeros(0, dtype=np.int64)
        used, index = dense_unique(ctx)
        freqs, n = _read_table(data[pos:pos + length], used.size, table_bits)
        if n != length:
            raise AttributeStreamError("frequency tables have trailing bytes")
        pos += length
        length, pos = read_varint(data, pos)
        if pos + length > len(data):
            raise AttributeStreamError("integer stream is truncated")
        reader = RansStreamReader(data[pos:pos + length], ctx.size, ALPHABET)
        sym = reader.read(index, freqs)
        pos += length
    except CategoricalError as err:  # the categorical layer's corrupt-stream errors
        raise AttributeStreamError(f"corrupt symbol stream: {err}") from err
    if sym.size and (sym.min() < 0 or sym.max() >= ALPHABET or np.any(freqs[index, sym] == 0)):
        raise AttributeStreamError("decoded a symbol outside its table")
    return from_symbols(sym, _BitReader(data[pos:]))


# ---------------------------------------------------------------- plain scalar baseline

def scalar_encode(values: np.ndarray, steps: np.ndarray) -> Tuple[bytes, np.ndarray]:
    """Quantize every channel of ``values`` [M, C] with its step (``steps`` [C]) and code the
    integers, one context per channel, after subtracting the channel's median integer (sent).
    Returns (bytes, the reconstruction float64 [M, C] the decoder will produce)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(steps):
        raise AttributeCodecError(f"values must be [M, {len(steps)}], got {values.shape}")
    m, c = values.shape
    q = quantize(values, steps[None, :])  # [M, C]
    offset = np.median(q, axis=0).astype(np.int64) if m else np.zeros(c, np.int64)  # [C]
    head = b"".join(write_varint(int(u)) for u in zigzag(offset))
    resid = (q - offset[None, :]).T.ravel()  # channel-major
    ctx = np.repeat(np.arange(c), m)
    data = head + encode_integers(resid, ctx)
    return data, scalar_reconstruct(q, steps)


def scalar_reconstruct(q: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """float64 [M, C] of integers q [M, C] (shared by encoder and decoder)."""
    return dequantize(q, steps[None, :])


def scalar_decode(data: bytes, steps: np.ndarray, num_points: int) -> np.ndarray:
    """Inverse of :func:`scalar_encode` -> float64 [M, C]."""
    c = len(steps)
    pos = 0
    offs = []
    try:
        for _ in range(c):
            v, pos = read_varint(data, pos)
            offs.append(v)
    except CategoricalError as err:
        raise AttributeStreamError(f"corrupt channel offsets: {err}") from err
    if max(offs, default=0) >= 1 << MAX_MAGNITUDE_BITS:
        raise AttributeStreamError("channel offset out of range")
    offset = unzigzag(np.array(offs, dtype=np.int64))
    ctx = np.repeat(np.arange(c), num_points)
    resid = decode_integers(data[pos:], ctx).reshape(c, num_points).T
    q = resid + offset[None, :]
    return scalar_reconstruct(q, steps)
