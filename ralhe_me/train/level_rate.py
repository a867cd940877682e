"""The latents' rate under the static latent coder's model, for training (``rate_model: levels``).

Why: the static coder (entropy/static_latents.py) codes each (plane, attribute) stream with one
histogram per RAHT coefficient level, and on most files it is the coder the encoder keeps. The
schedule used to train against the ARM's rate instead, which charges the sparse fine levels 2-3x
their per-level entropy, so the latents were shaped for a coder that was then not used. Here
the rate is that of a per-(plane, attribute, level) model learnt with the latents: a
differentiable stand-in for the per-level histograms.

The model is a mixture of two zero-mean Laplaces, a narrow one for the group's zeros and a wide
one for the rest. A single Laplace per group collapsed at high lambda: once a level was mostly
zeros its scale shrank until a lone nonzero latent cost the 16-bit cap (a histogram charges it
log2 of its rarity), and the schedule zeroed whole levels (kacytran at 6e-3: 28.73 dB against
31.98 dB with the ARM's rate, at 40 kB). With the mixture such a latent costs the wide
component's bits plus log2 of the nonzero share.

Encoder side only; the ARMs are still fitted to the final latents (``refit_arm``) so that the
encoder can keep whichever coding is shorter.
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..decode.synthesis import AttributeSynthesis, sample_positions
from ..entropy.laplace import laplace_rate_bits
from .arm_rate import rate_bits

#: log-scale range of the level models (natural log of the Laplace scale b): below e^-4 a zero
#: costs under 1e-26 bits, above e^12 the latents are beyond any attribute's range
LOG_SCALE_MIN, LOG_SCALE_MAX = -4.0, 12.0
#: the narrow component's initial scale (a zero then costs 0.04 bits)
NARROW_INIT = 0.15


class LevelRateError(ValueError):
    """Latent planes that do not match the coefficient levels."""


class LevelRate(nn.Module):
    """Per (plane, attribute, coefficient level) two-Laplace mixtures; :meth:`bits` is the rate."""

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
        log_scales, logits = [], []
        for p, plane in enumerate(planes):
            if plane.dim() != 2 or plane.shape[1] != len(index):
                raise LevelRateError(f"latent plane {p} has shape {tuple(plane.shape)}, the levels "
                                     f"{len(index)} coefficients")
            x = plane.detach()
            a = x.shape[0]
            zero = (torch.round(x) == 0).to(torch.float32)
            zero_share = torch.zeros(a, num_levels).index_add_(1, index, zero) / counts
            nonzero = torch.zeros(a, num_levels).index_add_(1, index, 1.0 - zero).clamp(min=1)
            # the wide component's scale: the mean |x| of the group's nonzero latents (at least
            # 0.5); the narrow one's share: the group's share of zeros (within 0.05-0.95)
            wide = torch.zeros(a, num_levels).index_add_(1, index, x.abs() * (1.0 - zero)) / nonzero
            narrow = torch.full((a, num_levels), NARROW_INIT)
            log_scales.append(torch.stack([narrow.log(), wide.clamp(min=0.5).log()], dim=-1))
            share = zero_share.clamp(0.05, 0.95)
            logits.append(torch.log(share) - torch.log1p(-share))
        self.register_buffer("index", index, persistent=False)
        self.log_scale = nn.Parameter(torch.stack(log_scales))  # [P, A, L, 2]: narrow, wide
        self.mix_logit = nn.Parameter(torch.stack(logits))  # [P, A, L]: logit of the narrow share

    def bits(self, planes: List[Tensor],  # each [A, M]
             subsample: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:  # scalar
        """Estimated bits of all latents (unbiased: a random ``subsample`` of each plane)."""
        total = torch.zeros(())
        ln2 = math.log(2.0)
        for p, plane in enumerate(planes):
            positions, scale = sample_positions(plane.shape[1], subsample, generator)
            groups = self.index[positions]
            x = plane[:, positions]
            log_scale = self.log_scale[p][:, groups].clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)  # [A, S, 2]
            logit = self.mix_logit[p][:, groups]
            narrow = laplace_rate_bits(x, torch.zeros(()), log_scale[..., 0])
            wide = laplace_rate_bits(x, torch.zeros(()), log_scale[..., 1])
            log_p = torch.logaddexp(F.logsigmoid(logit) - narrow * ln2, F.logsigmoid(-logit) - wide * ln2)
            total = total + (-log_p / ln2).sum() * scale
        return total


def rate_parameters(synthesis: AttributeSynthesis, level_rate: Optional[LevelRate]) -> List[nn.Parameter]:
    """What a training step's rate term trains: ``level_rate``'s scales when given, else the ARMs'."""
    return list((synthesis.arm if level_rate is None else level_rate).parameters())


def training_rate(synthesis: AttributeSynthesis, level_rate: Optional[LevelRate], planes: List[Tensor],
                  subsample: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:  # scalar
    """The rate a training step minimizes: ``level_rate``'s bits when given, else the ARMs'."""
    if level_rate is None:
        return rate_bits(synthesis, planes, subsample=subsample, generator=generator)
    return level_rate.bits(planes, subsample=subsample, generator=generator)
