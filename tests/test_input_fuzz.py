"""Any finite input codes, any other is refused by name (issues 14 and 15).

Each case is written with ``write_ply`` and run through the real path (read_ply, the input gate
``codable_model``, voxelization, positions, covariances, attribute training, packing) by
``encode_file``, then decoded. It either round-trips (finite values, one Gaussian per voxel, the
encoder's reconstruction bit for bit) or raises a ValueError subclass (never ValueError itself,
never another type) whose message names the property at fault. What varies here is the input,
so training is cut to the bone: 2 steps, no ARM refit, a fixed covariance step, one decoder
weight step and two ARM steps to try (the choices among them are tested in test_codec.py), and
most scenes carry SH degree 0 (each SH coefficient triples the attributes to train).
"""
import re
import warnings

import numpy as np
import pytest

import ralhe_me.encode.arm_step as arm_step
import ralhe_me.encode.encoder as encoder_module
from conftest import small_codec_config
from ralhe_me.cli import main
from ralhe_me.decode.decoder import decode_file
from ralhe_me.default_scene import make_default_scene
from ralhe_me.encode.encoder import DepthWarning, encode_file
from ralhe_me.gaussians import (LOG_SCALE_MAX, LOG_SCALE_MIN, OPACITY_LOGIT_LIMIT, POSITION_LIMIT, SH_LIMIT,
                                ClampWarning, GaussianModel, GaussianPlyError, codable_model, read_ply, write_ply)

PROPERTIES = ("means", "log_scales", "quats", "opacity_logits", "sh")
F32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture
def quick(monkeypatch):
    """The codec config of these tests (and the weight steps tried cut to one or two)."""
    monkeypatch.setattr(encoder_module, "DECODER_SHIFTS", (8,))
    monkeypatch.setattr(arm_step, "ARM_SHIFTS", (8, 10))
    config = small_codec_config()
    config.training.steps = 2
    config.training.arm_refit_steps = 0
    config.covariance_step = 0.2
    return config


def scene(n: int = 120, seed: int = 0, degree: int = 0) -> GaussianModel:
    return make_default_scene(max(n, 30), seed=seed).subset(np.arange(n)).with_sh_degree(degree)


def expected_refusal(model: GaussianModel) -> set:
    """The properties a model must be refused for (empty: it must code), by the rules of the
    gate restated from the arrays: NaN anywhere, inf anywhere but the opacities, positions
    beyond POSITION_LIMIT, SH beyond SH_LIMIT, a zero quaternion."""
    bad = set()
    for name in PROPERTIES:
        arr = getattr(model, name)
        if np.isnan(arr).any() or (name != "opacity_logits" and np.isinf(arr).any()):
            bad.add(name)
    if (np.abs(model.means) > POSITION_LIMIT).any():
        bad.add("means")
    if (np.abs(model.sh) > SH_LIMIT).any():
        bad.add("sh")
    if (model.quats == 0).all(axis=1).any():
        bad.add("quats")
    return bad


def run_case(model: GaussianModel, config, tmp_path):
    """(the refusal or None, the warnings raised) of encoding ``model`` from a .ply and decoding it."""
    src, out = tmp_path / "in.ply", tmp_path / "out.ralhe"
    write_ply(model, src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = encode_file(str(src), str(out), config, finetune_iters=0)
        except ValueError as exc:
            assert type(exc) is not ValueError, f"an unnamed ValueError: {exc}"
            assert not out.exists()
            return exc, caught
    decoded = decode_file(str(out), str(tmp_path / "dec.ply")).model
    assert len(decoded) == result.header["num_points"] == len(result.voxelized.model) >= 1
    for name in PROPERTIES:
        got = getattr(decoded, name)
        assert np.isfinite(got).all(), name
        np.testing.assert_array_equal(got, getattr(result.reconstruction, name), err_msg=name)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], \
        [str(w.message) for w in caught]  # no silent overflow or invalid value on the way
    return None, caught


