"""Baseline attribute codecs (RAHT and scalar): bit-exact round trips against the encoder's own
reconstruction, rate and distortion versus the step, the step rule, integer coding edge cases, and
named errors on corrupt, truncated or mismatched streams."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import GAUSSIANS, shared_path
from ralhe_me.attributes import OPACITY_EPS, SH_WEIGHT
from ralhe_me.baselines import scalar as sc
from ralhe_me.baselines.attribute_codecs import (
                                                 AttributeCodecError,
                                                 AttributeStreamError,
                                                 AttributeCodingConfig,
                                                 decode_attributes,
                                                 encode_attributes,
                                                 encode_attributes_detailed,
                                                 weighted_attribute_mse,
                                                 )

KINDS = ("raht", "scalar")


def smooth_cloud(seed=0, n=3000, depth=7, num_sh=4):
    """Points on a sphere-ish shell with smooth, slightly noisy attributes."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    coords = np.unique(np.clip(((d * 0.45 + 0.5) * (1 << depth)).astype(np.int64), 0, (1 << depth) - 1), axis=0)
    from ralhe_me.geometry.octree import morton_encode

    coords = coords[np.argsort(morton_encode(coords))]
    m = len(coords)
    x = coords / float(1 << depth)
    sh = np.zeros((m, num_sh, 3), np.float32)
    for k in range(num_sh):
        for c in range(3):
            sh[:, k, c] = np.sin(3 * x[:, c] + k) / (k + 1) + 0.02 * rng.normal(size=m)
    logits = (2 * np.cos(4 * x[:, 0]) + 0.3 * rng.normal(size=m)).astype(np.float32)
    logits[:5] = [-30.0, 30.0, 0.0, -9.5, 9.5]  # opacities at the clamp limits
    return coords, depth, sh, logits


@pytest.fixture(scope="module")
def cloud():
    return smooth_cloud()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("step", [0.002, 0.05, 1.0, 50.0])
def test_round_trip_is_bit_exact(cloud, kind, step):
    coords, depth, sh, logits = cloud
    enc = encode_attributes_detailed(kind, coords, depth, sh, logits, step)
    sh_hat, op_hat = decode_attributes(kind, enc.data, coords, depth, sh.shape[1])
    assert sh_hat.dtype == np.float32 and op_hat.dtype == np.float32
    assert sh_hat.shape == sh.shape and op_hat.shape == logits.shape
    np.testing.assert_array_equal(sh_hat, enc.sh)
    np.testing.assert_array_equal(op_hat, enc.opacity_logits)
    assert enc.data == encode_attributes(kind, coords, depth, sh, logits, step)  # deterministic
    lim = np.log(OPACITY_EPS) - np.log1p(-OPACITY_EPS)
    assert op_hat.min() >= np.float32(lim) - 1e-3 and op_hat.max() <= -np.float32(lim) + 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_rate_and_distortion_follow_the_step(cloud, kind):
    coords, depth, sh, logits = cloud
    sizes, dists = [], []
    plain = AttributeCodingConfig(rounding=0.5)
    for step in [0.5, 0.1, 0.02, 0.004]:
        enc = encode_attributes_detailed(kind, coords, depth, sh, logits, step, config=plain)
        d, per = weighted_attribute_mse(sh, logits, enc.sh, enc.opacity_logits)
        sizes.append(len(enc.data))
        dists.append(d)
        if step <= 0.004:  # high rate: each attribute's weighted error is about step^2 / 12
            np.testing.assert_allclose(per, step ** 2 / 12, rtol=0.25)
    assert all(np.diff(sizes) > 0), sizes
    assert all(np.diff(dists) < 0), dists


