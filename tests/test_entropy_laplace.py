"""Laplace tables and rate: CDF validity, machine-independent construction, table rate vs the float
model, exact bit accounting including escapes, and CompressAI round trips (short streams, escapes)."""
import hashlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ralhe_me.entropy.laplace import (
    LaplaceTableConfig,
    SymbolRangeError,
    TableConfigError,
    _table_pmfs,
    det_exp,
    escape_extra_bits,
    get_tables,
    load_rans,
    half_width,
    laplace_rate_bits,
    rans_encode,
    table_float_bits,
)

ROOT = Path(__file__).resolve().parents[1]

# sha256 of the default family (all CDFs, lengths, offsets).  The tables must be bit-identical on every
# machine; if this changes, streams written elsewhere no longer decode.
DEFAULT_TABLES_SHA256 = "27b4a34440dfedd9f2d25f6585f60923d604aa2d1958d922f9513c42182a1269"


def _family_hash(tables) -> str:
    h = hashlib.sha256()
    for cdf, n, off in zip(tables.cdfs, tables.cdf_lengths, tables.offsets):
        h.update(np.asarray(cdf, np.int64).tobytes())
        h.update(np.asarray([n, off], np.int64).tobytes())
    return h.hexdigest()


def _decode(data, indexes, tables):
    dec = load_rans().RansDecoder()
    dec.set_stream(data)
    return np.asarray(dec.decode_stream(list(map(int, indexes)), tables.cdfs, tables.cdf_lengths, tables.offsets))


@pytest.mark.parametrize(
    "config",
    [LaplaceTableConfig(), LaplaceTableConfig(-2.0, 1, 20, 0, 8, 64), LaplaceTableConfig(-1.0, 2, 49, 0, 12, 4096)],
)
def test_every_cdf_is_valid_for_compressai(config):
    tables = get_tables(config)
    assert len(tables.cdfs) == config.num_tables
    for cdf, n, off, w in zip(tables.cdfs, tables.cdf_lengths, tables.offsets, tables.half_widths):
        c = np.asarray(cdf)
        assert len(c) == n == 2 * w + 3 and off == -w
        assert c[0] == 0 and c[-1] == 1 << 16
        assert np.all(np.diff(c) > 0), "CDF must be strictly increasing (every symbol codable)"


def test_default_family_is_pinned():
    assert _family_hash(get_tables(LaplaceTableConfig())) == DEFAULT_TABLES_SHA256


def test_tables_rebuild_identically():
    config = LaplaceTableConfig(log_scale_min=-3.0, num_scale_bins=30)
    first = _family_hash(get_tables(config))
    get_tables.cache_clear()
    assert _family_hash(get_tables(config)) == first


def test_det_exp_matches_exp():
    x = np.linspace(-700, 700, 20001)
    rel = np.abs(det_exp(x) / np.exp(x) - 1)
    assert rel.max() < 1e-14


def test_half_widths_follow_tail_mass():
    cfg = LaplaceTableConfig()
    for s in range(0, cfg.num_scale_bins, 7):
        b = math.exp(cfg.table_log_scale(s))
        w = half_width(cfg, s)
        assert w == min(max(math.ceil(b * cfg.tail_log2 * math.log(2)), 1), cfg.max_half_width)
        # mass beyond the support is about 2**-tail_log2
        assert math.exp(-(w + 0.5) / b) <= 2.0 ** -cfg.tail_log2 * 1.0001 or w in (1, cfg.max_half_width)


def test_pmfs_sum_to_one():
    cfg = LaplaceTableConfig()
    for s in (0, 20, 40, 72):
        p = _table_pmfs(cfg, s, half_width(cfg, s))
        assert np.allclose(p.sum(axis=1), 1.0, atol=1e-12)
        assert (p >= 0).all()


def _slow_rate(x, mu, b):
    """-log2(CDF(x + 1/2) - CDF(x - 1/2)) for Laplace(mu, b), directly, clamped to 16 bits."""

    def cdf(t):
        return 0.5 * math.exp(t / b) if t < 0 else 1.0 - 0.5 * math.exp(-t / b)

    p = cdf(x + 0.5 - mu) - cdf(x - 0.5 - mu)
    return min(16.0, -math.log2(p)) if p > 0 else 16.0


def test_float_rate_matches_direct_formula():
    rng = np.random.default_rng(0)
    x = rng.integers(-20, 20, 500).astype(np.float64)
    mu = rng.uniform(-10, 10, 500)
    ls = rng.uniform(-3, 3, 500)
    got = laplace_rate_bits(torch.tensor(x), torch.tensor(mu), torch.tensor(ls)).numpy()
    ref = np.array([_slow_rate(a, m, math.exp(s)) for a, m, s in zip(x, mu, ls)])
    # the direct formula loses precision far in the tails (1 - tiny): compare where it is reliable
    ok = ref < 15.0
    assert np.allclose(got[ok], ref[ok], atol=1e-6)
    assert np.all(got <= 16.0)


