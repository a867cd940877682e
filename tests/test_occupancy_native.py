"""The native occupancy decoder loop (geometry/csrc/occupancy.cpp) against the numpy reference:
identical points and neighbour rows on varied clouds, segment switches, exact round trips, and
OccupancyStreamError (never a crash or a silent difference) on corrupt streams.  Every test runs
with the loop's own rANS reader and with CompressAI's decode_stream in its place."""
import numpy as np
import pytest

import test_occupancy as base_tests
from conftest import GAUSSIANS, shared_path
from ralhe_me.entropy import categorical
from ralhe_me.entropy.categorical import read_varint, write_varint
from ralhe_me.geometry import occupancy
from ralhe_me.geometry.occupancy import (
                                         OccupancyConfig,
                                         OccupancyStreamError,
                                         decode_positions,
                                         encode_positions,
                                         native_available,
                                         search_neighbours,
                                         )
from ralhe_me.geometry.octree import choose_depth, morton_encode, voxelize

pytestmark = pytest.mark.skipif(not native_available(), reason="the _occupancy_cpu extension is not built")


@pytest.fixture(autouse=True, params=["native", "compressai"])
def rans_reader(request, monkeypatch):
    monkeypatch.setattr(occupancy, "RANS_READER", request.param)
    return request.param


def _random_cloud(n, depth, seed, clustered=False):
    return base_tests._random_cloud(n, depth, seed, clustered)


def _decode_both(data, depth):
    """Both paths with neighbour rows; asserts they agree and returns the native result."""
    coords, rows = decode_positions(data, depth, with_neighbours=True, native=True)
    ref_coords, ref_rows = decode_positions(data, depth, with_neighbours=True, native=False)
    np.testing.assert_array_equal(coords, ref_coords)
    np.testing.assert_array_equal(rows, ref_rows)
    assert coords.dtype == rows.dtype == np.int64 and rows.shape == (len(coords), 26)
    return coords, rows


def _check_exact(coords, depth, config=OccupancyConfig()):
    data = encode_positions(coords, depth, config)
    out, rows = _decode_both(data, depth)
    expected = coords[np.argsort(morton_encode(coords), kind="stable")]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(rows, search_neighbours(np.sort(morton_encode(coords)), depth))
    np.testing.assert_array_equal(decode_positions(data, depth, native=True), expected)  # without rows


@pytest.mark.parametrize("depth,n,clustered", [(1, 1, False), (1, 5, False), (3, 40, False), (6, 700, True),
                                               (8, 3000, False), (10, 20000, True), (12, 5000, False),
                                               (21, 200, False)])
def test_native_equals_reference_random(depth, n, clustered):
    _check_exact(_random_cloud(n, depth, seed=depth * 7 + n, clustered=clustered), depth)


@pytest.mark.parametrize("config", [OccupancyConfig(child_neighbours=False), OccupancyConfig(decay_shift=0),
                                    OccupancyConfig(decay_shift=7)])
def test_native_equals_reference_configs(config):
    _check_exact(_random_cloud(2500, 9, seed=5, clustered=True), 9, config)


def test_native_dense_cube_and_sparse_lines():
    cube = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1).reshape(-1, 3)
    _check_exact(cube, 4)  # every node full
    _check_exact(cube + 100, 8)  # a full block off the grid's corner
    i = np.arange(1 << 10)
    _check_exact(np.stack([i, np.zeros_like(i), np.full_like(i, 7)], 1), 10)  # an axis-aligned line
    _check_exact(np.stack([i, i, (1 << 10) - 1 - i], 1), 10)  # a diagonal: corner neighbours only
    _check_exact(np.zeros((1, 3), np.int64), 6)


def test_native_across_rans_segments(monkeypatch):
    """Batches that straddle rANS segments (segments shrunk to a few hundred symbols)."""
    coords = _random_cloud(1500, 8, seed=3, clustered=True)
    monkeypatch.setattr(categorical, "SEGMENT_SYMBOLS", 333)
    data = encode_positions(coords, 8)
    _, pos = read_varint(data, 1)
    num_bits, _ = read_varint(data, pos)
    assert num_bits > 10 * 333  # many segments
    out, _ = _decode_both(data, 8)
    np.testing.assert_array_equal(np.sort(morton_encode(out)), np.sort(morton_encode(coords)))


