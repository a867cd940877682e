"""PSNR and SSIM against known values and a slow per-pixel SSIM."""
import math

import numpy as np
import pytest
import torch

from ralhe_me.eval.metrics import MetricError, gaussian_window, mean_psnr, mse, psnr, ssim


def test_psnr_identical_and_known_mse():
    rng = np.random.default_rng(0)
    a = rng.random((12, 10, 3)).astype(np.float32)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[..., 0] += 0.1  # MSE = 0.01 / 3
    assert psnr(a, b) == pytest.approx(10 * math.log10(3 / 0.01), abs=1e-5)
    assert psnr(np.zeros((4, 4, 3)), np.full((4, 4, 3), 0.1)) == pytest.approx(20.0, abs=1e-9)
    assert psnr(np.zeros((4, 4, 3)), np.full((4, 4, 3), 25.5), max_val=255.0) == pytest.approx(20.0, abs=1e-9)
    # tensors and arrays give the same value
    assert psnr(torch.as_tensor(a), torch.as_tensor(b)) == pytest.approx(psnr(a, b), abs=1e-9)
    assert mse(a, b) == pytest.approx(0.01 / 3, rel=1e-5)
    assert mean_psnr([(np.zeros((2, 2, 3)), np.full((2, 2, 3), 0.1)),
                      (np.zeros((2, 2, 3)), np.full((2, 2, 3), 0.01))]) == pytest.approx(30.0)


def slow_ssim(a, b, padding):
    """Windows gathered pixel by pixel (zeros outside the image for 'same')."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    g = gaussian_window().numpy()
    w = np.outer(g, g)
    r = 5
    h, wd, c = a.shape
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    if padding == "same":
        ap = np.pad(a, ((r, r), (r, r), (0, 0)))
        bp = np.pad(b, ((r, r), (r, r), (0, 0)))
        centers = [(i + r, j + r) for i in range(h) for j in range(wd)]
    else:
        ap, bp = a, b
        centers = [(i, j) for i in range(r, h - r) for j in range(r, wd - r)]
    vals = []
    for ch in range(c):
        for i, j in centers:
            x = ap[i - r:i + r + 1, j - r:j + r + 1, ch]
            y = bp[i - r:i + r + 1, j - r:j + r + 1, ch]
            mx, my = (w * x).sum(), (w * y).sum()
            vx = (w * x * x).sum() - mx * mx
            vy = (w * y * y).sum() - my * my
            cxy = (w * x * y).sum() - mx * my
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_ssim_matches_slow_reference(padding):
    rng = np.random.default_rng(1)
    a = rng.random((19, 23, 3))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    expect = slow_ssim(a, b, padding)
    assert ssim(a, b, padding=padding) == pytest.approx(expect, abs=1e-12)
    assert 0.2 < expect < 0.99


def test_ssim_identical_is_one_and_window_is_normalized():
    a = np.random.default_rng(2).random((16, 16, 3))
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, a, padding="valid") == pytest.approx(1.0, abs=1e-12)
    g = gaussian_window()
    assert g.sum().item() == pytest.approx(1.0) and g.shape == (11,)
    assert g[5] / g[4] == pytest.approx(math.exp(1 / (2 * 1.5 ** 2)))
    # a contrast change lowers SSIM, more for a stronger change
    assert ssim(a, 0.5 * a + 0.25) > ssim(a, 0.2 * a + 0.4)


def test_bad_images_raise_named_errors():
    with pytest.raises(MetricError, match="shape"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(MetricError, match="NaN"):
        ssim(np.full((12, 12, 3), np.nan), np.zeros((12, 12, 3)))
    with pytest.raises(MetricError, match="padding"):
        ssim(np.zeros((12, 12, 3)), np.zeros((12, 12, 3)), padding="reflect")
    with pytest.raises(MetricError, match="window"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), padding="valid")
    with pytest.raises(MetricError):
        mean_psnr([])
