"""The native decoder's geometry stages (ralhe_me/decode/native/src: categorical, occupancy,
covariance, gain_map, octree) against the Python reference on streams built here: identical
symbols, points, neighbour rows, shapes and gains (bit for bit), voxel centers bit-exact on plain
grids and within an ulp of float64 under far-field contraction; and a seeded fuzz of truncated and
bit-flipped sections where the native functions raise BitstreamError subclasses exactly where the
Python decoder raises, and agree with it everywhere else (never a crash)."""
import zlib

import numpy as np
import pytest

from ralhe_me.decode.bitstream import BitstreamError, CorruptDataError
from ralhe_me.decode.reconstruction import _with_contraction, grid_from_header
from ralhe_me.default_scene import make_default_scene
from ralhe_me.entropy.laplace import det_exp
from ralhe_me.entropy.categorical import (CategoricalError, decode_categorical, encode_categorical, read_varint,
                                          write_varint)
from ralhe_me.decode.gain_map import decode_gain_map, encode_gain_map, gain_voxels, point_gains
from ralhe_me.geometry.covariance_code import ResidualSteps, decode_shapes, encode_shapes, quantize_shapes
from ralhe_me.geometry.covariance_vq import fit_codebook
from ralhe_me.geometry.occupancy import OccupancyConfig, decode_positions, encode_positions
from ralhe_me.geometry.octree import OctreeLevels, VoxelGrid, far_field_contraction, morton_encode, voxelize

N = pytest.importorskip("ralhe_me.decode._native", reason="the native decoder is not built")
if not hasattr(N, "decode_positions"):
    pytest.skip("the native decoder was built without its geometry part", allow_module_level=True)


