// Octree levels and voxel centers; see octree.h and ralhe_me/geometry/octree.py.
#include "octree.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "det_math.h"

namespace ralhe {

int64_t level_voxels(const int64_t* codes, int64_t m, int level, int32_t* point_to_voxel) {
  if (level < 0 || level > kMaxDepth) fail(ErrorKind::kInvalidArgument, "octree level must be in [0, 21]");
  if (m > int64_t(std::numeric_limits<int32_t>::max())) corrupt("more than 2**31 voxels");
  const int shift = 3 * level;
  int64_t count = 0, prev = 0;
  for_chunks(m, 8192, [&](int64_t b, int64_t e) {
    int64_t c = count, p = prev;  // locals: the loop keeps them in registers
    for (int64_t i = b; i < e; ++i) {
      const int64_t s = codes[i] >> shift;
      if (i == 0 || s != p) ++c;
      p = s;
      point_to_voxel[i] = int32_t(c - 1);
    }
    count = c;
    prev = p;
  });
  return count;
}

OctreeLevels build_octree_levels(const int64_t* codes, int64_t m, int num_levels, int depth) {
  if (num_levels < 1) corrupt("num_levels must be >= 1, got " + std::to_string(num_levels));
  if (depth < 0 || depth > kMaxDepth) corrupt("depth must be in [0, 21], got " + std::to_string(depth));
  if (num_levels > depth + 1)
    corrupt("num_levels=" + std::to_string(num_levels) + " exceeds depth + 1 = " + std::to_string(depth + 1));
  bool sorted = true;
  for_chunks(m, 8192, [&](int64_t b, int64_t e) {
    for (int64_t i = b > 0 ? b : 1; i < e; ++i) sorted &= codes[i] > codes[i - 1];
  });
  if (!sorted) corrupt("coords must be unique and sorted in Morton order");
  OctreeLevels levels;
  levels.sizes.resize(size_t(num_levels));
  levels.point_to_voxel.resize(size_t(num_levels));
  for (int l = 0; l < num_levels; ++l) {
    levels.point_to_voxel[l].resize(size_t(m));
    levels.sizes[l] = level_voxels(codes, m, l, levels.point_to_voxel[l].data());
  }
  return levels;
}

void check_grid(const VoxelGrid& grid) {
  if (grid.depth < 0 || grid.depth > kMaxDepth) corrupt("grid depth must be in [0, 21], got " + std::to_string(grid.depth));
  if (!grid.contracted) return;
  const Contraction& c = grid.contraction;
  const bool ok = std::isfinite(c.center[0]) && std::isfinite(c.center[1]) && std::isfinite(c.center[2]) &&
                  std::isfinite(c.radius) && c.radius > 0 && std::isfinite(c.log_range) && c.log_range > 0 &&
                  c.log_range <= 700;
  if (!ok) corrupt("a contraction needs a finite center [3], a positive radius and a log range in (0, 700]");
}

namespace {

// np.exp's range handling around det_exp (which needs |x| <~ 700 and a number): valid grids stay
// below 700; others get inf or NaN as numpy gives them, never an undefined conversion.
inline double exp_checked(double x) {
  if (x != x) return x;
  if (x > 710.0) return std::numeric_limits<double>::infinity();
  if (x < -746.0) return 0.0;
  return det_exp(x);
}

// np.maximum: NaN if either is NaN.
inline double nan_max(double a, double b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }

}  // namespace

void voxel_centers_f64(const VoxelGrid& grid, const int32_t* coords, int64_t m, double* out) {
  check_grid(grid);
  const double step = grid.extent / double(uint64_t(1) << grid.depth);  // VoxelGrid.step
  const Contraction& c = grid.contraction;
  for (int64_t i = 0; i < m; ++i) {
    double y[3];
    for (int a = 0; a < 3; ++a) y[a] = grid.origin[a] + (double(coords[3 * i + a]) + 0.5) * step;
    if (grid.contracted) {  // Contraction.inverse, operation for operation
      const double norm = nan_max(nan_max(std::fabs(y[0]), std::fabs(y[1])), std::fabs(y[2]));
      if (norm > 1.0) {
        const double f = exp_checked(norm - 1.0) / norm;
        for (int a = 0; a < 3; ++a) y[a] = y[a] * f;
      }
      for (int a = 0; a < 3; ++a) y[a] = c.center[a] + c.radius * y[a];
    }
    for (int a = 0; a < 3; ++a) out[3 * i + a] = y[a];
  }
}

void voxel_centers(const VoxelGrid& grid, const int32_t* coords, int64_t m, float* out) {
  check_grid(grid);
  constexpr int64_t kChunk = 256;  // rows per pass: no [m, 3] double buffer, a small stack one (wasm)
  double buffer[3 * kChunk];
  for (int64_t start = 0; start < m; start += kChunk) {
    const int64_t rows = std::min(kChunk, m - start);
    voxel_centers_f64(grid, coords + 3 * start, rows, buffer);
    for (int64_t j = 0; j < 3 * rows; ++j) out[3 * start + j] = float(buffer[j]);
  }
}

}  // namespace ralhe