def test_raht_beats_scalar_on_smooth_signals(cloud):
    coords, depth, sh, logits = cloud
    for step in [0.05, 0.2]:
        r = encode_attributes_detailed("raht", coords, depth, sh, logits, step)
        s = encode_attributes_detailed("scalar", coords, depth, sh, logits, step)
        dr, _ = weighted_attribute_mse(sh, logits, r.sh, r.opacity_logits)
        ds, _ = weighted_attribute_mse(sh, logits, s.sh, s.opacity_logits)
        assert len(r.data) < 0.8 * len(s.data) and dr < 1.5 * ds


def test_dead_zone_lowers_rate(cloud):
    coords, depth, sh, logits = cloud
    plain = encode_attributes_detailed("raht", coords, depth, sh, logits, 0.05,
                                       config=AttributeCodingConfig(rounding=0.5))
    dz = encode_attributes_detailed("raht", coords, depth, sh, logits, 0.05,
                                    config=AttributeCodingConfig(rounding=0.25))
    default = encode_attributes_detailed("raht", coords, depth, sh, logits, 0.05)  # rounding 1/3
    assert len(dz.data) < len(default.data) < len(plain.data)
    d_plain, _ = weighted_attribute_mse(sh, logits, plain.sh, plain.opacity_logits)
    d_dz, _ = weighted_attribute_mse(sh, logits, dz.sh, dz.opacity_logits)
    assert d_dz > d_plain
    sh_hat, op_hat = decode_attributes("raht", dz.data, coords, depth, sh.shape[1])
    np.testing.assert_array_equal(sh_hat, dz.sh)


def test_step_rule():
    steps = sc.channel_steps(4, 0.1, opacity_weight=0.25)
    assert steps.shape == (13,)
    np.testing.assert_allclose(steps[:12], 0.1 / np.sqrt(SH_WEIGHT))
    np.testing.assert_allclose(steps[12], 0.2)
    with pytest.raises(AttributeCodecError):
        sc.channel_steps(4, 0.0)
    with pytest.raises(AttributeCodecError):
        sc.channel_steps(4, 0.1, opacity_weight=float("nan"))


def test_weighted_mse_definition():
    rng = np.random.default_rng(0)
    sh = rng.normal(size=(50, 4, 3)).astype(np.float32)
    op = rng.normal(size=50).astype(np.float32)
    sh2 = sh + 0.1
    op2 = op.copy()
    total, per = weighted_attribute_mse(sh, op, sh2, op2, opacity_weight=0.5)
    np.testing.assert_allclose(per[:4], SH_WEIGHT * 0.01, rtol=1e-5)
    assert per[4] == 0 and total == pytest.approx(per.sum())
    alpha = 1 / (1 + np.exp(-op.astype(np.float64)))
    alpha2 = np.clip(alpha + 0.05, 0, 1)
    op3 = np.log(alpha2) - np.log1p(-alpha2)
    _, per = weighted_attribute_mse(sh, op, sh, op3, opacity_weight=0.5)
    np.testing.assert_allclose(per[4], 0.5 * np.mean((alpha2 - alpha) ** 2), rtol=1e-6)


# ---------------------------------------------------------------- integer coding

@pytest.mark.parametrize("values", [
    np.zeros(10, np.int64),  # one context holding one symbol only (a full-width table)
    np.array([5], np.int64),
    np.array([2 ** 38 - 1, -(2 ** 38 - 1), 0, 15, 16, -8, -9, 7, -7, 1 << 20], np.int64),
    np.random.default_rng(1).laplace(0, 300, 5000).round().astype(np.int64),
])
def test_integer_round_trip(values):
    rng = np.random.default_rng(2)
    for ctx in [np.zeros(values.size, np.int64), rng.integers(0, 7, values.size) * 3]:
        data = sc.encode_integers(values, ctx)
        np.testing.assert_array_equal(sc.decode_integers(data, ctx), values)


