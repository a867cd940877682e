"""Lossless octree occupancy coding of voxelized positions, in the manner of MPEG G-PCC.

The octree is coded breadth-first, one level at a time.  Each occupied node at depth ``d`` has an
8-bit occupancy byte (bit ``k`` set if its child octant ``k`` is occupied; octant ``k`` is the
child offset ``(k >> 2 & 1, k >> 1 & 1, k & 1)`` in ``(x, y, z)``, so children in bit order are in
Morton order).  The bytes are binarized: the 8 bits of a node are coded one by one, each with an
adaptive binary context built from information the decoder already has:

* ``k`` and the number of already coded occupied siblings (octants ``< k``); the last bit of a
  node with no occupied sibling so far is 1 and is not coded;
* the occupancy at depth ``d`` of the 7 neighbours of the node that touch octant ``k`` (3 face
  neighbours: count 0..3; 3 edge + 1 vertex neighbours: count 0..4), as in G-PCC's
  neighbour-dependent contexts;
* the number (capped at 3) of the child's 6 face neighbours at depth ``d + 1`` known occupied:
  siblings already coded, and children of face-neighbour nodes already coded.  To know some of
  those, the nodes of a level are coded in 8 groups by coordinate parity, fewest odd coordinates
  first: a face neighbour differs in one parity, so a node with an odd ``x`` (say) has its
  ``x``-neighbours' bytes complete.

All nodes of one (level, parity group, bit ``k``) are one batch, coded vectorized with
:class:`~ralhe_me.entropy.categorical.AdaptiveBatchEncoder`; the per-context counts are halved at
each new level so that statistics follow the level.  Chosen by measurement (donut, 43.7k points at
depth 9, bits per point): static per-level byte histograms with the 6-face-neighbour pattern reach
8.19 before sending their ~13k table entries (about 2 more); adaptive bytes with the face-neighbour count 9.35;
these binary contexts coded level by level without parity groups 9.13, with groups 8.85, plus the
child-level neighbours 8.83.  Richer contexts (level, parent's child count, 26-neighbour count)
or logistic models of the same features gained under 1% or lost: learning more contexts costs
what they save.  ``benchmarks/bench_geometry.py --study`` prints the remaining switches.

Decoding speed: a level's 26-neighbour rows are derived from its parents' (a child's neighbour
is a child of its parent's neighbour: :func:`child_neighbours`), not searched for; the rows of the
finest level are returned too (``decode_positions(..., with_neighbours=True)``) so the attribute
decoder's 3x3x3 neighbour map needs no search either.  The per-level loop (contexts, adaptive
tables, child codes and neighbour rows) runs in C++ when the ``_occupancy_cpu`` extension is built
(geometry/csrc/occupancy.cpp, which reads the rANS symbols with its own reader of CompressAI's
format, or with CompressAI's ``decode_stream``: :data:`RANS_READER`); the numpy loop here, which
decodes with CompressAI, is its reference and fallback, with identical results.

Stream: mode byte, varints ``M`` (points) and ``S`` (coded bits), 16-bit check sum (of all the
rest), rANS segments.
``depth`` is not stored; the caller's container stores it.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ..entropy.categorical import (
                                   AdaptiveBatchDecoder,
                                   AdaptiveBatchEncoder,
                                   CategoricalError,
                                   RANS_READERS,
                                   CorruptStreamError,
                                   RansStreamReader,
                                   read_varint,
                                   write_varint,
                                   )
from ..native import load_native, native_choice
from .octree import MAX_DEPTH, morton_decode, morton_encode


class OccupancyError(ValueError):
    """Invalid positions or depth given to the occupancy coder."""


class OccupancyStreamError(CorruptStreamError):
    """An occupancy stream is corrupt, truncated, or decoded with the wrong depth."""


POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
GROUP_ORDER = (0, 1, 2, 4, 3, 5, 6, 7)  # parity groups (x&1, y&1, z&1) as 3 bits, by popcount
_AXIS_BITS = (4, 2, 1)  # octant / parity bit of x, y, z
# the 26 neighbour offsets, and per octant the indices of its 3 face and 4 edge/vertex neighbours
_OFFSETS = np.array([(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
                     if (dx, dy, dz) != (0, 0, 0)], dtype=np.int64)


def _octant_neighbours() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    face, corner = [], []
    for k in range(8):
        sign = np.array([1 if k & b else -1 for b in _AXIS_BITS])
        touching = np.all((_OFFSETS == 0) | (_OFFSETS == sign), axis=1)
        nonzero = np.count_nonzero(_OFFSETS, axis=1)
        face.append(np.flatnonzero(touching & (nonzero == 1)))
        corner.append(np.flatnonzero(touching & (nonzero > 1)))
    # outward face neighbour of octant k along each axis (the direction its bit points to)
    outward = np.array([[int(np.flatnonzero(np.all(_OFFSETS == np.eye(3, dtype=np.int64)[a] * (1 if k & b else -1),
                                                      axis=1))[0])
                         for a, b in enumerate(_AXIS_BITS)] for k in range(8)])
    return np.array(face), np.array(corner), outward


NEIGHBOUR_OFFSETS = _OFFSETS  # [26, 3] (dx, dy, dz): the column order of neighbour tables
_FACE, _CORNER, _OUTWARD = _octant_neighbours()  # [8, 3], [8, 4], [8, 3] indices into _OFFSETS


def _child_steps() -> Tuple[np.ndarray, np.ndarray]:
    """For a child in octant ``o`` and neighbour offset ``j``: the parent's neighbour holding that
    neighbour (index into _OFFSETS, 26 = the parent itself) and its octant there; [8, 26] each."""
    index = {tuple(int(v) for v in off): j for j, off in enumerate(_OFFSETS)}
    index[(0, 0, 0)] = len(_OFFSETS)
    parent = np.zeros((8, len(_OFFSETS)), dtype=np.int64)
    octant = np.zeros((8, len(_OFFSETS)), dtype=np.int64)
    for o in range(8):
        for j, off in enumerate(_OFFSETS):
            s = [(1 if o & b else 0) + int(d) for b, d in zip(_AXIS_BITS, off)]  # each in -1..2
            parent[o, j] = index[tuple(v >> 1 for v in s)]  # floor(s / 2)
            octant[o, j] = sum(b for b, v in zip(_AXIS_BITS, s) if v & 1)
    return parent, octant


_CHILD_PARENT, _CHILD_OCTANT = _child_steps()


def child_neighbours(neighbour: np.ndarray, occ: np.ndarray) -> np.ndarray:
    """The 26-neighbour rows [m, 26] (-1: empty) of the children of a level, from the level's own
    neighbour rows ``neighbour`` [n, 26] and occupancy bytes ``occ`` [n]: a child's neighbour is a
    child of its parent's neighbour (or of its parent), so no search is needed.  Children are in
    Morton order (parent, then octant), as the decoder creates them."""
    n = len(occ)
    rows, octant = np.nonzero((occ[:, None] >> np.arange(8)) & 1)
    m = len(rows)
    child_row = np.full((n + 1, 8), -1, dtype=np.int64)  # row n: the children of an empty neighbour
    child_row[rows, octant] = np.arange(m)
    ext = np.empty((n, len(_OFFSETS) + 1), dtype=np.int64)
    ext[:, :-1] = neighbour
    ext[:, -1] = np.arange(n)
    ext[ext < 0] = n
    # one gather each: the parent-level row of every (child, offset), then that row's child
    width = len(_OFFSETS) + 1
    par = np.take(ext, (rows * width)[:, None] + _CHILD_PARENT[octant])  # [m, 26]
    par *= 8
    par += _CHILD_OCTANT[octant]
    return np.take(child_row, par)


@dataclass(frozen=True)
class OccupancyConfig:
    """Context model switches (stored in the stream's mode byte)."""

    child_neighbours: bool = True  # use known child-level face neighbours (parity-group order)
    decay_shift: int = 1  # counts >>= decay_shift at each new level (0: never)

    def __post_init__(self) -> None:
        if not 0 <= self.decay_shift <= 7:
            raise OccupancyError(f"decay_shift must be in [0, 7], got {self.decay_shift}")

    @property
    def num_contexts(self) -> int:
        return 8 * 8 * 4 * 5 * (4 if self.child_neighbours else 1)

    def to_byte(self) -> int:
        return (1 << 7) | (int(self.child_neighbours) << 3) | self.decay_shift  # bit 7: format 1

    @classmethod
    def from_byte(cls, byte: int) -> "OccupancyConfig":
        if byte >> 4 != 8:
            raise OccupancyStreamError(f"unknown occupancy stream mode byte {byte:#04x}")
        return cls(child_neighbours=bool(byte >> 3 & 1), decay_shift=byte & 7)


def _axis_steps(codes: np.ndarray, depth: int, axis: int) -> dict:
    """For offsets -1, 0, +1 along ``axis``: (that axis's Morton bits of the moved codes, valid),
    by carry arithmetic on the interleaved bits (no decode/encode)."""
    mask = sum(1 << (3 * i + 2 - axis) for i in range(depth))
    bits = codes & mask
    up = ((bits | ~mask) + 1) & mask  # carries jump over the other axes' bits
    down = (bits - 1) & mask  # borrows likewise
    return {-1: (down, bits != 0), 0: (bits, True), 1: (up, bits != mask)}


def search_neighbours(nodes: np.ndarray, depth: int) -> np.ndarray:
    """Rows [n, 26] (-1: empty) of the 26 neighbours of the sorted node codes ``nodes`` at depth
    ``depth``, by binary search (the reference of child_neighbours)."""
    n = len(nodes)
    neighbour = np.full((n, len(_OFFSETS)), -1, dtype=np.int64)
    if n > 1:
        steps = [_axis_steps(nodes, depth, axis) for axis in range(3)]  # per axis: {-1, 0, +1}
        for j, (dx, dy, dz) in enumerate(_OFFSETS):
            (cx, vx), (cy, vy), (cz, vz) = steps[0][dx], steps[1][dy], steps[2][dz]
            code = cx | cy | cz
            row = np.minimum(np.searchsorted(nodes, code), n - 1)
            neighbour[:, j] = np.where(vx & vy & vz & (nodes[row] == code), row, -1)
    return neighbour


class _LevelContexts:
    """Neighbourhood of the occupied nodes of one level (codes [n] sorted) and the context of each
    (node, octant) bit given the occupancy decoded so far."""

    def __init__(self, nodes: np.ndarray, depth: int, config: OccupancyConfig,
                 neighbour: Optional[np.ndarray] = None):
        """``neighbour`` [n, 26]: the rows of the neighbours if known (child_neighbours), else
        they are searched for."""
        self.config = config
        self.neighbour = neighbour if neighbour is not None else search_neighbours(nodes, depth)
        present = self.neighbour >= 0
        self.faces = present[:, _FACE].sum(axis=2)  # [n, 8] face neighbours touching octant k
        self.corners = present[:, _CORNER].sum(axis=2)  # [n, 8] edge + vertex neighbours
        self.group = nodes & 7  # (x&1, y&1, z&1): Morton's lowest 3 bits
        self.members = {g: np.flatnonzero(self.group == g) for g in GROUP_ORDER}

    def contexts(self, group: int, k: int, occ: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(rows of ``group``'s nodes whose bit ``k`` is coded, their contexts).  ``occ`` [n] holds
        the bits decoded so far: bits < k of this group, all bits of earlier groups."""
        sel = self.members[group]
        mine = occ[sel]
        nprev = POPCOUNT[mine & ((1 << k) - 1)]
        coded = (nprev > 0) | (k != 7)
        sel, mine, nprev = sel[coded], mine[coded], nprev[coded]
        ctx = ((k * 8 + nprev) * 4 + self.faces[sel, k]) * 5 + self.corners[sel, k]
        if self.config.child_neighbours:
            known = np.zeros(len(sel), dtype=np.int64)
            for a, b in enumerate(_AXIS_BITS):
                if k & b:  # inward sibling k ^ b < k: already coded
                    known += (mine >> (k ^ b)) & 1
                if group & b:  # outward neighbour node has one parity fewer: complete
                    nb = self.neighbour[sel, _OUTWARD[k, a]]
                    known += (nb >= 0) & ((occ[np.maximum(nb, 0)] >> (k ^ b)) & 1).astype(bool)
            ctx = ctx * 4 + np.minimum(known, 3)
        return sel, ctx


def _check16(data: bytes) -> bytes:
    return (zlib.crc32(data) & 0xFFFF).to_bytes(2, "little")


def _check_depth(depth: int) -> int:
    if not isinstance(depth, (int, np.integer)) or not 0 <= depth <= MAX_DEPTH:
        raise OccupancyError(f"depth must be an int in [0, {MAX_DEPTH}], got {depth!r}")
    return int(depth)


def _sorted_codes(coords: np.ndarray, depth: int) -> np.ndarray:
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise OccupancyError(f"coords must have shape [M, 3], got {coords.shape}")
    if coords.size and not np.issubdtype(coords.dtype, np.integer):
        raise OccupancyError(f"coords must be integers, got dtype {coords.dtype}")
    if coords.size and (coords.min() < 0 or coords.max() >= (1 << depth)):
        raise OccupancyError(f"coords must lie in [0, 2^{depth}), got range [{coords.min()}, {coords.max()}]")
    codes = np.sort(morton_encode(coords.astype(np.int64)))
    if len(codes) > 1 and np.any(codes[1:] == codes[:-1]):
        raise OccupancyError("coords must be unique (voxelize merges duplicates)")
    return codes


def occupancy_batches(coords: np.ndarray, depth: int, config: OccupancyConfig = OccupancyConfig()
                      ) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
    """(level, bits [n], contexts [n]) in coding order: what the encoder codes (for tests/studies)."""
    depth = _check_depth(depth)
    codes = _sorted_codes(coords, depth)
    if len(codes) == 0:
        return
    levels: List[np.ndarray] = [codes]  # levels[i] = node codes at depth `depth - i`
    for _ in range(depth):
        c = levels[-1] >> 3
        keep = np.ones(len(c), dtype=bool)
        keep[1:] = c[1:] != c[:-1]
        levels.append(c[keep])
    levels.reverse()  # levels[d] = node codes at depth d
    for d in range(depth):
        nodes, children = levels[d], levels[d + 1]
        parent = np.searchsorted(nodes, children >> 3)
        occ = np.bincount(parent, weights=(1 << (children & 7)).astype(np.float64), minlength=len(nodes))
        occ = occ.astype(np.int64)
        ctx = _LevelContexts(nodes, d, config)
        partial = np.zeros_like(occ)
        for g in GROUP_ORDER:
            sel_all = ctx.members[g]
            for k in range(8):
                sel, c = ctx.contexts(g, k, partial)
                yield d, (occ[sel] >> k) & 1, c
                partial[sel_all] |= occ[sel_all] & (1 << k)


def encode_positions(coords: np.ndarray, depth: int, config: OccupancyConfig = OccupancyConfig()) -> bytes:
    """Lossless code of unique integer voxel positions ``coords`` [M, 3] in [0, 2^depth)."""
    depth = _check_depth(depth)
    codes = _sorted_codes(coords, depth)
    enc = AdaptiveBatchEncoder(config.num_contexts, 2)
    level = 0
    for d, bits, ctx in occupancy_batches(morton_decode(codes), depth, config):
        if d != level:
            enc.decay(config.decay_shift)
            level = d
        enc.encode(bits, ctx)
    payload = enc.finish()
    head = bytes([config.to_byte()]) + write_varint(len(codes)) + write_varint(enc.num_symbols)
    return head + _check16(head + payload) + payload


DEFAULT_NATIVE: Optional[bool] = None  # decode_positions' ``native`` when not given (tests switch it)
# How the native loop reads its rANS symbols: "native" (the extension's reader of CompressAI's
# format) or "compressai" (CompressAI's decode_stream, called per batch); tests switch it.
RANS_READER = "native"


def native_available() -> bool:
    """Whether the native decoder loop (the ``_occupancy_cpu`` extension) is built."""
    return _native_module() is not None


NATIVE_API_VERSION = 2  # the interface of _occupancy_cpu these sources call (its API_VERSION)


def _native_module():
    return load_native("ralhe_me.geometry._occupancy_cpu", NATIVE_API_VERSION)


def decode_positions(data: bytes, depth: int, with_neighbours: bool = False, native: Optional[bool] = None):
    """Positions [M, 3] int64 in Morton order from :func:`encode_positions`'s output; with
    ``with_neighbours`` also the rows [M, 26] of each point's 26 neighbours (-1: empty; offsets in
    ``NEIGHBOUR_OFFSETS`` order), which the octree gives for free.  ``native``: run the per-level
    loop in the C++ extension (None: :data:`DEFAULT_NATIVE`, whose None means when it is built;
    True: require it; False: the numpy reference); both give the same result."""
    depth = _check_depth(depth)
    data = bytes(data)
    if not data:
        raise OccupancyStreamError("empty occupancy stream")
    config = OccupancyConfig.from_byte(data[0])
    try:
        num_points, pos = read_varint(data, 1)
        num_bits, pos = read_varint(data, pos)
    except CorruptStreamError as err:
        raise OccupancyStreamError(f"occupancy header: {err}") from None
    if num_points > (1 << (3 * depth)) or num_bits > 8 * num_points * max(depth, 1):
        raise OccupancyStreamError(f"header counts ({num_points} points, {num_bits} bits) impossible at depth {depth}")
    if len(data) < pos + 2:
        raise OccupancyStreamError("occupancy stream is truncated")
    payload = data[pos + 2:]
    if _check16(data[:pos] + payload) != data[pos:pos + 2]:
        raise OccupancyStreamError("occupancy stream fails its check sum (corrupt or truncated)")
    if num_points == 0 or depth == 0:
        if num_bits or payload or num_points > 1:
            raise OccupancyStreamError("occupancy stream has data an empty or depth-0 cloud cannot have")
        coords = np.zeros((num_points, 3), dtype=np.int64)
        return (coords, np.full((num_points, len(_OFFSETS)), -1, dtype=np.int64)) if with_neighbours else coords
    native = DEFAULT_NATIVE if native is None else native
    module = native_choice(native, _native_module, "the native occupancy decoder (ralhe_me.geometry._occupancy_cpu)")
    decode_levels = _decode_levels_python if module is None else _decode_levels_native
    try:
        nodes, neighbour = decode_levels(payload, num_points, num_bits, depth, config, with_neighbours)
    except OccupancyStreamError:
        raise
    except CategoricalError as err:
        raise OccupancyStreamError(f"occupancy payload: {err}") from None
    if len(nodes) != num_points:
        raise OccupancyStreamError(f"decoded {len(nodes)} points, the header says {num_points}")
    if with_neighbours:
        return morton_decode(nodes), neighbour
    return morton_decode(nodes)


def _decode_levels_python(payload: bytes, num_points: int, num_bits: int, depth: int, config: OccupancyConfig,
                          with_neighbours: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(leaf codes [M], their neighbour rows [M, 26] or None): the reference loop, batch by batch."""
    dec = AdaptiveBatchDecoder(payload, num_bits, config.num_contexts, 2)
    nodes = np.zeros(1, dtype=np.int64)
    neighbour = np.full((1, len(_OFFSETS)), -1, dtype=np.int64)  # the root has none
    for d in range(depth):
        if d:
            dec.decay(config.decay_shift)
        ctx = _LevelContexts(nodes, d, config, neighbour)
        occ = np.zeros(len(nodes), dtype=np.int64)
        for g in GROUP_ORDER:
            sel_all = ctx.members[g]
            for k in range(8):
                sel, c = ctx.contexts(g, k, occ)
                bits = dec.decode(c)
                occ[sel_all] |= 1 << k  # uncoded bits (last of an empty node so far) are 1
                occ[sel] ^= (1 - bits) << k
        rows, octant = np.nonzero((occ[:, None] >> np.arange(8)) & 1)
        nodes = (nodes[rows] << 3) | octant
        if len(nodes) > num_points:
            raise OccupancyStreamError(
                f"level {d + 1} decodes {len(nodes)} nodes, more than the {num_points} points")
        if d + 1 < depth or with_neighbours:
            neighbour = child_neighbours(ctx.neighbour, occ)
    dec.finish()
    return nodes, (neighbour if with_neighbours else None)


def _decode_levels_native(payload: bytes, num_points: int, num_bits: int, depth: int, config: OccupancyConfig,
                          with_neighbours: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The same loop in C++ (geometry/csrc/occupancy.cpp), reading the rANS segments that
    RansStreamReader checks with the extension's reader (or CompressAI's decode_stream of each
    segment, per :data:`RANS_READER`)."""
    module = _native_module()
    reader = RansStreamReader(payload, num_bits, 2)
    if RANS_READER not in RANS_READERS:
        raise ValueError(f"RANS_READER must be one of {RANS_READERS}, got {RANS_READER!r}")
    source = reader.segments() if RANS_READER == "native" else reader.next_segment
    try:
        return module.decode_levels(
            source, num_points, num_bits, depth, config.child_neighbours, config.decay_shift,
            config.num_contexts, with_neighbours, _FACE, _CORNER, _OUTWARD, _CHILD_PARENT, _CHILD_OCTANT)
    except module.CorruptStream as err:
        raise OccupancyStreamError(f"occupancy payload: {err}") from None