def _cloud(n, depth, seed, clustered=False):
    rng = np.random.default_rng(seed)
    if clustered:
        centers = rng.integers(0, 1 << depth, (max(1, n // 200), 3))
        pts = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 2 + (1 << depth) / 64, (n, 3)).astype(np.int64)
        pts = np.clip(pts, 0, (1 << depth) - 1)
    else:
        pts = rng.integers(0, 1 << depth, (n, 3))
    return np.unique(pts, axis=0)


def _scene(n=3000, seed=0, depth=10):
    model = make_default_scene(n, seed=seed)
    return model, voxelize(model, depth)


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------- categorical

@pytest.mark.parametrize("alphabet,n,contexts,seed", [(1, 50, 1, 0), (2, 3000, 1, 1), (2, 3000, 5, 2),
                                                      (17, 4000, 1, 3), (256, 20000, 14, 4), (3000, 5000, 3, 5),
                                                      (40, 200, 30, 6)])
def test_categorical_equals_reference(alphabet, n, contexts, seed):
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, contexts, n)
    # skewed per context (some contexts nearly constant: full-row frequency fix), some unused
    p = rng.dirichlet(np.full(alphabet, 0.3), contexts)
    sym = np.array([rng.choice(alphabet, p=p[c]) for c in ctx]) if alphabet > 1 else np.zeros(n, np.int64)
    if contexts > 2:
        ctx[ctx == 1] = 0  # context 1 unused: no table
    data = encode_categorical(sym, alphabet, ctx)
    got = N.decode_categorical(data, alphabet, ctx)
    assert got.dtype == np.int64 and np.array_equal(got, decode_categorical(data, alphabet, ctx))
    assert np.array_equal(got, sym)
    one = encode_categorical(sym, alphabet)  # no contexts
    assert np.array_equal(N.decode_categorical(one, alphabet), sym)
    assert np.array_equal(N.decode_categorical(one, alphabet, None), sym)
    with pytest.raises(CorruptDataError, match="alphabet"):
        N.decode_categorical(data, alphabet + 1, ctx)
    with pytest.raises(CorruptDataError, match="contexts given"):
        N.decode_categorical(data, alphabet, ctx[:-1])
    if contexts > 2:
        bad = ctx.copy()
        bad[0] = 1
        with pytest.raises(CorruptDataError, match="no table"):
            N.decode_categorical(data, alphabet, bad)
        bad[0] = contexts + 5
        with pytest.raises(CorruptDataError, match="outside"):
            N.decode_categorical(data, alphabet, bad)


def test_categorical_empty_and_across_segments():
    empty = encode_categorical(np.zeros(0, np.int64), 5)
    assert N.decode_categorical(empty, 5).shape == (0,)
    with pytest.raises(CorruptDataError):
        N.decode_categorical(empty + b"\0", 5)
    rng = np.random.default_rng(7)
    sym = rng.integers(0, 4, (1 << 20) + 3000)  # two rANS segments
    data = encode_categorical(sym, 4)
    assert np.array_equal(N.decode_categorical(data, 4), sym)


# ---------------------------------------------------------------- positions

def _check_positions(coords, depth, config=OccupancyConfig()):
    data = encode_positions(coords, depth, config)
    got, rows = N.decode_positions(data, depth)
    ref, ref_rows = decode_positions(data, depth, with_neighbours=True)
    assert _same_bits(got, ref) and _same_bits(rows, ref_rows)
    assert np.array_equal(got, coords[np.argsort(morton_encode(coords))])
    return data


@pytest.mark.parametrize("depth,n,clustered", [(1, 1, False), (1, 6, False), (3, 40, False), (7, 900, True),
                                               (10, 5000, True), (12, 20000, True), (21, 150, False)])
def test_positions_equal_reference(depth, n, clustered):
    _check_positions(_cloud(n, depth, seed=depth + n, clustered=clustered), depth)


@pytest.mark.parametrize("config", [OccupancyConfig(child_neighbours=False), OccupancyConfig(decay_shift=0),
                                    OccupancyConfig(decay_shift=7)])
def test_positions_configs(config):
    _check_positions(_cloud(2000, 8, seed=11, clustered=True), 8, config)


def test_positions_of_a_scene_empty_clouds_and_several_segments():
    _, vox = _scene(4000, seed=2, depth=10)
    _check_positions(vox.coords, 10)
    # an empty cloud, and one point at depth 0
    for coords, depth in [(np.zeros((0, 3), np.int64), 5), (np.zeros((1, 3), np.int64), 0)]:
        data = encode_positions(coords, depth)
        got, rows = N.decode_positions(data, depth)
        assert got.shape == (len(coords), 3) and rows.shape == (len(coords), 26) and (rows == -1).all()
    coords = _cloud(16000, 14, seed=3)  # about 1.1M coded bits: two rANS segments
    data = _check_positions(coords, 14)
    num_points, pos = read_varint(data, 1)
    assert read_varint(data, pos)[0] > 1 << 20
    with pytest.raises(CorruptDataError, match="depth"):
        N.decode_positions(data, 22)
    with pytest.raises(CorruptDataError):
        N.decode_positions(data, 13)  # the wrong depth: counts or check fail


# ---------------------------------------------------------------- covariance

@pytest.fixture(scope="module")
def shapes():
    model, vox = _scene(3000, seed=4, depth=10)
    m = vox.model
    book = fit_codebook(m.log_scales, m.quats, 48)
    rng = np.random.default_rng(4)
    gains = np.power(2.0, rng.integers(-8, 9, len(m)) / 2.0)
    return m, book, gains


@pytest.mark.parametrize("steps", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.02), (0.1, 0.02), (0.013, 0.004)])
def test_shapes_with_own_step_exponents_equal_reference(shapes, steps):
    m, book, gains = shapes
    e = np.random.default_rng(5).integers(-8, 9, len(m))
    data = encode_shapes(quantize_shapes(m.log_scales, m.quats, book, ResidualSteps(*steps), step_exponents=e))
    assert data[1] == 2
    ref = decode_shapes(data)
    for given in (None, gains):  # a file's gain map does not apply to this section
        got = N.decode_shapes(data, given, len(m))
        assert _same_bits(got[0], ref[0]) and _same_bits(got[1], ref[1])
    with pytest.raises(CorruptDataError, match="step exponents: 3000 for 2999 shapes|entries"):
        N.decode_shapes(data, None, len(m) - 1)


