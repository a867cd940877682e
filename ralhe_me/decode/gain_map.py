"""Importance gain map: a coarse, transmitted map of how finely each region is quantized.

A voxel whose errors barely show in the renders (hidden, transparent, tiny; see
``importance.py``) deserves a coarser quantizer: for entropy-coded uniform quantization the
rate-distortion optimal step under a distortion weight ``w`` is ``s ~ 1 / sqrt(w)``. Plain
latents share one step everywhere, so the decoder must know where the steps differ. This map
tells it: one integer exponent ``e`` per occupied voxel of octree level ``G`` (all the points
below it share it), giving the gain ``g = 2^(e / 2)`` (half-octave steps) by which the decoded,
normalized attributes are multiplied. The encoder codes ``(x - mean) / (std g)``, so its
errors shrink by ``g`` where ``g < 1`` (important regions) and grow where ``g > 1``.

The same gains scale the covariance residual steps (``geometry/covariance_code.py``): a
shape that does not show need not be precise either. The map is therefore part of the
geometry, decoded right after the positions.

On the donut the arithmetic-to-geometric mean ratio of the per-voxel weights (the high-rate
gain of matching steps to weights) is 9.0 dB per Gaussian and still 4.8 dB with one gain per
level-4 voxel; on the default scene 5.4 and 6.1 dB.

Decoder side: exponents are coded with the static categorical coder (one context); the
count is the number of level-``G`` voxels, which the decoder knows from the positions.
"""
from __future__ import annotations

import numpy as np

from ..entropy.categorical import CategoricalError, CorruptStreamError
from ..entropy.exponents import EXPONENT_LIMIT, decode_exponents, encode_exponents, exponent_gains

GAIN_LIMIT = EXPONENT_LIMIT  # |exponent| <= 8: gains from 1/16 to 16


class GainMapError(ValueError):
    """Bad input to the gain map (shapes, non-finite or negative weights)."""


class GainMapStreamError(CorruptStreamError):
    """A gain-map section is corrupt or does not match the positions."""


def gain_voxels(coords: np.ndarray,  # [N, 3] unique, Morton-sorted voxel coordinates
                level: int) -> tuple:  # -> (point_to_voxel [N] int64, number of voxels)
    """The voxels of octree level ``level`` (coordinates shifted right by it, Morton order, as in
    :class:`~ralhe_me.geometry.octree.OctreeLevels`) and each point's voxel."""
    from ..geometry.octree import level_voxels, morton_encode

    if not 0 <= int(level) <= 20:
        raise GainMapError(f"gain level must be in [0, 20], got {level}")
    voxel_codes, point_to_voxel = level_voxels(morton_encode(np.asarray(coords, dtype=np.int64)), int(level))
    return point_to_voxel, len(voxel_codes)


def gain_exponents(point_weight: np.ndarray,  # [N] >= 0, distortion weight per point
                   point_to_voxel: np.ndarray,  # [N] voxel of each point at the map's level
                   num_voxels: int) -> np.ndarray:  # -> [V] int64 in [-GAIN_LIMIT, GAIN_LIMIT]
    """``e = round(-log2(mean weight in the voxel / mean weight overall))``, clipped, so that
    ``g^2 = 2^e`` is inversely proportional to the voxel's weight."""
    w = np.asarray(point_weight, dtype=np.float64).ravel()
    p2v = np.asarray(point_to_voxel, dtype=np.int64).ravel()
    if w.shape != p2v.shape or not np.all(np.isfinite(w)) or (w.size and w.min() < 0):
        raise GainMapError(f"point weights must be finite, >= 0 and match the {p2v.size} points")
    if w.size == 0:
        return np.zeros(num_voxels, np.int64)
    if not w.sum() > 0:
        raise GainMapError("point weights are all zero")
    counts = np.bincount(p2v, minlength=num_voxels)
    if len(counts) != num_voxels or counts.min() == 0:
        raise GainMapError("every voxel of the map's level must hold at least one point")
    mean = np.bincount(p2v, weights=w, minlength=num_voxels) / counts / w.mean()
    e = np.rint(-np.log2(np.maximum(mean, 2.0 ** -(GAIN_LIMIT + 1))))
    return np.clip(e, -GAIN_LIMIT, GAIN_LIMIT).astype(np.int64)


def point_gains(exponents: np.ndarray,  # [V] int
                point_to_voxel: np.ndarray) -> np.ndarray:  # [N] -> [N] float64
    """Gain of every point: ``2^(e / 2)`` of its voxel (exact in float64 and float32 alike)."""
    return exponent_gains(exponents)[np.asarray(point_to_voxel, dtype=np.int64)]


def encode_gain_map(exponents: np.ndarray) -> bytes:
    e = np.asarray(exponents, dtype=np.int64).ravel()
    if e.size and (e.min() < -GAIN_LIMIT or e.max() > GAIN_LIMIT):
        raise GainMapError(f"gain exponents must lie in [-{GAIN_LIMIT}, {GAIN_LIMIT}]")
    return encode_exponents(e)


def decode_gain_map(data: bytes, num_voxels: int) -> np.ndarray:  # -> [num_voxels] int64
    try:
        e = decode_exponents(data)
    except (CategoricalError, CorruptStreamError) as err:
        raise GainMapStreamError(f"gain map: {err}") from None
    if e.size != num_voxels:
        raise GainMapStreamError(f"gain map holds {e.size} voxels, the positions give {num_voxels}")
    return e
