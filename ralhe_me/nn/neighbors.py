"""3x3x3 neighbour maps of a set of voxels, in MinkowskiEngine's kernel order.

The grouped decoder replaces 17 MinkowskiEngine convolutions by gathers over one
precomputed map, so the map must pair exactly the rows MinkowskiEngine pairs: kernel
index ``k`` holds the offset ``(k % 3 - 1, k // 3 % 3 - 1, k // 9 - 1)`` (x fastest, scaled
by the tensor stride) and output voxel ``p`` reads input voxel ``p + offset_k`` (the
``kernel_map`` of a stride-1 convolution whose input and output are the same voxels).
The offsets come in opposite pairs (``offset_{26-k} = -offset_k``).

Only torch and numpy are needed here; MinkowskiEngine is touched only by
:meth:`NeighborMap.from_sparse_tensor`, through the tensor handed to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor

KERNEL_VOLUME = 27
CENTER = 13  # kernel index of the zero offset
_COORD_BITS = 21  # per axis in the hash key: 3 * 21 = 63 bits


class NeighborMapError(ValueError):
    """Invalid voxel set or neighbour map; the message says what is wrong."""


def kernel_offsets(tensor_stride: int = 1) -> Tensor:
    """The 27 offsets of a 3x3x3 kernel in MinkowskiEngine order (x fastest), int64 [27, 3]."""
    k = torch.arange(KERNEL_VOLUME)
    off = torch.stack([k % 3 - 1, k // 3 % 3 - 1, k // 9 - 1], dim=1)
    return off * int(tensor_stride)


def _coords_tensor(coords) -> Tensor:
    c = torch.as_tensor(np.asarray(coords) if not isinstance(coords, Tensor) else coords)
    if c.ndim != 2 or c.shape[1] != 3:
        raise NeighborMapError(f"coords must have shape [N, 3], got {tuple(c.shape)}")
    if c.dtype.is_floating_point or c.dtype == torch.bool:
        raise NeighborMapError(f"coords must be integers, got {c.dtype}")
    return c.to(torch.int64)


NATIVE_API_VERSION = 5  # the interface of _decode_cpu these sources call (its API_VERSION)


def row_set(rows: Tensor,  # [M] int64, each in [0, size]
            size: int) -> Tensor:  # [S] int64
    """The distinct values of ``rows`` below ``size``, sorted (``size``, the empty-neighbour
    sentinel, dropped): a mask and its nonzero entries, linear in M + size where
    ``torch.unique`` sorts (1.3 s for 13M rows on 2 cores, against 0.15 s)."""
    mask = torch.zeros(size + 1, dtype=torch.bool)
    mask[rows] = True
    return mask[:size].nonzero().squeeze(1)


def _native_module():
    """The ``_decode_cpu`` extension (nn/csrc/decode.cpp), or None when it is not built (or built
    from other sources). Imported on first use, so importing this module loads nothing more."""
    from ..native import load_native

    return load_native("ralhe_me.nn._decode_cpu", NATIVE_API_VERSION)


def _bags(rows: Tensor, num_rows: int, native: bool = True):
    """Order pairs by ``rows`` [P] (stable) for ``embedding_bag``: the permutation [P] and
    the start of each row's bag [num_rows] (a counting sort in C++ when built)."""
    module = _native_module() if native else None
    if module is not None:
        order, offsets = module.bags(rows.numpy(), int(num_rows))
        return torch.from_numpy(order), torch.from_numpy(offsets)
    order = torch.sort(rows, stable=True).indices
    counts = torch.bincount(rows, minlength=num_rows)
    offsets = torch.zeros(num_rows, dtype=torch.int64)
    if num_rows > 1:
        offsets[1:] = torch.cumsum(counts, 0)[:-1]
    return order, offsets


