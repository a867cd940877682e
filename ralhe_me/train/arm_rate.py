"""The latents' rate under the float ARM for training, with a native forward-and-gradient kernel.

``AttributeSynthesis.rate_bits`` (decode/synthesis.py) is the reference: it gathers contexts
[A, P, K] and runs the ARM MLP and the Laplace bits as torch ops, whose backward (elementwise
masks over [A, P, K] and a scatter-add of the context gradients) was about 70% of a training
step at 100k voxels. ``rate_bits`` here draws the same sample from the same generator and
evaluates it with ``_arm_rate_cpu`` (train/csrc/arm_rate.cpp), which computes the bits and every
gradient in one pass; it falls back to the reference where the extension is not built or the
tensors are not float32 on the CPU. Encoder side only: the decoder never trains.
"""
from __future__ import annotations

from types import ModuleType
from typing import List, Optional

import torch
from torch import Tensor

from ..decode.synthesis import AttributeSynthesis, sample_positions
from ..entropy.laplace import MAX_RATE_BITS
from ..native import load_native, native_choice
from ..nn.arm import CONTEXT_CLAMP, HIDDEN_CLAMP, BatchedArm

NATIVE_API_VERSION = 1  # the interface of _arm_rate_cpu this module calls (its API_VERSION)


def native_module() -> Optional[ModuleType]:
    """The ``_arm_rate_cpu`` extension, or None when it is not built (or stale)."""
    return load_native("ralhe_me.train._arm_rate_cpu", NATIVE_API_VERSION)


def _native_rate(module, arm: BatchedArm, positions: Tensor, starts: Tensor, values: Tensor,
                 grad_values: bool, grad_params: bool) -> tuple:
    """The kernel's (bits per attribute, grad_values or None, grad_weights, grad_biases)."""
    tc = arm.table_config
    return module.arm_rate(
        values.detach().contiguous().numpy(), positions.numpy(), starts.numpy(),
        [w.detach().contiguous().numpy() for w in arm.weights], [b.detach().contiguous().numpy() for b in arm.biases],
        float(CONTEXT_CLAMP), float(HIDDEN_CLAMP), float(tc.log_scale_min), float(tc.log_scale_max),
        float(MAX_RATE_BITS), grad_values, grad_params, torch.get_num_threads())


class _ArmRate(torch.autograd.Function):
    """Sum of the bits of ``values[:, positions]`` under ``arm``; the gradients are computed in
    the forward call (the loss is a scalar) and scaled by the incoming gradient in backward.
    ``params`` are ``arm``'s weights and biases, passed so that autograd sees them."""

    @staticmethod
    def forward(ctx, module, arm: BatchedArm, positions: Tensor, starts: Tensor, values: Tensor,
                *params: Tensor) -> Tensor:
        bits, grad_values, grad_w, grad_b = _native_rate(module, arm, positions, starts, values,
                                                         bool(ctx.needs_input_grad[4]), any(ctx.needs_input_grad[5:]))
        ctx.grad_values = None if grad_values is None else torch.from_numpy(grad_values)
        ctx.grad_params = [torch.from_numpy(g) for g in list(grad_w) + list(grad_b)]
        return torch.tensor(float(bits.sum()), dtype=values.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        unit = bool(grad == 1)  # the usual case: no [A, T] multiply
        gv = None if ctx.grad_values is None else ctx.grad_values if unit else ctx.grad_values * grad
        if ctx.grad_params:
            gp = [g if unit else g * grad for g in ctx.grad_params]
        else:
            gp = [None] * (len(ctx.needs_input_grad) - 5)
        return (None, None, None, None, gv) + tuple(gp)


def _usable(values: Tensor, arm: BatchedArm) -> bool:
    return (values.dtype == torch.float32 and values.device.type == "cpu"
            and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in arm.parameters()))


def positions_rate_bits(synthesis: AttributeSynthesis, values: Tensor,  # [A, T]
                        positions: Tensor,  # [P] int64
                        native: Optional[bool] = None) -> Tensor:
    """``synthesis.positions_rate_bits(values, positions)``, natively where possible (native=None:
    when built and usable; True: required; False: the torch reference)."""
    module = native_choice(native, native_module, "the native ARM rate (ralhe_me.train._arm_rate_cpu)")
    arm = synthesis.arm
    if module is None or not _usable(values, arm):
        if native:
            raise ValueError("the native ARM rate takes float32 CPU latents and ARM weights")
        return synthesis.positions_rate_bits(values, positions)
    positions = torch.sort(positions.to(torch.int64)).values  # the same sum, with fewer cache misses
    starts = synthesis.segment_start[positions].contiguous()
    if not torch.is_grad_enabled():  # an evaluation (needs_input_grad would still ask for gradients)
        bits = _native_rate(module, arm, positions, starts, values, False, False)[0]
        return torch.tensor(float(bits.sum()), dtype=values.dtype)
    return _ArmRate.apply(module, arm, positions, starts, values, *arm.weights, *arm.biases)


def rate_bits(synthesis: AttributeSynthesis, planes: List[Tensor], subsample: float = 1.0,
              generator: Optional[torch.Generator] = None, native: Optional[bool] = None) -> Tensor:
    """``synthesis.rate_bits(planes, subsample, generator)``: the same sample drawn from the
    same generator, its bits evaluated by ``positions_rate_bits``."""
    values = torch.cat(planes, dim=1)  # [A, T]
    positions, scale = sample_positions(values.shape[1], subsample, generator)
    return positions_rate_bits(synthesis, values, positions, native=native) * scale
