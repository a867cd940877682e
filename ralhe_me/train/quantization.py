"""Quantization-aware training: the two stand-ins for rounding the latents.

The file holds integer latents, but rounding has no gradient. Both training stages (the
attribute-domain schedule and the image-domain refinement) use these, so they live apart
from either stage.
"""
from __future__ import annotations

import torch
from torch import Tensor


def ste_round(x: Tensor) -> Tensor:
    """Rounded values forward, identity gradient backward (straight-through)."""
    return x + (torch.round(x) - x).detach()


def noisy(x: Tensor, generator: torch.Generator) -> Tensor:
    """``x`` plus uniform noise in [-0.5, 0.5): the differentiable proxy of rounding whose
    error has the same distribution."""
    return x + (torch.rand(x.shape, generator=generator) - 0.5)
