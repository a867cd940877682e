"""The native decoder's entropy stages (ralhe_me/decode/native/src: laplace_tables, integer_arm,
latents, weights) against the Python reference on streams built here: identical Laplace CDF
families, ARM sections parsed to the same integers and exactness bounds, latents decoded to the
same integers (ARMs exact in float32, int32 and float64, escapes, empty planes, 1 and many
attributes), the same weight tensors; and a seeded fuzz of truncated and bit-flipped sections
where the native functions raise only BitstreamError subclasses (never crash), exactly where the
Python weight reader raises, and agree with Python wherever both decode."""
import dataclasses

import numpy as np
import pytest
import scipy.signal
import torch

from ralhe_me.decode.bitstream import BitstreamError, CorruptDataError
from ralhe_me.entropy.integer_arm import PARAM_TABLE_CONFIG, QuantizedArm
from ralhe_me.entropy.laplace import LaplaceTableConfig, TableConfigError, _quantize_pmf, get_tables
from ralhe_me.entropy.latent_coder import LATENT_LIMIT, decode_latents, encode_latents
from ralhe_me.nn.arm import ArmConfig, BatchedArm
from ralhe_me.decode.weights import WeightFormatError, decode_int_tensors, encode_int_tensors

N = pytest.importorskip("ralhe_me.decode._native", reason="the native decoder is not built")
if not hasattr(N, "decode_latents"):
    pytest.skip("the native decoder was built without its entropy part", allow_module_level=True)


def _cfg(config):
    return dataclasses.asdict(config)


# ---------------------------------------------------------------------------------- tables
@pytest.mark.parametrize("config", [
    LaplaceTableConfig(),
    PARAM_TABLE_CONFIG,
    LaplaceTableConfig(-2.0, 1, 20, 0, 8, 64),
    LaplaceTableConfig(log_scale_min=-3.0, num_scale_bins=30),
    LaplaceTableConfig(-6.0, 12, 300, 2, 2, 1),          # W = 1 everywhere, fine scale steps
    LaplaceTableConfig(-20.0, 2, 100, 4, 15, 300),       # tiny scales: exp underflows to 0
    LaplaceTableConfig(10.0, 3, 2, 5, 15, 16384),        # the widest tables (W = 16384)
    LaplaceTableConfig(-4.0, 3, 40, 6, 12, 4096),        # the most mean bins (64)
])
def test_tables_identical_to_python(config):
    ours = N.laplace_tables(_cfg(config))
    ref = get_tables(config).flat
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def _mirrored(row):
    """Entries -W..W reversed, the escape (last) in place: the row of the opposite mean fraction."""
    return np.concatenate([row[-2::-1], row[-1:]])


def _splits_a_tie(p):
    """Whether laplace._quantize_pmf gives its extra units to part of a group of equal remainders
    (or takes units back), so that index order, not the remainders, decided them."""
    n = len(p)
    raw = p * float(2**16 - n)
    frac = raw - np.floor(raw)
    rem = 2**16 - int((np.floor(raw) + 1).sum())
    if rem < 0:
        return True
    extra = rem % n
    return extra > 0 and int((frac >= np.sort(frac)[::-1][extra - 1]).sum()) != extra


def test_quantize_pmf_row_and_when_a_mirrored_row_may_reuse_it():
    """The table builder gives a mean bin the mirrored frequencies of its opposite bin when the
    row's quantization reports no tie decided by index: that report must be right."""
    rng = np.random.default_rng(0)
    rows = [rng.dirichlet(np.ones(n)) for n in (4, 9, 40, 301)]
    rows += [np.array(r) for r in ([0.2, 0.2, 0.5, 0.1], [0.1, 0.3, 0.3, 0.3], [0.15, 0.35, 0.35, 0.15])]
    reuse_would_be_wrong = 0
    for p in rows:
        freq, untied = N.quantize_pmf(p)
        assert np.array_equal(freq, _quantize_pmf(p[None])[0])
        assert untied == (not _splits_a_tie(p))
        mirrored_row_freq = _quantize_pmf(_mirrored(p)[None])[0]
        if untied:
            assert np.array_equal(mirrored_row_freq, _mirrored(freq))
        else:
            reuse_would_be_wrong += not np.array_equal(mirrored_row_freq, _mirrored(freq))
    assert reuse_would_be_wrong == 1  # [0.2, 0.2, 0.5, 0.1]: the check is what keeps the bits


