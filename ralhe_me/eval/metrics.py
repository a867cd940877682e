"""Image quality metrics for evaluation: PSNR and SSIM on [H, W, 3] images in [0, max_val].

SSIM follows the usual 3DGS evaluation code: an 11x11 Gaussian window (sigma 1.5), constants
(0.01 L)^2 and (0.03 L)^2, per-channel maps averaged over every pixel; by default the window is
zero-padded at the borders ("same", as the INRIA scripts do), or restricted to full windows
("valid", as scikit-image and the original Wang et al. code do).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


class MetricError(ValueError):
    """Images that cannot be compared (shapes, non-finite values); the message says what is wrong."""


def _to_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).cpu()
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _pair(a, b) -> tuple:
    a, b = _to_tensor(a), _to_tensor(b)
    if a.shape != b.shape:
        raise MetricError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3 or a.numel() == 0:
        raise MetricError(f"images must be [H, W] or [H, W, C] and non-empty, got {tuple(a.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise MetricError("images contain NaN or infinity")
    return a, b


def mse(a, b) -> float:
    a, b = _pair(a, b)
    return float(((a - b) ** 2).mean())


def psnr(a, b, max_val: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels (inf for identical images)."""
    err = mse(a, b)
    return math.inf if err == 0.0 else 10.0 * math.log10(max_val * max_val / err)


def mean_psnr(pairs: Iterable, max_val: float = 1.0) -> float:
    """Mean of the per-image PSNRs, as 3DGS papers report it."""
    values = [psnr(a, b, max_val) for a, b in pairs]
    if not values:
        raise MetricError("mean_psnr needs at least one image pair")
    return float(np.mean(values))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:  # [size]
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    w = torch.exp(-x * x / (2.0 * sigma * sigma))
    return w / w.sum()


def ssim(a, b, max_val: float = 1.0, padding: str = "same") -> float:
    """Structural similarity (mean over pixels and channels); 1.0 for identical images."""
    if padding not in ("same", "valid"):
        raise MetricError(f"padding must be 'same' or 'valid', got {padding!r}")
    a, b = _pair(a, b)
    if padding == "valid" and min(a.shape[0], a.shape[1]) < SSIM_WINDOW:
        raise MetricError(f"images smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} window")
    c = a.shape[2]
    x = a.permute(2, 0, 1)[None]  # [1, C, H, W]
    y = b.permute(2, 0, 1)[None]
    # The Gaussian window is separable: one row pass and one column pass over the five maps stacked
    # (22 taps a pixel instead of 121; float64 depthwise 11x11 convolutions measured 11x slower).
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [1, 5C, H, W]
    k = maps.shape[1]
    w1 = gaussian_window()
    pad = SSIM_WINDOW // 2 if padding == "same" else 0
    rows = F.conv2d(maps, w1.view(1, 1, 1, -1).expand(k, 1, 1, SSIM_WINDOW).contiguous(), padding=(0, pad), groups=k)
    both = F.conv2d(rows, w1.view(1, 1, -1, 1).expand(k, 1, SSIM_WINDOW, 1).contiguous(), padding=(pad, 0), groups=k)
    mu_x, mu_y, e_xx, e_yy, e_xy = both.split(c, dim=1)
    sxx = e_xx - mu_x * mu_x
    syy = e_yy - mu_y * mu_y
    sxy = e_xy - mu_x * mu_y
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2))
    return float(ssim_map.mean())
