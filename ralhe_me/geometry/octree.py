"""Morton codes, voxelization on a cube grid, and the octree level hierarchy.

A Morton code interleaves the bits of integer voxel coordinates, ``x`` in the most
significant bit of each 3-bit group: sorting by it is a breadth-first octree traversal, so
the voxels of level ``l`` (coordinates shifted right by ``l``) in Morton order are the
sorted unique values of ``code >> 3l``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import numpy as np

from ..gaussians import OPACITY_EPS, GaussianModel

MAX_DEPTH = 21  # 3 * 21 = 63 bits fit an int64 Morton code
MIN_AUTO_DEPTH = 8  # the shallowest depth the automatic depth choices try


class OctreeError(ValueError):
    """Invalid octree or voxelization input; the message says what is wrong."""


# ---------------------------------------------------------------- Morton codes

def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Insert two zero bits between the low 21 bits of ``v`` (int64)."""
    v = v.astype(np.int64) & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def _compact_bits(v: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_spread_bits`."""
    v = v.astype(np.int64) & 0x1249249249249249
    v = (v | (v >> 2)) & 0x10C30C30C30C30C3
    v = (v | (v >> 4)) & 0x100F00F00F00F00F
    v = (v | (v >> 8)) & 0x1F0000FF0000FF
    v = (v | (v >> 16)) & 0x1F00000000FFFF
    v = (v | (v >> 32)) & 0x1FFFFF
    return v


def morton_encode(coords: np.ndarray) -> np.ndarray:
    """Morton codes (int64 [N]) of non-negative integer coordinates ``coords`` [N, 3] < 2^21."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise OctreeError(f"coords must have shape [N, 3], got {coords.shape}")
    if coords.size and (coords.min() < 0 or coords.max() >= (1 << MAX_DEPTH)):
        raise OctreeError(f"coords must lie in [0, 2^{MAX_DEPTH}); got range [{coords.min()}, {coords.max()}]")
    c = coords.astype(np.int64)
    return (_spread_bits(c[:, 0]) << 2) | (_spread_bits(c[:, 1]) << 1) | _spread_bits(c[:, 2])


def morton_decode(codes: np.ndarray) -> np.ndarray:
    """Integer coordinates (int64 [N, 3]) of Morton codes ``codes`` [N]."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.stack([_compact_bits(codes >> 2), _compact_bits(codes >> 1), _compact_bits(codes)], axis=1)


# ---------------------------------------------------------------- voxelization

@dataclass(frozen=True)
class Contraction:
    """The far field at coarser precision. A position p maps to y = (p - center) / radius, kept
    as is inside the foreground cube |y|_inf <= 1; outside, along the same ray from the center,
    |y|_inf = s becomes 1 + ln(s), so the farthest Gaussian (s = e^log_range) lands on the
    boundary of the cube [-(1 + log_range), 1 + log_range]^3 that the grid covers.

    Why a logarithm: seen from the foreground, a voxel outside it then subtends the same angle at
    any distance as a voxel at the foreground's edge (its world size grows as the distance, and
    the map is continuous with slope 1 at the edge), and the whole far field up to a distance D
    costs only about log2(1 + ln D) octree levels. A plain cube around every Gaussian instead
    gives far and near the same world precision, so a few far Gaussians set the voxel size of the
    whole scene: 20 of 20,000 Gaussians 1e5 radii away merge the plain-cube scene into 44 voxels
    even at depth 18. Every operation is float64 numpy, elementwise, so encoder and decoder agree."""

    center: tuple  # 3 float32-exact floats
    radius: float  # half side of the foreground cube (float32-exact)
    log_range: float  # ln of the farthest Gaussian's |y|_inf (float32-exact, > 0)

    def __post_init__(self) -> None:
        c = np.asarray(self.center, dtype=np.float64)
        if c.shape != (3,) or not np.all(np.isfinite(c)) or not (np.isfinite(self.radius) and self.radius > 0) \
                or not (np.isfinite(self.log_range) and 0 < self.log_range <= 700):
            raise OctreeError(f"a contraction needs a finite center [3], a positive radius and a log range in "
                              f"(0, 700], got {self.center!r}, {self.radius!r}, {self.log_range!r}")

    @property
    def half_extent(self) -> float:
        """Half side of the contracted cube."""
        return 1.0 + self.log_range

    def forward(self, means: np.ndarray) -> np.ndarray:  # [N, 3] -> [N, 3] within the cube
        y = (np.asarray(means, dtype=np.float64) - np.asarray(self.center)) / self.radius
        norm = np.abs(y).max(axis=1, keepdims=True)
        far = norm > 1.0
        safe = np.where(far, norm, 1.0)
        return np.where(far, y * ((1.0 + np.log(safe)) / safe), y)

    def inverse(self, z: np.ndarray) -> np.ndarray:  # [N, 3] within the cube -> world [N, 3]
        z = np.asarray(z, dtype=np.float64)
        norm = np.abs(z).max(axis=1, keepdims=True)
        far = norm > 1.0
        safe = np.where(far, norm, 1.0)
        y = np.where(far, z * (np.exp(safe - 1.0) / safe), z)
        return np.asarray(self.center) + self.radius * y


@dataclass
class VoxelGrid:
    """A cube of side ``extent`` at ``origin`` cut into 2^depth voxels per axis; with a
    ``contraction`` the cube lies in contracted space and positions pass through the map."""

    origin: np.ndarray  # [3] float64, corner of the cube
    extent: float  # side length of the cube
    depth: int
    contraction: Optional[Contraction] = None

    @property
    def step(self) -> float:
        """Side of a voxel in the grid's own space (contracted space, for a contracted grid)."""
        return self.extent / float(1 << self.depth)

    @property
    def voxel_size(self) -> float:
        """Side of a voxel in world units (in the foreground cube, for a contracted grid)."""
        return self.step * self.contraction.radius if self.contraction is not None else self.step

    @classmethod
    def bounding(cls, means: np.ndarray, depth: int, contraction: Optional[Contraction] = None) -> "VoxelGrid":
        """The smallest axis-aligned cube holding ``means`` [N, 3] (float32-exact parameters); with a
        ``contraction``, the whole cube of contracted space."""
        if not 1 <= depth <= MAX_DEPTH:
            raise OctreeError(f"depth must be in 1..{MAX_DEPTH}, got {depth}")
        if contraction is not None:
            half = contraction.half_extent
            return cls(origin=np.full(3, -half), extent=2.0 * half, depth=depth, contraction=contraction)
        lo = means.min(axis=0).astype(np.float32).astype(np.float64)
        ext = float(np.float32((means.max(axis=0) - lo).max()))
        ext = float(np.nextafter(np.float32(max(ext, 1e-6)), np.float32(np.inf)))
        return cls(origin=lo, extent=ext, depth=depth)

    def quantize(self, means: np.ndarray) -> np.ndarray:
        """Integer voxel coordinates (int64 [N, 3]) of positions ``means`` [N, 3]."""
        y = self.contraction.forward(means) if self.contraction is not None else means.astype(np.float64)
        q = np.floor((y - self.origin) / self.step)
        return np.clip(q, 0, (1 << self.depth) - 1).astype(np.int64)

    def centers(self, coords: np.ndarray) -> np.ndarray:
        """World positions (float32 [N, 3]) of the centers of voxels ``coords`` [N, 3]."""
        y = self.origin + (coords.astype(np.float64) + 0.5) * self.step
        if self.contraction is not None:
            y = self.contraction.inverse(y)
        return y.astype(np.float32)


#: The far field is contracted when the bounding cube is more than this many times the side of
#: the foreground cube (below it, object-centred scenes keep the plain grid and their bytes).
CONTRACTION_MIN_RATIO = 4.0
#: The foreground cube holds this fraction of the Gaussians (L-inf distance from their median).
FOREGROUND_FRACTION = 0.95


def far_field_contraction(means: np.ndarray,  # [N, 3]
                          fraction: float = FOREGROUND_FRACTION,
                          min_ratio: float = CONTRACTION_MIN_RATIO) -> Optional[Contraction]:
    """The contraction for a scene whose far Gaussians would set the cube of all, or None.

    The foreground is the cube around the per-axis median holding ``fraction`` of the Gaussians;
    contraction pays off when the bounding cube is ``min_ratio`` times its side or more."""
    means = np.asarray(means, dtype=np.float64)
    if len(means) < 20 or not 0 < fraction < 1:
        return None
    center = np.median(means, axis=0).astype(np.float32).astype(np.float64)
    dist = np.abs(means - center).max(axis=1)
    radius = float(np.float32(np.quantile(dist, fraction)))
    if not radius > 0:
        return None
    if (means.max(axis=0) - means.min(axis=0)).max() < min_ratio * 2.0 * radius:
        return None
    # float32-exact, rounded up so that the farthest Gaussian stays inside the cube
    log_range = float(np.nextafter(np.float32(np.log(dist.max() / radius)), np.float32(np.inf)))
    return Contraction(center=tuple(float(v) for v in center), radius=radius, log_range=log_range)


@dataclass
class VoxelizedModel:
    """Gaussians merged per voxel, in Morton order, with their integer coordinates."""

    model: GaussianModel  # means are voxel centers
    coords: np.ndarray  # [M, 3] int64 voxel coordinates, Morton-sorted, unique
    grid: VoxelGrid
    source_index: np.ndarray  # [N] for each input Gaussian, the row of its voxel in ``model`` (-1: left out)

    @property
    def left_out(self) -> int:
        """How many input Gaussians have no voxel (the encoder leaves out those no rasterizer draws)."""
        return int(np.count_nonzero(self.source_index < 0))

    @property
    def depth(self) -> int:
        return self.grid.depth


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, OPACITY_EPS, 1 - OPACITY_EPS)
    return np.log(p) - np.log1p(-p)


def voxelize(model: GaussianModel, depth: int, grid: Optional[VoxelGrid] = None) -> VoxelizedModel:
    """Snap the Gaussians to voxel centers at ``depth`` and merge those sharing a voxel.

    Merge rules (those of GPCC-GS): SH coefficients are averaged; opacity is averaged after
    the sigmoid and mapped back to a logit; the scale is that of the Gaussian with the
    largest volume (sum of log-scales); the rotation is the sign-aligned average of the
    normalized quaternions, renormalized. Normals, if present, are averaged.
    """
    if len(model) == 0:
        raise OctreeError("cannot voxelize an empty model")
    model.check_finite()
    grid = grid or VoxelGrid.bounding(model.means, depth)
    coords = grid.quantize(model.means)
    codes = morton_encode(coords)
    uniq, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    m = len(uniq)
    cnt = counts.astype(np.float64)

    def mean_rows(values: np.ndarray) -> np.ndarray:  # values [N, ...]
        flat = values.reshape(len(values), -1).astype(np.float64)
        out = np.zeros((m, flat.shape[1]))
        np.add.at(out, inverse, flat)
        return (out / cnt[:, None]).reshape((m,) + values.shape[1:])

    sh = mean_rows(model.sh)
    opacity = mean_rows(_sigmoid(model.opacity_logits.astype(np.float64))[:, None])[:, 0]
    # Largest volume per voxel: sort by (voxel, volume) and take the last of each run.
    volume = model.log_scales.astype(np.float64).sum(axis=1)
    order = np.lexsort((volume, inverse))
    last = order[np.cumsum(counts) - 1]
    log_scales = model.log_scales[last]
    q = model.quats.astype(np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    ref = q[last][inverse]  # align signs with the largest Gaussian's quaternion
    q = np.where((q * ref).sum(axis=1, keepdims=True) < 0, -q, q)
    quats = mean_rows(q)
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.where(norm > 1e-12, quats / np.maximum(norm, 1e-12), q[last])
    normals = None if model.normals is None else mean_rows(model.normals)
    vcoords = morton_decode(uniq)
    merged = GaussianModel(
        means=grid.centers(vcoords),
        log_scales=log_scales,
        quats=quats,
        opacity_logits=_logit(opacity),
        sh=sh,
        normals=normals,
    )
    return VoxelizedModel(model=merged, coords=vcoords, grid=grid, source_index=inverse.astype(np.int64))


def occupied_voxel_count(means: np.ndarray, depth: int, contraction: Optional[Contraction] = None) -> int:
    """How many voxels of the bounding cube (or contracted cube) at ``depth`` hold at least one of ``means``."""
    grid = VoxelGrid.bounding(means, depth, contraction)
    return int(len(np.unique(morton_encode(grid.quantize(means)))))


def choose_depth(means: np.ndarray, max_merge_fraction: float = 0.05, min_depth: int = MIN_AUTO_DEPTH,
                 max_depth: int = 18, contraction: Optional[Contraction] = None) -> int:
    """Smallest depth in [min_depth, max_depth] at which at most ``max_merge_fraction`` of
    the Gaussians are merged away (1 - voxels / Gaussians); ``max_depth`` if none is."""
    n = len(means)
    if n == 0:
        raise OctreeError("cannot choose a depth for an empty model")
    if not 0.0 <= max_merge_fraction < 1.0:
        raise OctreeError(f"max_merge_fraction must be in [0, 1), got {max_merge_fraction}")
    for depth in range(min_depth, max_depth + 1):
        if 1.0 - occupied_voxel_count(means, depth, contraction) / n <= max_merge_fraction:
            return depth
    return max_depth


# ---------------------------------------------------------------- levels

def level_voxels(codes: np.ndarray,  # [M] int64 sorted Morton codes of the finest voxels
                 level: int) -> Tuple[np.ndarray, np.ndarray]:
    """(Morton codes [V] of the occupied voxels of ``level``, each point's voxel row [M]).
    The shifted codes stay sorted, so unique-with-inverse is a run-length labelling."""
    shifted = codes >> (3 * level)
    starts = np.ones(len(shifted), dtype=bool)
    starts[1:] = shifted[1:] != shifted[:-1]
    return shifted[starts], np.cumsum(starts) - 1


@dataclass
class OctreeLevels:
    """The L-level hierarchy of Morton-sorted unique voxels ``coords`` at depth J.

    ``coords[l]`` [M_l, 3] are the occupied voxels of level l (finest-grid coordinates
    shifted right by l) in Morton order; ``point_to_voxel[l]`` [M_0] gives, for each
    finest-level voxel, the row of its ancestor at level l.
    """

    coords: List[np.ndarray]
    point_to_voxel: List[np.ndarray]
    depth: int

    @property
    def num_levels(self) -> int:
        return len(self.coords)

    @property
    def sizes(self) -> List[int]:
        return [len(c) for c in self.coords]

    @classmethod
    def build(cls, coords: np.ndarray, num_levels: int, depth: int) -> "OctreeLevels":
        """``coords`` [M, 3] must be unique and in Morton order (as :func:`voxelize` returns)."""
        if num_levels < 1:
            raise OctreeError(f"num_levels must be >= 1, got {num_levels}")
        if num_levels > depth + 1:
            raise OctreeError(f"num_levels={num_levels} exceeds depth + 1 = {depth + 1}")
        codes = morton_encode(coords)
        if len(codes) > 1 and not np.all(codes[1:] > codes[:-1]):
            raise OctreeError("coords must be unique and sorted in Morton order")
        level_coords, p2v = [], []
        for level in range(num_levels):
            voxel_codes, point_to_voxel = level_voxels(codes, level)
            level_coords.append(morton_decode(voxel_codes))
            p2v.append(point_to_voxel)
        return cls(coords=level_coords, point_to_voxel=p2v, depth=depth)

    def parent_index(self, level: int) -> np.ndarray:
        """For each voxel of ``level`` (< L-1), the row of its parent at ``level + 1``."""
        first = np.searchsorted(self.point_to_voxel[level], np.arange(len(self.coords[level])))
        return self.point_to_voxel[level + 1][first]

    def sparse_tensors(self, features: Optional[List["np.ndarray"]] = None):
        """The levels as MinkowskiEngine sparse tensors (tensor stride 2^l, batch 0) sharing
        one coordinate manager; ``features[l]`` [M_l, C] defaults to ones."""
        import torch

        from ..compat import import_minkowski

        me = import_minkowski()
        manager = None
        out = []
        for level, c in enumerate(self.coords):
            stride = 1 << level
            bc = np.concatenate([np.zeros((len(c), 1), np.int64), c * stride], axis=1)
            feats = np.ones((len(c), 1), np.float32) if features is None else features[level]
            st = me.SparseTensor(
                features=torch.as_tensor(feats, dtype=torch.float32),
                coordinates=torch.as_tensor(bc, dtype=torch.int32),
                tensor_stride=stride,
                coordinate_manager=manager,
            )
            manager = st.coordinate_manager
            out.append(st)
        return out


def with_model(vox: VoxelizedModel, model: GaussianModel) -> VoxelizedModel:
    """``vox`` with its attributes replaced by ``model`` (same voxels, e.g. after finetuning)."""
    if len(model) != len(vox.coords):
        raise OctreeError(f"model has {len(model)} Gaussians, the voxel grid {len(vox.coords)}")
    return replace(vox, model=model)