def test_native_real_model():
    from ralhe_me.gaussians import read_ply

    model = read_ply(shared_path(GAUSSIANS["donut"]))
    depth = choose_depth(model.means)
    vox = voxelize(model, depth)
    data = encode_positions(vox.coords, depth)
    out, _ = _decode_both(data, depth)
    np.testing.assert_array_equal(out, vox.coords)


# ---------------------------------------------------------------- corrupt streams

def _restamp(head: bytes, payload: bytes) -> bytes:
    """A stream with a valid check sum, so that the decoders' own checks are what must fail."""
    return head + occupancy._check16(head + payload) + payload


def _split(data: bytes):
    _, pos = read_varint(data, 1)
    _, pos = read_varint(data, pos)
    return data[:pos], data[pos + 2:]


def _both_fail_or_agree(data, depth):
    """Native and reference raise OccupancyStreamError together, or decode the same thing."""
    results = []
    for native in (True, False):
        try:
            results.append(decode_positions(data, depth, with_neighbours=True, native=native))
        except OccupancyStreamError as err:
            assert str(err)
            results.append(None)
    assert (results[0] is None) == (results[1] is None)
    if results[0] is not None:
        for a, b in zip(*results):
            np.testing.assert_array_equal(a, b)
    return results[0] is None


def test_native_corrupt_streams_raise():
    coords = _random_cloud(800, 8, seed=11, clustered=True)
    data = encode_positions(coords, 8)
    for bad in (data[:-3], data[:3], b"", data[:-1] + bytes([data[-1] ^ 4])):
        with pytest.raises(OccupancyStreamError):
            decode_positions(bad, 8, native=True)
    for depth in (7, 9):
        with pytest.raises(OccupancyStreamError):
            decode_positions(data, depth, native=True)


def test_native_checks_past_the_check_sum():
    """Streams with a valid check sum but wrong counts or payload: the native loop's own checks."""
    coords = _random_cloud(800, 8, seed=11, clustered=True)
    data = encode_positions(coords, 8)
    head, payload = _split(data)
    num_points, pos = read_varint(head, 1)
    num_bits, _ = read_varint(head, pos)
    mode = head[:1]
    cases = {
        "fewer points": _restamp(mode + write_varint(num_points - 1) + write_varint(num_bits), payload),
        "more points": _restamp(mode + write_varint(num_points + 1) + write_varint(num_bits), payload),
        "fewer symbols": _restamp(mode + write_varint(num_points) + write_varint(num_bits - 1), payload),
        "more symbols": _restamp(mode + write_varint(num_points) + write_varint(num_bits + 1), payload),
        "truncated payload": _restamp(head, payload[:-4]),
    }
    for name, bad in cases.items():
        with pytest.raises(OccupancyStreamError):
            decode_positions(bad, 8, native=True)
        assert _both_fail_or_agree(bad, 8), name
    rng = np.random.default_rng(0)
    failed = 0
    for trial in range(30):  # flipped payload bits: the same error or the same points as the reference
        flipped = bytearray(payload)
        flipped[int(rng.integers(len(payload)))] ^= 1 << int(rng.integers(8))
        failed += _both_fail_or_agree(_restamp(head, bytes(flipped)), 8)
    assert failed >= 25
    for seed in range(10):  # garbage payloads
        junk = np.random.default_rng(seed).integers(0, 256, len(payload)).astype(np.uint8).tobytes()
        assert _both_fail_or_agree(_restamp(head, junk), 8)


# ---------------------------------------------------------------- switches

def test_existing_occupancy_tests_on_both_paths(monkeypatch):
    """test_occupancy's round-trip and corrupt-stream tests, with each decoder forced in turn."""
    for native in (True, False):
        monkeypatch.setattr(occupancy, "DEFAULT_NATIVE", native)
        base_tests.test_edge_cases()
        base_tests.test_corrupt_streams_raise()
        base_tests.test_round_trip_random(10, 2000)
        base_tests.test_round_trip_configs_clustered(OccupancyConfig(child_neighbours=False))


def test_native_required_but_missing_raises(monkeypatch):
    data = encode_positions(_random_cloud(50, 4, seed=1), 4)
    monkeypatch.setattr(occupancy, "_native_module", lambda: None)
    with pytest.raises(ImportError):
        decode_positions(data, 4, native=True)
    decode_positions(data, 4)  # falls back to the reference
