"""Covariance vector quantization: exact codebook/index round trips through bytes, nearest-codeword
assignment against brute force, k-means behaviour, the codebook-size rule, named errors."""
import numpy as np
import pytest

from ralhe_me.geometry.covariance_vq import (
    CovarianceCodebook,
    CovarianceStreamError,
    CovarianceVQError,
    VQConfig,
    _features,
    _from_features,
    canonical_quats,
    choose_codebook_size,
    decode_covariance,
    decode_covariance_indices,
    encode_covariance,
    encode_covariance_indices,
    fit_codebook,
)


def _shapes(n, seed=0):
    """Anisotropic Gaussians in a few families (like trained models), random rotations."""
    rng = np.random.default_rng(seed)
    family = rng.integers(0, 6, n)
    base = rng.normal(-5, 1.0, (6, 3))
    s = (base[family] + rng.normal(0, 0.3, (n, 3))).astype(np.float32)
    s[: n // 10, 2] -= 8  # some flat Gaussians
    q = rng.normal(size=(n, 4)).astype(np.float32) * rng.uniform(0.5, 2, (n, 1)).astype(np.float32)
    return s, q


def test_canonical_quats():
    q = np.array([[-1, 0, 0, 0], [0.0, -0.6, 0.8, 0], [0, 0, 0, -2], [2, 2, 2, 2]], np.float32)
    c = canonical_quats(q)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(c, [[1, 0, 0, 0], [0, 0.6, -0.8, 0], [0, 0, 0, 1], [0.5, 0.5, 0.5, 0.5]], atol=1e-6)
    with pytest.raises(CovarianceVQError):
        canonical_quats(np.zeros((1, 4)))


@pytest.mark.parametrize("config", [VQConfig(), VQConfig(thin_axis_floor=0.0, rotation_weight=1.0)])
def test_feature_map_inverts(config):
    s, q = _shapes(500)
    back_s, back_q = _from_features(_features(s, canonical_quats(q), config), config)
    np.testing.assert_allclose(back_q, canonical_quats(q), atol=1e-6)
    # log-scales come back exactly above the floor's influence, thin axes only approximately
    rel = s - s.max(axis=1, keepdims=True)
    thick = rel > np.log(max(config.thin_axis_floor, 1e-12)) + 3
    np.testing.assert_allclose(back_s[thick], s[thick], atol=2e-3)


def test_assign_is_nearest_codeword_by_brute_force():
    s, q = _shapes(2000, seed=1)
    cb = fit_codebook(s, q, 64, seed=0)
    fx = _features(s, canonical_quats(q), cb.config)
    fc = _features(cb.log_scales, cb.quats, cb.config)
    d = ((fx[:, None, :] - fc[None, :, :]) ** 2).sum(-1)
    idx = cb.assign(s, q)
    np.testing.assert_allclose(d[np.arange(len(s)), idx], d.min(axis=1), rtol=1e-9, atol=1e-12)


def test_codebook_and_indices_round_trip_exactly():
    s, q = _shapes(5000, seed=2)
    cb = fit_codebook(s, q, 256, seed=0)
    assert cb.size == 256
    np.testing.assert_array_equal(cb.log_scales, cb.log_scales.astype(np.float16).astype(np.float32))
    idx = cb.assign(s, q)
    data = encode_covariance_indices(cb, idx)
    cb2, idx2 = decode_covariance_indices(data)
    # the stream keeps used codewords only, sorted by use: same values per Gaussian, exactly
    np.testing.assert_array_equal(cb2.log_scales[idx2], cb.log_scales[idx])
    np.testing.assert_array_equal(cb2.quats[idx2], cb.quats[idx])
    counts = np.bincount(idx2)
    assert np.all(np.diff(counts) <= 0) and counts.min() > 0
    ls, qs = decode_covariance(encode_covariance(s, q, cb))
    assert ls.dtype == np.float32 and qs.dtype == np.float32
    np.testing.assert_array_equal(ls, cb.log_scales[idx])
    np.testing.assert_array_equal(qs, cb.quats[idx])


def test_codebook_bytes_round_trip_with_special_values():
    ls = np.array([[0.0, -0.0, 65504.0], [-65504.0, 6e-8, -1e-5], [1.0, 2.5, -3.25]], np.float32)
    qs = canonical_quats(np.array([[1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], [0, 1e-3, 0, 1]], np.float32))
    cb = CovarianceCodebook(ls, qs)
    back = CovarianceCodebook.from_bytes(cb.to_bytes(), cb.size)
    assert back.log_scales.tobytes() == cb.log_scales.tobytes()  # bit-exact, including -0.0
    assert back.quats.tobytes() == cb.quats.tobytes()


def test_fit_is_deterministic_and_lossless_when_few_shapes():
    s, q = _shapes(3000, seed=3)
    a = fit_codebook(s, q, 128, seed=5)
    b = fit_codebook(s, q, 128, seed=5)
    np.testing.assert_array_equal(a.log_scales, b.log_scales)
    np.testing.assert_array_equal(a.quats, b.quats)
    few_s, few_q = s[:10].repeat(30, axis=0), q[:10].repeat(30, axis=0)
    cb = fit_codebook(few_s, few_q, 64)
    assert cb.size == 10
    ls, qs = decode_covariance(encode_covariance(few_s, few_q, cb))
    np.testing.assert_allclose(ls, few_s, atol=5e-3 * np.abs(few_s).max())  # float16 only
    np.testing.assert_allclose(qs, canonical_quats(few_q), atol=1e-3)


def test_lloyd_iterations_reduce_error_and_bigger_codebooks_help():
    s, q = _shapes(6000, seed=4)
    fx = _features(s, canonical_quats(q), VQConfig())

    def error(cb):
        f = _features(cb.log_scales, cb.quats, cb.config)
        return ((fx - f[cb.assign(s, q)]) ** 2).sum(axis=1).mean()

    seeded = error(fit_codebook(s, q, 128, config=VQConfig(max_iters=0)))
    fitted = error(fit_codebook(s, q, 128))
    bigger = error(fit_codebook(s, q, 512))
    assert fitted < 0.8 * seeded
    assert bigger < fitted


def test_sampled_fit_on_many_points():
    s, q = _shapes(30000, seed=5)
    config = VQConfig(min_sample=4000, points_per_codeword=8)  # fit on a sample, then full passes
    cb = fit_codebook(s, q, 256, config=config)
    assert cb.size == 256
    weights = np.ones(len(s))
    weights[:100] = 1000.0  # importance pulls codewords towards the heavy Gaussians
    heavy = fit_codebook(s, q, 256, weights=weights, config=config)
    fx = _features(s[:100], canonical_quats(q[:100]), config)

    def err(c):
        return ((fx - _features(c.log_scales, c.quats, config)[c.assign(s[:100], q[:100])]) ** 2).sum(1).mean()

    assert err(heavy) < err(cb)


def test_empty_and_bad_input():
    data = encode_covariance_indices(CovarianceCodebook(np.zeros((1, 3)), np.array([[1.0, 0, 0, 0]])), np.zeros(0))
    ls, qs = decode_covariance(data)
    assert ls.shape == (0, 3) and qs.shape == (0, 4)
    s, q = _shapes(100)
    with pytest.raises(CovarianceVQError):
        fit_codebook(s, q[:50], 8)
    with pytest.raises(CovarianceVQError):
        fit_codebook(s, q, 0)
    with pytest.raises(CovarianceVQError):
        fit_codebook(s[:0], q[:0], 8)
    with pytest.raises(CovarianceVQError):
        fit_codebook(np.full_like(s, np.nan), q, 8)
    cb = fit_codebook(s, q, 8)
    with pytest.raises(CovarianceVQError):
        encode_covariance_indices(cb, np.array([8]))


def test_corrupt_streams_raise():
    s, q = _shapes(2000, seed=6)
    data = encode_covariance(s, q, fit_codebook(s, q, 64))
    for bad in (b"", b"\x07" + data[1:], data[:10], data[:-4], data + b"\0"):
        with pytest.raises(CovarianceStreamError):
            decode_covariance(bad)
    flipped = bytearray(data)
    flipped[-20] ^= 0x40
    with pytest.raises(CovarianceStreamError):
        decode_covariance(bytes(flipped))


def test_choose_codebook_size_rule():
    s, q = _shapes(3000, seed=7)
    calls = []

    def quality(size):  # PSNR rising with the codebook size
        calls.append(size)
        return 30.0 - 50.0 / size

    assert choose_codebook_size(s, q, quality, reference_quality=30.0, max_drop_db=0.1) == 512
    assert calls == [256, 512]  # increasing order, stops at the first that passes
    calls.clear()
    assert choose_codebook_size(s, q, quality, reference_quality=30.0, max_drop_db=0.25,
                                candidates=(1024, 64, 256)) == 256
    assert calls == [64, 256]
    calls.clear()
    assert choose_codebook_size(s, q, quality, reference_quality=31.0, candidates=(64, 128)) == 128  # none passes
    calls.clear()
    few_s, few_q = s[:100], q[:100]  # 100 distinct shapes: 256 codewords are lossless
    assert choose_codebook_size(few_s, few_q, quality, reference_quality=40.0) == 256
    assert calls == []
    with pytest.raises(CovarianceVQError):
        choose_codebook_size(s, q, quality, reference_quality=30.0, candidates=(0,))
