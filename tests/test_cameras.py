"""Cameras: NeRF-synthetic loading (real mic data and a tiny synthetic set), orbits, named errors."""
import json
import math

import numpy as np
import pytest

from ralhe_me.render.cameras import (Camera, CameraError, load_nerf_synthetic, look_at_matrix, orbit_cameras,
                                     robust_bounds)
from conftest import MIC, shared_path


def test_mic_test_split_loads_with_sane_orientation():
    root = shared_path(MIC)
    cams, imgs = load_nerf_synthetic(root, "test", resolution=100, limit=3)
    assert len(cams) == len(imgs) == 3
    meta = json.loads((root / "transforms_test.json").read_text())
    for cam, img, frame in zip(cams, imgs, meta["frames"]):
        assert img.shape == (100, 100, 3) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert (cam.width, cam.height) == (100, 100)
        assert cam.fov_x == pytest.approx(meta["camera_angle_x"], rel=1e-9)
        # the camera sits where the json says (the Blender camera-to-world translation)
        np.testing.assert_allclose(cam.center, np.asarray(frame["transform_matrix"])[:3, 3], atol=1e-5)
        # the scene center is in front of the camera and projects near the image center
        uv, z = cam.project(np.zeros((1, 3)))
        assert z[0] > 0
        assert np.all(np.abs(uv[0] - 50.0) < 10.0)
        # world up (+z in Blender scenes) points up in the image (OpenCV: y down)
        uv_up, _ = cam.project(np.array([[0.0, 0.0, 0.5]]))
        assert uv_up[0, 1] < uv[0, 1] - 5
        # white background composited: corners are white, the object is not
        assert np.all(img[:3, :3] > 0.99)
        dark = np.argwhere(img.mean(-1) < 0.9)
        assert len(dark) > 50
        # the object's pixels lie around the projected center
        assert np.all(np.abs(dark.mean(0)[::-1] - uv[0]) < 20)


def _write_tiny_dataset(root, split="test", with_image=True):
    from PIL import Image

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = 100
    rgba[:4, :4, 3] = 255  # opaque quarter, transparent elsewhere
    rgba[4:, 4:, 3] = 51  # alpha 0.2
    (root / split).mkdir(parents=True, exist_ok=True)
    if with_image:
        Image.fromarray(rgba, "RGBA").save(root / split / "r_0.png")
    c2w = np.eye(4)
    c2w[:3, 3] = [0.0, 0.0, 4.0]  # Blender camera looking down -z at the origin
    meta = {"camera_angle_x": 0.8, "frames": [{"file_path": f"./{split}/r_0", "transform_matrix": c2w.tolist()}]}
    (root / f"transforms_{split}.json").write_text(json.dumps(meta))
    return rgba


def test_white_compositing_and_area_downscale(tmp_path):
    rgba = _write_tiny_dataset(tmp_path)
    (cam,), (img,) = load_nerf_synthetic(tmp_path, "test")
    rgb, a = rgba[..., :3] / 255.0, rgba[..., 3:] / 255.0
    expect = rgb * a + (1 - a)
    np.testing.assert_allclose(img, expect, atol=1e-6)
    assert cam.fx == pytest.approx(4.0 / math.tan(0.4))
    (small,), (img2,) = load_nerf_synthetic(tmp_path, "test", resolution=4)
    np.testing.assert_allclose(img2, expect.reshape(4, 2, 4, 2, 3).mean(axis=(1, 3)), atol=1e-6)
    assert (small.width, small.height) == (4, 4)
    assert small.fx == pytest.approx(cam.fx / 2) and small.cx == 2.0
    # OpenGL -> OpenCV: the origin is 4 units in front, at the image center
    uv, z = small.project(np.zeros((1, 3)))
    np.testing.assert_allclose(uv[0], [2.0, 2.0], atol=1e-12)
    assert z[0] == pytest.approx(4.0)
    # a non-integer factor goes through an area (box) filter and keeps the range
    (odd,), (img3,) = load_nerf_synthetic(tmp_path, "test", resolution=3)
    assert img3.shape == (3, 3, 3) and img3.min() >= 0 and img3.max() <= 1.0


