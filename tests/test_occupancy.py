"""Octree occupancy coding: exact round trips (edge cases, real model), Morton output order, the
vectorized contexts against a per-node reference, and named errors on bad input or streams."""
import numpy as np
import pytest

from conftest import GAUSSIANS, shared_path
from ralhe_me.geometry.occupancy import (
                                         GROUP_ORDER,
                                         OccupancyConfig,
                                         OccupancyError,
                                         OccupancyStreamError,
                                         decode_positions,
                                         encode_positions,
                                         occupancy_batches,
                                         )
from ralhe_me.geometry.octree import choose_depth, morton_decode, morton_encode, voxelize


def _morton_sorted(coords):
    return coords[np.argsort(morton_encode(coords), kind="stable")]


def _random_cloud(n, depth, seed, clustered=False):
    rng = np.random.default_rng(seed)
    side = 1 << depth
    if clustered:  # points on a few noisy blobs: dense and sparse regions
        centers = rng.integers(0, side, (5, 3))
        c = centers[rng.integers(0, 5, n)] + rng.normal(0, max(side / 40, 1), (n, 3))
        c = np.clip(np.rint(c), 0, side - 1).astype(np.int64)
    else:
        c = rng.integers(0, side, (n, 3))
    return np.unique(c, axis=0)


def _round_trip(coords, depth, config=OccupancyConfig()):
    data = encode_positions(coords, depth, config)
    out = decode_positions(data, depth)
    assert out.dtype == np.int64 and out.shape == coords.shape
    np.testing.assert_array_equal(out, _morton_sorted(coords))
    return data


@pytest.mark.parametrize("depth,n", [(1, 3), (2, 20), (5, 200), (10, 2000), (16, 500), (21, 300)])
def test_round_trip_random(depth, n):
    _round_trip(_random_cloud(n, depth, seed=depth), depth)


@pytest.mark.parametrize("config", [OccupancyConfig(), OccupancyConfig(child_neighbours=False),
                                    OccupancyConfig(decay_shift=0), OccupancyConfig(decay_shift=3)])
def test_round_trip_configs_clustered(config):
    _round_trip(_random_cloud(3000, 9, seed=7, clustered=True), 9, config)


def test_edge_cases():
    _round_trip(np.array([[5, 0, 7]]), 3)  # one point
    _round_trip(np.array([[0, 0, 0]]), 1)
    _round_trip(np.array([[(1 << 21) - 1, 0, 12345]]), 21)  # one point at the deepest supported depth
    full = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    _round_trip(full, 1)  # all 8 children of the root
    cube = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3)
    data = _round_trip(cube, 3)  # every node full at every level
    assert len(data) < 60  # below the 73 raw occupancy bytes: the contexts learn 'all full'
    _round_trip(np.zeros((0, 3), np.int64), 6)  # empty
    _round_trip(np.zeros((1, 3), np.int64), 0)  # depth 0: a single voxel


def test_encoding_ignores_input_order():
    c = _random_cloud(500, 8, seed=3)
    shuffled = c[np.random.default_rng(0).permutation(len(c))]
    assert encode_positions(c, 8) == encode_positions(shuffled, 8)


def test_real_model_round_trip_in_morton_order():
    from ralhe_me.gaussians import read_ply

    model = read_ply(shared_path(GAUSSIANS["donut"]))
    depth = choose_depth(model.means)
    vox = voxelize(model, depth)
    data = encode_positions(vox.coords, depth)
    out = decode_positions(data, depth)
    np.testing.assert_array_equal(out, vox.coords)  # voxelize returns Morton order
    assert np.all(np.diff(morton_encode(out)) > 0)
    assert 8 * len(data) / len(out) < 9.2  # measured 8.83 bits per point (Draco: 9.70 at best)


# ---------------------------------------------------------------- per-node reference of the contexts

def _reference_batches(coords, depth):
    """(level, bit, context) in coding order, written node by node from the module's definition."""
    codes = np.sort(morton_encode(coords))
    out = []
    for d in range(depth):
        nodes = np.unique(codes >> (3 * (depth - d)))
        children = set(np.unique(codes >> (3 * (depth - d - 1))).tolist())
        node_xyz = [tuple(c) for c in morton_decode(nodes).tolist()]
        node_set = set(node_xyz)
        occ = {tuple(c): 0 for c in node_xyz}
        for code, c in zip(nodes.tolist(), node_xyz):
            occ[c] = sum(1 << k for k in range(8) if (code << 3 | k) in children)
        rank = {g: i for i, g in enumerate(GROUP_ORDER)}

        def group(c):
            return (c[0] & 1) << 2 | (c[1] & 1) << 1 | (c[2] & 1)

        def child_occupied(child):
            if min(child) < 0 or max(child) >= 1 << (d + 1):
                return False
            return int(morton_encode(np.array([child]))[0]) in children

        for g in GROUP_ORDER:
            for k in range(8):
                off = ((k >> 2) & 1, (k >> 1) & 1, k & 1)
                sign = [2 * o - 1 for o in off]
                for c in node_xyz:
                    if group(c) != g:
                        continue
                    nprev = bin(occ[c] & ((1 << k) - 1)).count("1")
                    if k == 7 and nprev == 0:
                        continue
                    face_offsets = [(sign[0], 0, 0), (0, sign[1], 0), (0, 0, sign[2])]
                    faces = sum(tuple(c[i] + o[i] for i in range(3)) in node_set for o in face_offsets)
                    corner_offsets = [(sign[0], sign[1], 0), (sign[0], 0, sign[2]), (0, sign[1], sign[2]), tuple(sign)]
                    corners = sum(tuple(c[i] + o[i] for i in range(3)) in node_set for o in corner_offsets)
                    known = 0
                    child = [2 * c[i] + off[i] for i in range(3)]
                    for a in range(3):
                        for step in (-1, 1):
                            nb = list(child)
                            nb[a] += step
                            parent = tuple(v >> 1 for v in nb)
                            if parent == c:
                                nb_k = (nb[0] & 1) << 2 | (nb[1] & 1) << 1 | (nb[2] & 1)
                                is_known = nb_k < k
                            else:
                                is_known = parent in node_set and rank[group(parent)] < rank[g]
                            known += is_known and child_occupied(nb)
                    ctx = (((k * 8 + nprev) * 4 + faces) * 5 + corners) * 4 + min(known, 3)
                    out.append((d, (occ[c] >> k) & 1, ctx))
    return out


