"""Per-Gaussian covariance steps from rendering sensitivity: the probe estimate against the exact
Jacobian, the exponent rule, and a whole encode whose file decodes to the encoder's reconstruction
in Python and in the native decoder."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import small_codec_config
from ralhe_me.default_scene import make_default_scene
from ralhe_me.encode.shape_sensitivity import (ShapeSensitivityConfig, ShapeSensitivityError, shape_fisher,
                                               step_exponents)
from ralhe_me.gaussians import GaussianModel
from ralhe_me.geometry.covariance_code import ResidualSteps, compose_rotation


def tiny_model(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return GaussianModel(means=rng.normal(0, 0.3, (n, 3)), log_scales=rng.normal(-2.0, 0.4, (n, 3)),
                         quats=rng.normal(size=(n, 4)), opacity_logits=rng.normal(1.0, 0.5, n),
                         sh=rng.uniform(-0.5, 0.5, (n, 1, 3)))


def exact_fisher(model, camera):  # [N, 6]: sum_p |dI(p)/dtheta|^2 from the full Jacobian
    from ralhe_me.render.rasterizer import model_tensors, render

    means, quats, log_scales, opacity_logits, sh = model_tensors(model, torch.float32)
    quats = quats / quats.norm(dim=1, keepdim=True)
    n = len(model)

    def image(theta):  # theta [N, 6] -> flat image
        return render(means, compose_rotation(quats, theta[:, 3:]), log_scales + theta[:, :3], opacity_logits, sh,
                      camera).reshape(-1)

    jac = torch.autograd.functional.jacobian(image, torch.zeros(n, 6))  # [P, N, 6]
    return (jac.double() ** 2).sum(dim=0).numpy()


def test_probe_estimate_converges_to_the_exact_jacobian():
    from ralhe_me.train.finetune import sample_orbit_cameras

    model = tiny_model()
    cam = sample_orbit_cameras(model.means, 1, 20, 20, seed=2)[0]
    exact = exact_fisher(model, cam)
    assert exact.max() > 0
    est = shape_fisher(model, [cam], probes=600, seed=3)
    big = exact > 1e-3 * exact.max()
    assert big.sum() >= 12  # most parameters show in this view
    # Rademacher probes: each entry's relative standard deviation is at most sqrt(2 / probes) = 5.8%
    np.testing.assert_allclose(est[big], exact[big], rtol=0.3)
    assert np.all(est[~big] <= 2e-3 * exact.max())
    # views add up
    two = shape_fisher(model, [cam, cam], probes=300, seed=4)
    np.testing.assert_allclose(two[big], 2 * exact[big], rtol=0.3)


def test_step_exponents_follow_the_weights_and_clip():
    steps = ResidualSteps(0.1, 0.02)
    w = np.array([1.0, 4.0, 0.25, 1e-9, 1e6, 16.0])  # per-point weights in log-scale units
    fisher = np.zeros((6, 6))
    fisher[:, 0] = w / steps.log_scale ** 2
    # e = round(-log2(w / mean w)); mean w = (1 + 4 + ...) / 6
    expect = np.clip(np.rint(-np.log2(np.maximum(w / w.mean(), 2.0 ** -9))), -8, 1)
    assert np.array_equal(step_exponents(fisher, steps), expect)
    assert step_exponents(fisher, steps).max() == 1 and step_exponents(fisher, steps).min() == -3
    assert np.array_equal(step_exponents(fisher, steps, -2, 5), np.clip(np.rint(-np.log2(np.maximum(
        w / w.mean(), 2.0 ** -9))), -2, 5))
    assert step_exponents(fisher, steps, -2, 5).min() == -2 and step_exponents(fisher, steps, -2, 5).max() == 5
    # only the two steps' ratio matters, not the base step
    rng = np.random.default_rng(0)
    f = rng.lognormal(0, 3, (500, 6))
    assert np.array_equal(step_exponents(f, ResidualSteps(0.1, 0.02)), step_exponents(f, ResidualSteps(0.025, 0.005)))
    assert not np.array_equal(step_exponents(f, ResidualSteps(0.1, 0.02)), step_exponents(f, ResidualSteps(0.1, 0.1)))
    # the rotation components count with the rotation step, and a zero step counts for nothing
    rot = np.zeros((6, 6))
    rot[:, 4] = w / steps.quat ** 2
    assert np.array_equal(step_exponents(rot, steps), expect)
    assert np.array_equal(step_exponents(rot, ResidualSteps(0.1, 0.0)), np.zeros(6))
    with pytest.raises(ShapeSensitivityError, match="finite"):
        step_exponents(-fisher, steps)
    with pytest.raises(ShapeSensitivityError, match=r"\[N, 6\]"):
        step_exponents(fisher[:, :3], steps)
    with pytest.raises(ShapeSensitivityError, match="min_exponent"):
        ShapeSensitivityConfig(min_exponent=2, max_exponent=1)
    with pytest.raises(ShapeSensitivityError, match="no Gaussians"):
        shape_fisher(tiny_model(0), [None])


def test_encode_with_shape_steps_decodes_to_the_reconstruction():
    """The section holds finer and coarser points, and the decoder gets exactly the encoder's
    reconstruction (the native decoders: test_native_decoder.py's "shape_steps" file)."""
    from ralhe_me.decode.bitstream import unpack
    from ralhe_me.decode.decoder import decode_bytes
    from ralhe_me.encode.encoder import EncodeError, encode_model
    from ralhe_me.geometry.covariance_code import decode_shapes_code

    config = small_codec_config()
    config.covariance_step = 0.1
    model = make_default_scene(1000, seed=2)
    plain = encode_model(model, config)
    config = dataclasses.replace(config, shape_sensitivity_views=4, shape_sensitivity_resolution=64)
    result = encode_model(model, config)
    section = unpack(result.data).section("covariance")
    code = decode_shapes_code(section)
    assert section[1] == 2 and code.step_exponents is not None
    assert code.step_exponents.min() < 0 and code.step_exponents.max() == 1  # finer and coarser points
    decoded = decode_bytes(result.data, engine="python").model
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(decoded, name), getattr(result.reconstruction, name), err_msg=name)
    assert not np.array_equal(decoded.log_scales, decode_bytes(plain.data, engine="python").model.log_scales)
    with pytest.raises(EncodeError, match="choose one"):
        encode_model(model, dataclasses.replace(config, covariance_gain=True, importance_views=2))


def test_shape_steps_start_at_their_tier_and_the_step_rule_uses_them():
    from ralhe_me.encode.encoder import code_covariance

    model = make_default_scene(800, seed=5)
    config = small_codec_config()
    config.covariance_step = 0.1
    config.geometry_tier = 2
    config.shape_sensitivity_resolution = 48
    assert code_covariance(model, config).step_exponents is None  # views 0: off
    config.shape_sensitivity_views = 2
    on = code_covariance(model, config)
    assert on.step_exponents is not None and on.steps.log_scale == np.float32(0.1)
    config.shape_sensitivity_min_tier = 3
    assert code_covariance(model, config).step_exponents is None
    config.shape_sensitivity_min_tier = 2
    config.covariance_step = 0.0  # plain VQ: nothing to scale
    assert code_covariance(model, config).step_exponents is None
    # the step rule's file carries the same exponents (they do not depend on the base step)
    config.covariance_step = None
    ruled = code_covariance(model, config)
    assert ruled.step_exponents is not None and np.array_equal(ruled.step_exponents, on.step_exponents)
