// The binary little-endian INRIA 3DGS .ply of a decoded model, byte for byte what
// ralhe_me/gaussians.py write_ply writes (through plyfile) for a model without normals, as
// `ralhe decode` writes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ralhe {

// The arrays of a model (float32, point-major); num_sh in {1, 4, 9, 16}.
struct PlyModel {
  int64_t n = 0;
  int num_sh = 1;
  const float* means = nullptr;           // [n, 3]
  const float* log_scales = nullptr;      // [n, 3]
  const float* quats = nullptr;           // [n, 4]
  const float* opacity_logits = nullptr;  // [n]
  const float* sh = nullptr;              // [n, num_sh, 3]
};

std::string ply_header(int64_t n, int num_sh);            // "ply\n...end_header\n"
size_t ply_row_bytes(int num_sh);                          // 4 * (11 + 3 * num_sh): xyz, f_dc, f_rest, opacity, scales, rot
// Rows [begin, end) into `out` (ply_row_bytes * (end - begin) bytes).
void ply_rows(const PlyModel& m, int64_t begin, int64_t end, uint8_t* out);
std::vector<uint8_t> ply_bytes(const PlyModel& m);         // header + all rows

}  // namespace ralhe
