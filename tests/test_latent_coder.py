"""Lockstep latent coder: bit-exact round trips, estimated vs real size, stream order, determinism
across threads and batch splits, named errors."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch

from ralhe_me.entropy import latent_coder
from ralhe_me.entropy.contexts import SegmentLayout
from ralhe_me.entropy.integer_arm import QuantizedArm
from ralhe_me.entropy.laplace import LaplaceTableConfig, get_tables
from ralhe_me.entropy.latent_coder import (
    LATENT_LIMIT,
    LatentRangeError,
    LatentShapeError,
    LatentStreamError,
    _stream_order,
    decode_latents,
    encode_latents,
    estimate_bits,
    predict_levels,
)
from ralhe_me.nn.arm import BatchedArm

ROOT = Path(__file__).resolve().parents[1]


def make_arm(a, seed=0, shift=8):
    """A small ARM that uses its context: mean ~ 0.8 * previous latent, scale ~ 1.8."""
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


def ar_latents(a, sizes, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    return [
        np.round(scipy.signal.lfilter([1.0], [1.0, -0.8], rng.laplace(0, scale, (a, n)), axis=1)).astype(np.int64)
        for n in sizes
    ]


def round_trip(latents, q, s, **kw):
    data = encode_latents(latents, q, s, **kw)
    out = decode_latents(data, [x.shape[1] for x in latents], q.num_attributes, q, s, **kw)
    assert len(out) == len(latents)
    for x, y in zip(latents, out):
        assert y.dtype == np.int64 and y.shape == x.shape
        assert np.array_equal(x, y)
    return data


@pytest.mark.parametrize(
    "sizes,s",
    [
        ([1000, 300, 40, 1, 0], 64),
        ([5], 16),  # a level shorter than a segment
        ([1], 1),
        ([1], 256),
        ([257, 256, 255, 3], 256),
        ([100, 100], 1),  # every latent its own segment: no context at all
        ([700, 90], 1000),  # one segment per level
    ],
)
def test_round_trip(sizes, s):
    a = 3
    q = make_arm(a)
    round_trip(ar_latents(a, sizes, seed=len(sizes) + s), q, s)


def test_round_trip_outliers_and_escapes():
    a = 2
    q = make_arm(a)
    lat = ar_latents(a, [600, 200, 7], seed=5)
    lat[0][0, 5] = LATENT_LIMIT
    lat[0][1, 6] = -LATENT_LIMIT
    lat[1][0, :50] = np.arange(50) * 100_003 - 2_000_000  # a run of large values: escapes and clamped contexts
    lat[2][1] = 40_000
    data = round_trip(lat, q, 32)
    assert abs(len(data) * 8 - estimate_bits(lat, q, 32)) < 0.02 * len(data) * 8 + 96


def test_round_trip_other_table_config_and_per_attribute_shifts():
    torch.manual_seed(2)
    q = QuantizedArm.from_float(BatchedArm(3), [4, 9, 13], activation_frac_bits=3)
    cfg = LaplaceTableConfig(log_scale_min=-2.0, log_scale_step_log2=2, num_scale_bins=30, mean_bins_log2=1)
    lat = ar_latents(3, [400, 100], seed=7, scale=4.0)
    round_trip(lat, q, 50, table_config=cfg)
    data = encode_latents(lat, q, 50, cfg)
    out = decode_latents(data, [400, 100], 3, q, 50, cfg, table_subsets=False)
    assert all(np.array_equal(x, y) for x, y in zip(lat, out))


def test_empty_levels():
    q = make_arm(2)
    assert encode_latents([np.zeros((2, 0), np.int64)] * 3, q, 16) == b""
    out = decode_latents(b"", [0, 0, 0], 2, q, 16)
    assert [o.shape for o in out] == [(2, 0)] * 3
    assert estimate_bits([np.zeros((2, 0), np.int64)], q, 16) == 0.0


def test_estimate_matches_stream_size_on_realistic_stream():
    """200k symbols: the estimate is the model cost the coder pays, within 2% (here far closer)."""
    a = 4
    q = make_arm(a)
    lat = ar_latents(a, [30000, 15000, 4000, 1000], seed=11)
    data = encode_latents(lat, q, 256)
    est = estimate_bits(lat, q, 256)
    per = estimate_bits(lat, q, 256, per_attribute=True)
    assert per.shape == (a,) and abs(per.sum() - est) < 1e-6 * est
    assert abs(len(data) * 8 - est) < 0.02 * est
    assert abs(len(data) * 8 - est) < 0.001 * est + 96
    n = sum(x.size for x in lat)
    assert est / n < 3.9  # the model predicts from context (order-0 entropy of these latents is ~4.3)
    out = decode_latents(data, [x.shape[1] for x in lat], a, q, 256)
    assert all(np.array_equal(x, y) for x, y in zip(lat, out))


def test_float_view_equals_coder_model():
    a = 2
    q = make_arm(a)
    lat = ar_latents(a, [3000, 500], seed=3)
    preds = predict_levels(lat, q, 128)
    tables = get_tables(LaplaceTableConfig())
    total = 0.0
    for x, p in zip(lat, preds):
        assert p.mu.shape == x.shape
        assert torch.equal(p.mu_int, torch.floor(p.mu + 0.5).to(torch.int64))
        total += tables.bits(p.table_index.numpy(), x - p.mu_int.numpy()).sum()
    assert abs(total - estimate_bits(lat, q, 128)) < 1e-6 * total


def test_encoder_prediction_equals_the_arm_on_every_context():
    """The encoder evaluates each attribute's ARM only where its context is not all zeros; the
    slow reference evaluates it on every context: the same means and tables everywhere (sparse
    latents, an all-zero attribute, escapes, segment starts)."""
    a, k, s = 3, 16, 64
    q = make_arm(a)
    rng = np.random.default_rng(5)
    lat = ar_latents(a, [1500, 300], seed=6)
    for x in lat:
        x[:, rng.random(x.shape[1]) < 0.97] = 0  # mostly zero contexts, as at low rates
    lat[0][1] = 0  # an attribute with nothing to code
    lat[0][2, 7] = 5000  # an escape
    layout = SegmentLayout(tuple(x.shape[1] for x in lat), s)
    x, mu, idx, valid = latent_coder._predict_all(lat, layout, q, LaplaceTableConfig())
    buf = latent_coder._fill_buffer(lat, layout, k)
    contexts = buf.unfold(2, k, 1)[:, :, : layout.num_steps].reshape(a, -1, k)
    bound = max(int(np.abs(v).max()) for v in lat)
    ref_mu, ref_idx = q.code_indices(contexts, bound, LaplaceTableConfig())
    zero_rows = ~contexts.ne(0).any(dim=2)
    assert zero_rows.float().mean() > 0.3 and not zero_rows.all()
    np.testing.assert_array_equal(mu.reshape(a, -1), ref_mu)
    np.testing.assert_array_equal(idx.reshape(a, -1), ref_idx)


def test_symbol_bits_equal_the_table_frequencies_with_escape_payloads():
    """``bits`` looks the bits up per symbol and adds a payload to the escapes alone: against
    -log2 of each frequency plus ``escape_extra_bits`` written out for every symbol."""
    from ralhe_me.entropy.laplace import PRECISION, escape_extra_bits

    tables = get_tables(LaplaceTableConfig())
    rng = np.random.default_rng(2)
    ti = rng.integers(0, len(tables.half_widths), 5000)
    w = tables.half_widths[ti]
    r = np.round(rng.normal(0, 2.0, 5000) * w).astype(np.int64)  # about a third outside the tables
    v = r + w
    regular = (v >= 0) & (v <= 2 * w)
    assert 0 < (~regular).sum() < 5000
    freq = tables.freq_flat[tables.freq_start[ti] + np.where(regular, v, 2 * w + 1)]
    ref = PRECISION - np.log2(freq.astype(np.float64)) + np.where(regular, 0.0, escape_extra_bits(v, 2 * w + 1))
    np.testing.assert_array_equal(tables.bits(ti, r), ref)
    assert tables.bits(ti[0], r[0]) == ref[0]  # scalars too


def test_stream_order_is_step_major():
    lay = SegmentLayout((10, 3, 7), 4)
    a, g, t = 2, lay.total_segments, lay.num_steps
    order = lay.coding_order
    valid = np.arange(t)[None, :] < lay.segment_lengths[order][:, None]
    arr = np.arange(a * g * t).reshape(a, g, t)
    expected = [arr[ai, gi, ti] for ti in range(t) for ai in range(a) for gi in range(g) if valid[gi, ti]]
    assert _stream_order(arr, valid).tolist() == expected


def test_same_bytes_for_any_encoder_chunking(monkeypatch):
    q = make_arm(3)
    lat = ar_latents(3, [2000, 700, 30], seed=4)
    ref = encode_latents(lat, q, 100)
    monkeypatch.setattr(latent_coder, "_CHUNK_ELEMENTS", 3 * 16 * 5)
    assert encode_latents(lat, q, 100) == ref


def test_same_prediction_for_any_attribute_split():
    q = make_arm(3)
    lat = ar_latents(3, [900, 100], seed=8)
    full = estimate_bits(lat, q, 64, per_attribute=True)
    for ai in range(3):
        single = estimate_bits([x[ai : ai + 1] for x in lat], q.select([ai]), 64)
        assert single == full[ai]


_THREAD_SCRIPT = """
import hashlib, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from test_latent_coder import make_arm, ar_latents
from ralhe_me.entropy.latent_coder import encode_latents, decode_latents
q = make_arm(3)
lat = ar_latents(3, [3000, 800, 50], seed=9)
for threads in (1, 2):
    torch.set_num_threads(threads)
    data = encode_latents(lat, q, 128, num_threads=None)
    out = decode_latents(data, [3000, 800, 50], 3, q, 128, num_threads=None)
    assert all(np.array_equal(x, y) for x, y in zip(lat, out))
    print(threads, hashlib.sha256(data).hexdigest())
