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
from types import ModuleType
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..decode.synthesis import AttributeSynthesis, sample_positions
from ..entropy.laplace import MAX_RATE_BITS, laplace_rate_bits
from ..native import load_native, native_choice
from .arm_rate import rate_bits
from .quantization import noisy

NATIVE_API_VERSION = 1  # the interface of _level_rate_cpu this module calls (its API_VERSION)
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

    def sample(self, planes: List[Tensor],  # each [A, M]
               subsample: float, generator: Optional[torch.Generator],
               noise: bool) -> List[Tuple[Tensor, float, Optional[Tensor]]]:
        """Per plane: the sampled positions [S] (sorted: the same sum, fewer cache misses), the
        factor that makes their bits an unbiased estimate of the plane's, and the uniform noise
        [A, S] in [-1/2, 1/2) added to them when ``noise`` (drawn for the samples only)."""
        out = []
        for plane in planes:
            positions, scale = sample_positions(plane.shape[1], subsample, generator)
            positions = torch.sort(positions).values
            u = torch.rand((plane.shape[0], len(positions)), generator=generator) - 0.5 if noise else None
            out.append((positions, scale, u))
        return out

    def bits(self, planes: List[Tensor],  # each [A, M]
             subsample: float = 1.0, generator: Optional[torch.Generator] = None, noise: bool = False,
             native: Optional[bool] = None) -> Tensor:  # scalar
        """Estimated bits of all latents (unbiased: a random ``subsample`` of each plane; with
        ``noise``, of the latents plus uniform noise, the rounding's stand-in). Evaluated by the
        native kernel (train/csrc/level_rate.cpp) where it is built and the tensors are float32
        (native=None), or by :meth:`bits_reference` (native=False; True: the kernel or an error)."""
        samples = self.sample(planes, subsample, generator, noise)
        module = native_choice(native, native_module, "the native level rate (ralhe_me.train._level_rate_cpu)")
        usable = all(p.dtype == torch.float32 and p.device.type == "cpu" for p in [*planes, *self.parameters()])
        if module is None or not usable:
            if native:
                raise ValueError("the native level rate takes float32 CPU latents and scales")
            return self.bits_reference(planes, samples)
        if not torch.is_grad_enabled():
            return torch.tensor(float(_native_bits(module, self, planes, samples, False, False)[0].sum()))
        return _LevelRateBits.apply(module, self, samples, self.log_scale, self.mix_logit, *planes)

    def bits_reference(self, planes: List[Tensor],  # each [A, M]
                       samples: List[Tuple[Tensor, float, Optional[Tensor]]]) -> Tensor:  # scalar
        """The bits of ``samples`` (from :meth:`sample`) as torch ops: the kernel's reference."""
        total = torch.zeros(())
        ln2 = math.log(2.0)
        for p, (plane, (positions, scale, u)) in enumerate(zip(planes, samples)):
            groups = self.index[positions]
            x = plane[:, positions] if u is None else plane[:, positions] + u
            log_scale = self.log_scale[p][:, groups].clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)  # [A, S, 2]
            logit = self.mix_logit[p][:, groups]
            narrow = laplace_rate_bits(x, torch.zeros(()), log_scale[..., 0])
            wide = laplace_rate_bits(x, torch.zeros(()), log_scale[..., 1])
            log_p = torch.logaddexp(F.logsigmoid(logit) - narrow * ln2, F.logsigmoid(-logit) - wide * ln2)
            total = total + (-log_p / ln2).sum() * scale
        return total


def native_module() -> Optional[ModuleType]:
    """The ``_level_rate_cpu`` extension, or None when it is not built (or stale)."""
    return load_native("ralhe_me.train._level_rate_cpu", NATIVE_API_VERSION)


def _native_bits(module: ModuleType, model: LevelRate, planes: List[Tensor],
                 samples: List[Tuple[Tensor, float, Optional[Tensor]]], grad_values: bool, grad_params: bool) -> tuple:
    """The kernel's (bits [P, A], grad planes or None, grad log_scale or None, grad mix_logit or None)."""
    noise = [u.contiguous().numpy() for _, _, u in samples] if samples[0][2] is not None else []
    return module.level_rate(
        [p.detach().contiguous().numpy() for p in planes], [pos.numpy() for pos, _, _ in samples], noise,
        [float(scale) for _, scale, _ in samples], model.index.numpy(), model.log_scale.detach().contiguous().numpy(),
        model.mix_logit.detach().contiguous().numpy(), LOG_SCALE_MIN, LOG_SCALE_MAX, float(MAX_RATE_BITS),
        grad_values, grad_params, torch.get_num_threads())


class _LevelRateBits(torch.autograd.Function):
    """The sampled bits of ``planes``; the gradients are computed in the forward call (the loss
    is a scalar) and scaled by the incoming gradient in backward."""

    @staticmethod
    def forward(ctx, module, model: LevelRate, samples, log_scale: Tensor, mix_logit: Tensor, *planes: Tensor) -> Tensor:
        grad_params = bool(ctx.needs_input_grad[3] or ctx.needs_input_grad[4])
        bits, gv, gls, glogit = _native_bits(module, model, planes, samples, any(ctx.needs_input_grad[5:]), grad_params)
        ctx.grads = [None if gls is None else torch.from_numpy(gls), None if glogit is None else torch.from_numpy(glogit)]
        ctx.grads += [None] * len(planes) if gv is None else [torch.from_numpy(g) for g in gv]
        return torch.tensor(float(bits.sum()), dtype=planes[0].dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        unit = bool(grad == 1)  # the usual case: no multiply of [A, M] gradients
        grads = [g if g is None or unit else g * grad for g in ctx.grads]
        return (None, None, None, *grads)


def rate_parameters(synthesis: AttributeSynthesis, level_rate: Optional[LevelRate]) -> List[nn.Parameter]:
    """What a training step's rate term trains: ``level_rate``'s scales when given, else the ARMs'."""
    return list((synthesis.arm if level_rate is None else level_rate).parameters())


def training_rate(synthesis: AttributeSynthesis, level_rate: Optional[LevelRate], planes: List[Tensor],
                  subsample: float = 1.0, generator: Optional[torch.Generator] = None,
                  noise: bool = False) -> Tensor:  # scalar
    """The rate a training step minimizes: ``level_rate``'s bits when given, else the ARMs'; with
    ``noise``, of the planes plus uniform noise (the level model draws it for its samples only,
    the ARMs, whose contexts are other latents, for all of them)."""
    if level_rate is None:
        if noise:
            planes = [noisy(p, generator) for p in planes]
        return rate_bits(synthesis, planes, subsample=subsample, generator=generator)
    return level_rate.bits(planes, subsample=subsample, generator=generator, noise=noise)