def named(exc: Exception, src_dir) -> list:
    """The properties named in the message of ``exc`` (the file's path left out)."""
    text = str(exc).replace(str(src_dir), "")
    return [p for p in PROPERTIES if re.search(rf"\b{p}\b", text)]


def check_outcome(model, refusal, caught, tmp_path):
    expect = expected_refusal(model)
    if expect:
        assert refusal is not None, f"should have been refused for {expect}"
        assert set(named(refusal, tmp_path)) & expect, str(refusal)
        return
    assert refusal is None, f"should have coded, got {type(refusal).__name__}: {refusal}"
    messages = [str(w.message) for w in caught if issubclass(w.category, ClampWarning)]
    s = model.log_scales
    if ((s < LOG_SCALE_MIN) | (s > LOG_SCALE_MAX)).any():
        assert any("log_scales" in m for m in messages), messages
    if np.isinf(model.opacity_logits).any():
        n = int(np.isinf(model.opacity_logits).sum())
        assert any(f"clamped {n} infinite opacity logits" in m for m in messages), messages


# ---------------------------------------------------------------- the cases users reported, and more

def _set(name, row, value):
    def build(degree=0):
        m = scene(degree=degree)
        getattr(m, name)[row] = value
        return m
    return build


def _near_duplicates():
    m = scene(200).subset(np.arange(5000) % 200)
    jitter = np.random.default_rng(0).uniform(-5e-7, 5e-7, (5000, 3))
    return GaussianModel(means=np.float32(0.25) + jitter, log_scales=m.log_scales, quats=m.quats,
                         opacity_logits=m.opacity_logits, sh=m.sh)


def _one_point():
    m = scene()
    m.means[:] = [0.3, -2.0, 5.0]
    return m


def _bounds():
    m = scene()
    m.log_scales[:3] = [[LOG_SCALE_MIN] * 3, [LOG_SCALE_MAX] * 3, [LOG_SCALE_MAX, LOG_SCALE_MIN, 0.0]]
    m.means[3] = [POSITION_LIMIT, -POSITION_LIMIT, 0.0]
    m.sh[4] = SH_LIMIT
    return m


HAND = {  # id: (model builder, property refused or None, warning class expected)
    "x=1e30 (user report)": (_set("means", 3, [1e30, 0.0, 0.0]), "means", None),
    "x=-3e38": (_set("means", 3, [0.0, -3e38, 0.0]), "means", None),
    # one far Gaussian: the far field is contracted (octree.Contraction), no coarse octree, no warning
    "x=1e16 outlier": (_set("means", 3, [1e16, 0.0, 0.0]), None, None),
    "limits exactly": (_bounds, None, None),
    "log-scale 50 (user report)": (_set("log_scales", 3, [50.0, 0.0, 0.0]), None, ClampWarning),
    "log-scales +-100": (_set("log_scales", slice(0, 60), [100.0, -100.0, 30.0]), None, ClampWarning),
    "log-scale float32 max": (_set("log_scales", 3, [F32_MAX, -F32_MAX, -30.5]), None, ClampWarning),
    "opacity +-1e4": (_set("opacity_logits", slice(0, 60, 2), [1e4, -1e4] * 15), None, None),
    "opacity +-inf (issue 14)": (_set("opacity_logits", slice(0, 4), [np.inf, -np.inf, np.inf, 0.0]), None,
                                 ClampWarning),
    "sh +-1e4": (lambda: _set("sh", slice(0, 60), [[1e4, -1e4, 1e4]] * 4)(degree=1), None, None),
    "sh 1e7": (_set("sh", 3, 1e7), "sh", None),
    "quat norm 1e-30": (_set("quats", 3, [1e-30, 2e-30, 0.0, 0.0]), None, None),
    "quat norm 1e30": (_set("quats", 3, [0.0, 1e30, -3e30, 0.0]), None, None),
    "zero quaternion": (_set("quats", 3, 0.0), "quats", None),
    "single Gaussian": (lambda: scene(1), None, None),
    "two Gaussians": (lambda: scene(2), None, None),
    "all at one point": (_one_point, None, DepthWarning),
    "duplicated points": (lambda: scene(100).subset(np.repeat(np.arange(100), 2)), None, DepthWarning),
    "5000 within 1e-6": (_near_duplicates, None, None),
    "NaN opacity": (_set("opacity_logits", 3, np.nan), "opacity_logits", None),
    "inf log-scale": (_set("log_scales", 3, [0.0, np.inf, 0.0]), "log_scales", None),
}