@pytest.mark.parametrize("steps", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.02), (0.1, 0.02), (0.013, 0.004)])
@pytest.mark.parametrize("with_gain", [False, True])
def test_shapes_equal_reference(shapes, steps, with_gain):
    m, book, gains = shapes
    code = quantize_shapes(m.log_scales, m.quats, book, ResidualSteps(*steps),
                           point_scale=gains if with_gain else None)
    data = encode_shapes(code)
    assert data[1] == int(with_gain)
    n = len(m)
    ref = decode_shapes(data, gains if with_gain else None)
    got = N.decode_shapes(data, gains if with_gain else None, n)
    assert _same_bits(got[0], ref[0]) and _same_bits(got[1], ref[1])
    if not with_gain:  # gains given to a section without the flag are ignored
        got = N.decode_shapes(data, gains, n)
        assert _same_bits(got[0], ref[0]) and _same_bits(got[1], ref[1])
    else:
        with pytest.raises(CorruptDataError, match="gain map"):
            N.decode_shapes(data, None, n)
    with pytest.raises(CorruptDataError, match="entries"):
        N.decode_shapes(data, None if not with_gain else gains[:-1], n - 1)


def test_shapes_of_nothing_and_negative_zero_codewords(shapes):
    m, book, _ = shapes
    code = quantize_shapes(np.zeros((0, 3), np.float32), np.zeros((0, 4), np.float32), book)
    ls, qs = N.decode_shapes(encode_shapes(code), None, 0)
    assert ls.shape == (0, 3) and qs.shape == (0, 4)
    # a -0 codeword plus the +0 residual of a zero step is +0, in Python and here
    s = np.full((50, 3), -0.0, np.float32)
    q = np.tile(np.array([[1.0, -0.0, 0.0, -0.0]], np.float32), (50, 1))
    code = quantize_shapes(s, q, fit_codebook(s, q, 4), ResidualSteps(0.1, 0.0))
    data = encode_shapes(code)
    ref, got = decode_shapes(data), N.decode_shapes(data, None, 50)
    assert _same_bits(got[0], ref[0]) and _same_bits(got[1], ref[1])


# ---------------------------------------------------------------- gain map, octree levels, centers

def test_gain_map_equals_reference():
    _, vox = _scene(3000, seed=5, depth=10)
    rng = np.random.default_rng(5)
    for level in (0, 2, 4, 10):
        p2v, count = gain_voxels(vox.coords, level)
        e = rng.integers(-8, 9, count)
        data = encode_gain_map(e)
        ref = point_gains(decode_gain_map(data, count), p2v)
        assert _same_bits(N.decode_gain_map(data, vox.coords, level), ref)
        with pytest.raises(CorruptDataError, match="voxels"):
            N.decode_gain_map(encode_gain_map(e[:-1]), vox.coords, level)
    # every exponent: 2^(e/2) bit for bit numpy's power
    coords = np.stack([np.arange(17) * 2, np.zeros(17, np.int64), np.zeros(17, np.int64)], 1)
    coords = coords[np.argsort(morton_encode(coords))]
    e = np.arange(-8, 9)
    got = N.decode_gain_map(encode_gain_map(e), coords, 1)
    assert _same_bits(got, np.power(2.0, e / 2.0))
    with pytest.raises(CorruptDataError, match="level"):
        N.decode_gain_map(encode_gain_map(e), coords, 21)


def test_octree_levels_equal_reference():
    _, vox = _scene(2000, seed=6, depth=9)
    for num_levels in (1, 4, 10):
        ref = OctreeLevels.build(vox.coords, num_levels, 9)
        sizes, p2v = N.octree_levels(vox.coords, num_levels, 9)
        assert sizes == ref.sizes and all(_same_bits(a, b) for a, b in zip(p2v, ref.point_to_voxel))
    # several of the decoder's 8192-point chunks (the run count carries across them)
    coords = np.unique(_cloud(30000, 12, seed=3, clustered=True), axis=0)
    coords = coords[np.argsort(morton_encode(coords))]
    ref = OctreeLevels.build(coords, 13, 12)
    sizes, p2v = N.octree_levels(coords, 13, 12)
    assert len(coords) > 3 * 8192 and sizes == ref.sizes
    assert all(_same_bits(a, b) for a, b in zip(p2v, ref.point_to_voxel))
    with pytest.raises(CorruptDataError, match="num_levels"):
        N.octree_levels(vox.coords, 11, 9)
    with pytest.raises(CorruptDataError, match="Morton"):
        N.octree_levels(vox.coords[::-1].copy(), 3, 9)