def test_named_errors(tmp_path):
    with pytest.raises(CameraError, match="split"):
        load_nerf_synthetic(tmp_path, "validation")
    with pytest.raises(CameraError, match="no camera file"):
        load_nerf_synthetic(tmp_path / "missing", "test")
    _write_tiny_dataset(tmp_path, "train", with_image=False)
    with pytest.raises(CameraError, match="not found"):
        load_nerf_synthetic(tmp_path, "train")
    (tmp_path / "transforms_val.json").write_text("{not json")
    with pytest.raises(CameraError, match="not a NeRF-synthetic"):
        load_nerf_synthetic(tmp_path, "val")
    with pytest.raises(CameraError, match="resolution"):
        load_nerf_synthetic(tmp_path, "train", resolution=0)
    with pytest.raises(CameraError, match="num_views"):
        orbit_cameras(np.zeros((4, 3)), 0, 10, 10)
    with pytest.raises(CameraError, match="means"):
        orbit_cameras(np.zeros((4, 2)), 3, 10, 10)
    with pytest.raises(CameraError, match="fov"):
        orbit_cameras(np.zeros((4, 3)), 3, 10, 10, fov_deg=180)
    with pytest.raises(CameraError, match="world_to_cam"):
        Camera(np.eye(3), 1, 1, 0, 0, 4, 4)
    with pytest.raises(CameraError, match="parallel"):
        look_at_matrix([0, 0, 5], [0, 0, 0], [0, 0, 1])


def test_orbit_is_deterministic_and_frames_the_model():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(5000, 3)) * [2.0, 1.0, 0.5] + [10.0, -3.0, 1.0]
    means[:20] += 1000.0  # outliers must not move the view
    cams = orbit_cameras(means, 8, 64, 48, fov_deg=50.0)
    again = orbit_cameras(means.copy(), 8, 64, 48, fov_deg=50.0)
    assert len(cams) == 8
    for a, b in zip(cams, again):
        assert np.array_equal(a.world_to_cam, b.world_to_cam) and a.fx == b.fx
    center, radius = robust_bounds(means)
    dists = [np.linalg.norm(c.center - center) for c in cams]
    np.testing.assert_allclose(dists, dists[0])
    assert len({tuple(np.round(c.center, 6)) for c in cams}) == 8
    elevations = [math.degrees(math.asin((c.center - center)[2] / d)) for c, d in zip(cams, dists)]
    assert elevations[0] == pytest.approx(-15.0) and elevations[-1] == pytest.approx(45.0)
    for cam in cams:
        assert cam.fov_x == pytest.approx(math.radians(50.0))
        np.testing.assert_allclose(cam.rotation @ cam.rotation.T, np.eye(3), atol=1e-12)
        uv, z = cam.project(center[None])
        np.testing.assert_allclose(uv[0], [32.0, 24.0], atol=1e-9)
        uv, z = cam.project(means[20:])
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < 64) & (uv[:, 1] >= 0) & (uv[:, 1] < 48)
        assert inside.mean() > 0.97
        # the up axis (+z) points up in every image
        up_uv, _ = cam.project((center + [0, 0, 0.3 * radius])[None])
        assert up_uv[0, 1] < 24.0


def test_camera_helpers():
    cam = Camera.look_at([0, -5, 0], [0, 0, 0], [0, 0, 1], 40, 30, fov_x_deg=60)
    assert cam.fov_x == pytest.approx(math.radians(60))
    assert cam.tan_half_fov_x == pytest.approx(math.tan(math.radians(30)))
    np.testing.assert_allclose(cam.center, [0, -5, 0], atol=1e-12)
    np.testing.assert_allclose(cam.cam_to_world @ cam.world_to_cam, np.eye(4), atol=1e-12)
    uv, _ = cam.project(np.array([[1.0, 0.0, 0.0]]))  # world +x is to the right
    assert uv[0, 0] > 20.0
    half = cam.scaled(20, 15)
    assert half.fx == pytest.approx(cam.fx / 2) and half.cy == pytest.approx(7.5)


def test_orbit_keeps_small_models_beyond_the_near_plane():
    rng = np.random.default_rng(3)
    means = rng.normal(size=(3000, 3)) * 0.05  # a model ~0.1 units across (like the donut)
    wide = orbit_cameras(means, 4, 64, 64, fov_deg=50.0)
    center, radius = robust_bounds(means)
    for cam in wide:
        _, z = cam.project(means)
        assert np.quantile(z, 0.001) > 0.2 * 2  # nothing of substance near the near plane
        assert cam.fov_x < math.radians(50.0)
        uv, _ = cam.project(means)  # still framed: the 98% sphere fills most of the view
        spread = np.percentile(np.abs(uv - 32.0), 98)
        assert 12.0 < spread < 32.0
    # a large model keeps the requested field of view
    big = orbit_cameras(means * 100, 4, 64, 64, fov_deg=50.0)
    assert big[0].fov_x == pytest.approx(math.radians(50.0))
