"""The auto-regressive entropy model (ARM) in floating point, used in training: per attribute an
MLP K -> hidden -> ... -> 2 giving the mean and log-scale of a discretized Laplace.  The A
attributes' MLPs are stacked ([A, ...] weights, batched matmuls) rather than A modules.

The clamps below are part of the model, shared with the integer ARM (entropy/integer_arm.py) so
that training sees the same function the coder evaluates: contexts are clamped to
+-CONTEXT_CLAMP, hidden activations to [0, HIDDEN_CLAMP] (a bounded ReLU), the log-scale to the
Laplace table range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ralhe_me.entropy.laplace import LaplaceTableConfig, laplace_rate_bits

CONTEXT_CLAMP = (1 << 15) - 1
HIDDEN_CLAMP = 1 << 12


@dataclass(frozen=True)
class ArmConfig:
    context_size: int = 16
    hidden: int = 16
    num_hidden_layers: int = 2

    def __post_init__(self) -> None:
        if not (1 <= self.context_size <= 255 and 1 <= self.hidden <= 255 and 0 <= self.num_hidden_layers <= 16):
            raise ValueError(f"ArmConfig out of range: {self}")

    @property
    def layer_dims(self) -> tuple:
        """(in, out) of each linear layer."""
        dims = [self.context_size] + [self.hidden] * self.num_hidden_layers + [2]
        return tuple(zip(dims[:-1], dims[1:]))

    @property
    def num_parameters(self) -> int:
        return sum(i * o + o for i, o in self.layer_dims)


class BatchedArm(nn.Module):
    """A attributes' ARMs at once.  weights[l]: [A, in, out], biases[l]: [A, out]."""

    def __init__(
        self,
        num_attributes: int,
        config: ArmConfig = ArmConfig(),
        table_config: LaplaceTableConfig = LaplaceTableConfig(),
    ) -> None:
        super().__init__()
        self.config = config
        self.table_config = table_config
        self.num_attributes = num_attributes
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, o in config.layer_dims:
            bound = 1.0 / math.sqrt(i)
            self.weights.append(nn.Parameter(torch.empty(num_attributes, i, o).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.zeros(num_attributes, o)))
        with torch.no_grad():  # start near mu = 0, scale = 1
            self.weights[-1].mul_(0.1)

    def forward(self, contexts: Tensor) -> tuple:
        """contexts: [A, n, K] -> (mu [A, n], log_scale [A, n]), log_scale clamped to the table range."""
        h = contexts.clamp(-CONTEXT_CLAMP, CONTEXT_CLAMP)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)
            if i < last:
                h = h.clamp(0.0, HIDDEN_CLAMP)
        tc = self.table_config
        return h[..., 0], h[..., 1].clamp(tc.log_scale_min, tc.log_scale_max)

    @staticmethod
    def rate_bits(latents: Tensor, mu: Tensor, log_scale: Tensor) -> Tensor:
        """[A, n] bits per latent (noisy or rounded), clamped to 16 bits; differentiable."""
        return laplace_rate_bits(latents, mu, log_scale)
