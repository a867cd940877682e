// Morton codes, the octree level hierarchy and voxel centers (ralhe_me/geometry/octree.py).
//
// A Morton code interleaves the bits of the voxel coordinates, x in the most significant bit of
// each 3-bit group, so sorted codes are a breadth-first octree traversal and the voxels of level
// l (coordinates shifted right by l) are the distinct values of code >> 3l, in Morton order.
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"

namespace ralhe {

constexpr int kMaxDepth = 21;  // octree.MAX_DEPTH: 3 * 21 = 63 bits fit an int64 code

// The low 21 bits of v with two zero bits inserted between each.
inline uint64_t spread_bits(uint64_t v) {
  v &= 0x1FFFFF;
  v = (v | (v << 32)) & 0x1F00000000FFFFull;
  v = (v | (v << 16)) & 0x1F0000FF0000FFull;
  v = (v | (v << 8)) & 0x100F00F00F00F00Full;
  v = (v | (v << 4)) & 0x10C30C30C30C30C3ull;
  v = (v | (v << 2)) & 0x1249249249249249ull;
  return v;
}

inline uint32_t compact_bits(uint64_t v) {
  v &= 0x1249249249249249ull;
  v = (v | (v >> 2)) & 0x10C30C30C30C30C3ull;
  v = (v | (v >> 4)) & 0x100F00F00F00F00Full;
  v = (v | (v >> 8)) & 0x1F0000FF0000FFull;
  v = (v | (v >> 16)) & 0x1F00000000FFFFull;
  v = (v | (v >> 32)) & 0x1FFFFF;
  return uint32_t(v);
}

// Code of coordinates in [0, 2**21).
inline int64_t morton_encode(uint32_t x, uint32_t y, uint32_t z) {
  return int64_t((spread_bits(x) << 2) | (spread_bits(y) << 1) | spread_bits(z));
}

inline void morton_decode(int64_t code, int32_t* xyz /* [3] */) {
  const uint64_t c = uint64_t(code);
  xyz[0] = int32_t(compact_bits(c >> 2));
  xyz[1] = int32_t(compact_bits(c >> 1));
  xyz[2] = int32_t(compact_bits(c));
}

// octree.py level_voxels: the number of distinct codes >> 3 * level (codes sorted) and each
// point's row among them, point_to_voxel [m].
int64_t level_voxels(const int64_t* codes,  // [m] sorted Morton codes of the finest voxels
                     int64_t m, int level, int32_t* point_to_voxel);

// OctreeLevels.build for sorted unique codes: per level l < num_levels the voxel count and each
// finest voxel's row at level l.
struct OctreeLevels {
  std::vector<int64_t> sizes;                        // [L]
  std::vector<std::vector<int32_t>> point_to_voxel;  // [L][m]
};
OctreeLevels build_octree_levels(const int64_t* codes,  // [m] strictly increasing Morton codes
                                 int64_t m, int num_levels, int depth);

// octree.py Contraction: the far field mapped logarithmically into the cube of half side
// 1 + log_range around the foreground cube (center, radius).
struct Contraction {
  double center[3] = {0, 0, 0};
  double radius = 1;
  double log_range = 1;
};

// octree.py VoxelGrid: a cube of side `extent` at `origin` cut into 2**depth voxels per axis,
// in contracted space when `contracted`.
struct VoxelGrid {
  double origin[3] = {0, 0, 0};
  double extent = 1;
  int depth = 0;
  bool contracted = false;
  Contraction contraction;
};

// A CorruptDataError unless depth is in [0, 21] and the contraction (if any) is valid as
// Contraction.__post_init__ requires (finite center, radius > 0, log_range in (0, 700]).
void check_grid(const VoxelGrid& grid);

// VoxelGrid.centers: world positions of the voxel centers, in float64 as numpy computes them
// (exp from det_math.h: numpy's exp may differ by an ulp), rounded to float32.
void voxel_centers(const VoxelGrid& grid, const int32_t* coords,  // [m, 3]
                   int64_t m, float* out);                         // [m, 3]
// The same before the rounding (for tests).
void voxel_centers_f64(const VoxelGrid& grid, const int32_t* coords,  // [m, 3]
                       int64_t m, double* out);                        // [m, 3]

}  // namespace ralhe