def _far_scene(n=3000, seed=5):
    m = make_default_scene(n, seed=seed)
    rng = np.random.default_rng(seed)
    idx = rng.choice(n, 30, replace=False)
    d = rng.normal(size=(len(idx), 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    m.means[idx] = (d * rng.uniform(12, 1e4, (len(idx), 1))).astype(np.float32)
    return m


def test_voxel_centers():
    model, vox = _scene(3000, seed=7, depth=11)
    header = {"origin": [float(v) for v in vox.grid.origin], "extent": float(vox.grid.extent), "depth": 11}
    assert _same_bits(N.voxel_centers(vox.coords, header), grid_from_header(header).centers(vox.coords))

    far = _far_scene()
    contraction = far_field_contraction(far.means)
    assert contraction is not None
    for depth in (8, 12):
        grid = VoxelGrid.bounding(far.means, depth, contraction)
        coords = voxelize(far, depth, grid).coords
        header = _with_contraction({"origin": [float(v) for v in grid.origin], "extent": float(grid.extent),
                                    "depth": depth}, grid)
        ref_grid = grid_from_header(header)
        c = ref_grid.contraction
        z = ref_grid.origin + (coords.astype(np.float64) + 0.5) * ref_grid.step
        norm = np.abs(z).max(axis=1, keepdims=True)
        far_rows = norm[:, 0] > 1.0
        # Contraction.inverse operation for operation with the deterministic exp: bit for bit
        safe = np.where(far_rows[:, None], norm, 1.0)
        y = np.where(far_rows[:, None], z * (det_exp(safe - 1.0) / safe), z)
        got64 = N.voxel_centers(coords, header, as_float64=True)
        assert _same_bits(got64, np.asarray(c.center) + c.radius * y)
        # numpy's exp: det_exp is within an ulp of it, which the four roundings after it may
        # grow to a few ulps of the terms center and radius * y (not of their sum, which cancels
        # near the centre: 0.25 - 0.2487 leaves 256 ulps of 0.0013 for 2 of 0.25; numpy's exp
        # also differs by machine, AVX-512 or not); the float32 centers rarely differ by one ulp
        assert (np.abs(det_exp(norm - 1.0) - np.exp(norm - 1.0)) <= np.spacing(np.exp(norm - 1.0))).all()
        ref64 = c.inverse(z)
        terms = np.maximum(np.abs(np.asarray(c.center)), np.abs(ref64 - np.asarray(c.center)))
        assert (np.abs(got64 - ref64) <= 4 * np.spacing(terms)).all()
        ref32, got32 = ref_grid.centers(coords), N.voxel_centers(coords, header)
        assert got32.dtype == np.float32 and _same_bits(got32, got64.astype(np.float32))
        assert (np.abs(got32 - ref32) <= np.spacing(np.abs(ref32))).all()
        assert np.mean(got32 == ref32) > 0.99
        assert far_rows.sum() > 10
    for bad in ({"center": [0, 0, 0], "radius": 0.0, "log_range": 1.0},
                {"center": [0, 0, 0], "radius": 1.0, "log_range": 800.0},
                {"center": [0, float("nan"), 0], "radius": 1.0, "log_range": 1.0}):
        with pytest.raises(CorruptDataError, match="contraction"):
            N.voxel_centers(coords, {**header, "contraction": bad})


# ---------------------------------------------------------------- fuzz

def _fix_check16(data: bytes, head_varints: int, prefix: int = 0) -> bytes:
    """``data`` with its 16-bit check sum recomputed (after ``prefix`` bytes, then
    ``head_varints`` varints), so corrupt content reaches the decoder; unchanged if the head
    does not parse."""
    try:
        pos = prefix
        for _ in range(head_varints):
            _, pos = read_varint(data, pos)
    except CategoricalError:
        return data
    if len(data) < pos + 2:
        return data
    check = (zlib.crc32(data[:pos] + data[pos + 2:]) & 0xFFFF).to_bytes(2, "little")
    return data[:pos] + check + data[pos + 2:]


def _mutate(data: bytes, rng) -> bytes:
    kind = rng.integers(0, 4)
    if kind == 0:  # truncation
        return data[:rng.integers(0, len(data))]
    b = bytearray(data)
    if kind == 3:  # a byte appended
        return bytes(b) + bytes([rng.integers(0, 256)])
    for _ in range(rng.integers(1, 4)):  # bit flips, often in the first bytes (headers)
        at = rng.integers(0, min(len(b), 24)) if rng.random() < 0.4 else rng.integers(0, len(b))
        b[at] ^= 1 << rng.integers(0, 8)
    return bytes(b)


def _agree(native, python):
    """Run both: the native one fails with a BitstreamError exactly where Python fails (with its
    stream errors), else both give the same arrays."""
    try:
        ref = python()
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError, OverflowError) as err:
        ref = err  # what decoder.py maps to CorruptDataError
    try:
        got = native()
    except BitstreamError as err:
        got = err
    if isinstance(ref, Exception) or isinstance(got, Exception):
        assert isinstance(ref, Exception) and isinstance(got, Exception), (ref, got)
        return 1
    for a, b in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,)):
        assert _same_bits(a, b)
    return 0