@dataclass
class PairGroup:
    """Consecutive kernel offsets whose pairs (``lo:hi`` of :class:`PairPlan`) are summed
    together; ``by_out``/``by_in`` (relative to ``lo``) order them by output/input row and
    ``out_offsets``/``in_offsets`` start each row's bag, for ``embedding_bag``. The input side
    (only the backward pass reads it) is built on first use."""

    lo: int
    hi: int
    by_out: Tensor  # [hi - lo] int64
    out_offsets: Tensor  # [N_out] int64
    in_rows: Tensor = field(repr=False)  # [hi - lo] the pairs' input rows
    num_in: int = field(repr=False, default=0)
    native: bool = field(default=True, repr=False, compare=False)
    _in_bags: Optional[tuple] = field(default=None, repr=False, compare=False)

    def _input_bags(self) -> tuple:
        if self._in_bags is None:
            self._in_bags = _bags(self.in_rows, self.num_in, self.native)
        return self._in_bags

    @property
    def by_in(self) -> Tensor:  # [hi - lo]
        return self._input_bags()[0]

    @property
    def in_offsets(self) -> Tensor:  # [N_in]
        return self._input_bags()[1]


@dataclass
class PairPlan:
    """The neighbour pairs of a convolution, as the grouped convolution walks them.

    Pairs are sorted by kernel offset (offset k at ``starts[k]:starts[k+1]``: MinkowskiEngine's
    in/out maps concatenated), then split into groups of at most ``max_pairs`` pairs (or
    one offset) so the per-pair buffers stay bounded. When ``dense_center`` the zero offset
    pairs every row with itself and is left out (a plain matrix product does it).
    """

    in_rows: Tensor  # [P] int64
    out_rows: Tensor  # [P] int64
    starts: Tensor  # [28] int64
    dense_center: bool
    groups: List[PairGroup]


@dataclass
class ConvMap:
    """Which input row each output row reads at each kernel offset: ``fwd[n, k]`` is the
    input row at ``coord(out n) + offset_k``, or ``num_in`` when that voxel is empty."""

    fwd: Tensor  # [N_out, 27] int64
    num_in: int
    num_out: int
    _plans: dict = field(default_factory=dict, repr=False, compare=False)
    _pairs: Optional[tuple] = field(default=None, repr=False, compare=False)
    _reverse: Optional[tuple] = field(default=None, repr=False, compare=False)

    def reverse(self, module) -> tuple:
        """(offsets [N_in + 1], pairs [P] = n * 27 + k): the pairs reading each input row, by output
        row then offset, from the native ``module`` (the native convolution's backward walks them);
        computed once per map."""
        if self._reverse is None:
            self._reverse = module.conv_reverse(self.fwd.contiguous().numpy(), self.num_in,
                                                threads=torch.get_num_threads())
        return self._reverse

    def _all_pairs(self, native: bool = True) -> tuple:
        """(in rows m [P], out rows n [P], starts [28], dense_center), pairs sorted by kernel
        offset then output row; computed once per map."""
        if self._pairs is None or not native:
            dense_center = self.num_in == self.num_out and bool(
                torch.equal(self.fwd[:, CENTER], torch.arange(self.num_out)))
            module = _native_module() if native else None
            if module is not None:
                m, n, starts = (torch.from_numpy(a) for a in
                                module.conv_pairs(self.fwd.contiguous().numpy(), self.num_in, dense_center))
            else:
                valid = self.fwd < self.num_in  # [N_out, 27]
                if dense_center:
                    valid[:, CENTER] = False
                k, n = torch.nonzero(valid.t(), as_tuple=True)  # sorted by k, then n
                m = self.fwd[n, k]
                starts = torch.searchsorted(k, torch.arange(KERNEL_VOLUME + 1))
            if not native:
                return m, n, starts, dense_center
            self._pairs = (m, n, starts, dense_center)
        return self._pairs

    def pair_plan(self, max_pairs: int = 1 << 62, native: bool = True) -> PairPlan:
        """The pairs split into groups of at most ``max_pairs`` (or one offset). Plans whose
        groups coincide (e.g. every budget above the pair count) are one cached object.
        ``native=False``: the torch construction (the reference; not cached)."""
        m, n, starts, dense_center = self._all_pairs(native)
        ends = starts.tolist()
        bounds, lo = [], 0
        for kk in range(KERNEL_VOLUME):
            if ends[kk + 1] - lo > max_pairs and ends[kk] > lo:
                bounds.append((lo, ends[kk]))
                lo = ends[kk]
        if len(m) > lo:
            bounds.append((lo, len(m)))
        key = tuple(bounds)
        if key not in self._plans or not native:
            groups = [PairGroup(a, b, *_bags(n[a:b], self.num_out, native), m[a:b], self.num_in, native)
                      for a, b in bounds]
            if not native:
                return PairPlan(m, n, starts, dense_center, groups)
            self._plans[key] = PairPlan(m, n, starts, dense_center, groups)
        return self._plans[key]

    @property
    def num_pairs(self) -> int:
        """Neighbour pairs, the zero offset included."""
        return int((self.fwd < self.num_in).sum())