@pytest.mark.parametrize("bad", [
    dict(log_scale_step_log2=13), dict(log_scale_min=-4.01), dict(num_scale_bins=0), dict(num_scale_bins=4097),
    dict(mean_bins_log2=7), dict(tail_log2=1), dict(tail_log2=16), dict(max_half_width=0),
    dict(max_half_width=16385), dict(log_scale_min=10.0, num_scale_bins=30),
])
def test_invalid_table_configs_are_refused(bad):
    with pytest.raises(TableConfigError):
        LaplaceTableConfig(**bad)
    with pytest.raises(CorruptDataError):
        N.laplace_tables(bad)


def test_table_config_dict_is_checked():
    with pytest.raises(CorruptDataError, match="unknown field"):
        N.laplace_tables({"tail": 12})
    with pytest.raises(CorruptDataError, match="integer"):
        N.laplace_tables({"num_scale_bins": 7.5})
    assert np.array_equal(N.laplace_tables({})[0], get_tables(LaplaceTableConfig()).flat[0])


# ---------------------------------------------------------------------------------- ARMs
def make_arm(a, seed=0, shift=8):
    """An ARM that uses its context (mean ~ 0.8 * previous latent), exact in float32 for small contexts."""
    torch.manual_seed(seed)
    arm = BatchedArm(a)
    with torch.no_grad():
        for w in arm.weights:
            w.mul_(0.05)
        arm.weights[0][:, -1, 0] = 1.0
        arm.weights[0][:, -1, 1] = -1.0
        arm.weights[1][:, 0, 0] = 1.0
        arm.weights[1][:, 1, 1] = 1.0
        arm.weights[2][:, 0, 0] = 0.8
        arm.weights[2][:, 1, 0] = -0.8
        arm.biases[2][:, 1] = 0.6
    return QuantizedArm.from_float(arm, shift)


def random_arm(a, shifts, frac=6, config=ArmConfig(), seed=0, mag=0.6):
    torch.manual_seed(seed)
    arm = BatchedArm(a, config)
    with torch.no_grad():
        for w in arm.weights:
            w.uniform_(-mag, mag)
        for b in arm.biases:
            b.uniform_(-2, 2)
    return QuantizedArm.from_float(arm, list(shifts)[:a], frac)


ARMS = {
    "ar": lambda: make_arm(3),
    "wide": lambda: random_arm(3, (10, 12, 11), mag=0.3),         # float32 exact only for small contexts
    "f64": lambda: random_arm(3, (3, 4, 5), frac=6, mag=2.0),     # negative hidden shifts: no int32 path
    "one_layer": lambda: random_arm(2, (8, 9), config=ArmConfig(8, 4, 0)),
    "deep16": lambda: random_arm(2, (7, 6), config=ArmConfig(5, 16, 3), mag=0.4),
}


@pytest.mark.parametrize("name", sorted(ARMS))
def test_arm_section_parsed_as_python(name):
    q = ARMS[name]()
    data = q.to_bytes()
    ours = N.parse_arm(data)
    ref = QuantizedArm.from_bytes(data)
    assert ours["context_size"] == ref.config.context_size and ours["num_hidden_layers"] == ref.config.num_hidden_layers
    assert tuple(ours["weight_shifts"]) == ref.weight_shifts
    assert ours["activation_frac_bits"] == ref.activation_frac_bits
    for a, b in zip(ours["weights"] + ours["biases"], ref.weights + ref.biases):
        assert np.array_equal(a, b)
    assert ours["float32_context_bound"] == ref.float32_context_bound()
    assert ours["int32_context_bound"] == ref.int32_context_bound()


def test_arm_paths_are_exercised():
    bounds = {k: N.parse_arm(f().to_bytes()) for k, f in ARMS.items()}
    assert 0 < bounds["wide"]["float32_context_bound"] < 100
    assert bounds["f64"]["int32_context_bound"] == -1


