"""The coded attributes of a voxelized model: SH triplets and opacity, as signals on voxels.

Each SH coefficient k is one attribute (an RGB triplet, d=3) and opacity is one more (d=1),
so SH degree 3 gives 17. Opacity is coded after the sigmoid, where errors act on the image
linearly. The SH basis is orthonormal on the sphere and ``Y_00^2 = 1/(4 pi)``, so a
coefficient error ``e`` costs ``e^2 / (4 pi)`` of direction-averaged color MSE whatever its
band: every SH attribute gets that same distortion weight. An opacity error moves a pixel
by about ``e * |color - background|``; it gets the weight ``opacity_weight``.

Signals are normalized per attribute (mean and standard deviation, stored in the header)
so one decoder initialization and learning rate suit all of them.

An optional per-point weight (mean 1; see ``importance.py``) says how much each voxel's color
errors show in the renders; the SH distortion is then a weighted mean over points. An optional
per-point gain (``gain_map.py``) divides the normalized SH signals, so that one latent step
means a finer quantizer where the gain is small; the decoder multiplies it back. Opacity keeps
uniform weights and no gain: the importance is the sensitivity to a color change, while an
opacity error on a nearly transparent Gaussian (importance ~0) makes it appear.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor

from .gaussians import GaussianModel

SH_WEIGHT = 1.0 / (4.0 * np.pi)
OPACITY_EPS = 1e-4


def attribute_names(sh_degree: int) -> List[str]:
    """``sh0 .. sh{K-1}`` then ``opacity``."""
    return [f"sh{k}" for k in range((sh_degree + 1) ** 2)] + ["opacity"]


@dataclass
class AttributeSignals:
    """Normalized attribute signals in voxel (Morton) order."""

    sh: np.ndarray  # [K, N, 3] normalized SH coefficients
    opacity: np.ndarray  # [1, N, 1] normalized opacity (after the sigmoid)
    mean: np.ndarray  # [K + 1, 3] per-attribute channel means (opacity uses column 0)
    std: np.ndarray  # [K + 1] per-attribute scale
    weight: np.ndarray  # [K + 1] distortion weight of a unit error in normalized units
    point_weight: Optional[np.ndarray] = None  # [N] distortion weight of a unit error of a coded SH signal
    gain: Optional[np.ndarray] = None  # [N] the decoder's per-point gain of the SH signals (None: 1)

    @property
    def names(self) -> List[str]:
        return attribute_names(int(round(np.sqrt(self.sh.shape[0]))) - 1)


class SignalDistortion:
    """The training loss's distortion of normalized outputs: per attribute the MSE against the
    signals (SH errors weighted per point when the signals carry weights), times the
    attribute's distortion weight, summed. The targets become tensors once, not every step."""

    def __init__(self, signals: AttributeSignals):
        self.sh = torch.as_tensor(signals.sh)  # [K, N, 3]
        self.opacity = torch.as_tensor(signals.opacity)  # [1, N, 1]
        self.weight = torch.as_tensor(signals.weight, dtype=torch.float32)  # [K + 1]
        self.point_weight = None if signals.point_weight is None else \
            torch.as_tensor(signals.point_weight, dtype=torch.float32)  # [N]

    def __call__(self, pred_sh: Tensor,  # [K, S, 3]
                 pred_op: Tensor,  # [1, S, 1]
                 rows: Optional[Tensor] = None  # [S] the voxels predicted (None: all N)
                 ) -> Tensor:  # scalar
        t_sh, t_op = (self.sh, self.opacity) if rows is None else (self.sh[:, rows], self.opacity[:, rows])
        err_sh, err_op = (pred_sh - t_sh) ** 2, (pred_op - t_op) ** 2
        if self.point_weight is not None:
            pw = (self.point_weight if rows is None else self.point_weight[rows])[None, :, None]
            err_sh = err_sh * pw  # opacity is never importance-weighted (see above)
        mse = torch.cat([err_sh.mean(dim=(1, 2)), err_op.mean(dim=(1, 2))])
        return (self.weight * mse).sum()


