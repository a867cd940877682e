"""Entropy coding of symbols from small alphabets with context-dependent frequency tables, over
CompressAI's rANS coder.

Two probability models share one stream layer:

* **static** (two-pass): the encoder counts a histogram per context, sends it at a reduced
  precision it picks by measurement (the table bits count in the size), and codes every symbol with
  the tables both sides build from the sent histograms;
* **adaptive** (backward): both sides start from empty counts and update them after each *batch*,
  so nothing but the symbols is sent.  Used where contexts are many and data per context is small
  (octree occupancy).

Both take symbols in *batches*: the decoder computes the contexts of a batch from what it already
decoded (one octree level, say), then decodes the batch.  All table arithmetic is integer, so encoder
and decoder build identical tables on any machine.

CompressAI's CDF format: precision 16, ``cdf[0] = 0``, ``cdf[len-1] = 2**16``; a table of length
``A + 2`` codes values ``0..A-1`` plus an escape value ``A`` (followed by raw bits).  We never code
escapes: every table gives the escape zero width, and symbols that can occur get a nonzero
frequency, so the decoder can never land on the escape or a zero-width symbol, even from garbage.
(Zero-width entries need CompressAI built without asserts, as its wheels are.)

Stream safety: CompressAI's decoder reads one 32-bit word per decoded symbol at most (never more
without escapes) and does not check the end of its buffer, so each rANS segment is handed over with
that many zero words appended; segments hold at most :data:`SEGMENT_SYMBOLS` symbols to bound that
memory.  Its encoder writes into a buffer of one word per symbol, so short segments are padded with
near-free symbols that are never decoded.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .laplace import load_rans

PRECISION = 16  # CompressAI's probability precision (fixed in its C++ code)
TOTAL_FREQ = 1 << PRECISION
SEGMENT_SYMBOLS = 1 << 20  # symbols per rANS segment (bounds the decoder's over-read padding)
MIN_SEGMENT_SYMBOLS = 8  # CompressAI's encoder buffer holds len(symbols) words; 16N/32 + 3 <= N
MAX_ALPHABET = 1 << 15
MAX_TABLE_BITS = 15  # largest histogram precision the static coder sends
_PAD_CDF = [0, TOTAL_FREQ - 1, TOTAL_FREQ, TOTAL_FREQ]  # symbol 0 costs 2e-5 bits


class CategoricalError(ValueError):
    """Invalid input to a categorical coder; the message says what is wrong."""


class CorruptStreamError(CategoricalError):
    """A categorical stream is truncated, has trailing bytes, or fails its check sum."""


# ---------------------------------------------------------------- byte and bit helpers

def write_varint(value: int) -> bytes:
    """LEB128 unsigned varint."""
    if value < 0:
        raise CategoricalError(f"varint value must be >= 0, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    """(value, next position) of the varint at ``data[pos:]``."""
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise CorruptStreamError("stream ends inside a varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CorruptStreamError("varint longer than 64 bits")


def _check16(payload: bytes) -> bytes:
    return (zlib.crc32(payload) & 0xFFFF).to_bytes(2, "little")


def bit_length(values: np.ndarray) -> np.ndarray:
    """Exact ``int.bit_length`` of each value (int64, 0 <= value < 2**53)."""
    return np.frexp(np.asarray(values, dtype=np.int64).astype(np.float64))[1].astype(np.int64)


def exp_golomb_bits(values: np.ndarray) -> np.ndarray:
    """Length in bits of the order-0 exp-Golomb code of each value (int64 >= 0)."""
    return 2 * bit_length(np.asarray(values, dtype=np.int64) + 1) - 1


def exp_golomb_encode(values: np.ndarray) -> bytes:
    """Order-0 exp-Golomb codes of ``values`` (int64 >= 0) packed MSB-first, zero-padded."""
    x = np.asarray(values, dtype=np.int64).ravel() + 1
    if x.size == 0:
        return b""
    nbits = bit_length(x)
    length = 2 * nbits - 1
    start = np.cumsum(length) - length
    bits = np.zeros(int(length.sum()), dtype=np.uint8)
    rep = np.repeat(np.arange(x.size), nbits)
    within = np.arange(rep.size) - np.repeat(np.cumsum(nbits) - nbits, nbits)
    bits[start[rep] + nbits[rep] - 1 + within] = (x[rep] >> (nbits[rep] - 1 - within)) & 1
    return np.packbits(bits).tobytes()


def exp_golomb_decode(data: bytes, count: int) -> Tuple[np.ndarray, int]:
    """(``count`` values, whole bytes consumed) read from exp-Golomb codes at the start of ``data``."""
    out = np.empty(count, dtype=np.int64)
    if count == 0:
        return out, 0
    text = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).tobytes()
    text = text.translate(bytes.maketrans(b"\0\1", b"01")).decode("ascii")
    pos = 0
    for i in range(count):
        one = text.find("1", pos)
        if one < 0:
            raise CorruptStreamError("exp-Golomb table ends early")
        end = 2 * one - pos + 1
        if end > len(text) or one - pos > 62:
            raise CorruptStreamError("exp-Golomb table ends early or holds an oversized value")
        out[i] = int(text[one:end], 2) - 1
        pos = end
    return out, (pos + 7) // 8


def dense_unique(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value among them) of small non-negative ints, in
    O(n + max) (``np.unique`` sorts)."""
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size == 0:
        return values.copy(), values.copy()
    present = np.bincount(values) > 0
    used = np.flatnonzero(present)
    lookup = np.cumsum(present) - 1
    return used, lookup[values]