def test_fuzz_never_crashes_and_fails_where_python_fails(shapes):
    rng = np.random.default_rng(2024)
    failures = cases = 0
    # positions
    coords = _cloud(600, 8, seed=9, clustered=True)
    pos = encode_positions(coords, 8)
    for _ in range(120):
        data = _mutate(pos, rng)
        if rng.random() < 0.6:
            data = _fix_check16(data, 2, prefix=1)
        failures += _agree(lambda: N.decode_positions(data, 8),
                           lambda: decode_positions(data, 8, with_neighbours=True))
        cases += 1
    # categorical streams with contexts
    sym = rng.integers(0, 9, 2000)
    ctx = (sym + rng.integers(0, 2, 2000)) % 4
    cat = encode_categorical(sym, 9, ctx)
    for _ in range(120):
        data = _mutate(cat, rng)
        if rng.random() < 0.7:
            data = _fix_check16(data, 4)
        failures += _agree(lambda: N.decode_categorical(data, 9, ctx), lambda: decode_categorical(data, 9, ctx))
        cases += 1
    # gain map
    _, vox = _scene(1500, seed=8, depth=9)
    p2v, count = gain_voxels(vox.coords, 3)
    gmap = encode_gain_map(rng.integers(-8, 9, count))
    for _ in range(60):
        data = _mutate(gmap, rng)
        if rng.random() < 0.7:
            data = _fix_check16(data, 4)
        failures += _agree(lambda: N.decode_gain_map(data, vox.coords, 3),
                           lambda: point_gains(decode_gain_map(data, count), p2v))
        cases += 1
    # covariance sections (residuals, gain flag)
    m, book, gains = shapes
    sec = encode_shapes(quantize_shapes(m.log_scales, m.quats, book, ResidualSteps(0.05, 0.01), point_scale=gains))
    n = len(m)

    def python_shapes(data):
        ls, qs = decode_shapes(data, gains)
        if len(ls) != n:
            raise ValueError("count")
        return ls, qs

    for _ in range(100):
        data = _mutate(sec, rng)
        failures += _agree(lambda: N.decode_shapes(data, gains, n), lambda: python_shapes(data))
        cases += 1
    # covariance sections with their own step exponents
    own = encode_shapes(quantize_shapes(m.log_scales, m.quats, book, ResidualSteps(0.05, 0.01),
                                        step_exponents=rng.integers(-8, 2, n)))
    for _ in range(60):
        data = _mutate(own, rng)
        failures += _agree(lambda: N.decode_shapes(data, gains, n), lambda: python_shapes(data))
        cases += 1
    assert cases == 460 and failures > 230  # most mutations are caught; the rest decode alike
