"""The torch inverse RAHT against the numpy reference, its gradient (the forward transform,
since the transform is orthonormal), and the raht synthesis against a pyramid file decode."""
import numpy as np
import pytest
import torch

from ralhe_me.baselines.raht import build_plan, raht_forward_plan, raht_inverse_plan
from ralhe_me.nn.inverse_raht import InverseRaht


def cloud(n=3000, depth=7, seed=0):
    rng = np.random.default_rng(seed)
    pts = np.unique(rng.integers(0, 2 ** depth, size=(n, 3)), axis=0)
    return pts, depth


def test_matches_numpy_reference_and_gradient_is_the_forward_transform():
    pts, depth = cloud()
    plan = build_plan(pts, depth)
    inv = InverseRaht(plan)
    rng = np.random.default_rng(1)
    c = rng.normal(size=(len(pts), 5))
    ref = raht_inverse_plan(plan, c)
    out = inv(torch.as_tensor(c))
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(inv(torch.as_tensor(c, dtype=torch.float32)).numpy(), ref, atol=1e-4)
    x = torch.as_tensor(c).requires_grad_(True)
    g = rng.normal(size=ref.shape)
    (inv(x) * torch.as_tensor(g)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), raht_forward_plan(plan, g), atol=1e-12)
    with pytest.raises(ValueError, match="coefficients"):
        inv(torch.zeros(3, 2))


def test_single_point_and_batched_columns_are_independent():
    plan = build_plan(np.array([[3, 1, 2]]), 3)
    np.testing.assert_allclose(InverseRaht(plan)(torch.tensor([[2.0, -1.0]])).numpy(), [[2.0, -1.0]])
    pts, depth = cloud(500, 5, seed=2)
    plan = build_plan(pts, depth)
    inv = InverseRaht(plan)
    c = torch.randn(len(pts), 4, dtype=torch.float64)
    both = inv(c)
    for j in range(4):
        np.testing.assert_allclose(inv(c[:, j:j + 1]).numpy()[:, 0], both[:, j].numpy(), atol=0)


@pytest.mark.parametrize("transform", ["raht", "pyramid"])
def test_both_transforms_round_trip_through_a_file(transform):
    from ralhe_me.config import load_preset
    from ralhe_me.decoder import decode_bytes
    from ralhe_me.default_scene import make_default_scene
    from ralhe_me.encoder import encode_model

    cfg = load_preset("fast")
    cfg.architecture.transform = transform
    cfg.training.steps = 6
    cfg.covariance_codebook, cfg.covariance_step, cfg.importance_views = 16, 0.2, 0
    result = encode_model(make_default_scene(600, seed=4), cfg)
    assert result.header["architecture"]["transform"] == transform
    decoded = decode_bytes(result.data).model
    np.testing.assert_array_equal(decoded.sh, result.reconstruction.sh)
    np.testing.assert_array_equal(decoded.opacity_logits, result.reconstruction.opacity_logits)
