"""The latents' rate under the static latent coder's model, for training (``rate_model: levels``).

Why: the static coder (entropy/static_latents.py) codes each (plane, attribute) stream with one
histogram per RAHT coefficient level, and on most files it is the coder the encoder keeps. The
schedule used to train against the ARM's rate instead, which charges the sparse fine levels 2-3x
their per-level entropy, so the latents were shaped for a coder that was then not used. Here
the rate is that of a zero-mean Laplace per (plane, attribute, level), its scales learnt with
the latents: a differentiable stand-in for the per-level histograms.

Encoder side only; the ARMs are still fitted to the final latents (``refit_arm``) so that the
encoder can keep whichever coding is shorter.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..decode.synthesis import AttributeSynthesis, sample_positions
from ..entropy.laplace import laplace_rate_bits
from .arm_rate import rate_bits

#: log-scale range of the level models (natural log of the Laplace scale b): below e^-4 a zero
#: costs under 1e-26 bits, above e^12 the latents are beyond any attribute's range
LOG_SCALE_MIN, LOG_SCALE_MAX = -4.0, 12.0


class LevelRateError(ValueError):
    """Latent planes that do not match the coefficient levels."""


class LevelRate(nn.Module):
    """Per (plane, attribute, coefficient level) Laplace scales; :meth:`bits` is the rate."""

    def __init__(self, coefficient_levels: np.ndarray,  # [M] octree level of each RAHT coefficient
                 planes: List[Tensor]) -> None:  # each [A, M]: the initial latents
        super().__init__()
        levels = np.asarray(coefficient_levels)
        if levels.ndim != 1 or not planes:
            raise LevelRateError("need one level per coefficient and at least one latent plane")
        _, index = np.unique(levels, return_inverse=True)
        index = torch.as_tensor(index.reshape(-1), dtype=torch.int64)
        num_levels = int(index.max()) + 1 if len(index) else 0
        counts = torch.bincount(index, minlength=num_levels).clamp(min=1).to(torch.float32)
        init = []
        for p, plane in enumerate(planes):
            if plane.dim() != 2 or plane.shape[1] != len(index):
                raise LevelRateError(f"latent plane {p} has shape {tuple(plane.shape)}, the levels "
                                     f"{len(index)} coefficients")
            # the Laplace scale's maximum-likelihood estimate: the mean |x| of each group
            mean_abs = torch.zeros(plane.shape[0], num_levels).index_add_(1, index, plane.detach().abs()) / counts
            init.append(torch.log(mean_abs.clamp(min=float(np.exp(LOG_SCALE_MIN)))))
        self.register_buffer("index", index, persistent=False)
        self.log_scale = nn.Parameter(torch.stack(init))  # [P, A, L]

    def bits(self, planes: List[Tensor],  # each [A, M]
             subsample: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:  # scalar
        """Estimated bits of all latents (unbiased: a random ``subsample`` of each plane)."""
        total = torch.zeros(())
        for p, plane in enumerate(planes):
            positions, scale = sample_positions(plane.shape[1], subsample, generator)
            log_scale = self.log_scale[p][:, self.index[positions]].clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
            total = total + laplace_rate_bits(plane[:, positions], torch.zeros(()), log_scale).sum() * scale
        return total


def training_rate(synthesis: AttributeSynthesis, level_rate: Optional[LevelRate], planes: List[Tensor],
                  subsample: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:  # scalar
    """The rate a training step minimizes: ``level_rate``'s bits when given, else the ARMs'."""
    if level_rate is None:
        return rate_bits(synthesis, planes, subsample=subsample, generator=generator)
    return level_rate.bits(planes, subsample=subsample, generator=generator)
