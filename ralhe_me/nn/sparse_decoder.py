"""The RALHE attribute decoder: two point-wise linear layers, then two 3x3x3 sparse
convolutions on the finest voxels, as MinkowskiEngine layers.

It is the reusable piece of RALHE-ME, so this module imports nothing but torch and
(lazily, through :func:`ralhe_me.compat.import_minkowski`) MinkowskiEngine.

Usage on any MinkowskiEngine sparse tensor (one feature row per voxel)::

    import torch
    from ralhe_me.compat import import_minkowski
    from ralhe_me.nn.sparse_decoder import DecoderConfig, SparseAttributeDecoder

    ME = import_minkowski()
    coords = torch.randint(0, 64, (1000, 3), dtype=torch.int32).unique(dim=0)
    x = ME.SparseTensor(
        features=torch.randn(len(coords), 7),                  # [N, in_channels]
        coordinates=torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1),
    )
    decoder = SparseAttributeDecoder(DecoderConfig(in_channels=7, out_channels=3))
    y = decoder(x)                                             # ME.SparseTensor, y.F is [N, 3]
    weights = decoder.export_weights()                         # flat {name: tensor}
    clone = SparseAttributeDecoder.from_weights(weights)       # same config, same weights

The defaults (7 -> 21 -> 4 point-wise, 4 -> 2 -> d convolutions, biases everywhere) have
639 parameters for d = 3, the count in Table 1 of the paper, and 529 for d = 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor, nn


class DecoderError(ValueError):
    """Invalid decoder configuration, input or weights; the message says what is wrong."""


class DecoderInputError(DecoderError):
    """The decoder's input has the wrong type or channel count."""


class DecoderWeightsError(DecoderError):
    """A weight dictionary does not fit the decoder (missing or extra names, wrong shapes)."""


