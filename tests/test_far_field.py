"""Far-field contraction: the map and its inverse, when it is chosen, and a scene with far
Gaussians coded with the foreground's precision where it matters and bit-exact decoding."""
import dataclasses
import math
import warnings

import numpy as np
import pytest

from conftest import small_codec_config
from ralhe_me.decode.bitstream import CorruptDataError
from ralhe_me.decode.decoder import _checked, decode_bytes
from ralhe_me.default_scene import make_default_scene
from ralhe_me.encode.encoder import DepthWarning, encode_model, prepare
from ralhe_me.geometry.octree import Contraction, OctreeError, VoxelGrid, far_field_contraction


def slow_forward(c: Contraction, p):
    """One point at a time, straight from the definition."""
    y = [(float(p[i]) - c.center[i]) / c.radius for i in range(3)]
    s = max(abs(v) for v in y)
    if s <= 1.0:
        return y
    return [v / s * (1.0 + math.log(s)) for v in y]


def test_forward_matches_the_definition_and_inverse_undoes_it():
    c = Contraction(center=(0.5, -1.0, 2.0), radius=2.0, log_range=float(np.log(500.0)))
    rng = np.random.default_rng(0)
    d = rng.normal(size=(200, 3))
    d /= np.abs(d).max(axis=1, keepdims=True)  # |d|_inf = 1: far points out to the range's end
    p = np.concatenate([rng.uniform(-1.5, 2.5, (200, 3)),  # foreground
                        np.asarray(c.center) + c.radius * d * rng.uniform(1.01, 499.9, (200, 1))])
    z = c.forward(p)
    np.testing.assert_allclose(z, np.array([slow_forward(c, q) for q in p]), rtol=1e-12, atol=1e-12)
    assert np.abs(z).max() <= c.half_extent == 1 + c.log_range
    inside = np.abs((p - c.center) / c.radius).max(axis=1) <= 1
    np.testing.assert_array_equal(z[inside], ((p - c.center) / c.radius)[inside])  # no change there
    np.testing.assert_allclose(c.inverse(z), p, rtol=1e-10, atol=1e-10)


def test_far_voxels_subtend_the_angle_of_a_voxel_at_the_foreground_edge():
    c = Contraction(center=(0.0, 0.0, 0.0), radius=1.0, log_range=float(np.log(1000.0)))
    grid = VoxelGrid.bounding(None, 12, c)
    step = grid.extent / 2 ** grid.depth
    for distance in (3.0, 30.0, 300.0):
        z = c.forward(np.array([[distance, 0.0, 0.0]]))[0, 0]
        world = c.inverse(np.array([[z + step, 0.0, 0.0]]))[0, 0] - distance
        assert world / distance == pytest.approx(step, rel=0.01)


def test_bad_contractions_are_refused():
    for kwargs in (dict(radius=0.0, log_range=1.0), dict(radius=1.0, log_range=0.0),
                   dict(radius=float("nan"), log_range=1.0)):
        with pytest.raises(OctreeError, match="contraction"):
            Contraction(center=(0.0, 0.0, 0.0), **kwargs)
    header = {"num_points": 1, "depth": 9, "origin": [-2.0] * 3, "extent": 4.0, "sh_degree": 0,
              "attribute_codec": "raht"}
    for bad in ({"center": [0, 0, 0], "radius": -1.0, "log_range": 2.0}, {"center": [0, 0], "radius": 1.0,
                                                                          "log_range": 2.0}, {"radius": 1.0}):
        with pytest.raises(CorruptDataError, match="voxel grid"):
            _checked({**header, "contraction": bad})


