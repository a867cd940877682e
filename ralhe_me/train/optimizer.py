"""The training stages' optimizer: Adam with torch's fused CPU kernel where it exists.

Why: the latents are one float per voxel, channel and attribute (51 per voxel in SH3), and
torch's default Adam on the CPU runs its update as a chain of elementwise ops, each a pass over
all of them; the fused kernel makes one pass. At 483k voxels (24.6M latents) a step's update
took 50-56 ms by default and 19-20 ms fused (2 threads); the updates agree within float32
rounding (not bit for bit: the fused kernel orders its operations differently).
"""
from __future__ import annotations

import math
from typing import Iterable, Union

import torch

ParamsT = Union[Iterable[torch.Tensor], Iterable[dict]]


def fused_supported(params: list) -> bool:
    """Whether every parameter is a floating-point CPU tensor (the fused kernel's domain here)."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    return bool(tensors) and all(t.device.type == "cpu" and t.is_floating_point() for t in tensors)


def adam(params: ParamsT, **options) -> torch.optim.Adam:
    """``torch.optim.Adam(params, **options)``, fused when this torch has the CPU kernel (2.4 and
    later) and the parameters are floating-point CPU tensors; otherwise the default update."""
    params = list(params)
    if fused_supported(params) and "fused" not in options:
        try:
            return torch.optim.Adam(params, fused=True, **options)
        except (RuntimeError, TypeError, ValueError):  # a torch without the fused CPU kernel
            pass
    return torch.optim.Adam(params, **options)


def cosine_factor(fraction: float, floor: float = 0.0) -> float:
    """The learning-rate multiplier of a cosine schedule ``fraction`` (0 to 1) of the way through:
    1 at the start, ``floor`` at the end. Adam moves every parameter by about its learning rate
    per step, so a constant rate leaves the parameters jittering at that scale; the decay lets
    the last steps settle."""
    return floor + (1 - floor) * (0.5 * (1 + math.cos(math.pi * fraction)))