@dataclass(frozen=True)
class DecoderConfig:
    """Widths of the 4-layer decoder: in -> h1 -> h2 (point-wise) -> h3 -> out (3x3x3)."""

    in_channels: int = 7  # L upsampled latents per point
    hidden_linear: Tuple[int, int] = (21, 4)
    hidden_conv: int = 2
    out_channels: int = 3  # 3 for an SH RGB triplet, 1 for opacity
    kernel_size: int = 3

    def __post_init__(self):
        widths = (self.in_channels, *self.hidden_linear, self.hidden_conv, self.out_channels)
        if len(self.hidden_linear) != 2 or any(int(w) != w or w < 1 for w in widths):
            raise DecoderError(f"decoder widths must be positive integers with two hidden linear "
                               f"layers, got {self}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise DecoderError(f"kernel_size must be a positive odd integer, got {self.kernel_size}")
        object.__setattr__(self, "hidden_linear", tuple(int(w) for w in self.hidden_linear))

    @property
    def kernel_volume(self) -> int:
        return self.kernel_size ** 3

    def weight_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Names and shapes of the flat weight dictionary, in layer order.

        Linear weights are ``[out, in]`` (torch.nn.Linear); convolution kernels are
        ``[kernel_volume, in, out]`` in MinkowskiEngine's kernel order; biases of the
        convolutions are ``[1, out]`` (as MinkowskiConvolution stores them).
        """
        h1, h2 = self.hidden_linear
        h3, d, kv = self.hidden_conv, self.out_channels, self.kernel_volume
        return {
            "linear0.linear.weight": (h1, self.in_channels),
            "linear0.linear.bias": (h1,),
            "linear1.linear.weight": (h2, h1),
            "linear1.linear.bias": (h2,),
            "conv0.kernel": (kv, h2, h3),
            "conv0.bias": (1, h3),
            "conv1.kernel": (kv, h3, d),
            "conv1.bias": (1, d),
        }

    def num_parameters(self) -> int:
        total = 0
        for shape in self.weight_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total


def check_weights(config: DecoderConfig, weights: Dict[str, Tensor]) -> None:
    """Raise :class:`DecoderWeightsError` unless ``weights`` has exactly the names and
    shapes of ``config``."""
    shapes = config.weight_shapes()
    missing = sorted(set(shapes) - set(weights))
    extra = sorted(set(weights) - set(shapes))
    if missing or extra:
        raise DecoderWeightsError(f"decoder weights: missing {missing}, unexpected {extra}")
    for name, shape in shapes.items():
        got = tuple(weights[name].shape)
        if got != shape:
            raise DecoderWeightsError(f"decoder weight {name!r} has shape {got}, expected {shape}")


def config_from_weights(weights: Dict[str, Tensor]) -> DecoderConfig:
    """The configuration whose shapes ``weights`` has."""
    try:
        h1, in_ch = weights["linear0.linear.weight"].shape
        h2 = weights["linear1.linear.weight"].shape[0]
        kv, _, h3 = weights["conv0.kernel"].shape
        d = weights["conv1.kernel"].shape[2]
    except (KeyError, ValueError, AttributeError) as exc:
        raise DecoderWeightsError(f"not a decoder weight dictionary: {exc!r}") from exc
    k = round(kv ** (1.0 / 3.0))
    if k ** 3 != kv:
        raise DecoderWeightsError(f"kernel volume {kv} is not a cube")
    config = DecoderConfig(int(in_ch), (int(h1), int(h2)), int(h3), int(d), int(k))
    check_weights(config, weights)
    return config


class SparseAttributeDecoder(nn.Module):
    """Latents of a point (its ``in_channels`` upsampled latents) -> its attribute (``d``
    channels), with two 3x3x3 convolutions mixing each voxel with its neighbours.

    ``forward`` takes and returns a ``MinkowskiEngine.SparseTensor`` on the same voxels
    (stride-1 convolutions keep the coordinate map); no activation after the last layer.
    """

    def __init__(self, config: DecoderConfig = DecoderConfig()):
        super().__init__()
        from ..compat import import_minkowski

        me = import_minkowski()
        self.config = config
        h1, h2 = config.hidden_linear
        self.linear0 = me.MinkowskiLinear(config.in_channels, h1)
        self.linear1 = me.MinkowskiLinear(h1, h2)
        self.conv0 = me.MinkowskiConvolution(h2, config.hidden_conv, kernel_size=config.kernel_size,
                                             stride=1, bias=True, dimension=3)
        self.conv1 = me.MinkowskiConvolution(config.hidden_conv, config.out_channels,
                                             kernel_size=config.kernel_size, stride=1, bias=True,
                                             dimension=3)
        self.relu = me.MinkowskiReLU()
        self._sparse_tensor_type = me.SparseTensor

    def forward(self, x):  # x: ME.SparseTensor [N, in_channels] -> ME.SparseTensor [N, d]
        if not isinstance(x, self._sparse_tensor_type):
            raise DecoderInputError(f"expected a MinkowskiEngine SparseTensor, got {type(x).__name__}")
        if x.F.ndim != 2 or x.F.shape[1] != self.config.in_channels:
            raise DecoderInputError(f"decoder expects {self.config.in_channels} input channels, "
                                    f"got features of shape {tuple(x.F.shape)}")
        if x.D != 3:
            raise DecoderInputError(f"decoder expects a 3D sparse tensor, got dimension {x.D}")
        h = self.relu(self.linear0(x))
        h = self.relu(self.linear1(h))
        h = self.relu(self.conv0(h))
        return self.conv1(h)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def export_weights(self) -> Dict[str, Tensor]:
        """Detached copies of all weights, by name (see :meth:`DecoderConfig.weight_shapes`)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_weights(self, weights: Dict[str, Tensor]) -> "SparseAttributeDecoder":
        check_weights(self.config, weights)
        with torch.no_grad():
            self.load_state_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in weights.items()})
        return self

    @classmethod
    def from_weights(cls, weights: Dict[str, Tensor]) -> "SparseAttributeDecoder":
        return cls(config_from_weights(weights)).load_weights(weights)