def extract_signals(model: GaussianModel, opacity_weight: float = 0.25,
                    point_weight: Optional[np.ndarray] = None, gain: Optional[np.ndarray] = None) -> AttributeSignals:
    """Split ``model`` (already in voxel order) into normalized per-attribute signals, divided by
    ``gain`` [N] if given (SH only); ``point_weight`` [N] (rescaled to mean 1) weights each
    point's SH errors in the original units (a coded unit at point i weighs
    ``point_weight_i gain_i^2``)."""
    if point_weight is not None:
        point_weight = np.asarray(point_weight, dtype=np.float64)
        if point_weight.shape != (len(model),) or not np.all(np.isfinite(point_weight)) or point_weight.min() < 0:
            raise ValueError(f"point weights must be [{len(model)}] finite and >= 0, got shape {point_weight.shape}")
        if not point_weight.sum() > 0:
            raise ValueError("point weights are all zero")
        point_weight = point_weight / point_weight.mean()
    sh = np.transpose(model.sh.astype(np.float64), (1, 0, 2))  # [K, N, 3]
    alpha = model.opacities[None, :, None]  # [1, N, 1]
    k = sh.shape[0]
    mean = np.zeros((k + 1, 3))
    std = np.ones(k + 1)
    mean[:k] = sh.mean(axis=1)
    std[:k] = np.maximum(sh.std(axis=(1, 2)), 1e-4)
    mean[k, 0] = alpha.mean()
    std[k] = max(alpha.std(), 1e-4)
    # float32 so that the header's stored values equal the ones used here
    mean = mean.astype(np.float32).astype(np.float64)
    std = std.astype(np.float32).astype(np.float64)
    weight = np.concatenate([np.full(k, SH_WEIGHT), [opacity_weight]]) * std ** 2
    g = np.ones(len(model)) if gain is None else np.asarray(gain, dtype=np.float64)
    if g.shape != (len(model),) or not np.all(g > 0):
        raise ValueError(f"gains must be [{len(model)}] and positive")
    if gain is not None:
        point_weight = (np.ones(len(model)) if point_weight is None else point_weight) * g * g
    return AttributeSignals(
        sh=((sh - mean[:k, None, :]) / (std[:k, None, None] * g[None, :, None])).astype(np.float32),
        opacity=((alpha - mean[k, 0]) / std[k]).astype(np.float32),
        mean=mean, std=std, weight=weight, point_weight=point_weight,
        gain=None if gain is None else g,
    )


def denormalize_sh(sh_norm: np.ndarray, mean: np.ndarray, std: np.ndarray,
                   gain: Optional[np.ndarray] = None) -> np.ndarray:
    """[K, N, 3] normalized (times ``gain`` [N] if given) -> [N, K, 3] SH coefficients."""
    k, n, _ = sh_norm.shape
    x = np.transpose(sh_norm, (1, 0, 2))  # [N, K, 3], a view: the products below write point-major
    sh = np.empty((n, k, 3), dtype=np.float64)
    if gain is not None:
        np.multiply(x, np.asarray(gain, dtype=np.float64)[:, None, None], out=sh)
        sh *= std[None, :k, None]
    else:
        np.multiply(x, std[None, :k, None], out=sh)  # float32 inputs widen exactly: same float64 ops
    sh += mean[None, :k, :]
    return sh.astype(np.float32)


def denormalize_opacity_logits(op_norm: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """[1, N, 1] normalized opacity -> [N] logits, clamped away from 0 and 1."""
    k = len(std) - 1
    alpha = np.clip(op_norm.reshape(-1).astype(np.float64) * std[k] + mean[k, 0], OPACITY_EPS, 1 - OPACITY_EPS)
    return (np.log(alpha) - np.log1p(-alpha)).astype(np.float32)
