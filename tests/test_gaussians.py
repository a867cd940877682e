import re

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from ralhe_me.default_scene import make_default_scene
from ralhe_me.gaussians import GaussianModel, GaussianPlyError, read_ply, write_ply
from conftest import GAUSSIANS, shared_path

EXPECTED = {"donut": (45624, 0, False), "kacytran": (9080, 3, True), "guitar": (90854, 0, True),
            "playbot": (125000, 2, True)}


def _raw_vertices(path):
    return PlyData.read(str(path))["vertex"].data


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_models_load_and_round_trip(name, tmp_path):
    path = shared_path(GAUSSIANS[name])
    model = read_ply(path)
    n, degree, has_normals = EXPECTED[name]
    assert (len(model), model.sh_degree, model.normals is not None) == (n, degree, has_normals)
    out = tmp_path / "out.ply"
    write_ply(model, out)
    a, b = _raw_vertices(path), _raw_vertices(out)
    assert a.dtype.names == b.dtype.names  # same properties in the same (INRIA) order
    for prop in a.dtype.names:
        np.testing.assert_array_equal(np.asarray(a[prop], np.float32), b[prop], err_msg=prop)


def test_f_rest_layout_is_channel_major(tmp_path):
    model = make_default_scene(300, seed=3)
    write_ply(model, tmp_path / "m.ply")
    v = _raw_vertices(tmp_path / "m.ply")
    # INRIA: f_rest index = channel * 15 + (coefficient - 1)
    np.testing.assert_array_equal(v["f_rest_0"], model.sh[:, 1, 0])
    np.testing.assert_array_equal(v["f_rest_16"], model.sh[:, 2, 1])
    np.testing.assert_array_equal(v["f_rest_44"], model.sh[:, 15, 2])
    again = read_ply(tmp_path / "m.ply")
    np.testing.assert_array_equal(again.sh, model.sh)
    np.testing.assert_array_equal(again.quats, model.quats)


def _write_vertices(path, columns):
    rec = np.empty(len(next(iter(columns.values()))), dtype=[(k, "<f4") for k in columns])
    for k, v in columns.items():
        rec[k] = v
    PlyData([PlyElement.describe(rec, "vertex")]).write(str(path))


def _minimal_columns(n=4, f_rest=0):
    cols = {p: np.zeros(n, np.float32) for p in ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"]}
    cols.update({f"f_rest_{i}": np.zeros(n, np.float32) for i in range(f_rest)})
    cols.update({p: np.zeros(n, np.float32) for p in
                 ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]})
    return cols


def test_minimal_model_reads(tmp_path):
    _write_vertices(tmp_path / "ok.ply", _minimal_columns(f_rest=9))
    model = read_ply(tmp_path / "ok.ply")
    assert model.sh_degree == 1 and model.normals is None and len(model) == 4


@pytest.mark.parametrize("case, message", [
    ("missing", "missing vertex properties scale_1"),
    ("f_rest", "7 f_rest_* properties"),
    ("nan", "NaN"),
    ("inf", "NaN/infinite"),
    ("empty", "no vertices"),
    ("not_ply", "not a PLY"),
    ("absent", "no such file"),
    ("truncated", "unreadable PLY"),
])
def test_bad_files_raise_named_errors(tmp_path, case, message):
    path = tmp_path / f"{case}.ply"
    cols = _minimal_columns()
    if case == "missing":
        del cols["scale_1"]
    elif case == "f_rest":
        cols.update({f"f_rest_{i}": np.zeros(4, np.float32) for i in range(7)})
    elif case == "nan":
        cols["f_dc_1"][2] = np.nan
    elif case == "inf":
        cols["x"][0] = np.inf
    elif case == "empty":
        cols = {k: v[:0] for k, v in cols.items()}
    if case == "not_ply":
        path.write_bytes(b"hello, this is not a ply file\n")
    elif case == "truncated":
        _write_vertices(path, _minimal_columns(n=1000))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case != "absent":
        _write_vertices(path, cols)
    with pytest.raises(GaussianPlyError, match=re.escape(message)):
        read_ply(path)


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    import plyfile

    model = make_default_scene(100)
    target = tmp_path / "m.ply"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(plyfile.PlyData, "write", boom)
    with pytest.raises(OSError):
        write_ply(model, target)
    assert list(tmp_path.iterdir()) == []


def test_default_scene_is_deterministic_and_view_dependent():
    a, b = make_default_scene(2000, seed=0), make_default_scene(2000, seed=0)
    np.testing.assert_array_equal(a.sh, b.sh)
    np.testing.assert_array_equal(a.means, b.means)
    assert a.sh_degree == 3 and len(a) == 2000
    energy = np.abs(a.sh).mean(axis=(0, 2))
    assert np.all(energy[1:] > 0.02), energy  # every SH coefficient carries signal
    assert a.opacities.std() > 0.05
    c = make_default_scene(2000, seed=1)
    assert not np.array_equal(a.means, c.means)


def test_model_shape_errors():
    with pytest.raises(ValueError, match="quats must have shape"):
        GaussianModel(means=np.zeros((3, 3)), log_scales=np.zeros((3, 3)), quats=np.zeros((3, 3)),
                      opacity_logits=np.zeros(3), sh=np.zeros((3, 1, 3)))
    with pytest.raises(ValueError, match="coefficients"):
        GaussianModel(means=np.zeros((3, 3)), log_scales=np.zeros((3, 3)), quats=np.zeros((3, 4)),
                      opacity_logits=np.zeros(3), sh=np.zeros((3, 5, 3)))
