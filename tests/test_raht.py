"""RAHT: the vectorized transform against a slow pair-by-pair reference, orthonormality, perfect
inversion, the DC, and bad input."""
import numpy as np
import pytest

from conftest import GAUSSIANS, shared_path
from ralhe_me.baselines.raht import (
                                     RahtError,
                                     build_plan,
                                     raht_forward,
                                     raht_forward_plan,
                                     raht_inverse,
                                     raht_inverse_plan,
                                     )
from ralhe_me.geometry.octree import morton_encode


def reference_raht(coords, depth, values):
    """Obviously-correct RAHT: a dict of nodes keyed by their (shifted) coordinates; for each level,
    for each axis x, y, z, merge the nodes whose keys differ only in that axis' lowest bit, one pair
    at a time.  Returns (coefficients in the documented order, weights)."""
    nodes = {tuple(int(c) for c in p): (np.asarray(v, dtype=np.float64), 1) for p, v in zip(coords, values)}
    shifts = [0, 0, 0]
    emitted = []  # (step, order key of the merged node, coefficient, weight)
    step = 0
    for level in range(depth):
        for axis in range(3):
            parents = {}
            for key, (val, w) in nodes.items():
                pkey = list(key)
                pkey[axis] >>= 1
                parents.setdefault(tuple(pkey), []).append((key[axis] & 1, val, w))
            shifts[axis] += 1
            new = {}
            for pkey, kids in parents.items():
                if len(kids) == 1:
                    new[pkey] = (kids[0][1], kids[0][2])
                    continue
                kids.sort(key=lambda k: k[0])
                (_, x1, w1), (_, x2, w2) = kids
                s = np.sqrt(w1 + w2)
                low = (np.sqrt(w1) * x1 + np.sqrt(w2) * x2) / s
                high = (-np.sqrt(w2) * x1 + np.sqrt(w1) * x2) / s
                # order key: transform code (Morton of z, y, x) of the merged node's corner
                corner = np.array([[pkey[2] << shifts[2], pkey[1] << shifts[1], pkey[0] << shifts[0]]])
                emitted.append((step, int(morton_encode(corner)[0]), high, w1 + w2))
                new[pkey] = (low, w1 + w2)
            nodes = new
            step += 1
    assert len(nodes) == 1
    (dc, w), = nodes.values()
    emitted.sort(key=lambda e: (-e[0], e[1]))
    coeffs = np.stack([dc] + [e[2] for e in emitted])
    weights = np.array([w] + [e[3] for e in emitted])
    return coeffs, weights


def random_cloud(rng, n, depth):
    return np.unique(rng.integers(0, 1 << depth, size=(n, 3)), axis=0)


@pytest.mark.parametrize("seed,n,depth", [(0, 1, 3), (1, 2, 1), (2, 8, 1), (3, 30, 3), (4, 200, 4), (5, 120, 6)])
def test_matches_reference(seed, n, depth):
    rng = np.random.default_rng(seed)
    coords = random_cloud(rng, n, depth)
    coords = coords[rng.permutation(len(coords))]  # row order is free
    values = rng.normal(size=(len(coords), 3))
    ref, ref_w = reference_raht(coords, depth, values)
    got, w = raht_forward(coords, depth, values)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(w, ref_w)


def test_transform_matrix_is_orthonormal():
    rng = np.random.default_rng(7)
    coords = random_cloud(rng, 40, 3)
    m = len(coords)
    eye = np.eye(m)
    t_ref, _ = reference_raht(coords, 3, eye)  # column j: transform of the unit vector e_j
    t, _ = raht_forward(coords, 3, eye)
    np.testing.assert_allclose(t, t_ref, atol=1e-12)
    np.testing.assert_allclose(t @ t.T, eye, atol=1e-12)
    np.testing.assert_allclose(raht_inverse(coords, 3, t), eye, atol=1e-12)


