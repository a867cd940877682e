"""The latents coded without an entropy model in the file: each (plane, attribute) stream of
integer RAHT coefficients with the static per-level histograms of the RAHT baseline
(baselines/scalar.py encode_integers, contexts: the octree level of each coefficient).

Why: the autoregressive model costs its own weights (about 3.3 kB for 17 attributes) and, where
latents are few or nearly independent, codes them no better than per-level histograms. The
encoder codes the latents both ways and keeps the shorter (header ``latent_coder``); for example
on the 50k default scene at lambda 6e-3 about 29.9 kB of ARMs and latents against 25.8 kB, and on
kacytran at 6e-3 4.9 kB against 2.8 kB.

Section layout (``latent_coder`` "static", "raht" transform only): for every plane p (channel),
for every attribute a: a varint byte length, then ``encode_integers(latents[p][a], levels)``.
The decoder must consume the section exactly. Only int32 latents are coded this way.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ..baselines.raht import build_plan
from ..baselines.scalar import AttributeStreamError, decode_integers, encode_integers
from .categorical import CategoricalError, read_varint, write_varint

#: header ``latent_coder`` values: the ARM of the arms section (the default when absent), or
#: this module's static histograms (the arms section is then empty)
LATENT_CODERS = ("arm", "static")
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


class StaticLatentsError(ValueError):
    """A static latents section that is corrupt or does not match the geometry."""


def coefficient_levels(coords: np.ndarray, depth: int) -> np.ndarray:
    """int64 [M]: the octree level of every RAHT coefficient (coefficient order; DC: depth), the
    contexts of the static streams. ``coords`` [M, 3] unique voxels."""
    return np.asarray(build_plan(np.asarray(coords), int(depth)).coeff_levels, dtype=np.int64)


def encode_static_latents(planes: Sequence[np.ndarray],  # each [A, M] int
                          levels: np.ndarray) -> Optional[bytes]:  # [M]
    """The static section of ``planes``, or None where a latent does not fit in int32."""
    out = bytearray()
    for plane in planes:
        plane = np.asarray(plane)
        if plane.ndim != 2 or plane.shape[1] != len(levels):
            raise ValueError(f"latent plane of shape {plane.shape} for {len(levels)} coefficients")
        if plane.size and (plane.min() < INT32_MIN or plane.max() > INT32_MAX):
            return None
        for row in plane:
            stream = encode_integers(row.astype(np.int64), levels)
            out += write_varint(len(stream)) + stream
    return bytes(out)


def decode_static_latents(data: bytes, num_planes: int, num_attributes: int,
                          levels: np.ndarray) -> List[np.ndarray]:  # [M] -> planes [A, M] int32
    """Inverse of :func:`encode_static_latents`; StaticLatentsError names what is wrong."""
    data = bytes(data)
    pos, planes = 0, []
    try:
        for p in range(num_planes):
            rows = []
            for a in range(num_attributes):
                length, pos = read_varint(data, pos)
                if length > len(data) - pos:
                    raise StaticLatentsError(f"static latents: stream {a} of plane {p} is truncated")
                rows.append(decode_integers(data[pos:pos + length], levels))
                pos += length
            plane = np.stack(rows) if rows else np.zeros((0, len(levels)), dtype=np.int64)
            if plane.size and (plane.min() < INT32_MIN or plane.max() > INT32_MAX):
                raise StaticLatentsError(f"static latents: plane {p} holds a value outside int32")
            planes.append(plane.astype(np.int32))
    except (AttributeStreamError, CategoricalError) as err:
        raise StaticLatentsError(f"static latents: {err}") from err
    if pos != len(data):
        raise StaticLatentsError(f"static latents: {len(data) - pos} trailing bytes")
    return planes