def test_integer_empty_and_range():
    data = sc.encode_integers(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert sc.decode_integers(data, np.zeros(0, np.int64)).size == 0
    with pytest.raises(sc.QuantizationRangeError):
        sc.to_symbols(np.array([1 << 40]))
    with pytest.raises(sc.QuantizationRangeError):
        sc.quantize(np.array([1e12]), 1e-3)


def test_symbol_mapping_and_bit_packing():
    q = np.arange(-5000, 5000)
    sym, nb, raw = sc.to_symbols(q)
    assert sym.max() < sc.ALPHABET and sym.min() >= 0
    back = sc.from_symbols(sym, sc._BitReader(sc.pack_bits(nb, raw)))
    np.testing.assert_array_equal(back, q)
    with pytest.raises(AttributeStreamError):
        sc.from_symbols(sym, sc._BitReader(sc.pack_bits(nb, raw) + b"\0"))


# ---------------------------------------------------------------- bad and corrupt streams

def _decode_or_named_error(kind, data, coords, depth, k, verify):
    """Decoding must either raise AttributeStreamError or give arrays of the right shape."""
    try:
        sh, op = decode_attributes(kind, data, coords, depth, k, verify_checksum=verify)
    except AttributeStreamError:
        return False
    assert sh.shape == (len(coords), k, 3) and op.shape == (len(coords),)
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_and_truncated_streams(kind):
    coords, depth, sh, logits = smooth_cloud(seed=3, n=600, depth=6, num_sh=4)
    data = encode_attributes(kind, coords, depth, sh, logits, 0.05)
    rng = np.random.default_rng(11)
    k = sh.shape[1]
    for cut in sorted(set(rng.integers(0, len(data), 40).tolist()) | {0, 1, len(data) - 1}):
        with pytest.raises(AttributeStreamError):
            decode_attributes(kind, data[:cut], coords, depth, k)
    accepted_unchecked = 0
    for trial in range(300):
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, len(buf)))
            buf[pos] ^= int(rng.integers(1, 256))
        if trial % 3 == 0:  # also insert or delete a byte
            pos = int(rng.integers(0, len(buf)))
            buf = buf[:pos] + buf[pos + 1:] if trial % 2 else buf[:pos] + bytes([int(rng.integers(256))]) + buf[pos:]
        with pytest.raises(AttributeStreamError):
            decode_attributes(kind, bytes(buf), coords, depth, k)  # the CRC catches it
        # without the CRC, the structure itself must never crash, hang or raise anything else
        accepted_unchecked += _decode_or_named_error(kind, bytes(buf), coords, depth, k, verify=False)
    assert accepted_unchecked < 300


@pytest.mark.parametrize("kind", KINDS)
def test_mismatched_decoder_inputs(kind, cloud):
    coords, depth, sh, logits = cloud
    data = encode_attributes(kind, coords, depth, sh, logits, 0.05)
    other = "scalar" if kind == "raht" else "raht"
    with pytest.raises(AttributeStreamError, match="kind"):
        decode_attributes(other, data, coords, depth, sh.shape[1])
    with pytest.raises(AttributeStreamError, match="points"):
        decode_attributes(kind, data, coords[:-1], depth, sh.shape[1])
    with pytest.raises(AttributeStreamError, match="SH"):
        decode_attributes(kind, data, coords, depth, sh.shape[1] - 1)
    with pytest.raises(AttributeCodecError):
        decode_attributes("jpeg", data, coords, depth, sh.shape[1])


def test_bad_encoder_input(cloud):
    coords, depth, sh, logits = cloud
    with pytest.raises(AttributeCodecError, match="kind"):
        encode_attributes("jpeg", coords, depth, sh, logits, 0.1)
    with pytest.raises(AttributeCodecError, match="sh"):
        encode_attributes("raht", coords, depth, sh[:-1], logits, 0.1)
    with pytest.raises(AttributeCodecError, match="opacity"):
        encode_attributes("raht", coords, depth, sh, logits[:-1], 0.1)
    bad = sh.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(AttributeCodecError, match="finite"):
        encode_attributes("scalar", coords, depth, bad, logits, 0.1)
    with pytest.raises(AttributeCodecError, match="base_step"):
        encode_attributes("raht", coords, depth, sh, logits, -1.0)
    with pytest.raises(AttributeCodecError, match="geometry"):
        encode_attributes("raht", np.concatenate([coords[:1], coords[:-1]]), depth, sh, logits, 0.1)
    with pytest.raises(sc.QuantizationRangeError):
        encode_attributes("raht", coords, depth, sh * 1e6, logits, 1e-9)


