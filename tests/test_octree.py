import numpy as np
import pytest

from ralhe_me.gaussians import GaussianModel, read_ply
from ralhe_me.geometry.octree import (OctreeError, OctreeLevels, VoxelGrid, choose_depth, morton_decode,
                                      morton_encode, voxelize)
from conftest import GAUSSIANS, shared_path


def morton_slow(x, y, z, bits=21):
    code = 0
    for b in range(bits):
        code |= ((x >> b) & 1) << (3 * b + 2)
        code |= ((y >> b) & 1) << (3 * b + 1)
        code |= ((z >> b) & 1) << (3 * b)
    return code


def test_morton_matches_bit_loop_and_inverts():
    rng = np.random.default_rng(0)
    coords = rng.integers(0, 1 << 21, size=(500, 3))
    coords[0] = [(1 << 21) - 1] * 3
    coords[1] = [0, 0, 0]
    codes = morton_encode(coords)
    expect = np.array([morton_slow(*map(int, c)) for c in coords], dtype=np.int64)
    np.testing.assert_array_equal(codes, expect)
    np.testing.assert_array_equal(morton_decode(codes), coords)
    # breadth-first property: the parent of a voxel has the code shifted by 3 bits
    np.testing.assert_array_equal(morton_encode(coords >> 1), codes >> 3)


def test_morton_rejects_out_of_range():
    with pytest.raises(OctreeError, match="coords must lie"):
        morton_encode(np.array([[0, -1, 0]]))
    with pytest.raises(OctreeError, match="shape"):
        morton_encode(np.zeros((4, 2), np.int64))


def _random_model(n, seed=0, clusters=True):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n, 3)) * (0.05 if clusters else 1.0)
    if clusters:
        means += rng.integers(0, 3, size=(n, 1)) * 0.3
    q = rng.normal(size=(n, 4))
    return GaussianModel(means=means, log_scales=rng.normal(size=(n, 3)) - 3, quats=q,
                         opacity_logits=rng.normal(size=n), sh=rng.normal(size=(n, 4, 3)))


def voxelize_slow(model, grid):
    """Dictionary-based merge, one voxel at a time."""
    groups = {}
    for i, p in enumerate(model.means.astype(np.float64)):
        key = tuple(int(v) for v in np.clip(np.floor((p - grid.origin) / grid.voxel_size), 0, (1 << grid.depth) - 1))
        groups.setdefault(key, []).append(i)
    keys = sorted(groups, key=lambda k: morton_slow(*k))
    out = []
    for key in keys:
        idx = groups[key]
        sig = 1 / (1 + np.exp(-model.opacity_logits[idx].astype(np.float64)))
        big = idx[int(np.argmax(model.log_scales[idx].astype(np.float64).sum(1)))]
        q = model.quats[idx].astype(np.float64)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        qb = model.quats[big] / np.linalg.norm(model.quats[big])
        q = np.array([v if v @ qb >= 0 else -v for v in q]).mean(0)
        out.append((key, model.sh[idx].mean(0), sig.mean(), model.log_scales[big], q / np.linalg.norm(q)))
    return out


@pytest.mark.parametrize("seed, depth", [(0, 4), (1, 7), (2, 12)])
def test_voxelize_matches_slow_merge(seed, depth):
    model = _random_model(3000, seed)
    vox = voxelize(model, depth)
    slow = voxelize_slow(model, vox.grid)
    assert len(slow) == len(vox.model)
    np.testing.assert_array_equal(vox.coords, np.array([s[0] for s in slow]))
    np.testing.assert_allclose(vox.model.sh, np.array([s[1] for s in slow]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vox.model.opacities, np.array([s[2] for s in slow]), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(vox.model.log_scales, np.array([s[3] for s in slow]))
    np.testing.assert_allclose(vox.model.quats, np.array([s[4] for s in slow]), atol=1e-5)
    # every input Gaussian maps to the voxel holding it, and voxel centers are inside
    np.testing.assert_array_equal(vox.coords[vox.source_index], vox.grid.quantize(model.means))
    assert np.all(np.abs(vox.model.means[vox.source_index] - model.means) <= vox.grid.voxel_size * 0.5 + 1e-5)


def test_depth_choice_rule_and_bounds():
    model = _random_model(5000, seed=3)
    d = choose_depth(model.means, max_merge_fraction=0.02, min_depth=4, max_depth=18)
    n = len(model)
    assert 1 - len(voxelize(model, d).model) / n <= 0.02
    assert d == 4 or 1 - len(voxelize(model, d - 1).model) / n > 0.02
    with pytest.raises(OctreeError, match="depth must be in"):
        VoxelGrid.bounding(model.means, 0)
    with pytest.raises(OctreeError, match="empty"):
        voxelize(model.subset(np.zeros(0, dtype=int)), 8)


def levels_slow(coords, num_levels):
    out = []
    for level in range(num_levels):
        parents = {tuple(c >> level) for c in coords}
        ordered = sorted(parents, key=lambda k: morton_slow(*k))
        row = {k: i for i, k in enumerate(ordered)}
        out.append((np.array(ordered), np.array([row[tuple(c >> level)] for c in coords])))
    return out


def test_levels_match_brute_force_random():
    rng = np.random.default_rng(5)
    coords = np.unique(rng.integers(0, 256, size=(2000, 3)), axis=0)
    coords = morton_decode(np.sort(morton_encode(coords)))
    levels = OctreeLevels.build(coords, 6, depth=8)
    for level, (c, p2v) in enumerate(levels_slow(coords, 6)):
        np.testing.assert_array_equal(levels.coords[level], c)
        np.testing.assert_array_equal(levels.point_to_voxel[level], p2v)
    for level in range(5):
        parent = levels.parent_index(level)
        np.testing.assert_array_equal(levels.coords[level + 1][parent], levels.coords[level] >> 1)


def test_levels_on_real_model():
    model = read_ply(shared_path(GAUSSIANS["donut"]))
    vox = voxelize(model, 8)
    levels = OctreeLevels.build(vox.coords, 7, depth=8)
    sizes = levels.sizes
    assert sizes[0] == len(vox.model) and all(a >= b for a, b in zip(sizes, sizes[1:]))
    sub = vox.coords[::37]
    for level, (c, p2v) in enumerate(levels_slow(sub, 3)):
        ref = OctreeLevels.build(sub, 3, depth=8)
        np.testing.assert_array_equal(ref.coords[level], c)
        np.testing.assert_array_equal(ref.point_to_voxel[level], p2v)


def test_levels_reject_unsorted():
    coords = np.array([[1, 0, 0], [0, 0, 0]])
    with pytest.raises(OctreeError, match="Morton order"):
        OctreeLevels.build(coords, 2, depth=2)
    with pytest.raises(OctreeError, match="exceeds depth"):
        OctreeLevels.build(coords[::-1], 5, depth=2)


def test_sparse_tensors_have_level_strides():
    rng = np.random.default_rng(1)
    coords = np.unique(rng.integers(0, 64, size=(300, 3)), axis=0)
    coords = morton_decode(np.sort(morton_encode(coords)))
    levels = OctreeLevels.build(coords, 4, depth=6)
    tensors = levels.sparse_tensors()
    for level, st in enumerate(tensors):
        assert st.tensor_stride == [1 << level] * 3
        got = st.C[:, 1:].numpy() // (1 << level)
        assert {tuple(r) for r in got} == {tuple(r) for r in levels.coords[level]}
