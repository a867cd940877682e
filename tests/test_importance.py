"""Rendering importance: the random-sign estimate against the exact sum of squared blending
weights (one composite per Gaussian), and the normalization rules."""
import numpy as np
import pytest
import torch

from ralhe_me.encode.importance import ImportanceConfig, ImportanceError, blending_energy, rendering_importance
from ralhe_me.render import orbit_cameras
from ralhe_me.render.projection import project_gaussians
from ralhe_me.render.rasterizer import composite, model_tensors


def scene(n=120, seed=0):
    from test_finetune import tiny_scene

    return tiny_scene(n=n, seed=seed)


def exact_energy(model, cams):
    """sum_p b_i(p)^2 from composites with one-hot colors (slow, obviously right)."""
    out = np.zeros(len(model))
    tensors = model_tensors(model)
    for cam in cams:
        proj = project_gaussians(*tensors, cam)
        k = proj.index.shape[0]
        for j in range(k):
            colors = torch.zeros(k, 3)
            colors[j, 0] = 1.0
            img, _ = composite(proj, colors, cam, backend="torch")
            out[int(proj.index[j])] += float((img[..., 0] ** 2).sum())
    return out


def test_estimate_matches_exact_energy():
    model = scene()
    cams = orbit_cameras(model.means, 2, 20, 20)
    exact = exact_energy(model, cams)
    est = blending_energy(model, cams, probes=150, seed=0)
    assert np.corrcoef(exact, est)[0, 1] > 0.99
    assert est.sum() == pytest.approx(exact.sum(), rel=0.03)
    # a Gaussian moved far behind the camera gets nothing
    far = model.copy()
    far.means[0] = cams[0].center + 100 * (cams[0].center - far.means.mean(axis=0))
    assert blending_energy(far, cams[:1], probes=2)[0] == 0.0


def test_weights_have_mean_one_and_a_floor():
    model = scene(200)
    w = rendering_importance(model, ImportanceConfig(views=4, resolution=32, floor=0.05))
    assert w.shape == (len(model),) and w.mean() == pytest.approx(1.0)
    assert w.min() >= 0.05 / 1.05 - 1e-12 and np.all(np.isfinite(w))
    assert w.max() > 3 * w.min()  # not flat: the views see the Gaussians unequally
    assert rendering_importance(model, ImportanceConfig(views=0)) is None
    with pytest.raises(ImportanceError):
        ImportanceConfig(probes=0)
    with pytest.raises(ImportanceError, match="camera"):
        blending_energy(model, [])