def far_scene(n=2000, fraction=0.01, seed=5):
    """The default scene with ``fraction`` of its Gaussians moved 10 to 100 scene radii away."""
    m = make_default_scene(n, seed=seed)
    rng = np.random.default_rng(seed)
    idx = rng.choice(n, max(1, int(n * fraction)), replace=False)
    d = rng.normal(size=(len(idx), 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    m.means[idx] = (d * rng.uniform(12, 120, (len(idx), 1))).astype(np.float32)
    return m, idx


def test_object_centred_scenes_keep_the_plain_grid_and_their_bytes():
    model = make_default_scene(1500, seed=2)
    assert far_field_contraction(model.means) is None
    auto, off = small_codec_config(), small_codec_config()
    off.far_field = "off"
    a, b = encode_model(model, auto), encode_model(model, off)
    assert a.data == b.data and "contraction" not in a.header


def test_far_gaussians_no_longer_set_the_precision_of_the_scene():
    model, far = far_scene()
    c = far_field_contraction(model.means)
    assert c is not None and c.radius < 2.0
    farthest = np.abs(model.means - np.asarray(c.center)).max()
    assert math.exp(c.log_range) * c.radius >= farthest * (1 - 1e-6)  # the farthest lies in the cube
    config = small_codec_config()
    off = dataclasses.replace(config, far_field="off")
    plain, contracted = prepare(model, off), prepare(model, config)
    assert contracted.grid.contraction is not None and plain.grid.contraction is None
    # the depth follows the foreground, with a few levels more for the far field, not 2^k times finer
    assert contracted.depth < plain.depth
    # inside the foreground cube every Gaussian lies within half a voxel of its voxel's center, per axis
    y = (model.means.astype(np.float64) - np.asarray(c.center)) / c.radius
    s = np.abs(y).max(axis=1)
    centers = contracted.model.means[contracted.source_index]
    inside = s <= 1
    assert inside.mean() > 0.9 and not inside[far].any()
    assert np.abs(centers - model.means)[inside].max() <= 0.5 * contracted.grid.voxel_size * (1 + 1e-5)
    # outside it (the scene's own rim and the far Gaussians) within the angle of a voxel at its edge
    step = contracted.grid.extent / 2 ** contracted.depth
    err = np.linalg.norm(centers - model.means, axis=1)[~inside] / c.radius
    assert (err / s[~inside]).max() <= math.sqrt(3) * step * 1.01


def test_a_contracted_file_decodes_bit_exactly():
    model, _ = far_scene(1500)
    result = encode_model(model, small_codec_config())
    assert set(result.header["contraction"]) == {"center", "radius", "log_range"}
    decoded = decode_bytes(result.data).model
    for name in ("means", "sh", "opacity_logits", "log_scales", "quats"):
        np.testing.assert_array_equal(getattr(decoded, name), getattr(result.reconstruction, name), err_msg=name)


# ---------------------------------------------------------------- the depth the renders need

def test_transparent_depth_is_the_first_depth_whose_renders_reach_the_target():
    from ralhe_me.encode.encoder import transparent_depth
    from ralhe_me.eval.evaluation import orbit_views, score_views
    from ralhe_me.geometry.octree import voxelize

    model = make_default_scene(1500, seed=6)
    reference = orbit_views(model, 6, (192, 192))  # the views transparent_depth scores on
    psnr = {d: score_views(voxelize(model, d).model, reference, with_ssim=False).psnr for d in range(8, 13)}
    target = 0.5 * (psnr[9] + psnr[11])
    depth = transparent_depth(model, 12, target)
    assert psnr[depth] >= target and all(psnr[d] < target for d in range(8, depth))
    assert transparent_depth(model, 12, max(psnr.values()) + 1.0) == 12  # none reaches it: the merge rule's
    assert transparent_depth(model, 8, 0.0) == 8


def test_a_sparse_model_is_not_coded_deeper_than_its_renders_need():
    from conftest import GAUSSIANS
    from ralhe_me.gaussians import read_ply

    if not GAUSSIANS["kacytran"].is_file():
        pytest.skip("../shared/data is not here")
    model = read_ply(GAUSSIANS["kacytran"])
    merge_only = dataclasses.replace(small_codec_config(), depth_transparent_psnr=None)
    deep = prepare(model, merge_only)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shallow = prepare(model, small_codec_config())
    assert deep.depth == 17 and shallow.depth <= 10  # measured: 17 -> 9, 32.2 -> 9.6 position bits per Gaussian
    # it merges more than the merge rule's 5% on purpose: no DepthWarning about a far-set cube
    assert not [w for w in caught if issubclass(w.category, DepthWarning)]
