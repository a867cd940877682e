"""The region-adaptive Haar transform (RAHT) of attributes on voxelized points.

RAHT (de Queiroz and Chou, 2016; the attribute transform of MPEG G-PCC and of GPCC-GS) is an
orthonormal transform built bottom-up on the octree.  Starting from the occupied voxels at depth
J (each of weight 1), each octree level is collapsed one axis at a time, x, then y, then z: two
occupied nodes that differ only in that axis' bit of their (shifted) coordinates are merged by
the butterfly

    [L]    1              [ sqrt(w1)  sqrt(w2)] [x1]
    [H] = ----------- *   [-sqrt(w2)  sqrt(w1)] [x2]      (x1: the node with the bit 0)
          sqrt(w1+w2)

where w1, w2 are the nodes' point counts.  H is emitted, L is carried up with weight w1 + w2,
and a node without a partner is carried up unchanged.  After 3 J steps one node remains; its
value is the DC coefficient, ``sqrt(M) * mean`` of the input.  Every step is a rotation, so the
transform is orthonormal: it preserves energy and a uniform quantization step gives the same
mean squared error in both domains.

Implementation: the merge along bit ``s`` of a Morton-like code whose bit ``3 l`` is the x bit
of level l (then y, then z) pairs codes that differ only in bit ``s``, i.e. adjacent entries of
the sorted array with equal ``code >> (s + 1)``; each step is a handful of vectorized numpy
operations over the nodes alive at that step.

Coefficient order (fixed): index 0 is the DC; then the high-pass coefficients by step from the
coarsest (last merge, z at level J - 1) to the finest (first merge, x at level 0); within a step
by increasing transform code of the merged node (the Morton code of (z, y, x), x in the least
significant bit of each 3-bit group, shifted right by the step + 1).  Each coefficient has a
weight: M for the DC, ``w1 + w2`` for a high-pass coefficient (the number of points under the
merged node), which predicts its magnitude and serves as an entropy-coding context.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ..geometry.octree import MAX_DEPTH, morton_encode


class RahtError(ValueError):
    """Invalid input to the RAHT (coordinates, depth, or value shapes)."""


@dataclass(frozen=True)
class RahtStep:
    """One merge step (only steps with at least one pair are kept).  Indices refer to the node
    array alive before the step (sorted by transform code)."""

    step: int  # bit of the transform code merged: 3 * level + axis (0 x, 1 y, 2 z)
    num_in: int  # nodes before the step
    starts: np.ndarray  # [n_out] int64, first node of each output node's group
    left: np.ndarray  # [P] int64, first node of each merged pair (right = left + 1)
    pair_out: np.ndarray  # [P] int64, output node of each pair
    a: np.ndarray  # [P] float64, sqrt(w1 / (w1 + w2))
    b: np.ndarray  # [P] float64, sqrt(w2 / (w1 + w2))
    weight: np.ndarray  # [P] int64, w1 + w2


@dataclass(frozen=True)
class RahtPlan:
    """Everything the transform needs from the geometry; built once, shared by forward and inverse
    (and by encoder and decoder, which both know the coordinates)."""

    num_points: int
    depth: int
    order: np.ndarray  # [M] int64, input rows sorted by transform code
    steps: Tuple[RahtStep, ...]  # forward order (finest first)
    coeff_weights: np.ndarray  # [M] int64, weight of each coefficient (coefficient order)
    coeff_steps: np.ndarray  # [M] int64, merge step of each coefficient (DC: 3 * depth)

    @property
    def coeff_levels(self) -> np.ndarray:
        """[M] octree level of each coefficient's merged node (0 finest .. depth - 1; DC: depth)."""
        return self.coeff_steps // 3


