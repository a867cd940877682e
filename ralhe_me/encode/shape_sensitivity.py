"""How much each Gaussian's shape errors cost in the rendered images: per-point covariance steps.

The covariance residual is quantized with one log-scale step and one rotation step. A shape
parameter ``theta_ik`` (3 log-scales, then the 3 components of a Rodrigues vector composed onto
the rotation, as the decoder composes its residual) with quantization error ``d_ik`` moves pixel
``p`` by ``d_ik dI(p)/dtheta_ik``; for independent errors of variance ``(g_i s_k)^2 / 12`` the
image MSE is ``sum_i g_i^2 w_i / 12`` with ``w_i = sum_k s_k^2 F_ik`` and
``F_ik = sum_p |dI(p)/dtheta_ik|^2``. For entropy-coded uniform quantization the optimal per-point
factor is ``g_i ~ 1 / sqrt(w_i)``: the covariance section stores ``e_i = round(-log2(w_i / mean w))``
and the decoder multiplies point ``i``'s steps by ``2^(e_i / 2)``.

``F`` is estimated without per-pixel Jacobians (as ``importance.py`` does for colors): render
with a random sign image ``r``, ``G_ik = d/dtheta_ik sum_p r(p) . I(p)``; ``E[G_ik^2] = F_ik``.

Steps grow at most ``2^(max_exponent / 2)``: the estimate is linear and a shape error is not
small where it is large (a Gaussian grown 16x shows). On the donut (depth 14, base step 0.025)
letting steps grow 16x lost 2.3 to 15.5 dB for 2-4% fewer bytes; with at most sqrt(2) the
whole codec gave +0.44 dB at equal size.

Encoder only (it imports the renderer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..gaussians import GaussianModel
from ..geometry.covariance_code import STEP_EXPONENT_LIMIT, ResidualSteps, compose_rotation


class ShapeSensitivityError(ValueError):
    """Bad request for shape sensitivities (no views, empty model, bad limits)."""


@dataclass(frozen=True)
class ShapeSensitivityConfig:
    """Views the sensitivities are measured from (random orbit, not the evaluation spiral)."""

    views: int = 48
    resolution: int = 400
    probes: int = 1  # random-sign images per view
    min_exponent: int = -8  # steps at least 1/16 of the section's
    max_exponent: int = 1  # and at most sqrt(2) times (see the module docstring)
    seed: int = 1

    def __post_init__(self) -> None:
        if self.views < 1 or self.probes < 1 or self.resolution < 8:
            raise ShapeSensitivityError(f"need views >= 1, probes >= 1, resolution >= 8; got {self}")
        if not -STEP_EXPONENT_LIMIT <= self.min_exponent <= self.max_exponent <= STEP_EXPONENT_LIMIT:
            raise ShapeSensitivityError(f"need -{STEP_EXPONENT_LIMIT} <= min_exponent <= max_exponent <= "
                                        f"{STEP_EXPONENT_LIMIT}; got {self.min_exponent}, {self.max_exponent}")


def shape_fisher(model: GaussianModel, cameras: Sequence, probes: int = 1,
                 seed: int = 0) -> np.ndarray:  # -> [N, 6] float64 >= 0
    """Estimate of ``sum_views sum_p |dI(p)/dtheta_ik|^2`` per Gaussian for its 3 log-scales and the
    3 components of a Rodrigues vector (white background, as the evaluation renders)."""
    from ..render.rasterizer import model_tensors, render

    if len(model) == 0:
        raise ShapeSensitivityError("the model has no Gaussians")
    if len(cameras) == 0:
        raise ShapeSensitivityError("need at least one camera")
    means, quats, log_scales, opacity_logits, sh = model_tensors(model, torch.float32)
    quats = quats / quats.norm(dim=1, keepdim=True).clamp_min(1e-30)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(model), 6, dtype=torch.float64)
    for cam in cameras:
        for _ in range(probes):
            d_scales = torch.zeros_like(log_scales, requires_grad=True)
            t = torch.zeros(len(model), 3, requires_grad=True)
            image = render(means, compose_rotation(quats, t), log_scales + d_scales, opacity_logits, sh, cam)
            signs = torch.randint(0, 2, image.shape, generator=gen).to(image.dtype) * 2 - 1
            g_scales, g_t = torch.autograd.grad((signs * image).sum(), [d_scales, t])
            total += torch.cat([g_scales, g_t], dim=1).to(torch.float64) ** 2
    return (total / probes).numpy()


def step_exponents(fisher: np.ndarray,  # [N, 6] >= 0
                   steps: ResidualSteps, min_exponent: int = -8,
                   max_exponent: int = 1) -> np.ndarray:  # -> [N] int64
    """``e_i = round(-log2(w_i / mean w))`` clipped to [min_exponent, max_exponent], with
    ``w_i = sum_k s_k^2 F_ik`` (a component whose step is 0 is not coded and counts for nothing)."""
    f = np.asarray(fisher, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != 6 or not np.all(np.isfinite(f)) or (f.size and f.min() < 0):
        raise ShapeSensitivityError(f"fisher must be [N, 6], finite and >= 0, got {f.shape}")
    s2 = np.array([steps.log_scale] * 3 + [steps.quat] * 3, dtype=np.float64) ** 2
    w = f @ s2
    if len(w) == 0 or not w.mean() > 0:
        return np.zeros(len(w), np.int64)
    ratio = np.maximum(w / w.mean(), 2.0 ** -(STEP_EXPONENT_LIMIT + 1))
    return np.clip(np.rint(-np.log2(ratio)), min_exponent, max_exponent).astype(np.int64)


def shape_step_exponents(model: GaussianModel, steps: ResidualSteps,
                         config: ShapeSensitivityConfig = ShapeSensitivityConfig(),
                         progress: bool = False) -> np.ndarray:  # -> [N] int64
    """Per-Gaussian step exponents of the covariance residual (see the module docstring)."""
    from ..train.finetune import sample_orbit_cameras

    cams = sample_orbit_cameras(model.means, config.views, config.resolution, config.resolution, seed=config.seed)
    if progress:
        from tqdm import tqdm

        cams = tqdm(cams, desc="shape sensitivity", leave=False)
    fisher = shape_fisher(model, list(cams), config.probes, config.seed)
    return step_exponents(fisher, steps, config.min_exponent, config.max_exponent)