# ---------------------------------------------------------------- frequency tables

def quantize_frequencies(weights: np.ndarray) -> np.ndarray:
    """Rows of integer weights [R, A] (>= 0) -> frequencies [R, A] summing to 2**16 per row.

    Exact integer arithmetic (same result on every machine).  A weight of 0 gives frequency 0, a
    positive weight at least 1; the rest is shared in proportion, remainders going to the largest
    fractional parts (ties to the lower symbol).  All-zero rows stay all zero (unused tables).
    """
    w = np.asarray(weights, dtype=np.int64)
    if w.ndim != 2:
        raise CategoricalError(f"weights must have shape [R, A], got {w.shape}")
    if w.size and w.min() < 0:
        raise CategoricalError("weights must be >= 0")
    rows, alphabet = w.shape
    if alphabet > MAX_ALPHABET:
        raise CategoricalError(f"alphabet of {alphabet} symbols exceeds {MAX_ALPHABET}")
    if rows == 0:
        return w.copy()
    big = int(w.max()) if w.size else 0
    if big >= 1 << 40:  # keep weight * 2**16 inside int64; scaling keeps positives positive
        shift = big.bit_length() - 40
        w = np.where(w > 0, np.maximum(w >> shift, 1), 0)
    positive = w > 0
    npos = positive.sum(axis=1)
    total = w.sum(axis=1)
    spare = np.where(npos > 0, TOTAL_FREQ - npos, 0)
    denom = np.maximum(total, 1)
    scaled = w * spare[:, None]
    freq = scaled // denom[:, None] + positive
    left = spare - (scaled // denom[:, None]).sum(axis=1)  # in [0, npos)
    rem = np.where(positive, scaled % denom[:, None], -1)
    if alphabet == 2:  # left is 0 or 1: to the larger remainder, ties to symbol 0
        first = rem[:, 0] >= rem[:, 1]
        freq[:, 0] += (left > 0) & first
        freq[:, 1] += (left > 0) & ~first
        return freq
    order = np.argsort(-rem, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(alphabet)[None, :].repeat(rows, 0), axis=1)
    freq += rank < left[:, None]
    return freq


def _unique_rows(rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(distinct frequency rows, index of each row among them); rows sum to 2**16, so A - 1
    entries (17 bits each) determine a row and small alphabets dedupe on one int64 key."""
    if rows.shape[1] <= 4:
        key = np.zeros(len(rows), dtype=np.int64)
        for j in range(rows.shape[1] - 1):
            key = (key << 17) | rows[:, j]
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return rows[first], inverse.reshape(-1)
    distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
    return distinct, inverse.reshape(-1)


def frequencies_to_cdfs(freqs: np.ndarray) -> Tuple[List[List[int]], int]:
    """(CompressAI CDF rows, their length) of frequency rows [T, A], escape given zero width.

    CompressAI's encoder fails (SIGFPE) on a frequency of 2**16, so a row holding one symbol
    gives 1 to the next symbol (cyclically; alphabet 1 is widened to 2).  That symbol is never
    coded; a decoder fed garbage may return it, which the stream reader rejects for A = 1.
    """
    f = np.asarray(freqs, dtype=np.int64)
    if f.shape[1] == 1:
        f = np.concatenate([f, np.zeros_like(f)], axis=1)
    full = np.flatnonzero(f.max(axis=1, initial=0) == TOTAL_FREQ)
    if len(full):
        f = f.copy()
        sym = np.argmax(f[full], axis=1)
        f[full, sym] -= 1
        f[full, (sym + 1) % f.shape[1]] += 1
    cdf = np.zeros((f.shape[0], f.shape[1] + 2), dtype=np.int64)
    np.cumsum(f, axis=1, out=cdf[:, 1:-1])
    cdf[:, -1] = TOTAL_FREQ
    return cdf.tolist(), f.shape[1] + 2


def code_length_bits(symbols: np.ndarray, freqs: np.ndarray) -> float:
    """Ideal rANS cost in bits of ``symbols`` [N] coded with rows ``freqs`` [N, A] (one per symbol)."""
    f = np.asarray(freqs)[np.arange(len(symbols)), np.asarray(symbols)]
    return float(-np.log2(f / TOTAL_FREQ).sum())


# ---------------------------------------------------------------- segmented rANS streams

class RansStreamWriter:
    """Collects symbols with one frequency row each (table index into per-call table arrays) and
    writes them as rANS segments of :data:`SEGMENT_SYMBOLS` symbols."""

    def __init__(self, alphabet_size: int):
        self.alphabet_size = int(alphabet_size)
        self._symbols: List[np.ndarray] = []
        self._tables: List[np.ndarray] = []  # per call, [T, A]
        self._indexes: List[np.ndarray] = []  # per call, into that call's tables
        self.num_symbols = 0

    def add(self, symbols: np.ndarray, indexes: np.ndarray, tables: np.ndarray) -> None:
        symbols = np.asarray(symbols, dtype=np.int64).ravel()
        indexes = np.asarray(indexes, dtype=np.int64).ravel()
        tables = np.asarray(tables, dtype=np.int64)
        if symbols.size == 0:
            return
        if tables.ndim != 2 or tables.shape[1] != self.alphabet_size:
            raise CategoricalError(f"tables must have shape [T, {self.alphabet_size}], got {tables.shape}")
        if symbols.min() < 0 or symbols.max() >= self.alphabet_size:
            raise CategoricalError(f"symbols must lie in [0, {self.alphabet_size})")
        if np.any(tables[indexes, symbols] <= 0):
            raise CategoricalError("a symbol to code has zero probability in its table")
        self._symbols.append(symbols)
        self._tables.append(tables)
        self._indexes.append(indexes)
        self.num_symbols += symbols.size

    def finish(self) -> bytes:
        """Segment lengths (varints, all but the last) followed by the segments."""
        RansEncoder = load_rans().RansEncoder

        if self.num_symbols == 0:
            return b""
        offsets = np.cumsum([0] + [len(t) for t in self._tables])
        tables = np.concatenate(self._tables)
        index = np.concatenate([i + o for i, o in zip(self._indexes, offsets[:-1])])
        symbols = np.concatenate(self._symbols)
        segments = []
        for start in range(0, len(symbols), SEGMENT_SYMBOLS):
            sym = symbols[start:start + SEGMENT_SYMBOLS]
            idx = index[start:start + SEGMENT_SYMBOLS]
            used, local = dense_unique(idx)
            rows, remap = _unique_rows(tables[used])
            local = remap[local]
            cdfs, length = frequencies_to_cdfs(rows)
            pad = max(0, MIN_SEGMENT_SYMBOLS - len(sym))
            enc = RansEncoder()
            seg = enc.encode_with_indexes(
                sym.tolist() + [0] * pad,
                local.tolist() + [len(cdfs)] * pad,
                cdfs + [_PAD_CDF],
                [length] * len(cdfs) + [len(_PAD_CDF)],
                [0] * (len(cdfs) + 1),
            )
            segments.append(seg)
        head = b"".join(write_varint(len(s)) for s in segments[:-1])
        return head + b"".join(segments)


# Who reads a CompressAI rANS stream in the native decoder loops: the extensions' own reader of
# CompressAI's format, or CompressAI's decode_stream called from the loop (the reference).
RANS_READERS = ("native", "compressai")


class RansStreamReader:
    """Decodes what :class:`RansStreamWriter` wrote, batch by batch, given the total symbol count."""

    def __init__(self, data: bytes, num_symbols: int, alphabet_size: int):
        RansDecoder = load_rans().RansDecoder

        self._decoder_cls = RansDecoder
        self.alphabet_size = int(alphabet_size)
        self.num_symbols = int(num_symbols)
        num_segments = -(-self.num_symbols // SEGMENT_SYMBOLS)
        if 8 * num_segments > len(data):  # every segment holds at least the 8-byte rANS flush
            raise CorruptStreamError(f"{len(data)} bytes cannot hold {self.num_symbols} symbols")
        pos = 0
        lengths = []
        for _ in range(max(num_segments - 1, 0)):
            n, pos = read_varint(data, pos)
            lengths.append(n)
        self._segments = []
        for n in lengths:
            self._segments.append(data[pos:pos + n])
            pos += n
            if pos > len(data):
                raise CorruptStreamError("rANS stream is truncated")
        if num_segments:
            self._segments.append(data[pos:])
        for seg in self._segments:
            if len(seg) < 8 or len(seg) % 4:
                raise CorruptStreamError(f"rANS segment of {len(seg)} bytes cannot be valid")
        self._seg = -1
        self._left_in_segment = 0
        self.consumed = 0
        self._decoder = None

    def _next_segment(self) -> None:
        self._seg += 1
        count = min(SEGMENT_SYMBOLS, self.num_symbols - self._seg * SEGMENT_SYMBOLS)
        self._decoder = self._decoder_cls()
        # at most one word read per decoded symbol, plus 2 at start: pad so a corrupt stream
        # can never make the decoder read outside its buffer
        self._decoder.set_stream(self._segments[self._seg] + bytes(4 * (count + 3)))
        self._left_in_segment = count

    def segments(self) -> List[Tuple[bytes, int]]:
        """(bytes, symbol count) of every segment, for a caller with its own reader of CompressAI's
        format (the native occupancy loop); ``read`` and ``next_segment`` must not be mixed in."""
        counts = [min(SEGMENT_SYMBOLS, self.num_symbols - i * SEGMENT_SYMBOLS) for i in range(len(self._segments))]
        return list(zip(self._segments, counts))

    def next_segment(self) -> Tuple[Callable, int]:
        """Open the next rANS segment for a caller that decodes it itself (the native occupancy
        loop): (its CompressAI ``decode_stream``, the symbols it holds). The caller decodes all
        of them; ``read`` must not be mixed in."""
        self._next_segment()
        self.consumed += self._left_in_segment
        count, self._left_in_segment = self._left_in_segment, 0
        return self._decoder.decode_stream, count

    def read(self, indexes: np.ndarray, tables: np.ndarray) -> np.ndarray:
        """Symbols [n] for table indexes [n] into frequency rows ``tables`` [T, A]."""
        indexes = np.asarray(indexes, dtype=np.int64).ravel()
        n = indexes.size
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if self.consumed + n > self.num_symbols:
            raise CorruptStreamError("more symbols requested than the stream holds")
        tables = np.asarray(tables, dtype=np.int64)
        if indexes.min() < 0 or indexes.max() >= len(tables):
            raise CategoricalError(f"table indexes must lie in [0, {len(tables)})")
        used, local = dense_unique(indexes)
        cdfs, length = frequencies_to_cdfs(tables[used])
        lengths = [length] * len(cdfs)
        offsets = [0] * len(cdfs)
        out = []
        done = 0
        while done < n:
            if self._left_in_segment == 0:
                self._next_segment()
            take = min(self._left_in_segment, n - done)
            out.append(np.asarray(self._decoder.decode_stream(local[done:done + take].tolist(), cdfs, lengths, offsets),
                                  dtype=np.int64))
            done += take
            self._left_in_segment -= take
        self.consumed += n
        out = np.concatenate(out)
        if self.alphabet_size == 1 and out.any():
            raise CorruptStreamError("decoded a symbol outside the alphabet")
        return out


# ---------------------------------------------------------------- static (two-pass) coding

def _quantize_histograms(counts: np.ndarray, table_bits: int) -> np.ndarray:
    """Counts [C, A] divided (rounding up) by a power of two per context so that every value is at
    most ``2**table_bits``; positives stay positive.  ``table_bits`` 0: uniform tables."""
    used = counts.sum(axis=1, keepdims=True) > 0
    if table_bits <= 0:
        return used * np.ones_like(counts)
    shift = np.maximum(bit_length(counts.max(axis=1)) - table_bits, 0)
    return -((-counts) >> shift[:, None])  # ceil(count / 2**shift) <= 2**table_bits


def _histogram_table_bytes(q: np.ndarray, table_bits: int) -> bytes:
    """A used-flag per context, then (if ``table_bits`` > 0) the values of the used contexts; two
    byte-aligned exp-Golomb runs."""
    used = q.sum(axis=1) > 0
    flags = exp_golomb_encode(used.astype(np.int64))
    return flags + (exp_golomb_encode(q[used].ravel()) if table_bits > 0 else b"")


@dataclass
class StaticTables:
    """The decoder-side model of a static stream: frequency rows per context (zero rows unused)."""

    freqs: np.ndarray  # [C, A] int64, rows sum to 2**16 or are all zero
    table_bits: int

    @property
    def used(self) -> np.ndarray:  # [C] bool
        return self.freqs.sum(axis=1) > 0


def choose_table_precision(counts: np.ndarray,  # [C, A] symbol counts per context
                           quantize: Callable[[np.ndarray, int], np.ndarray],
                           table_bytes: Callable[[np.ndarray, int], bytes]) -> Tuple[int, np.ndarray, bytes]:
    """The histogram precision (bits; 0: flags only) minimizing table bytes + coded bits, for a
    coder that sends ``table_bytes(quantize(counts, bits), bits)``; returns (bits, the
    frequencies the decoder will rebuild [C, A], table bytes)."""
    best = None
    nz = counts > 0
    for bits in [0] + list(range(2, MAX_TABLE_BITS + 1)):
        q = quantize(counts, bits)
        freqs = quantize_frequencies(q)
        with np.errstate(divide="ignore"):
            data_bits = float(-(counts[nz] * np.log2(freqs[nz] / TOTAL_FREQ)).sum())
        table = table_bytes(q, bits)
        size = 8 * len(table) + data_bits
        if best is None or size < best[0]:
            best = (size, bits, freqs, table)
        if bits and (counts.max(initial=0) >> bits) == 0:
            break  # higher precision sends the same counts
    return best[1], best[2], best[3]


def _choose_tables(counts: np.ndarray) -> Tuple[int, np.ndarray, bytes]:
    return choose_table_precision(counts, _quantize_histograms, _histogram_table_bytes)


def _read_tables(data: bytes, num_contexts: int, alphabet_size: int, table_bits: int) -> Tuple[StaticTables, int]:
    """(tables, bytes used) from what :func:`_histogram_table_bytes` wrote."""
    if num_contexts > 8 * len(data):  # one bit at least per flag
        raise CorruptStreamError("histogram table is truncated")
    used, pos = exp_golomb_decode(data, num_contexts)
    if used.size and used.max() > 1:
        raise CorruptStreamError("histogram table has an invalid context flag")
    used = used.astype(bool)
    if table_bits <= 0:
        q = np.repeat(used[:, None], alphabet_size, axis=1).astype(np.int64)
    else:
        k = int(used.sum())
        if k * alphabet_size > 8 * (len(data) - pos):
            raise CorruptStreamError("histogram table is truncated")
        vals, n = exp_golomb_decode(data[pos:], k * alphabet_size)
        pos += n
        if vals.size and vals.max() > 1 << table_bits:
            raise CorruptStreamError("histogram value exceeds its precision")
        q = np.zeros((num_contexts, alphabet_size), dtype=np.int64)
        q[used] = vals.reshape(k, alphabet_size)
        if np.any(used & (q.sum(axis=1) == 0)):
            raise CorruptStreamError("a used context has an empty histogram")
    return StaticTables(quantize_frequencies(q), table_bits), pos


def encode_categorical_batches(batches: Sequence[Tuple[np.ndarray, np.ndarray]], alphabet_size: int) -> bytes:
    """Two-pass static coding of ``batches`` of (symbols [n] int, contexts [n] int).

    The decoder may compute each batch's contexts from the symbols of earlier batches
    (:class:`StaticBatchDecoder`).  Layout: varints N, A, C, table precision; 16-bit check sum
    of everything else; histogram tables (exp-Golomb); rANS segments.
    """
    a = _check_alphabet(alphabet_size)
    syms, ctxs = [], []
    for s, c in batches:
        s = np.asarray(s, dtype=np.int64).ravel()
        c = np.asarray(c, dtype=np.int64).ravel()
        if s.shape != c.shape:
            raise CategoricalError(f"symbols {s.shape} and contexts {c.shape} differ in shape")
        syms.append(s)
        ctxs.append(c)
    symbols = np.concatenate(syms) if syms else np.zeros(0, np.int64)
    contexts = np.concatenate(ctxs) if ctxs else np.zeros(0, np.int64)
    n = symbols.size
    if n and (symbols.min() < 0 or symbols.max() >= a):
        raise CategoricalError(f"symbols must lie in [0, {a}), got [{symbols.min()}, {symbols.max()}]")
    if n and contexts.min() < 0:
        raise CategoricalError("contexts must be >= 0")
    num_contexts = int(contexts.max()) + 1 if n else 0
    counts = np.zeros((num_contexts, a), dtype=np.int64)
    np.add.at(counts, (contexts, symbols), 1)
    table_bits, freqs, table = _choose_tables(counts) if n else (0, counts, b"")
    writer = RansStreamWriter(a)
    writer.add(symbols, contexts, freqs)
    body = table + writer.finish()
    head = write_varint(n) + write_varint(a) + write_varint(num_contexts) + write_varint(table_bits)
    return head + (_check16(head + body) + body if n else b"")


def _check_alphabet(alphabet_size: int) -> int:
    a = int(alphabet_size)
    if not 1 <= a <= MAX_ALPHABET:
        raise CategoricalError(f"alphabet_size must be in [1, {MAX_ALPHABET}], got {alphabet_size}")
    return a


class StaticBatchDecoder:
    """Decodes a stream of :func:`encode_categorical_batches` one batch at a time."""

    def __init__(self, data: bytes, alphabet_size: int):
        a = _check_alphabet(alphabet_size)
        data = bytes(data)
        n, pos = read_varint(data, 0)
        stored_a, pos = read_varint(data, pos)
        num_contexts, pos = read_varint(data, pos)
        table_bits, pos = read_varint(data, pos)
        if stored_a != a:
            raise CorruptStreamError(f"stream was coded with alphabet {stored_a}, decoder given {a}")
        if table_bits > MAX_TABLE_BITS or (n == 0) != (num_contexts == 0) or num_contexts > max(n, 1):
            raise CorruptStreamError("invalid categorical stream header")
        self.num_symbols = n
        self.num_contexts = num_contexts
        self.alphabet_size = a
        if n == 0:
            if pos != len(data):
                raise CorruptStreamError("trailing bytes after an empty categorical stream")
            self.tables = StaticTables(np.zeros((0, a), np.int64), 0)
            self._reader = None
            return
        if len(data) < pos + 2:
            raise CorruptStreamError("categorical stream is truncated")
        check, body = data[pos:pos + 2], data[pos + 2:]
        if _check16(data[:pos] + body) != check:
            raise CorruptStreamError("categorical stream fails its check sum (corrupt or truncated)")
        self.tables, used = _read_tables(body, num_contexts, a, table_bits)
        self._reader = RansStreamReader(body[used:], n, a)

    def decode(self, contexts: np.ndarray) -> np.ndarray:
        """Symbols [n] of the next batch, whose contexts [n] the caller computed."""
        contexts = np.asarray(contexts, dtype=np.int64).ravel()
        if contexts.size == 0:
            return np.zeros(0, dtype=np.int64)
        if self._reader is None:
            raise CorruptStreamError("more symbols requested than the stream holds")
        if contexts.min() < 0 or contexts.max() >= self.num_contexts:
            raise CorruptStreamError(f"context outside the stream's {self.num_contexts} contexts")
        if not np.all(self.tables.used[contexts]):
            raise CorruptStreamError("a context has no table in the stream (corrupt stream or wrong contexts)")
        return self._reader.read(contexts, self.tables.freqs)

    @property
    def remaining(self) -> int:
        return self.num_symbols - (self._reader.consumed if self._reader else 0)

    def finish(self) -> None:
        """Raise :class:`CorruptStreamError` unless every symbol was decoded."""
        if self.remaining:
            raise CorruptStreamError(f"{self.remaining} symbols left undecoded")


def encode_categorical(symbols: np.ndarray, alphabet_size: int, contexts: Optional[np.ndarray] = None) -> bytes:
    """Static coding of ``symbols`` [N] (in [0, alphabet_size)) under ``contexts`` [N] (default: one
    context).  The decoder needs the same contexts, or none if none were given."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    contexts = np.zeros_like(symbols) if contexts is None else contexts
    return encode_categorical_batches([(symbols, contexts)], alphabet_size)


def decode_categorical(data: bytes, alphabet_size: int, contexts: Optional[np.ndarray] = None) -> np.ndarray:
    """Inverse of :func:`encode_categorical`; ``contexts`` [N] as given to the encoder (or None)."""
    dec = StaticBatchDecoder(data, alphabet_size)
    if contexts is None:
        contexts = np.zeros(dec.num_symbols, dtype=np.int64)
    contexts = np.asarray(contexts, dtype=np.int64).ravel()
    if contexts.size != dec.num_symbols:
        raise CorruptStreamError(f"stream holds {dec.num_symbols} symbols, {contexts.size} contexts given")
    out = dec.decode(contexts)
    dec.finish()
    return out


def decode_categorical_progressive(data: bytes, alphabet_size: int,
                                   next_contexts: Callable[[Optional[np.ndarray]], Optional[np.ndarray]]
                                   ) -> List[np.ndarray]:
    """Decode batch by batch: ``next_contexts(previous batch symbols or None at the start)`` returns
    the contexts of the next batch, or None when done.  Returns the batches' symbols."""
    dec = StaticBatchDecoder(data, alphabet_size)
    out: List[np.ndarray] = []
    ctx = next_contexts(None)
    while ctx is not None:
        out.append(dec.decode(ctx))
        ctx = next_contexts(out[-1])
    dec.finish()
    return out


def estimate_categorical_bytes(symbols: np.ndarray, alphabet_size: int, contexts: Optional[np.ndarray] = None) -> float:
    """Size of :func:`encode_categorical`'s output from the chosen tables' cross-entropy, without
    running the coder (header, check sum and tables exact; rANS within a few bytes)."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    contexts = np.zeros_like(symbols) if contexts is None else np.asarray(contexts, dtype=np.int64).ravel()
    n = symbols.size
    num_contexts = int(contexts.max()) + 1 if n else 0
    head = len(write_varint(n)) + len(write_varint(alphabet_size)) + len(write_varint(num_contexts))
    if n == 0:
        return float(head + 1)
    counts = np.zeros((num_contexts, alphabet_size), dtype=np.int64)
    np.add.at(counts, (contexts, symbols), 1)
    bits, freqs, table = _choose_tables(counts)
    nz = counts > 0
    data_bits = float(-(counts[nz] * np.log2(freqs[nz] / TOTAL_FREQ)).sum())
    segments = -(-n // SEGMENT_SYMBOLS)
    return head + len(write_varint(bits)) + 2 + len(table) + data_bits / 8.0 + 8 * segments


# ---------------------------------------------------------------- adaptive (backward) coding

class AdaptiveModel:
    """Per-context symbol counts, updated after each batch; tables from counts by the
    Krichevsky-Trofimov rule (weight 2 * count + 1 per symbol), in integers."""

    def __init__(self, num_contexts: int, alphabet_size: int):
        if num_contexts < 1:
            raise CategoricalError(f"num_contexts must be >= 1, got {num_contexts}")
        self.alphabet_size = _check_alphabet(alphabet_size)
        self.counts = np.zeros((int(num_contexts), self.alphabet_size), dtype=np.int64)

    def tables(self, contexts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(table index per symbol [n], frequency rows [U, A]) for the batch's contexts [n]."""
        used, index = dense_unique(contexts)
        return index, quantize_frequencies(2 * self.counts[used] + 1)

    def update(self, contexts: np.ndarray, symbols: np.ndarray) -> None:
        if contexts.size:
            key = contexts * self.alphabet_size + symbols
            self.counts += np.bincount(key, minlength=self.counts.size).reshape(self.counts.shape)

    def decay(self, shift: int = 1) -> None:
        """Halve (``shift`` = 1) all counts, so later batches outweigh earlier ones."""
        self.counts >>= shift

    def check_contexts(self, contexts: np.ndarray) -> None:
        if contexts.size and (contexts.min() < 0 or contexts.max() >= self.counts.shape[0]):
            raise CategoricalError(f"contexts must lie in [0, {self.counts.shape[0]})")


class AdaptiveBatchEncoder:
    """Backward-adaptive coding: ``encode`` each batch, ``decay`` where wanted, then ``finish``."""

    def __init__(self, num_contexts: int, alphabet_size: int):
        self.model = AdaptiveModel(num_contexts, alphabet_size)
        self._writer = RansStreamWriter(alphabet_size)

    def encode(self, symbols: np.ndarray, contexts: np.ndarray) -> None:
        symbols = np.asarray(symbols, dtype=np.int64).ravel()
        contexts = np.asarray(contexts, dtype=np.int64).ravel()
        if symbols.shape != contexts.shape:
            raise CategoricalError(f"symbols {symbols.shape} and contexts {contexts.shape} differ in shape")
        if symbols.size == 0:
            return
        self.model.check_contexts(contexts)
        index, tables = self.model.tables(contexts)
        self._writer.add(symbols, index, tables)
        self.model.update(contexts, symbols)

    def decay(self, shift: int = 1) -> None:
        self.model.decay(shift)

    @property
    def num_symbols(self) -> int:
        return self._writer.num_symbols

    def finish(self) -> bytes:
        """The rANS segments (the symbol count is the caller's to store or to derive)."""
        return self._writer.finish()


class AdaptiveBatchDecoder:
    """Mirror of :class:`AdaptiveBatchEncoder`; needs the total symbol count up front (stored by
    the caller), which also bounds how much a corrupt stream can make it decode."""

    def __init__(self, data: bytes, num_symbols: int, num_contexts: int, alphabet_size: int):
        self.model = AdaptiveModel(num_contexts, alphabet_size)
        self._reader = RansStreamReader(bytes(data), num_symbols, alphabet_size)

    def decode(self, contexts: np.ndarray) -> np.ndarray:
        contexts = np.asarray(contexts, dtype=np.int64).ravel()
        if contexts.size == 0:
            return np.zeros(0, dtype=np.int64)
        self.model.check_contexts(contexts)
        index, tables = self.model.tables(contexts)
        symbols = self._reader.read(index, tables)
        self.model.update(contexts, symbols)
        return symbols

    def decay(self, shift: int = 1) -> None:
        self.model.decay(shift)

    @property
    def remaining(self) -> int:
        return self._reader.num_symbols - self._reader.consumed

    def finish(self) -> None:
        if self.remaining:
            raise CorruptStreamError(f"{self.remaining} symbols left undecoded")