@pytest.mark.parametrize("case", sorted(HAND))
def test_hand_listed_case(case, quick, tmp_path):
    build, refused, warning = HAND[case]
    model = build()
    refusal, caught = run_case(model, quick, tmp_path)
    assert expected_refusal(model) == ({refused} if refused else set())  # the table agrees with the rules
    check_outcome(model, refusal, caught, tmp_path)
    if refused:
        assert "Gaussian 3" in str(refusal), str(refusal)  # which one, not only which property
    if warning is not None:
        assert any(issubclass(w.category, warning) for w in caught), [str(w.message) for w in caught]


# ---------------------------------------------------------------- random cases mixing extremes

def _magnitude(rng, lo: float, hi: float) -> float:
    return float(rng.choice([-1.0, 1.0]) * min(10.0 ** rng.uniform(lo, hi), F32_MAX))


def random_case(seed: int) -> GaussianModel:
    """A small scene with one to four extremes of random kinds at random Gaussians."""
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.choice([1, 2, 3])) if rng.random() < 0.15 else int(rng.integers(40, 200))
    m = scene(n, seed=seed, degree=int(rng.choice([0, 0, 0, 1, 2, 3])))
    for _ in range(int(rng.integers(1, 5))):
        rows = rng.choice(n, size=int(rng.integers(1, max(2, n // 4))), replace=True)
        kind = rng.choice(["position", "collapse", "log_scale", "opacity", "sh", "quat", "nan", "inf"])
        if kind == "position":
            m.means[rows, rng.integers(3)] = _magnitude(rng, 0, 16.3 if rng.random() < 0.2 else 16)
        elif kind == "collapse":  # duplicates, or near-duplicates within 1e-6 of a point
            m.means[rows] = m.means[rows[0]] + rng.uniform(-1e-6, 1e-6, (len(rows), 3)) * rng.integers(2)
        elif kind == "log_scale":
            m.log_scales[rows, rng.integers(3)] = _magnitude(rng, -1, 4 if rng.random() < 0.8 else 38.5)
        elif kind == "opacity":
            m.opacity_logits[rows] = rng.choice([np.inf, -np.inf]) if rng.random() < 0.3 else _magnitude(rng, 0, 38.5)
        elif kind == "sh":
            m.sh[rows, rng.integers(m.sh.shape[1]), rng.integers(3)] = _magnitude(rng, 0, 6.5 if rng.random() < 0.2
                                                                                   else 6)
        elif kind == "quat":
            m.quats[rows] *= np.float32(10.0 ** rng.uniform(-38, 38)) if rng.random() < 0.9 else 0
        else:
            name = str(rng.choice(PROPERTIES))
            arr = getattr(m, name).reshape(n, -1)
            arr[rows, rng.integers(arr.shape[1])] = np.nan if kind == "nan" else rng.choice([np.inf, -np.inf])
    return m


RANDOM_CASES = 32


def test_random_cases_cover_both_outcomes():
    """The generator is worth its time: it makes models to refuse for each property and models
    that must code, with clamped values among them."""
    refused, coded, clamped = set(), 0, 0
    for seed in range(RANDOM_CASES):
        m = random_case(seed)
        why = expected_refusal(m)
        refused |= why
        if not why:
            coded += 1
            clamped += bool(((m.log_scales < LOG_SCALE_MIN) | (m.log_scales > LOG_SCALE_MAX)).any()
                            or np.isinf(m.opacity_logits).any())
    assert refused == set(PROPERTIES) and coded >= RANDOM_CASES // 3 and clamped >= 3, (refused, coded, clamped)


@pytest.mark.parametrize("seed", range(RANDOM_CASES))
def test_random_case(seed, quick, tmp_path):
    model = random_case(seed)
    refusal, caught = run_case(model, quick, tmp_path)
    check_outcome(model, refusal, caught, tmp_path)


# ---------------------------------------------------------------- issue 14: infinite opacities

def test_infinite_opacities_are_clamped_with_a_warning(tmp_path):
    model = scene(50)
    model.opacity_logits[[3, 9, 20]] = [np.inf, -np.inf, np.inf]
    write_ply(model, tmp_path / "spz.ply")
    with pytest.warns(ClampWarning, match=r"opacity_logits: clamped 3 infinite opacity logits to \+-16\.118"):
        got = read_ply(tmp_path / "spz.ply")
    assert np.isfinite(got.opacity_logits).all()
    np.testing.assert_array_equal(got.opacity_logits[[3, 9, 20]],
                                  np.float32([OPACITY_LOGIT_LIMIT, -OPACITY_LOGIT_LIMIT, OPACITY_LOGIT_LIMIT]))
    keep = np.setdiff1d(np.arange(50), [3, 9, 20])
    np.testing.assert_array_equal(got.opacity_logits[keep], model.opacity_logits[keep])
    np.testing.assert_array_equal(got.sh, model.sh)
    # the limit is the logit the voxel merge gives alpha 1: voxelizing does not move it
    from ralhe_me.geometry.octree import voxelize

    np.testing.assert_array_equal(voxelize(got.subset([3]), 8).model.opacity_logits, [OPACITY_LOGIT_LIMIT])


def test_clamped_opacities_render_as_saturated_ones():
    """+-OPACITY_LOGIT_LIMIT renders as alpha 1 / 0 (here: as logits +-1e4) do."""
    import torch

    from ralhe_me.render import orbit_cameras, render_model

    model = scene(60)
    model.opacity_logits[:30] = 1e4
    model.opacity_logits[30:] = -1e4
    cam = orbit_cameras(model.means, 1, 32, 32)[0]
    clamped = codable_model(model)
    assert set(np.unique(clamped.opacity_logits)) == {np.float32(-OPACITY_LOGIT_LIMIT), np.float32(OPACITY_LOGIT_LIMIT)}
    a, b = render_model(model, cam), render_model(clamped, cam)
    assert torch.isfinite(a).all()
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


@pytest.mark.parametrize("prop, column", [("opacity_logits", "opacity"), ("means", "y"), ("sh", "f_dc_2"),
                                          ("log_scales", "scale_1"), ("quats", "rot_3")])
def test_nan_is_refused_by_name(prop, column, tmp_path):
    model = scene(40)
    arr = getattr(model, prop).reshape(40, -1)
    arr[7, {"opacity": 0, "y": 1, "f_dc_2": 2, "scale_1": 1, "rot_3": 3}[column]] = np.nan
    write_ply(model, tmp_path / "nan.ply")
    with pytest.raises(GaussianPlyError, match=rf"{prop} holds 1 NaN/infinite values \(first at Gaussian 7: nan\)"):
        read_ply(tmp_path / "nan.ply")


@pytest.mark.parametrize("prop", ["means", "log_scales", "quats", "sh"])
def test_infinity_outside_the_opacities_is_refused_by_name(prop, tmp_path):
    model = scene(40)
    getattr(model, prop).reshape(40, -1)[5, 0] = -np.inf
    write_ply(model, tmp_path / "inf.ply")
    with pytest.raises(GaussianPlyError, match=rf"{prop} holds 1 NaN/infinite values \(first at Gaussian 5: -inf\)"):
        read_ply(tmp_path / "inf.ply")


# ---------------------------------------------------------------- the gate itself

def test_gate_clamps_once_and_keeps_ordinary_models_bit_exact():
    plain = scene(80)
    assert codable_model(plain) is plain  # nothing to change: the very same arrays
    odd = scene(80)
    odd.log_scales[5] = [-1e4, 0.0, 45.0]
    odd.opacity_logits[6] = -np.inf
    odd.quats[7] *= np.float32(1e-20)
    with pytest.warns(ClampWarning) as record:
        once = codable_model(odd)
    assert sorted(str(w.message).split(":")[0] for w in record) == ["log_scales", "opacity_logits"]
    assert "clamped 2 log-scales of 1 Gaussians (first: Gaussian 5)" in str(record[0].message) + str(record[1].message)
    np.testing.assert_array_equal(once.log_scales[5], [LOG_SCALE_MIN, 0.0, LOG_SCALE_MAX])
    np.testing.assert_allclose(np.linalg.norm(once.quats[7]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(once.quats[7] / np.linalg.norm(once.quats[7]),
                               plain.quats[7] / np.linalg.norm(plain.quats[7]), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twice = codable_model(once)
    for name in PROPERTIES:
        np.testing.assert_array_equal(getattr(twice, name), getattr(once, name))
    rows = np.setdiff1d(np.arange(80), [5, 6, 7])
    for name in PROPERTIES:
        np.testing.assert_array_equal(getattr(once, name)[rows], getattr(plain, name)[rows])


def test_small_log_scales_render_as_the_lower_bound():
    """Below LOG_SCALE_MIN a Gaussian is a point dilated by the renderer's low-pass filter."""
    from ralhe_me.render import orbit_cameras, render_model

    model = scene(60)
    model.log_scales[:20] = -200.0
    cam = orbit_cameras(model.means, 1, 32, 32)[0]
    with pytest.warns(ClampWarning, match="clamped 60 log-scales of 20 Gaussians"):
        clamped = codable_model(model)
    np.testing.assert_allclose(render_model(model, cam).numpy(), render_model(clamped, cam).numpy(), atol=1e-6)


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("prop, value, row", [("means", [1e30, 0, 0], 3), ("quats", 0.0, 4), ("sh", -2e9, 5),
                                              ("opacity_logits", np.nan, 6)])
def test_cli_refusal_is_one_named_line(prop, value, row, tmp_path, capsys):
    model = scene(60)
    getattr(model, prop)[row] = value
    src, out = tmp_path / "in.ply", tmp_path / "out.ralhe"
    write_ply(model, src)
    assert main(["encode", str(src), str(out), "--preset", "fast", "--quiet", "--finetune-iters", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ralhe: error: "), err
    line = err[0].replace(str(src), "")  # the path holds the test's name
    assert re.search(rf"\b{prop}\b", line) and f"Gaussian {row}" in line, err
    assert not out.exists()


def test_cli_codes_and_evaluates_infinite_opacities_with_a_warning_line(quick, tmp_path, capsys):
    model = scene(60)
    model.opacity_logits[[1, 2]] = [np.inf, -np.inf]
    src, out = tmp_path / "spz.ply", tmp_path / "out.ralhe"
    write_ply(model, src)
    rc = main(["encode", str(src), str(out), "--preset", "fast", "--quiet", "--finetune-iters", "0", "--steps", "2",
               "--covariance-step", "0.2", "--codebook", "64"])
    err = capsys.readouterr().err
    assert rc == 0 and out.exists(), err
    lines = [l for l in err.splitlines() if l.startswith("ralhe: warning: ")]
    assert len(lines) == 1 and "clamped 2 infinite opacity logits" in lines[0], err
    rc = main(["eval", str(src), "--reference", str(src), "--views", "1", "--resolution", "16x16", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0 and "mean PSNR" in captured.out, captured.err
