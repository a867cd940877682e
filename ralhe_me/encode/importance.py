"""How much each Gaussian's attribute errors cost in the rendered images.

A Gaussian i reaches pixel p with blending weight ``b_i(p) = T_i(p) alpha_i(p)``, so a color
error ``e_i`` moves the pixel by ``b_i(p) e_i``. For independent errors (quantization noise)
the expected image MSE is ``sum_i e_i^2 sum_p b_i(p)^2``: the per-Gaussian distortion weight
is ``s_i = sum_p b_i(p)^2`` over the views a decoder will be watched from. Gaussians hidden
behind others, far outside the views or nearly transparent get ``s_i ~ 0`` and the codec may
spend almost no bits on them; the attribute-domain MSE the paper trains on treats them all alike.

``s_i`` is estimated without per-pixel bookkeeping (Hutchinson's trick): composite random
signs ``r_i`` as colors, take the gradient ``g_i`` of ``1/2 sum_p |image_p|^2`` w.r.t. the
colors; ``E[r_i g_i] = sum_p b_i(p)^2`` because the cross terms have zero mean. Each view gives
three independent probes (one per color channel); ``probes`` repeats them.

Encoder only (it imports the renderer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..gaussians import GaussianModel


class ImportanceError(ValueError):
    """Bad request for rendering importance (no views, empty model, bad sizes)."""


@dataclass(frozen=True)
class ImportanceConfig:
    """Views the importance is measured from (random orbit, not the evaluation spiral)."""

    views: int = 24  # 0: importance off (every Gaussian weighs the same)
    resolution: int = 256
    probes: int = 2  # random-sign probes per view (each gives 3 samples, one per channel)
    floor: float = 0.02  # weights are mean-normalized, then raised to at least this
    seed: int = 1

    def __post_init__(self) -> None:
        if self.views < 0 or self.probes < 1 or self.resolution < 8:
            raise ImportanceError(f"need views >= 0, probes >= 1, resolution >= 8; got {self}")
        if not 0.0 <= self.floor <= 1.0:
            raise ImportanceError(f"floor must be in [0, 1], got {self.floor}")


def _probe_view(model_tensors, camera, probes: int, generator: torch.Generator) -> torch.Tensor:  # [N]
    """Sum over ``probes`` of the three channels' estimates r_i g_i for one view."""
    from ..render.projection import project_gaussians
    from ..render.rasterizer import composite

    means, quats, log_scales, opacity_logits, sh = model_tensors
    n = means.shape[0]
    with torch.no_grad():
        proj = project_gaussians(means, quats, log_scales, opacity_logits, sh, camera)
    out = torch.zeros(n, dtype=torch.float64)
    m = proj.index.shape[0]
    if m == 0:
        return out
    for _ in range(probes):
        signs = torch.randint(0, 2, (m, 3), generator=generator).to(means.dtype) * 2 - 1
        colors = signs.clone().requires_grad_(True)
        image, _ = composite(proj, colors, camera)
        (0.5 * (image * image).sum()).backward()
        est = (signs * colors.grad).sum(dim=1).to(torch.float64)  # three probes
        out.index_add_(0, proj.index, est)
    return out


def blending_energy(model: GaussianModel, cameras: Sequence, probes: int = 2,
                    seed: int = 0) -> np.ndarray:  # -> [N] float64
    """Estimate of ``sum_views sum_p b_i(p)^2`` per Gaussian (unnormalized, may dip below 0)."""
    from ..render.rasterizer import model_tensors

    if len(model) == 0:
        raise ImportanceError("the model has no Gaussians")
    if len(cameras) == 0:
        raise ImportanceError("need at least one camera")
    tensors = model_tensors(model, torch.float32)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(model), dtype=torch.float64)
    for cam in cameras:
        total += _probe_view(tensors, cam, probes, gen)
    return (total / (3.0 * probes)).numpy()


def rendering_importance(model: GaussianModel, config: ImportanceConfig = ImportanceConfig(),
                         progress: bool = False) -> Optional[np.ndarray]:  # -> [N] float64, mean 1
    """Per-Gaussian distortion weights with mean 1 (None when ``config.views == 0``).

    The floor keeps every Gaussian's attributes from being thrown away entirely: views the
    estimate never saw (e.g. from closer) may still show it.
    """
    if config.views == 0:
        return None
    from ..train.finetune import sample_orbit_cameras

    cams = sample_orbit_cameras(model.means, config.views, config.resolution, config.resolution, seed=config.seed)
    if progress:
        from tqdm import tqdm

        cams = tqdm(cams, desc="importance", leave=False)
    energy = np.maximum(blending_energy(model, list(cams), config.probes, config.seed), 0.0)
    mean = energy.mean()
    if not mean > 0:
        return np.ones(len(model))
    weight = np.maximum(energy / mean, config.floor)
    return weight / weight.mean()
