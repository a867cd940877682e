"""Discretized Laplace model: the differentiable rate used in training and the quantized CDF tables
that CompressAI's rANS coder uses at coding time.

The tables form a family indexed by (scale bin, mean-fraction bin).  They are rebuilt from the
config alone, so nothing but the config needs storing, and they must come out identical on every
machine: they are computed with IEEE basic operations only (+, -, *, /, floor, ldexp are correctly
rounded everywhere; library ``exp``/``log`` are not), then rounded to integers.

CompressAI's CDF format (precision 16): ``cdf[0] = 0``, strictly increasing, ``cdf[len-1] = 2**16``.
A table of length ``len`` codes ``len - 2`` regular values ``0 .. len-3`` (symbol minus the table's
offset) plus one escape value ``len - 2``; a symbol outside the regular range is coded as the escape
followed by raw 4-bit chunks ("bypass"), so any int32 round-trips.  Our residual ``r = x - mu_int``
uses support ``[-W, W]`` (offset ``-W``), escape at value ``2W + 1``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

PRECISION = 16  # CompressAI rANS probability precision (fixed in its C++ code)
TOTAL_FREQ = 1 << PRECISION
BYPASS_BITS = 4  # CompressAI bypass chunk size
MAX_RATE_BITS = 16.0  # no symbol costs more than this in the float model

_LN2 = 0.6931471805599453  # correctly rounded ln(2)
_LN2_HI = 6.93147180369123816490e-01  # ln(2) split (Cody-Waite): k * _LN2_HI is exact for |k| < 2**20
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.4426950408889634
_EXP_COEFFS = tuple(1.0 / math.factorial(i) for i in range(17, -1, -1))  # Horner order, degree 17


class TableConfigError(ValueError):
    """A LaplaceTableConfig that cannot define a valid table family."""


@dataclass(frozen=True)
class LaplaceTableConfig:
    """Table family: ``num_scale_bins`` log-scales ``log_scale_min + i * 2**-log_scale_step_log2``
    (natural log of the Laplace scale b) times ``2**mean_bins_log2`` mean fractions
    ``(j - floor(M/2)) / M`` in [-1/2, 1/2).  Each table covers residuals ``[-W, W]`` where
    ``W = clip(ceil(b * tail_log2 * ln 2), 1, max_half_width)`` (so the mass beyond is about
    ``2**-tail_log2``); anything else is an escape."""

    log_scale_min: float = -4.0
    log_scale_step_log2: int = 3
    num_scale_bins: int = 73  # log-scales -4.0 .. 5.0 by 1/8, i.e. b = 0.018 .. 148
    mean_bins_log2: int = 3
    tail_log2: int = 12
    max_half_width: int = 4096

    def __post_init__(self) -> None:
        units = self.log_scale_min * (1 << self.log_scale_step_log2)
        if not (0 <= self.log_scale_step_log2 <= 12):
            raise TableConfigError(f"log_scale_step_log2 must be in [0, 12], got {self.log_scale_step_log2}")
        if units != math.floor(units) or abs(units) > 1 << 20:
            raise TableConfigError(
                f"log_scale_min={self.log_scale_min} must be a multiple of the step 2**-{self.log_scale_step_log2}"
            )
        if not (1 <= self.num_scale_bins <= 4096):
            raise TableConfigError(f"num_scale_bins must be in [1, 4096], got {self.num_scale_bins}")
        if not (0 <= self.mean_bins_log2 <= 6):
            raise TableConfigError(f"mean_bins_log2 must be in [0, 6], got {self.mean_bins_log2}")
        if not (2 <= self.tail_log2 <= 15):
            raise TableConfigError(f"tail_log2 must be in [2, 15], got {self.tail_log2}")
        if not (1 <= self.max_half_width <= 1 << 14):
            raise TableConfigError(f"max_half_width must be in [1, 16384], got {self.max_half_width}")
        if self.log_scale_max > 12.0:
            raise TableConfigError(f"largest log-scale {self.log_scale_max} is beyond 12")

    @property
    def log_scale_step(self) -> float:
        return 2.0 ** -self.log_scale_step_log2

    @property
    def log_scale_min_units(self) -> int:
        """log_scale_min in units of the step (an integer)."""
        return int(self.log_scale_min * (1 << self.log_scale_step_log2))

    @property
    def log_scale_max(self) -> float:
        return self.log_scale_min + (self.num_scale_bins - 1) * self.log_scale_step

    @property
    def num_mean_bins(self) -> int:
        return 1 << self.mean_bins_log2

    @property
    def num_tables(self) -> int:
        return self.num_scale_bins * self.num_mean_bins

    def table_log_scale(self, scale_bin):
        """Float log-scale of a scale bin (exact: a dyadic rational)."""
        return self.log_scale_min + scale_bin * self.log_scale_step

    def table_mean_fraction(self, mean_bin):
        """Float mean fraction in [-1/2, 1/2) of a mean bin (exact)."""
        return (mean_bin - (self.num_mean_bins // 2)) / self.num_mean_bins


# ----------------------------------------------------------------------------------------------
# Float model (training)


def laplace_rate_bits(x: Tensor, mu: Tensor, log_scale: Tensor, max_bits: float = MAX_RATE_BITS) -> Tensor:
    """-log2 P(x) for a Laplace(mu, exp(log_scale)) integrated over [x-1/2, x+1/2], clamped to
    ``max_bits``.  Differentiable in all three; computed in the log domain in the tails so large
    |x - mu| / b neither underflows nor gives NaN gradients."""
    x, mu, log_scale = torch.broadcast_tensors(x, mu, log_scale)
    inv_b = torch.exp(-log_scale)
    d = (x - mu).abs()
    # tail branch (|d| >= 1/2): P = 1/2 exp(-(|d| - 1/2)/b) (1 - exp(-1/b))
    d_tail = torch.clamp(d, min=0.5)
    log_p_tail = -math.log(2.0) - (d_tail - 0.5) * inv_b + torch.log(-torch.expm1(-inv_b))
    # centre branch (|d| < 1/2): P = 1 - exp(-1/(2b)) cosh(d/b)
    d_centre = torch.clamp(d, max=0.5)
    p_centre = 1.0 - 0.5 * (torch.exp(-(0.5 - d_centre) * inv_b) + torch.exp(-(0.5 + d_centre) * inv_b))
    log_p_centre = torch.log(torch.clamp(p_centre, min=2.0 ** -60))
    log_p = torch.where(d >= 0.5, log_p_tail, log_p_centre)
    return torch.clamp(-log_p / math.log(2.0), max=max_bits)


# ----------------------------------------------------------------------------------------------
# Deterministic float64 helpers (basic IEEE operations only)


def det_exp(x: np.ndarray) -> np.ndarray:
    """exp(x) from correctly rounded +,-,*,ldexp only, so every machine gets the same bits."""
    x = np.asarray(x, dtype=np.float64)
    k = np.floor(x * _INV_LN2 + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ~0.35
    p = np.full_like(r, _EXP_COEFFS[0])
    for c in _EXP_COEFFS[1:]:
        p = p * r + c
    return np.ldexp(p, k.astype(np.int64))


def half_width(config: LaplaceTableConfig, scale_bin: int) -> int:
    b = float(det_exp(np.float64(config.table_log_scale(scale_bin))))
    w = math.ceil(b * (config.tail_log2 * _LN2))
    return int(min(max(w, 1), config.max_half_width))


def _quantize_pmf(p: np.ndarray) -> np.ndarray:
    """Rows of probabilities (float64 [R, n]) -> int64 frequencies >= 1 summing to 2**16 per row
    (1 each, then the rest by floor of p * budget and largest remainders, ties to the lower index)."""
    rows, n = p.shape
    budget = TOTAL_FREQ - n
    raw = p * float(budget)
    fl = np.floor(raw)
    freq = fl.astype(np.int64) + 1
    rem = TOTAL_FREQ - freq.sum(axis=1)  # exact integer sums
    frac = raw - fl
    order = np.argsort(-frac, axis=1, kind="stable")
    for r in range(rows):
        k = int(rem[r])
        if k > 0:
            take = order[r, np.arange(k) % n]
            np.add.at(freq[r], take, 1)
        while k < 0:  # only from float slack; take from the largest frequencies that can spare it
            j = int(np.argmax(freq[r]))
            freq[r, j] -= 1
            k += 1
    return freq


@dataclass(frozen=True, eq=False)
class LaplaceTables:
    """A built table family.  Table index = scale_bin * num_mean_bins + mean_bin."""

    config: LaplaceTableConfig
    cdfs: list  # list[list[int]] per table, CompressAI format, length 2W + 3
    cdf_lengths: list  # list[int]
    offsets: list  # list[int]  (= -W)
    half_widths: np.ndarray  # int64 [T]
    freq_flat: np.ndarray  # int64, per table its 2W + 2 frequencies (escape last), concatenated
    freq_start: np.ndarray  # int64 [T]

    @cached_property
    def flat(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The CDFs as flat arrays for the native rANS reader: (cdf_flat int32, cdf_start int64 [T],
        cdf_lengths int32 [T], offsets int32 [T]); table t is cdf_flat[cdf_start[t]:][:cdf_lengths[t]]."""
        lengths = np.asarray(self.cdf_lengths, dtype=np.int32)
        starts = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]).astype(np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(self.cdfs), dtype=np.int32, count=int(lengths.sum()))
        return flat, starts, lengths, np.asarray(self.offsets, dtype=np.int32)

    def bits(self, table_index: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """Exact rANS cost (float64 bits) of coding ``residual`` with table ``table_index``,
        escapes included (their raw chunks and chunk count)."""
        ti = np.asarray(table_index, dtype=np.int64)
        r = np.asarray(residual, dtype=np.int64)
        w = self.half_widths[ti]
        v = r + w
        regular = (v >= 0) & (v <= 2 * w)
        pos = self.freq_start[ti] + np.where(regular, v, 2 * w + 1)
        bits = np.asarray(self.symbol_bits[pos])  # a new array (an index, not a slice), 0-d included
        if not regular.all():  # the payload of the escapes only, not of every symbol
            escaped = ~regular
            value, limit = np.broadcast_arrays(v, 2 * w + 1)
            bits[escaped] += escape_extra_bits(value[escaped], limit[escaped])
        return bits

    @cached_property
    def symbol_bits(self) -> np.ndarray:
        """float64, aligned with ``freq_flat``: the bits of each symbol (of the escape, without its
        payload), looked up instead of a log per coded symbol."""
        return PRECISION - np.log2(self.freq_flat.astype(np.float64))


def escape_extra_bits(value: np.ndarray, max_value: np.ndarray) -> np.ndarray:
    """Bits of CompressAI's bypass payload for an out-of-range ``value`` (table value, i.e. symbol
    minus offset) in a table whose escape value is ``max_value``."""
    value = np.asarray(value, dtype=np.int64)
    raw = np.where(value < 0, -2 * value - 1, 2 * (value - max_value))
    raw = np.maximum(raw, 0)
    n = np.zeros_like(raw)
    while True:
        more = (raw >> (BYPASS_BITS * n)) != 0
        if not more.any():
            break
        n = n + more
    return (BYPASS_BITS * (n + n // 15 + 1)).astype(np.float64)


def _table_pmfs(config: LaplaceTableConfig, scale_bin: int, w: int) -> np.ndarray:
    """float64 [M, 2W + 2]: probabilities of residuals -W..W and of the escape, for every mean bin."""
    m = config.num_mean_bins
    inv_b = float(det_exp(np.float64(-config.table_log_scale(scale_bin))))
    f = (np.arange(m, dtype=np.float64) - (m // 2)) / m  # [M] exact
    k = np.arange(-w, w + 1, dtype=np.float64)
    d = np.abs(k[None, :] - f[:, None])  # exact
    one_minus = 1.0 - float(det_exp(np.float64(-inv_b)))
    tail = 0.5 * det_exp(-(np.maximum(d, 0.5) - 0.5) * inv_b) * one_minus
    dc = np.minimum(d, 0.5)
    centre = 1.0 - 0.5 * (det_exp(-(0.5 - dc) * inv_b) + det_exp(-(0.5 + dc) * inv_b))
    p = np.where(d >= 0.5, tail, centre)
    esc = 0.5 * det_exp(-(w + 0.5 - f) * inv_b) + 0.5 * det_exp(-(w + 0.5 + f) * inv_b)
    return np.concatenate([p, esc[:, None]], axis=1)


@lru_cache(maxsize=8)
def get_tables(config: LaplaceTableConfig) -> LaplaceTables:
    """Build (once per config, cached) the whole table family."""
    m = config.num_mean_bins
    cdfs, lengths, offsets, hw, freqs = [], [], [], [], []
    for s in range(config.num_scale_bins):
        w = half_width(config, s)
        freq = _quantize_pmf(_table_pmfs(config, s, w))  # [M, 2W + 2]
        cdf = np.concatenate([np.zeros((m, 1), np.int64), np.cumsum(freq, axis=1)], axis=1)
        for j in range(m):
            cdfs.append(cdf[j].tolist())
            lengths.append(2 * w + 3)
            offsets.append(-w)
            hw.append(w)
            freqs.append(freq[j])
    freq_flat = np.concatenate(freqs)
    starts = np.concatenate([[0], np.cumsum([len(f) for f in freqs])[:-1]]).astype(np.int64)
    return LaplaceTables(config, cdfs, lengths, offsets, np.asarray(hw, np.int64), freq_flat, starts)


def table_float_bits(config: LaplaceTableConfig, table_index: int, residual: np.ndarray) -> np.ndarray:
    """Float-model bits (laplace_rate_bits) of residuals under a table's exact (log-scale, mean)."""
    s, j = divmod(int(table_index), config.num_mean_bins)
    x = torch.as_tensor(np.asarray(residual, dtype=np.float64))
    mu = torch.full_like(x, config.table_mean_fraction(j))
    ls = torch.full_like(x, config.table_log_scale(s))
    return laplace_rate_bits(x, mu, ls).numpy()


# ----------------------------------------------------------------------------------------------
# rANS coding with a table family (CompressAI)


@lru_cache(maxsize=1)
def load_rans():
    """CompressAI's ``ans`` extension (RansEncoder, RansDecoder).  ``import compressai.ans`` runs
    compressai's package __init__, which imports its models and datasets (seconds, ~20 s on a busy
    machine); the decoder only needs the extension, so it is loaded directly from its file."""
    import importlib.machinery
    import importlib.util
    import os
    import sys

    if "compressai.ans" in sys.modules:
        return sys.modules["compressai.ans"]
    try:
        spec = importlib.util.find_spec("compressai")
        folder = list(spec.submodule_search_locations)[0]
        suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
        name = next(n for n in sorted(os.listdir(folder)) if n.startswith("ans.") and n.endswith(suffixes))
        ext = importlib.util.spec_from_file_location("compressai.ans", os.path.join(folder, name))
        module = importlib.util.module_from_spec(ext)
        ext.loader.exec_module(module)
        return module
    except (ImportError, StopIteration, AttributeError, TypeError, OSError):
        import compressai.ans as module

        return module


_PAD_CDF = [0, TOTAL_FREQ - 1, TOTAL_FREQ]  # a value costing 2e-5 bits, used to pad short streams
# CompressAI's bypass loop shifts an int32 by 4 * chunks: with 8 chunks (raw value >= 2**28) the shift
# is 32, undefined, and on x86 it loops forever.  Symbols are therefore kept below 2**26.
SYMBOL_LIMIT = 1 << 26


class SymbolRangeError(ValueError):
    """A symbol too large for CompressAI's escape coding."""


def rans_encode(symbols: np.ndarray, indexes: np.ndarray, tables: LaplaceTables) -> bytes:
    """Code residuals ``symbols`` (int, |s| < SYMBOL_LIMIT) with tables ``indexes`` in one rANS stream,
    decodable in order by ``RansDecoder.decode_stream`` / ``decode_with_indexes``.

    CompressAI's encoder writes into a buffer of one 32-bit word per symbol, which overflows when
    the stream needs more (a handful of symbols: the flush alone takes 2 words; or many escapes).
    We append nearly free padding symbols (never decoded) until the buffer is provably large
    enough: words <= (bits + 4.4e-5 * calls) / 32 + 2 for 16-bit precision and 32-bit renormalization.
    """
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    indexes = np.asarray(indexes, dtype=np.int64).ravel()
    n = symbols.size
    if n == 0:
        return b""
    if np.abs(symbols).max() >= SYMBOL_LIMIT:
        raise SymbolRangeError(f"symbol magnitude {np.abs(symbols).max()} reaches {SYMBOL_LIMIT}")
    w = tables.half_widths[indexes]
    esc = (symbols < -w) | (symbols > w)
    bits_upper = 16.0 * n + float(escape_extra_bits(symbols[esc] + w[esc], 2 * w[esc] + 1).sum())
    if bits_upper / 32.0 + 1e-3 * n / 32.0 + 4 > n:
        bits_upper = float(tables.bits(indexes, symbols).sum()) + 1.0
    need = int(math.ceil((bits_upper + 1e-3 * (2 * n + 64)) / 32.0)) + 4
    pads = max(0, need - n)
    pad_index = len(tables.cdfs)
    enc = load_rans().RansEncoder()
    return enc.encode_with_indexes(
        symbols.tolist() + [0] * pads,
        indexes.tolist() + [pad_index] * pads,
        tables.cdfs + [_PAD_CDF],
        tables.cdf_lengths + [3],
        tables.offsets + [0],
    )