# ---------------------------------------------------------------------------------- latents
def ar_latents(a, sizes, seed=0, scale=2.0, spikes=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        x = np.round(scipy.signal.lfilter([1.0], [1.0, -0.8], rng.laplace(0, scale, (a, n)), axis=1)).astype(np.int64)
        if spikes and n:
            pos = rng.integers(0, n, (a, spikes))
            val = rng.integers(100, LATENT_LIMIT + 1, (a, spikes)) * rng.choice([-1, 1], (a, spikes))
            np.put_along_axis(x, pos, val, axis=1)
            x[0, rng.integers(0, n)] = LATENT_LIMIT
        out.append(x)
    return out


def native_decode(data, q, sizes, s, cfg=LaplaceTableConfig()):
    return N.decode_latents(q.to_bytes(), data, list(sizes), q.num_attributes, s, _cfg(cfg))


@pytest.mark.parametrize("arm,sizes,s,spikes", [
    ("ar", [2000, 500, 60], 64, 0),
    ("ar", [0, 37, 1, 0, 700], 7, 3),
    ("wide", [1500, 1500], 512, 5),
    ("wide", [300], 1, 2),
    ("f64", [900, 31], 100, 4),
    ("one_layer", [513, 0, 1025], 256, 2),
    ("deep16", [700, 300], 33, 3),
])
def test_latents_identical_to_python(arm, sizes, s, spikes):
    q = ARMS[arm]()
    lat = ar_latents(q.num_attributes, sizes, seed=len(sizes) + s, spikes=spikes)
    data = encode_latents(lat, q, s)
    ours = native_decode(data, q, sizes, s)
    assert len(ours) == len(sizes)
    for x, o in zip(lat, ours):
        assert o.dtype == np.int32 and o.shape == x.shape and np.array_equal(o, x)
    if sum(sizes) * s <= 100_000:  # the numpy/torch reference loop (slow): the small layouts
        ref = decode_latents(data, sizes, q.num_attributes, q, s, native=False)
        assert all(np.array_equal(o, r) for o, r in zip(ours, ref))


def test_latents_many_attributes_and_other_tables():
    q = make_arm(17, seed=3, shift=7)
    cfg = LaplaceTableConfig(log_scale_min=-3.0, log_scale_step_log2=2, num_scale_bins=40, mean_bins_log2=2)
    sizes = [3000, 3000, 1200]
    lat = ar_latents(17, sizes, seed=5, scale=1.0, spikes=1)
    data = encode_latents(lat, q, 512, cfg)
    ours = native_decode(data, q, sizes, 512, cfg)
    assert all(np.array_equal(o, x) for o, x in zip(ours, lat))
    one = make_arm(1, seed=4)
    lat1 = ar_latents(1, [5000], seed=6)
    ours1 = native_decode(encode_latents(lat1, one, 128), one, [5000], 128)
    assert np.array_equal(ours1[0], lat1[0])


def test_latents_argument_errors():
    q = make_arm(2)
    lat = ar_latents(2, [100], seed=1)
    data = encode_latents(lat, q, 32)
    with pytest.raises(CorruptDataError, match="attributes"):
        N.decode_latents(q.to_bytes(), data, [100], 3, 32, {})
    with pytest.raises(CorruptDataError):
        N.decode_latents(q.to_bytes(), data, [100], 2, 0, {})
    with pytest.raises(CorruptDataError):
        N.decode_latents(q.to_bytes(), data, [-1], 2, 32, {})
    for bad in (b"", data[:6], data[:-1]):
        with pytest.raises(CorruptDataError):
            N.decode_latents(q.to_bytes(), bad, [100], 2, 32, {})
    with pytest.raises(CorruptDataError, match="cannot hold"):  # far more symbols than 8 bytes can code
        N.decode_latents(q.to_bytes(), data[:8], [1 << 36], 2, 32, {})
    out = N.decode_latents(q.to_bytes(), b"", [0, 0], 2, 32, {})  # nothing to decode: no stream needed
    assert [o.shape for o in out] == [(2, 0), (2, 0)]


# ---------------------------------------------------------------------------------- weights
def test_weights_identical_to_python():
    rng = np.random.default_rng(0)
    tensors = [rng.integers(-3, 4, (16, 8)), rng.integers(-(1 << 20), 1 << 20, (5, 3, 3)), np.zeros((0, 4), np.int64),
               np.array(7), np.round(rng.laplace(0, 40, 1000)).astype(np.int64), np.zeros(50, np.int64),
               np.array([-(1 << 40), 1 << 40, 0])]
    data = encode_int_tensors(tensors)
    counts = [int(np.prod(t.shape)) for t in tensors]
    ours = N.decode_int_tensors(data, counts)
    ref = decode_int_tensors(data, [t.shape for t in tensors])
    for o, r, t in zip(ours, ref, tensors):
        assert o.dtype == np.int64 and np.array_equal(o, r.ravel()) and np.array_equal(o, t.ravel())
    assert N.decode_int_tensors(b"", []) == []
    for bad, cnt in ((data[:-1], counts), (data + b"\0", counts), (b"\x30" + data[1:], counts), (data, counts + [1])):
        with pytest.raises(CorruptDataError):
            N.decode_int_tensors(bad, cnt)
    with pytest.raises(CorruptDataError):
        N.decode_int_tensors(data[:4], [1 << 40])


def test_masked_weights_identical_to_python_and_bad_masks_refused_alike():
    """Tensors whose slices along axis 0 are partly zero (pruned decoder branches) are written with
    a slice mask; the native reader gives Python's values, and both refuse the same bad masks."""
    from ralhe_me.decode.weights import MASKED

    rng = np.random.default_rng(5)
    stacked = rng.integers(-40, 41, (17, 27, 2, 3))
    stacked[[0, 8, 9, 16]] = 0
    tensors = [stacked, np.zeros((16, 12, 4), np.int64), np.zeros(300, np.int64), rng.integers(-2, 3, (9, 4))]
    data = encode_int_tensors(tensors)
    sizes = [len(encode_int_tensors([t])) for t in tensors]
    starts = np.cumsum([0] + sizes[:-1])
    assert [bool(data[s] & MASKED) for s in starts] == [True, True, True, False]
    counts = [int(np.prod(t.shape)) for t in tensors]
    for o, t in zip(N.decode_int_tensors(data, counts), tensors):
        assert np.array_equal(o, t.ravel())

    def verdicts(section, shapes):
        try:
            ref = decode_int_tensors(section, shapes)
        except WeightFormatError:
            ref = None
        try:
            ours = N.decode_int_tensors(section, [int(np.prod(s)) for s in shapes])
        except CorruptDataError:
            ours = None
        assert (ours is None) == (ref is None)
        if ref is not None:
            assert all(np.array_equal(o, r.ravel()) for o, r in zip(ours, ref))
        return ref is not None

    one = encode_int_tensors([stacked])  # order | MASKED, varint 17, 3 mask bytes, codes
    assert one[1] == 17
    assert verdicts(one, [stacked.shape])
    assert not verdicts(one[:1] + bytes([5]) + one[2:], [stacked.shape])  # 5 slices do not divide 2754
    assert not verdicts(one[:1] + bytes([0]) + one[2:], [stacked.shape])  # no slices
    assert not verdicts(one[:4] + bytes([one[4] | 0x01]) + one[5:], [stacked.shape])  # a bit past slice 17
    assert not verdicts(one[:1] + bytes([0x91] + [0x80] * 8 + [0]) + one[2:], [stacked.shape])  # 10-byte varint
    assert not verdicts(one[:3], [stacked.shape])  # ends inside the mask
    assert not verdicts(bytes([MASKED, 1, 0]), [(1 << 29,)])  # a masked tensor too large to allocate
    assert verdicts(bytes([MASKED, 1, 0]), [(1 << 20,)])  # all zeros: the mask alone


# ---------------------------------------------------------------------------------- fuzz
def _mutations(data, rng, count):
    """Truncations (at word boundaries and not) and 1-3 bit flips of `data`."""
    out = []
    for i in range(count):
        if i % 3 == 0:
            out.append(data[: int(rng.integers(0, len(data)))])
        else:
            b = bytearray(data)
            for _ in range(int(rng.integers(1, 4))):
                j = int(rng.integers(0, len(b)))
                b[j] ^= 1 << int(rng.integers(0, 8))
            out.append(bytes(b))
    return out


def _claimed_parameters(data):
    """The parameter count an ARM section's header announces (0 if it has no header)."""
    if len(data) < 6:
        return 0
    a, k, hidden, layers = data[1:5]
    dims = [k] + [hidden] * layers + [2]
    return a * sum(i * o + o for i, o in zip(dims[:-1], dims[1:]))


def test_fuzz_sections_raise_only_bitstream_errors(monkeypatch):
    # The reference parse is QuantizedArm.from_bytes itself, its symbols read with the bounds-checked
    # reader of _lockstep_cpu (CompressAI's decoder reads past the end of a short stream).
    lockstep = pytest.importorskip("ralhe_me.entropy._lockstep_cpu")
    from types import SimpleNamespace

    from ralhe_me.entropy import integer_arm

    class SafeDecoder:
        def decode_with_indexes(self, stream, indexes, cdfs, lengths, offsets):
            flat = get_tables(PARAM_TABLE_CONFIG).flat
            return lockstep.read_symbols(stream, np.asarray(indexes, np.int64), *flat).tolist()

    monkeypatch.setattr(integer_arm, "load_rans", lambda: SimpleNamespace(RansDecoder=SafeDecoder))
    rng = np.random.default_rng(1234)
    q = ARMS["wide"]()
    sizes = [400, 150]
    lat = ar_latents(3, sizes, seed=9, spikes=1)
    arms_b, lat_b = q.to_bytes(), encode_latents(lat, q, 64)
    masked = rng.integers(-50, 50, (8, 5, 3))
    masked[[2, 3, 6]] = 0  # written with a slice mask (pruned decoder branches)
    weights = [rng.integers(-50, 50, (12, 6)), np.round(rng.laplace(0, 3, 200)).astype(np.int64), np.array(-3), masked]
    w_b = encode_int_tensors(weights)
    counts = [int(np.prod(t.shape)) for t in weights]
    outcomes = {"ok": 0, "error": 0}

    def run(fn):
        try:
            result = fn()
        except BitstreamError:
            outcomes["error"] += 1
            return None
        outcomes["ok"] += 1
        return result

    for bad in _mutations(lat_b, rng, 120):  # latents: decode or a named error, never a crash
        out = run(lambda: N.decode_latents(arms_b, bad, sizes, 3, 64, {}))
        if out is not None:
            assert [o.shape for o in out] == [x.shape for x in lat]
    for bad in _mutations(arms_b, rng, 120):  # ARM sections: exactly Python's verdict and integers
        ours = run(lambda: N.parse_arm(bad))
        if _claimed_parameters(bad) > 200 * len(bad) + 1000:  # no stream that short holds them
            assert ours is None
            continue
        try:
            ref = QuantizedArm.from_bytes(bad)
        except ValueError:  # ArmFormatError, or the reader's "stream ends before its last symbol"
            ref = None
        assert (ours is None) == (ref is None)
        if ref is not None:
            for a, b in zip(ours["weights"] + ours["biases"], ref.weights + ref.biases):
                assert np.array_equal(a, b)
        run(lambda: N.decode_latents(bad, lat_b, sizes, 3, 64, {}))
    for bad in _mutations(w_b, rng, 120):  # weights: exactly Python's verdict and values
        try:
            ref = decode_int_tensors(bad, [t.shape for t in weights])
        except WeightFormatError:
            ref = None
        ours = run(lambda: N.decode_int_tensors(bad, counts))
        assert (ours is None) == (ref is None)
        if ref is not None:
            assert all(np.array_equal(o, r.ravel()) for o, r in zip(ours, ref))
    assert outcomes["ok"] > 20 and outcomes["error"] > 100, outcomes