@pytest.mark.parametrize("depth,n,clustered", [(3, 60, False), (5, 250, True), (7, 120, True)])
def test_contexts_match_per_node_reference(depth, n, clustered):
    coords = _random_cloud(n, depth, seed=n, clustered=clustered)
    fast = [(d, int(b), int(c)) for d, bits, ctx in occupancy_batches(coords, depth)
            for b, c in zip(bits.tolist(), ctx.tolist())]
    assert fast == _reference_batches(coords, depth)


# ---------------------------------------------------------------- errors

def test_bad_input_raises():
    with pytest.raises(OccupancyError):
        encode_positions(np.array([[1, 2, 3], [1, 2, 3]]), 4)  # duplicates
    with pytest.raises(OccupancyError):
        encode_positions(np.array([[16, 0, 0]]), 4)  # outside the grid
    with pytest.raises(OccupancyError):
        encode_positions(np.array([[-1, 0, 0]]), 4)
    with pytest.raises(OccupancyError):
        encode_positions(np.zeros((3, 2), np.int64), 4)
    with pytest.raises(OccupancyError):
        encode_positions(np.zeros((1, 3)), 4)  # floats
    with pytest.raises(OccupancyError):
        encode_positions(np.zeros((1, 3), np.int64), 22)


def test_corrupt_streams_raise():
    coords = _random_cloud(800, 8, seed=11, clustered=True)
    data = encode_positions(coords, 8)
    with pytest.raises(OccupancyStreamError):
        decode_positions(data[:-3], 8)  # truncated
    with pytest.raises(OccupancyStreamError):
        decode_positions(data[:3], 8)
    with pytest.raises(OccupancyStreamError):
        decode_positions(b"", 8)
    with pytest.raises(OccupancyStreamError):
        decode_positions(data, 7)  # wrong depth
    with pytest.raises(OccupancyStreamError):
        decode_positions(data, 9)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    with pytest.raises(OccupancyStreamError):
        decode_positions(bytes(flipped), 8)
    with pytest.raises(OccupancyStreamError):
        decode_positions(b"\x01" + data[1:], 8)  # unknown mode byte
    for seed in range(10):  # garbage: the named error (never a crash or a wrong silent result)
        junk = bytes([data[0]]) + np.random.default_rng(seed).integers(0, 256, 300).astype(np.uint8).tobytes()
        with pytest.raises(OccupancyStreamError):
            decode_positions(junk, 8)


@pytest.mark.parametrize("depth,n,clustered", [(5, 300, False), (8, 3000, True), (3, 512, False), (6, 1, False)])
def test_child_neighbours_equal_search_at_every_level(depth, n, clustered):
    """The decoder derives each level's neighbour rows from its parents' (no search): they must
    equal the binary-search reference at every level, and at the leaves decode_positions returns."""
    from ralhe_me.geometry.occupancy import child_neighbours, search_neighbours

    coords = _random_cloud(n, depth, seed=depth + n, clustered=clustered)
    codes = np.sort(morton_encode(coords))
    levels = [codes >> (3 * (depth - d)) for d in range(depth + 1)]
    levels = [np.unique(c) for c in levels]  # levels[d]: node codes at depth d
    nb = search_neighbours(levels[0], 0)
    for d in range(depth):
        nodes, children = levels[d], levels[d + 1]
        parent = np.searchsorted(nodes, children >> 3)
        occ = np.bincount(parent, weights=(1 << (children & 7)).astype(np.float64), minlength=len(nodes))
        nb = child_neighbours(nb, occ.astype(np.int64))
        np.testing.assert_array_equal(nb, search_neighbours(children, d + 1))
    data = encode_positions(coords, depth)
    out, rows = decode_positions(data, depth, with_neighbours=True)
    np.testing.assert_array_equal(out, morton_decode(codes))
    np.testing.assert_array_equal(rows, nb)