@dataclass
class SubsetPlan:
    """Rows needed to decode ``out_rows`` exactly with two 3x3x3 convolutions.

    The second convolution's outputs (``out_rows``) read the first convolution's outputs
    on ``mid_rows`` (``out_rows`` and their neighbours), which read the point-wise layers'
    outputs on ``in_rows`` (``mid_rows`` and their neighbours). Row sets are sorted.
    """

    in_rows: Tensor  # [N2] int64, rows of the full cloud
    mid_rows: Tensor  # [N1]
    out_rows: Tensor  # [S]
    conv0: ConvMap  # in_rows -> mid_rows
    conv1: ConvMap  # mid_rows -> out_rows


@dataclass
class NeighborMap:
    """The 3x3x3 neighbourhoods of ``N`` voxels: ``table[n, k]`` is the row of the voxel at
    ``coord(n) + offset_k`` or ``N`` when that voxel is empty (``table[n, 13] == n``)."""

    table: Tensor  # [N, 27] int64
    tensor_stride: int = 1
    _conv: Optional[ConvMap] = field(default=None, repr=False, compare=False)
    _checked: bool = field(default=False, repr=False, compare=False)  # built by a validating constructor

    def __post_init__(self):
        if self._checked:
            return
        t = self.table
        if t.ndim != 2 or t.shape[1] != KERNEL_VOLUME or t.dtype != torch.int64:
            raise NeighborMapError(f"table must be int64 [N, 27], got {t.dtype} {tuple(t.shape)}")
        n = len(t)
        if n and (int(t.min()) < 0 or int(t.max()) > n):
            raise NeighborMapError(f"table entries must lie in [0, {n}]")
        if n and not torch.equal(t[:, CENTER], torch.arange(n)):
            raise NeighborMapError("table[:, 13] must be the identity (the zero offset)")

    @property
    def num_points(self) -> int:
        return len(self.table)

    # ------------------------------------------------------------ construction

    @classmethod
    def from_coords(cls, coords, tensor_stride: int = 1) -> "NeighborMap":
        """Build by hashing: each voxel's integer coordinates ``coords`` [N, 3] (unique,
        multiples of ``tensor_stride``) become one int64 key; sorted keys are searched."""
        c = _coords_tensor(coords)
        n = len(c)
        s = int(tensor_stride)
        if s < 1:
            raise NeighborMapError(f"tensor_stride must be >= 1, got {tensor_stride}")
        if n == 0:
            return cls(torch.zeros((0, KERNEL_VOLUME), dtype=torch.int64), s)
        if bool((c % s != 0).any()):
            raise NeighborMapError(f"coords must be multiples of the tensor stride {s}")
        q = torch.div(c, s, rounding_mode="floor")
        q = q - q.min(dim=0).values + 1  # >= 1, so every neighbour has a non-negative key
        if int(q.max()) + 1 >= (1 << _COORD_BITS):
            raise NeighborMapError(f"coordinate span exceeds 2^{_COORD_BITS} - 2 voxels per axis")

        def key(p: Tensor) -> Tensor:  # p [M, 3] int64, each in [0, 2^21)
            return (p[..., 0] << (2 * _COORD_BITS)) | (p[..., 1] << _COORD_BITS) | p[..., 2]

        keys_np = key(q).numpy()
        order_np = np.argsort(keys_np, kind="stable")
        sorted_np = keys_np[order_np]
        if n > 1 and bool((sorted_np[1:] == sorted_np[:-1]).any()):
            raise NeighborMapError("coords must be unique")
        # Each field stays in [0, 2^21) after adding an offset, so keys shift without carries.
        off = kernel_offsets(1)
        shifts = off[:, 0] * (1 << 2 * _COORD_BITS) + off[:, 1] * (1 << _COORD_BITS) + off[:, 2]
        # numpy: its searchsorted and column writes are several times faster than torch's here.
        table = np.empty((KERNEL_VOLUME, n), dtype=np.int64)  # offset-major: contiguous writes
        for k in range(KERNEL_VOLUME):
            if k == CENTER:
                table[k] = np.arange(n)
                continue
            qk = keys_np + int(shifts[k])
            pos = np.minimum(np.searchsorted(sorted_np, qk), n - 1)
            table[k] = np.where(sorted_np[pos] == qk, order_np[pos], n)
        table = torch.from_numpy(np.ascontiguousarray(table.T))
        return cls(table, s)

    @classmethod
    def from_neighbour_rows(cls, rows, offsets, tensor_stride: int = 1, native: bool = True) -> "NeighborMap":
        """Build from known neighbour rows [N, 26] (-1: empty) at the 26 nonzero ``offsets``
        [26, 3] (in units of the stride, any order), e.g. what the octree occupancy decoder
        derives level by level (geometry.occupancy.decode_positions), with no search.
        ``native``: one C++ pass when built (else numpy; same table)."""
        rows = np.asarray(rows)
        offsets = np.asarray(offsets)
        if rows.ndim != 2 or rows.shape[1] != KERNEL_VOLUME - 1 or offsets.shape != (KERNEL_VOLUME - 1, 3):
            raise NeighborMapError(f"rows must be [N, 26] with offsets [26, 3], got {rows.shape}, {offsets.shape}")
        column = {tuple(int(v) for v in o): j for j, o in enumerate(offsets)}
        off = kernel_offsets(1).tolist()
        try:
            perm = [column[tuple(off[k])] for k in range(KERNEL_VOLUME) if k != CENTER]
        except KeyError:
            raise NeighborMapError("offsets must be the 26 nonzero offsets of a 3x3x3 kernel") from None
        n = len(rows)
        module = _native_module() if native else None
        if module is not None:
            try:
                table, m, nb, starts = (torch.from_numpy(a) for a in module.neighbour_table(
                    np.ascontiguousarray(rows, dtype=np.int64), np.asarray(perm, dtype=np.int64)))
            except ValueError as exc:
                raise NeighborMapError(str(exc)) from None
            # the C++ pass checked every entry and found the pairs of conv_map().pair_plan()
            out = cls(table, int(tensor_stride), _checked=True)
            out._conv = ConvMap(table, n, n, _pairs=(m, nb, starts, True))
            return out
        if n and (int(rows.min()) < -1 or int(rows.max()) >= n):
            raise NeighborMapError(f"neighbour rows must lie in [-1, {n})")
        table = np.empty((n, KERNEL_VOLUME), dtype=np.int64)
        others = [k for k in range(KERNEL_VOLUME) if k != CENTER]
        table[:, others] = rows[:, perm]
        table[:, CENTER] = np.arange(n)
        table[table < 0] = n
        return cls(torch.from_numpy(table), int(tensor_stride))

    @classmethod
    def from_sparse_tensor(cls, x) -> "NeighborMap":
        """Build from MinkowskiEngine's own ``kernel_map`` of a stride-1 3x3x3 convolution
        on ``x`` (an ``ME.SparseTensor``, one batch); rows follow ``x.F``."""
        stride = x.tensor_stride
        if len(set(stride)) != 1:
            raise NeighborMapError(f"anisotropic tensor stride {stride} is not supported")
        if x.C.shape[1] != 4:
            raise NeighborMapError(f"expected a 3D sparse tensor, got coordinates {tuple(x.C.shape)}")
        if len(x.C) and int(x.C[:, 0].min()) != int(x.C[:, 0].max()):
            raise NeighborMapError("the sparse tensor holds several batches; pass one")
        n = len(x.F)
        key = x.coordinate_map_key
        kmap = x.coordinate_manager.kernel_map(key, key, stride=1, kernel_size=3)
        table = torch.full((n, KERNEL_VOLUME), n, dtype=torch.int64)
        for k, in_out in kmap.items():
            in_out = in_out.long()
            table[in_out[1], int(k)] = in_out[0]
        return cls(table, int(stride[0]))

    # ------------------------------------------------------------ use

    def conv_map(self) -> ConvMap:
        """The map of a convolution from all N voxels to all N voxels."""
        if self._conv is None:
            self._conv = ConvMap(self.table, self.num_points, self.num_points)
        return self._conv

    def _restrict(self, out_rows: Tensor, in_rows: Tensor) -> ConvMap:
        """Conv map from the sorted rows ``in_rows`` (a superset of the neighbours of
        ``out_rows``) to the sorted rows ``out_rows``."""
        pos_in = torch.full((self.num_points + 1,), len(in_rows), dtype=torch.int64)
        pos_in[in_rows] = torch.arange(len(in_rows))
        return ConvMap(pos_in[self.table[out_rows]], len(in_rows), len(out_rows))

    def dilate(self, rows: Tensor) -> Tensor:
        """Sorted ``rows`` together with all their neighbours."""
        return row_set(self.table[rows].reshape(-1), self.num_points)

    def subset_plan(self, out_rows, native: bool = True) -> SubsetPlan:
        """What a two-convolution decoder must compute to output ``out_rows`` exactly (in one
        C++ pass where built: training draws a plan per step; ``native=False``: torch, the
        reference, with the same plan)."""
        out_rows = torch.as_tensor(out_rows, dtype=torch.int64).reshape(-1)
        if len(out_rows) and (int(out_rows.min()) < 0 or int(out_rows.max()) >= self.num_points):
            raise NeighborMapError(f"out_rows must lie in [0, {self.num_points})")
        out_rows = row_set(out_rows, self.num_points)
        module = _native_module() if native else None
        if module is not None:
            inn, mid, fwd0, fwd1 = (torch.from_numpy(a) for a in module.subset_plan(
                self.table.numpy(), out_rows.numpy(), torch.get_num_threads()))
            return SubsetPlan(inn, mid, out_rows, ConvMap(fwd0, len(inn), len(mid)),
                              ConvMap(fwd1, len(mid), len(out_rows)))
        mid = self.dilate(out_rows)
        inn = self.dilate(mid)
        return SubsetPlan(inn, mid, out_rows, self._restrict(mid, inn), self._restrict(out_rows, mid))


def brute_force_table(coords, tensor_stride: int = 1) -> Tensor:
    """O(N^2) reference of :attr:`NeighborMap.table` for tests."""
    c = _coords_tensor(coords)
    n = len(c)
    off = kernel_offsets(tensor_stride)
    table = torch.full((n, KERNEL_VOLUME), n, dtype=torch.int64)
    diff = c[None, :, :] - c[:, None, :]  # [n, m, 3]: coord(m) - coord(n)
    for k in range(KERNEL_VOLUME):
        hit = (diff == off[k]).all(dim=2)  # [n, m]
        rows, cols = torch.nonzero(hit, as_tuple=True)
        table[rows, k] = cols
    return table