def transform_codes(coords: np.ndarray) -> np.ndarray:
    """int64 [M]: the Morton code of (z, y, x), whose bit ``3 l + a`` is bit l of axis a (x=0)."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise RahtError(f"coords must have shape [M, 3], got {coords.shape}")
    return morton_encode(coords[:, ::-1])


def build_plan(coords: np.ndarray, depth: int) -> RahtPlan:
    """The merge steps of the RAHT of points ``coords`` [M, 3] (unique, in [0, 2^depth))."""
    if not isinstance(depth, (int, np.integer)) or not 0 <= int(depth) <= MAX_DEPTH:
        raise RahtError(f"depth must be an integer in [0, {MAX_DEPTH}], got {depth!r}")
    depth = int(depth)
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise RahtError(f"coords must have shape [M, 3], got {coords.shape}")
    if coords.dtype.kind not in "iu":
        raise RahtError(f"coords must be integers, got dtype {coords.dtype}")
    m = len(coords)
    if m == 0:
        raise RahtError("cannot transform an empty point set")
    if coords.min() < 0 or coords.max() >= (1 << depth):
        raise RahtError(f"coords must lie in [0, 2^{depth}), got range [{coords.min()}, {coords.max()}]")
    codes = transform_codes(coords.astype(np.int64))
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    if m > 1 and np.any(codes[1:] == codes[:-1]):
        raise RahtError("coords must be unique")
    weights = np.ones(m, dtype=np.int64)
    steps: List[RahtStep] = []
    for s in range(3 * depth):
        key = codes >> 1
        n = len(key)
        if n > 1:
            same = key[1:] == key[:-1]  # [n - 1]: node i and i + 1 form a pair
        else:
            same = np.zeros(0, dtype=bool)
        if same.any():
            new_group = np.ones(n, dtype=bool)
            new_group[1:] = ~same
            starts = np.flatnonzero(new_group)
            left = np.flatnonzero(same)
            out_index = np.cumsum(new_group) - 1  # [n] output node of every input node
            pair_out = out_index[left]
            w1 = weights[left]
            w2 = weights[left + 1]
            wsum = w1 + w2
            a = np.sqrt(w1 / wsum.astype(np.float64))
            b = np.sqrt(w2 / wsum.astype(np.float64))
            steps.append(RahtStep(s, n, starts, left, pair_out, a, b, wsum))
            new_w = weights[starts].copy()
            new_w[pair_out] = wsum
            weights = new_w
            codes = key[starts]
        else:
            codes = key
    # coefficient order: DC, then steps from the last (coarsest) to the first
    coeff_w = [np.array([m], dtype=np.int64)] + [st.weight for st in reversed(steps)]
    coeff_s = [np.array([3 * depth], dtype=np.int64)] + [np.full(len(st.left), st.step, np.int64)
                                                         for st in reversed(steps)]
    return RahtPlan(m, depth, order, tuple(steps), np.concatenate(coeff_w), np.concatenate(coeff_s))


def _check_values(plan: RahtPlan, values: np.ndarray, name: str) -> Tuple[np.ndarray, bool]:
    v = np.asarray(values)
    flat = v.ndim == 1
    if flat:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != plan.num_points:
        raise RahtError(f"{name} must have shape [M={plan.num_points}] or [M, C], got {np.shape(values)}")
    return v.astype(np.float64), flat


def raht_forward_plan(plan: RahtPlan, values: np.ndarray) -> np.ndarray:
    """Coefficients (float64 [M, C], coefficient order) of ``values`` [M, C] (rows = plan's points)."""
    v, flat = _check_values(plan, values, "values")
    v = v[plan.order]
    highs = []
    for st in plan.steps:
        x1 = v[st.left]
        x2 = v[st.left + 1]
        a = st.a[:, None]
        b = st.b[:, None]
        low = a * x1 + b * x2
        highs.append(a * x2 - b * x1)
        v = v[st.starts]
        v[st.pair_out] = low
    out = np.concatenate([v] + highs[::-1], axis=0)
    return out[:, 0] if flat else out


def raht_inverse_plan(plan: RahtPlan, coeffs: np.ndarray) -> np.ndarray:
    """Values (float64 [M, C], rows = plan's points) of coefficients ``coeffs`` [M, C]."""
    c, flat = _check_values(plan, coeffs, "coeffs")
    sizes = [len(st.left) for st in reversed(plan.steps)]
    bounds = np.cumsum([1] + sizes)
    highs = [c[bounds[i]:bounds[i + 1]] for i in range(len(sizes))][::-1]  # forward step order
    v = c[:1]
    for st, high in zip(reversed(plan.steps), reversed(highs)):
        low = v[st.pair_out]
        a = st.a[:, None]
        b = st.b[:, None]
        prev = np.empty((st.num_in, c.shape[1]), dtype=np.float64)
        prev[st.starts] = v
        prev[st.left] = a * low - b * high
        prev[st.left + 1] = b * low + a * high
        v = prev
    out = np.empty_like(v)
    out[plan.order] = v
    return out[:, 0] if flat else out


def raht_forward(coords: np.ndarray, depth: int, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """RAHT of ``values`` [M, C] on points ``coords`` [M, 3] (unique, in [0, 2^depth), any row
    order; callers use Morton order).  Returns (coefficients float64 [M, C] in the module's
    coefficient order, their weights int64 [M])."""
    plan = build_plan(coords, depth)
    return raht_forward_plan(plan, values), plan.coeff_weights


def raht_inverse(coords: np.ndarray, depth: int, coeffs: np.ndarray) -> np.ndarray:
    """Inverse RAHT: values float64 [M, C] in the row order of ``coords`` [M, 3]."""
    return raht_inverse_plan(build_plan(coords, depth), coeffs)
