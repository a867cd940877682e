"""Quantization-aware training: the two stand-ins for rounding the latents.

The file holds integer latents, but rounding has no gradient. Both training stages (the
attribute-domain schedule and the image-domain refinement) use these, so they live apart
from either stage.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..native import load_native, native_choice

NATIVE_API_VERSION = 1  # the interface of _uniform_noise_cpu this module calls (its API_VERSION)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


class _StraightThroughRound(torch.autograd.Function):
    """round(x) forward, the incoming gradient unchanged backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def ste_round(x: Tensor) -> Tensor:
    """Rounded values forward, identity gradient backward (straight-through), in one pass over
    ``x`` (``x + (round(x) - x).detach()`` takes three: 30 ms of an image-domain step at 483k
    voxels)."""
    return _StraightThroughRound.apply(x)


def native_module() -> Optional[ModuleType]:
    """The ``_uniform_noise_cpu`` extension, or None when it is not built (or stale)."""
    return load_native("ralhe_me.train._uniform_noise_cpu", NATIVE_API_VERSION)


def counter_uniform(seed: int, count: int) -> np.ndarray:  # [count] float32
    """The noise of elements 0..count-1 for ``seed``: SplitMix64's output function of
    seed + (i + 1) * golden ratio, top 24 bits over 2**24, less 1/2 (train/csrc/uniform_noise.cpp
    computes the same numbers; this is its reference and its fallback)."""
    z = np.uint64(seed) + (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)  # wraps mod 2**64
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return ((z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24) - np.float32(0.5))


class _Noisy(torch.autograd.Function):
    """``x`` plus the counter-based noise of ``seed`` (natively when ``module``); identity gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, seed: int, module: Optional[ModuleType]) -> Tensor:
        values = x.detach().contiguous()
        if module is not None:
            return torch.from_numpy(module.add_uniform_noise(values.numpy(), seed, torch.get_num_threads()))
        return values + torch.from_numpy(counter_uniform(seed, values.numel()).reshape(values.shape))

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None


def noisy(x: Tensor, generator: torch.Generator, native: Optional[bool] = None) -> Tensor:
    """``x`` plus uniform noise in [-1/2, 1/2): the differentiable proxy of rounding whose error
    has the same distribution. The noise is a counter-based hash of one seed drawn from
    ``generator`` and each element's index, computed natively where the extension is built
    (native=None; True: required; False: numpy), with the same numbers either way; tensors other
    than float32 on the CPU take torch's generator."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        if native:
            raise ValueError("the native uniform noise takes float32 CPU tensors")
        return x + (torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5)
    module = native_choice(native, native_module, "the native uniform noise (ralhe_me.train._uniform_noise_cpu)")
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    return _Noisy.apply(x, seed, module)
