"""Categorical rANS coding: exact round trips, table arithmetic against slow references, sizes,
progressive and adaptive batch decoding, and named errors on bad streams."""
from fractions import Fraction

import numpy as np
import pytest

from ralhe_me.entropy import categorical as cat
from ralhe_me.entropy.categorical import (
    AdaptiveBatchDecoder,
    AdaptiveBatchEncoder,
    CategoricalError,
    CorruptStreamError,
    StaticBatchDecoder,
    TOTAL_FREQ,
    decode_categorical,
    decode_categorical_progressive,
    encode_categorical,
    encode_categorical_batches,
    estimate_categorical_bytes,
    exp_golomb_bits,
    exp_golomb_decode,
    exp_golomb_encode,
    quantize_frequencies,
)


def _reference_quantize(row):
    """Largest-remainder rounding with exact fractions, one row at a time."""
    row = [int(v) for v in row]
    pos = [i for i, v in enumerate(row) if v > 0]
    if not pos:
        return [0] * len(row)
    spare = TOTAL_FREQ - len(pos)
    total = sum(row)
    exact = [Fraction(v * spare, total) for v in row]
    freq = [int(e) + (1 if v > 0 else 0) for e, v in zip(exact, row)]
    left = TOTAL_FREQ - sum(freq)
    order = sorted(pos, key=lambda i: (-(exact[i] - int(exact[i])), i))
    for i in order[:left]:
        freq[i] += 1
    return freq


@pytest.mark.parametrize("alphabet", [1, 2, 3, 7, 300])
def test_quantize_frequencies_matches_reference(alphabet):
    rng = np.random.default_rng(alphabet)
    w = rng.integers(0, 50, size=(40, alphabet)) * (rng.random((40, alphabet)) < 0.6)
    w[0] = 0  # unused row
    w[1] = 0
    w[1, -1] = 10**9  # one huge weight
    fast = quantize_frequencies(w)
    for row, got in zip(w, fast):
        assert got.tolist() == _reference_quantize(row)
        if row.sum():
            assert got.sum() == TOTAL_FREQ
            assert np.all((got > 0) == (row > 0))