def test_real_donut_round_trip():
    from ralhe_me.gaussians import read_ply
    from ralhe_me.geometry.octree import voxelize

    vox = voxelize(read_ply(shared_path(GAUSSIANS["donut"])), 9)
    m = vox.model
    for kind in KINDS:
        enc = encode_attributes_detailed(kind, vox.coords, 9, m.sh, m.opacity_logits, 0.05)
        sh_hat, op_hat = decode_attributes(kind, enc.data, vox.coords, 9, m.sh.shape[1])
        np.testing.assert_array_equal(sh_hat, enc.sh)
        np.testing.assert_array_equal(op_hat, enc.opacity_logits)
        d, _ = weighted_attribute_mse(m.sh, m.opacity_logits, sh_hat, op_hat)
        assert d < 2 * 0.05 ** 2 / 12 * 2  # two attributes, about step^2 / 12 each


def test_decoder_imports_stay_clean():
    code = ("import sys, ralhe_me.baselines.attribute_codecs\n"
            "bad = [m for m in sys.modules if m.startswith(('ralhe_me.train', 'ralhe_me.render', 'ralhe_me.encode',"
            " 'ralhe_me.nn'))]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_color_transform_is_orthonormal_and_flagged(cloud):
    from ralhe_me.baselines.attribute_codecs import COLOR_TRANSFORM, AttributeCodingConfig, _rotate_colors

    np.testing.assert_allclose(COLOR_TRANSFORM @ COLOR_TRANSFORM.T, np.eye(3), atol=1e-15)
    rng = np.random.default_rng(0)
    v = rng.normal(size=(20, 3 * 4 + 1))
    y = _rotate_colors(v, 4, inverse=False)
    np.testing.assert_allclose(y[:, :3], v[:, :3] @ COLOR_TRANSFORM.T, atol=1e-14)
    assert np.array_equal(y[:, -1], v[:, -1])
    np.testing.assert_allclose(_rotate_colors(y, 4, inverse=True), v, atol=1e-14)
    coords, depth, sh, logits = cloud
    grey = np.repeat(sh[:, :, :1], 3, axis=2)  # equal RGB: chroma is zero, so fewer bytes
    for kind in KINDS:
        on = encode_attributes_detailed(kind, coords, depth, grey, logits, 0.05)
        off = encode_attributes_detailed(kind, coords, depth, grey, logits, 0.05,
                                         config=AttributeCodingConfig(color_transform=False))
        assert len(on.data) < 0.75 * len(off.data)
        for enc in (on, off):
            sh_hat, op_hat = decode_attributes(kind, enc.data, coords, depth, sh.shape[1])
            np.testing.assert_array_equal(sh_hat, enc.sh)
            np.testing.assert_array_equal(op_hat, enc.opacity_logits)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("m", [1, 2])
def test_tiny_clouds(kind, m):
    coords = np.array([[0, 0, 0], [0, 0, 1]])[:m]
    rng = np.random.default_rng(m)
    sh = rng.normal(size=(m, 1, 3)).astype(np.float32)
    logits = rng.normal(size=m).astype(np.float32)
    enc = encode_attributes_detailed(kind, coords, 1, sh, logits, 0.01)
    sh_hat, op_hat = decode_attributes(kind, enc.data, coords, 1, 1)
    np.testing.assert_array_equal(sh_hat, enc.sh)
    np.testing.assert_allclose(sh_hat, sh, atol=0.03)