def test_reference_catches_a_wrong_butterfly():
    """The comparison is sensitive: swapping the pair order (x2 first) changes the coefficients."""
    rng = np.random.default_rng(8)
    coords = random_cloud(rng, 50, 3)
    values = rng.normal(size=(len(coords), 1))
    ref, _ = reference_raht(coords, 3, values)
    mirrored = coords.copy()
    mirrored[:, 0] = 7 - mirrored[:, 0]
    got, _ = raht_forward(mirrored, 3, values)
    assert np.abs(got - ref).max() > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_energy_and_inverse_random(seed):
    rng = np.random.default_rng(seed)
    depth = 10
    coords = random_cloud(rng, 20000, depth)
    # clustered points too, so deep merges occur
    coords = np.unique(np.concatenate([coords, coords[:2000] ^ 1, coords[:2000] ^ 3]), axis=0)
    values = rng.normal(size=(len(coords), 5)) * rng.uniform(0.1, 10, size=5)
    plan = build_plan(coords, depth)
    c = raht_forward_plan(plan, values)
    np.testing.assert_allclose(np.linalg.norm(c, axis=0), np.linalg.norm(values, axis=0), rtol=1e-12)
    assert np.abs(raht_inverse_plan(plan, c) - values).max() < 1e-9


def test_dc_is_scaled_mean_and_constant_has_no_ac():
    rng = np.random.default_rng(3)
    coords = random_cloud(rng, 3000, 7)
    m = len(coords)
    values = rng.normal(size=(m, 2))
    c, w = raht_forward(coords, 7, values)
    np.testing.assert_allclose(c[0], np.sqrt(m) * values.mean(axis=0), rtol=1e-12)
    assert w[0] == m and len(w) == m and w[1:].min() >= 2
    const, _ = raht_forward(coords, 7, np.full((m, 1), 2.5))
    assert np.abs(const[1:]).max() < 1e-12
    np.testing.assert_allclose(const[0, 0], 2.5 * np.sqrt(m), rtol=1e-12)


def test_one_dimensional_values_and_single_point():
    coords = np.array([[3, 1, 2]])
    c, w = raht_forward(coords, 2, np.array([4.0]))
    assert c.shape == (1,) and c[0] == 4.0 and w[0] == 1
    assert raht_inverse(coords, 2, c)[0] == 4.0


def test_real_donut_energy_and_inverse():
    from ralhe_me.gaussians import read_ply
    from ralhe_me.geometry.octree import voxelize

    model = read_ply(shared_path(GAUSSIANS["donut"]))
    vox = voxelize(model, 10)
    values = np.concatenate([vox.model.sh.reshape(len(vox.coords), -1), vox.model.opacities[:, None]], axis=1)
    plan = build_plan(vox.coords, 10)
    c = raht_forward_plan(plan, values)
    np.testing.assert_allclose(np.linalg.norm(c, axis=0), np.linalg.norm(values, axis=0), rtol=1e-12)
    assert np.abs(raht_inverse_plan(plan, c) - values).max() < 1e-9
    np.testing.assert_allclose(c[0], np.sqrt(len(values)) * values.mean(axis=0), rtol=1e-10)


def test_bad_input():
    coords = np.array([[0, 0, 0], [1, 0, 0]])
    with pytest.raises(RahtError, match="unique"):
        build_plan(np.array([[0, 0, 0], [0, 0, 0]]), 2)
    with pytest.raises(RahtError, match="lie in"):
        build_plan(np.array([[0, 0, 4]]), 2)
    with pytest.raises(RahtError, match="shape"):
        build_plan(np.zeros((3, 2), np.int64), 2)
    with pytest.raises(RahtError, match="integers"):
        build_plan(coords.astype(np.float32), 2)
    with pytest.raises(RahtError, match="empty"):
        build_plan(np.zeros((0, 3), np.int64), 2)
    with pytest.raises(RahtError, match="depth"):
        build_plan(coords, 30)
    with pytest.raises(RahtError, match="values"):
        raht_forward(coords, 2, np.zeros((3, 1)))