def test_exp_golomb_round_trip_and_lengths():
    rng = np.random.default_rng(0)
    values = np.concatenate([[0, 1, 2, 3, 7, 8, 2**20 - 1, 2**20, 2**40], rng.integers(0, 1000, 500)])
    data = exp_golomb_encode(values)
    assert len(data) == -(-int(exp_golomb_bits(values).sum()) // 8)
    assert [2 * len(bin(v + 1)[2:]) - 1 for v in values.tolist()] == exp_golomb_bits(values).tolist()
    back, used = exp_golomb_decode(data, len(values))
    assert back.tolist() == values.tolist() and used == len(data)
    with pytest.raises(CorruptStreamError):
        exp_golomb_decode(data[: len(data) // 2], len(values))


def _reference_exp_golomb(data: bytes, count: int):
    bits = "".join(format(b, "08b") for b in data)
    out, pos = [], 0
    for _ in range(count):
        zeros = 0
        while bits[pos + zeros] == "0":
            zeros += 1
        out.append(int(bits[pos + zeros: pos + 2 * zeros + 1], 2) - 1)
        pos += 2 * zeros + 1
    return out, (pos + 7) // 8


@pytest.mark.parametrize("seed", range(4))
def test_exp_golomb_decode_matches_a_bitwise_reference_before_trailing_data(seed):
    rng = np.random.default_rng(seed)
    # long codes land across the decoder's chunk boundaries; trailing bytes must not be read as codes
    values = np.concatenate([rng.integers(0, 4, rng.integers(1, 300)), [2**40, 5, 2**33],
                             rng.integers(0, 2**20, rng.integers(1, 50))])
    data = exp_golomb_encode(values) + bytes(rng.integers(0, 256, 1000).astype(np.uint8))
    got, used = exp_golomb_decode(data, len(values))
    want, want_used = _reference_exp_golomb(data, len(values))
    assert got.tolist() == want == values.tolist() and used == want_used
    with pytest.raises(CorruptStreamError, match="oversized"):
        exp_golomb_decode(bytes(9) + b"\xff", 1)  # 72 leading zeros


def _skewed(rng, n, alphabet):
    p = 0.5 ** np.arange(alphabet)
    return rng.choice(alphabet, size=n, p=p / p.sum())


@pytest.mark.parametrize("case", ["random", "skewed", "single_symbol", "empty", "one", "tiny", "contexts", "alphabet1"])
def test_round_trip(case):
    rng = np.random.default_rng(1)
    a, ctx = 16, None
    if case == "random":
        sym = rng.integers(0, a, 5000)
    elif case == "skewed":
        sym = _skewed(rng, 20000, a)
    elif case == "single_symbol":
        sym = np.full(3000, 5)
    elif case == "empty":
        sym = np.zeros(0, np.int64)
    elif case == "one":
        sym = np.array([15])
    elif case == "tiny":  # fewer symbols than CompressAI's encoder buffer needs: padding path
        sym = np.array([3, 0, 15])
    elif case == "contexts":
        ctx = rng.integers(0, 5, 8000)
        sym = np.where(ctx == 0, 2, (ctx * 3 + _skewed(rng, 8000, 4)) % a)
    else:
        a, sym = 1, np.zeros(100, np.int64)
    data = encode_categorical(sym, a, ctx)
    back = decode_categorical(data, a, ctx)
    assert back.dtype == np.int64 and back.tolist() == sym.tolist()
    assert abs(estimate_categorical_bytes(sym, a, ctx) - len(data)) <= 6


def test_skewed_data_costs_about_its_entropy():
    rng = np.random.default_rng(2)
    sym = _skewed(rng, 50000, 12)
    p = np.bincount(sym) / len(sym)
    entropy_bytes = -(p[p > 0] * np.log2(p[p > 0])).sum() * len(sym) / 8
    size = len(encode_categorical(sym, 12))
    assert entropy_bytes < size < entropy_bytes * 1.01 + 40
    single = len(encode_categorical(np.full(50000, 3), 12))
    assert single < 30  # one symbol with probability ~1


def test_progressive_batches_with_contexts_from_decoded_symbols():
    rng = np.random.default_rng(3)
    first = rng.integers(0, 4, 1000)
    second = (first + (rng.random(1000) < 0.1)) % 4  # context: the symbol above
    third = rng.integers(0, 4, 10)
    data = encode_categorical_batches([(first, np.zeros(1000, np.int64)), (second, first + 1),
                                       (third, np.full(10, 5))], 4)
    plan = iter([lambda prev: np.zeros(1000, np.int64), lambda prev: prev + 1,
                 lambda prev: np.full(10, 5), lambda prev: None])
    out = decode_categorical_progressive(data, 4, lambda prev: next(plan)(prev))
    assert [o.tolist() for o in out] == [first.tolist(), second.tolist(), third.tolist()]
    dec = StaticBatchDecoder(data, 4)
    dec.decode(np.zeros(1000, np.int64))
    with pytest.raises(CorruptStreamError):
        dec.finish()  # two batches left
    with pytest.raises(CorruptStreamError):
        dec.decode(np.full(1000, 6))  # context the stream has no table for


def test_adaptive_batches_round_trip_and_cost(monkeypatch):
    monkeypatch.setattr(cat, "SEGMENT_SYMBOLS", 700)  # force several rANS segments
    rng = np.random.default_rng(4)
    enc = AdaptiveBatchEncoder(num_contexts=6, alphabet_size=3)
    batches, ideal = [], 0.0
    for b in range(12):
        ctx = rng.integers(0, 6, 400)
        sym = np.where(rng.random(400) < 0.9, ctx % 3, rng.integers(0, 3, 400))
        index, tables = enc.model.tables(ctx)
        ideal += -np.log2(tables[index, sym] / TOTAL_FREQ).sum()
        enc.encode(sym, ctx)
        if b % 4 == 3:
            enc.decay(1)
        batches.append((sym, ctx))
    data = enc.finish()
    assert len(data) <= ideal / 8 + 8 * 7 + 20  # 7 segments: flush and length per segment
    dec = AdaptiveBatchDecoder(data, enc.num_symbols, 6, 3)
    for b, (sym, ctx) in enumerate(batches):
        assert dec.decode(ctx).tolist() == sym.tolist()
        if b % 4 == 3:
            dec.decay(1)
    dec.finish()


def test_static_stream_crosses_segments(monkeypatch):
    monkeypatch.setattr(cat, "SEGMENT_SYMBOLS", 1000)
    rng = np.random.default_rng(5)
    sym = _skewed(rng, 4321, 9)
    ctx = rng.integers(0, 3, 4321)
    assert decode_categorical(encode_categorical(sym, 9, ctx), 9, ctx).tolist() == sym.tolist()


def test_bad_input_and_corrupt_streams():
    rng = np.random.default_rng(6)
    sym = _skewed(rng, 3000, 8)
    with pytest.raises(CategoricalError):
        encode_categorical(np.array([8]), 8)
    with pytest.raises(CategoricalError):
        encode_categorical(np.array([-1]), 8)
    with pytest.raises(CategoricalError):
        encode_categorical(sym, 8, np.zeros(5, np.int64))
    with pytest.raises(CategoricalError):
        encode_categorical(sym, 0)
    data = encode_categorical(sym, 8)
    with pytest.raises(CorruptStreamError):
        decode_categorical(data, 9)  # wrong alphabet
    with pytest.raises(CorruptStreamError):
        decode_categorical(data[:-5], 8)  # truncated
    with pytest.raises(CorruptStreamError):
        decode_categorical(data + b"\0\0\0\0", 8)  # trailing bytes
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(CorruptStreamError):
        decode_categorical(bytes(flipped), 8)
    with pytest.raises(CorruptStreamError):
        decode_categorical(b"", 8)
    with pytest.raises(CorruptStreamError):
        decode_categorical(data, 8, np.zeros(10, np.int64))  # wrong number of contexts
    for seed in range(20):  # garbage never crashes; it raises the named error or decodes something
        junk = np.random.default_rng(seed).integers(0, 256, 200).astype(np.uint8).tobytes()
        try:
            decode_categorical(junk, 8)
        except CorruptStreamError:
            pass