def test_float_rate_is_differentiable_and_finite_in_tails():
    x = torch.tensor([0.0, 3.0, 1e4, -1e4, 0.2])
    mu = torch.zeros(5, requires_grad=True)
    ls = torch.tensor([-4.0, -4.0, 2.0, -4.0, 5.0], requires_grad=True)
    bits = laplace_rate_bits(x, mu, ls)
    bits.sum().backward()
    assert torch.isfinite(bits).all() and torch.isfinite(mu.grad).all() and torch.isfinite(ls.grad).all()
    assert bits[2] == 16.0 and bits[3] == 16.0
    assert 0 <= bits[0] < 1e-6  # scale 0.018: zero is certain


def test_table_rate_close_to_float_rate():
    """Expected cost under each table's own distribution: quantization to 16 bits costs little."""
    cfg = LaplaceTableConfig()
    tables = get_tables(cfg)
    for ti in range(0, cfg.num_tables, 11):
        w = int(tables.half_widths[ti])
        r = np.arange(-w, w + 1)
        fb = table_float_bits(cfg, ti, r)
        p = 2.0**-fb
        p /= p.sum()
        tb = tables.bits(np.full(r.size, ti), r)
        h_float, h_table = float((p * fb).sum()), float((p * tb).sum())
        assert h_table >= h_float - 1e-3
        assert h_table - h_float < 0.01 + 0.005 * h_float, (ti, h_float, h_table)


def test_escape_bits_formula():
    # raw values of 0, 1, 15, 16, 2**60-ish: chunks of 4 bits, plus the count (15-chunks continue)
    assert escape_extra_bits(np.array([5]), np.array([5]))[0] == 4  # raw 0: count only
    assert escape_extra_bits(np.array([-1]), np.array([5]))[0] == 8  # raw 1: one chunk
    assert escape_extra_bits(np.array([-8]), np.array([5]))[0] == 8  # raw 15
    assert escape_extra_bits(np.array([-9]), np.array([5]))[0] == 12  # raw 17: two chunks
    big = escape_extra_bits(np.array([2**26]), np.array([3]))[0]
    assert big == 4 * (7 + 0 + 1)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17])
def test_short_streams_round_trip(n):
    """CompressAI's buffer is one word per symbol; short streams need the padding."""
    tables = get_tables(LaplaceTableConfig())
    rng = np.random.default_rng(n)
    idx = rng.integers(0, len(tables.cdfs), n)
    sym = rng.integers(-3, 4, n)
    data = rans_encode(sym, idx, tables)
    assert np.array_equal(_decode(data, idx, tables), sym)


def test_escapes_round_trip_and_are_counted():
    tables = get_tables(LaplaceTableConfig())
    rng = np.random.default_rng(1)
    n = 3000
    idx = rng.integers(0, 200, n)  # small scales: big values all escape
    sym = rng.integers(-(2**26) + 1, 2**26, n)
    sym[::3] = rng.integers(-2, 3, n)[::3]
    data = rans_encode(sym, idx, tables)
    assert np.array_equal(_decode(data, idx, tables), sym)
    est = tables.bits(idx, sym).sum()
    assert abs(len(data) * 8 - est) < 0.002 * est + 128


def test_estimated_bits_match_stream_size():
    cfg = LaplaceTableConfig()
    tables = get_tables(cfg)
    rng = np.random.default_rng(2)
    n = 100_000
    idx = rng.integers(0, cfg.num_tables, n)
    # draw each symbol from its own table's distribution
    u = rng.integers(0, 1 << 16, n)
    sym = np.empty(n, np.int64)
    for ti in np.unique(idx):
        sel = idx == ti
        cdf = np.asarray(tables.cdfs[ti])
        v = np.searchsorted(cdf, u[sel], side="right") - 1
        sym[sel] = v + tables.offsets[ti]  # the escape value lands just beyond the support
    data = rans_encode(sym, idx, tables)
    est = tables.bits(idx, sym).sum()
    assert abs(len(data) * 8 - est) <= 0.01 * est + 96
    assert np.array_equal(_decode(data, idx, tables), sym)


def test_rans_extension_loads_without_the_compressai_package():
    """The decoder needs only the rANS extension, not compressai's models and datasets (slow import)."""
    code = (
        "import sys; from ralhe_me.entropy.laplace import load_rans; m = load_rans(); "
        "print(m.RansDecoder.__name__, 'compressai.models' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["RansDecoder", "False"]


def test_too_large_symbols_are_refused():
    """CompressAI loops forever on raw escape values >= 2**28; we refuse before that."""
    tables = get_tables(LaplaceTableConfig())
    with pytest.raises(SymbolRangeError):
        rans_encode(np.array([0, 2**26]), np.array([0, 0]), tables)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(log_scale_min=-4.1),
        dict(num_scale_bins=0),
        dict(mean_bins_log2=9),
        dict(tail_log2=1),
        dict(max_half_width=0),
        dict(log_scale_min=10.0, num_scale_bins=40),
    ],
)
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(TableConfigError):
        LaplaceTableConfig(**kwargs)
