"""Gaussians whose opacity is below 1/255 are never drawn, so the encoder leaves them out."""
import dataclasses
import math

import numpy as np
import pytest

from ralhe_me.config import CodecConfig
from ralhe_me.default_scene import make_default_scene
from ralhe_me.encode.encoder import EncodeError, prepare
from ralhe_me.gaussians import NEVER_DRAWN_OPACITY, drawn_mask
from ralhe_me.render import orbit_cameras, render_model


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _with_opacities(model, rows, opacity):
    logits = model.opacity_logits.copy()
    logits[rows] = np.float32(_logit(opacity))
    return dataclasses.replace(model, opacity_logits=logits)


def test_the_threshold_is_the_rasterizers():
    model = make_default_scene(40, seed=0).subset(np.arange(4))
    model = _with_opacities(model, [0], 1 / 255 * 0.999)
    model = _with_opacities(model, [1], 1 / 255 * 0.99995)  # inside the float32 margin: kept
    model = _with_opacities(model, [2], 1 / 255 * 1.001)
    assert drawn_mask(model).tolist() == [False, True, True, True]
    assert NEVER_DRAWN_OPACITY < 1 / 255


def test_undrawn_gaussians_change_no_pixel_and_drawn_ones_do():
    """The premise: the renderer skips a Gaussian whose opacity is below 1/255 everywhere, even at
    its centre and even when it is large; just above the threshold it shows."""
    base = dataclasses.replace(make_default_scene(400, seed=3), normals=None)
    cams = orbit_cameras(base.means, 3, 64, 64)
    big = base.subset(np.arange(40))
    big = dataclasses.replace(big, log_scales=big.log_scales + np.float32(1.5))  # cover many pixels
    for opacity, changes in ((1 / 255 * 0.999, False), (1 / 255 * 1.05, True)):
        extra = _with_opacities(big, np.arange(40), opacity)
        both = dataclasses.replace(base, **{k: np.concatenate([getattr(base, k), getattr(extra, k)])
                                            for k in ("means", "log_scales", "quats", "opacity_logits", "sh")})
        diff = max(float(np.abs(render_model(both, c).numpy() - render_model(base, c).numpy()).max()) for c in cams)
        assert (diff > 0) == changes, (opacity, diff)


def test_prepare_leaves_them_out_and_keeps_the_rest():
    model = make_default_scene(3000, seed=1)
    undrawn = np.arange(0, 3000, 7)
    model = _with_opacities(model, undrawn, 1e-3)
    vox = prepare(model, CodecConfig())
    assert vox.left_out == len(undrawn)
    assert np.all(vox.source_index[undrawn] == -1)
    kept = np.setdiff1d(np.arange(3000), undrawn)
    assert np.all(vox.source_index[kept] >= 0)
    # every kept Gaussian lies in its voxel; the voxels hold only kept ones
    assert np.all(np.abs(vox.model.means[vox.source_index[kept]] - model.means[kept]) <= vox.grid.voxel_size)
    assert len(np.unique(vox.source_index[kept])) == len(vox.model)
    assert np.all(vox.model.opacities >= NEVER_DRAWN_OPACITY)
    # the same voxels as coding the drawn ones alone
    alone = prepare(model.subset(kept), CodecConfig())
    np.testing.assert_array_equal(vox.coords, alone.coords)
    np.testing.assert_array_equal(vox.model.opacity_logits, alone.model.opacity_logits)

    everything = prepare(model, CodecConfig(keep_undrawn=True))
    assert everything.left_out == 0 and len(everything.source_index) == 3000
    assert len(everything.model) > len(vox.model)


def test_an_undrawn_gaussian_no_longer_dims_its_voxel():
    """Merged into a voxel, a Gaussian of opacity ~0 would halve the voxel's averaged opacity."""
    model = make_default_scene(2000, seed=2)
    twin = model.subset(np.r_[np.arange(2000), [5]])  # a copy of Gaussian 5 at the same place
    twin = _with_opacities(twin, [2000], 1e-4)
    config = CodecConfig(depth=10)
    lean, full = prepare(twin, config), prepare(twin, CodecConfig(depth=10, keep_undrawn=True))
    row_lean, row_full = lean.source_index[5], full.source_index[5]
    assert full.source_index[2000] == row_full and lean.source_index[2000] == -1
    o = model.opacities[5]
    assert abs(lean.model.opacities[row_lean] - o) < 1e-5 * o
    assert full.model.opacities[row_full] < 0.6 * o


def test_a_model_drawing_nothing_is_refused_by_name():
    model = _with_opacities(make_default_scene(50, seed=0), np.arange(50), 1e-3)
    with pytest.raises(EncodeError, match=r"all 50 Gaussians have an opacity below 1/255"):
        prepare(model, CodecConfig())
    assert len(prepare(model, CodecConfig(keep_undrawn=True)).model) > 0


def test_the_command_line_reports_what_it_left_out(tmp_path, capsys):
    from ralhe_me.cli import main
    from ralhe_me.gaussians import read_ply, write_ply

    model = _with_opacities(make_default_scene(1500, seed=4), np.arange(0, 1500, 10), 1e-3)
    write_ply(model, tmp_path / "in.ply")
    assert main(["voxelize", str(tmp_path / "in.ply"), str(tmp_path / "out.ply")]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("; 150 Gaussians left out (opacity below 1/255: no rasterizer draws them)")
    lean = len(read_ply(tmp_path / "out.ply"))
    assert main(["voxelize", str(tmp_path / "in.ply"), str(tmp_path / "all.ply"), "--keep-undrawn"]) == 0
    assert "left out" not in capsys.readouterr().out
    assert len(read_ply(tmp_path / "all.ply")) > lean
    # a depth too shallow for the encoder's octree levels still voxelizes (a tool of its own)
    assert main(["voxelize", str(tmp_path / "in.ply"), str(tmp_path / "d4.ply"), "--depth", "4"]) == 0
    assert "at depth 4" in capsys.readouterr().out