"""


def test_same_bytes_with_one_and_two_threads():
    """A fresh process (its own thread pools) encoding with 1 then 2 threads writes our bytes."""
    here = hashlib.sha256(encode_latents(ar_latents(3, [3000, 800, 50], seed=9), make_arm(3), 128)).hexdigest()
    res = subprocess.run(
        [sys.executable, "-c", _THREAD_SCRIPT, str(ROOT), str(ROOT / "tests")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()[-2:]
    assert lines == [f"1 {here}", f"2 {here}"]


def test_coding_threads_are_restored():
    old = torch.get_num_threads()
    q = make_arm(2)
    lat = ar_latents(2, [300], seed=1)
    data = encode_latents(lat, q, 64, num_threads=1)
    assert torch.get_num_threads() == old
    assert np.array_equal(decode_latents(data, [300], 2, q, 64, num_threads=2)[0], lat[0])
    assert torch.get_num_threads() == old


def test_named_errors():
    q = make_arm(2)
    with pytest.raises(LatentRangeError):
        encode_latents([np.array([[0, LATENT_LIMIT + 1], [0, 0]])], q, 8)
    with pytest.raises(LatentShapeError):
        encode_latents([np.zeros((3, 5), np.int64)], q, 8)  # 3 attributes for a 2-attribute ARM
    with pytest.raises(LatentShapeError):
        encode_latents([np.full((2, 5), 0.5)], q, 8)
    with pytest.raises(LatentShapeError):
        decode_latents(b"\0" * 8, [5], 3, q, 8)
    with pytest.raises(LatentStreamError):
        decode_latents(b"", [5], 2, q, 8)
    with pytest.raises(LatentStreamError):
        decode_latents(b"\0" * 10, [5], 2, q, 8)


# ---------------------------------------------------------------------------------- native loop
needs_native = pytest.mark.skipif(not latent_coder.native_available(), reason="_lockstep_cpu not built")


def both_decoders(latents, q, s, cfg=LaplaceTableConfig()):
    """Decode with the C++ loop (its own rANS reader, then CompressAI's decode_stream) and with the
    numpy/torch reference: all must give the latents."""
    data = encode_latents(latents, q, s, cfg)
    sizes = [x.shape[1] for x in latents]
    fast = decode_latents(data, sizes, q.num_attributes, q, s, cfg, native=True)
    via_compressai = decode_latents(data, sizes, q.num_attributes, q, s, cfg, native=True, rans="compressai")
    slow = decode_latents(data, sizes, q.num_attributes, q, s, cfg, native=False)
    for x, f, c, r in zip(latents, fast, via_compressai, slow):
        assert f.dtype == np.int64 and f.shape == x.shape
        assert np.array_equal(f, r) and np.array_equal(f, x) and np.array_equal(c, x)


@needs_native
@pytest.mark.parametrize("seed", [0, 1])
def test_native_rans_reader_equals_compressai(seed):
    """The native reader against CompressAI's decode_with_indexes on the same stream: every table
    of the family, escapes of both signs up to the symbol limit, and runs of one table."""
    from ralhe_me.entropy import _lockstep_cpu
    from ralhe_me.entropy.categorical import load_rans
    from ralhe_me.entropy.laplace import SYMBOL_LIMIT, rans_encode

    tables = get_tables(LaplaceTableConfig())
    rng = np.random.default_rng(seed)
    n = 30_000
    idx = rng.integers(0, len(tables.cdfs), n)
    idx[1000:3000] = idx[1000]
    sym = np.round(rng.laplace(0, 2.0 + 10 * seed, n)).astype(np.int64)
    far = rng.choice(n, 300, replace=False)
    sym[far] = rng.integers(-SYMBOL_LIMIT + 1, SYMBOL_LIMIT, far.size)
    sym[far[:2]] = [SYMBOL_LIMIT - 1, -SYMBOL_LIMIT + 1]
    w = tables.half_widths[idx]
    assert ((sym > w) | (sym < -w)).sum() > 100  # escapes are exercised
    data = rans_encode(sym, idx, tables)
    ref = load_rans().RansDecoder().decode_with_indexes(data, idx.tolist(), tables.cdfs, tables.cdf_lengths,
                                                        tables.offsets)
    ours = _lockstep_cpu.read_symbols(data, idx, *tables.flat)
    assert np.array_equal(np.asarray(ref), sym)
    assert np.array_equal(ours, sym)


@needs_native
def test_native_rans_reader_rejects_short_and_junk_streams():
    """A truncated stream raises the named error (never reads outside the buffer); junk decodes to
    some latents or raises it, never crashes."""
    q = make_arm(3)
    lat = ar_latents(3, [2000, 500, 60], seed=4)
    data = encode_latents(lat, q, 64)
    sizes = [x.shape[1] for x in lat]
    for cut in (len(data) // 2 // 4 * 4, 8):
        with pytest.raises(LatentStreamError, match="corrupt"):
            decode_latents(data[:cut], sizes, 3, q, 64, native=True)
    rng = np.random.default_rng(0)
    for _ in range(20):
        junk = rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()
        try:
            out = decode_latents(junk, sizes, 3, q, 64, native=True)
        except LatentStreamError:
            continue
        assert [x.shape for x in out] == [x.shape for x in lat]


def test_unknown_rans_reader_is_a_named_error():
    q = make_arm(2)
    with pytest.raises(ValueError, match="rans must be one of"):
        decode_latents(b"\0" * 8, [5], 2, q, 8, rans="fast")


@needs_native
@pytest.mark.parametrize("hidden,layers", [(8, 2), (16, 2), (5, 1), (3, 0), (12, 3)])
def test_native_equals_reference_for_arm_shapes(hidden, layers):
    """Fixed-width kernels (2, 8, 16 outputs), the generic one (5, 3, 12) and no hidden layer."""
    from ralhe_me.nn.arm import ArmConfig

    torch.manual_seed(hidden + layers)
    cfg = ArmConfig(context_size=16 if layers != 3 else 7, hidden=hidden, num_hidden_layers=layers)
    arm = BatchedArm(3, cfg)
    with torch.no_grad():
        arm.weights[0][:, -1, :] += 0.5
    q = QuantizedArm.from_float(arm, [7, 10, 12])
    both_decoders(ar_latents(3, [1500, 700, 90, 1], seed=hidden), q, 64)


@needs_native
def test_native_equals_reference_with_outliers_and_float64_path():
    """Large latents push the context bound past the float32-exact limit mid-stream: the native
    loop switches to float64 and still matches; contexts are clamped; escapes decode."""
    q = make_arm(2, shift=14)
    assert 0 <= q.float32_context_bound() < 40_000
    lat = ar_latents(2, [900, 300, 7], seed=5)
    lat[0][0, 400] = LATENT_LIMIT
    lat[0][1, 401] = -LATENT_LIMIT
    lat[1][0, :50] = np.arange(50) * 100_003 - 2_000_000
    lat[2][1] = 40_000
    both_decoders(lat, q, 128)


@needs_native
def test_native_equals_reference_other_table_config():
    torch.manual_seed(2)
    q = QuantizedArm.from_float(BatchedArm(3), [4, 9, 13], activation_frac_bits=3)
    cfg = LaplaceTableConfig(log_scale_min=-2.0, log_scale_step_log2=2, num_scale_bins=30, mean_bins_log2=1)
    both_decoders(ar_latents(3, [400, 100, 33], seed=7, scale=4.0), q, 50, cfg)


@needs_native
def test_native_equals_reference_on_zero_runs():
    """All-zero context blocks take a shortcut (the ARM of a zero context, computed once)."""
    q = make_arm(4)
    lat = ar_latents(4, [5000, 1200, 30], seed=9)
    lat[0][:, 1000:3000] = 0
    lat[1][2:] = 0
    both_decoders(lat, q, 256)


def test_float32_context_bound_is_the_exactness_limit():
    from ralhe_me.entropy.integer_arm import _EXACT_F32

    for shift in (8, 12, 14):
        q = make_arm(2, shift=shift)
        b = q.float32_context_bound()
        if b >= 0:
            assert max(q._layer_bounds(b)) < _EXACT_F32
        if b < CONTEXT_CLAMP_VALUE:
            assert max(q._layer_bounds(b + 1)) >= _EXACT_F32 or b == -1


CONTEXT_CLAMP_VALUE = (1 << 15) - 1


def test_int32_context_bound_is_the_overflow_limit():
    from ralhe_me.entropy.integer_arm import _EXACT_I32

    q = make_arm(2, shift=14)
    b = q.int32_context_bound()
    assert q.float32_context_bound() < b < CONTEXT_CLAMP_VALUE
    assert max(q._layer_bounds(b)) < _EXACT_I32 <= max(q._layer_bounds(b + 1))
    assert make_arm(2, shift=8).int32_context_bound() == CONTEXT_CLAMP_VALUE


@needs_native
def test_native_equals_reference_on_the_int32_path():
    """Latents whose magnitude lies between the float32 and the int32 bounds: the native loop runs
    its int32 kernel for the rest of the stream (then float64 once a latent passes the int32
    bound) and still matches the reference."""
    q = make_arm(3, shift=14)
    f32, i32 = q.float32_context_bound(), q.int32_context_bound()
    lat = ar_latents(3, [3000, 800, 40], seed=11)
    lat[0][1, 100] = (f32 + i32) // 2  # early: most of the stream is decoded in int32
    both_decoders(lat, q, 128)
    lat[1][2, 300] = i32 + 5  # and past the int32 bound: float64 from there
    both_decoders(lat, q, 128)


def test_native_required_but_missing_raises(monkeypatch):
    monkeypatch.setattr(latent_coder, "_native_module", lambda: None)
    q = make_arm(2)
    lat = ar_latents(2, [100], seed=1)
    data = encode_latents(lat, q, 32)
    with pytest.raises(ImportError):
        decode_latents(data, [100], 2, q, 32, native=True)
    assert np.array_equal(decode_latents(data, [100], 2, q, 32)[0], lat[0])  # falls back
