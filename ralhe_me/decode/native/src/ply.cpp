#include "ply.h"

#include <algorithm>
#include <cstring>

#include "common.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the .ply writer copies float32 as they are in memory: little-endian hosts only"
#endif

namespace ralhe {

std::string ply_header(int64_t n, int num_sh) {
  // plyfile's header for PlyElement.describe of a record array of "<f4" fields, in write_ply's order
  std::string h = "ply\nformat binary_little_endian 1.0\nelement vertex " + std::to_string(n) + "\n";
  auto prop = [&h](const std::string& name) { h += "property float " + name + "\n"; };
  prop("x");
  prop("y");
  prop("z");
  for (int c = 0; c < 3; ++c) prop("f_dc_" + std::to_string(c));
  for (int i = 0; i < 3 * (num_sh - 1); ++i) prop("f_rest_" + std::to_string(i));
  prop("opacity");
  for (int c = 0; c < 3; ++c) prop("scale_" + std::to_string(c));
  for (int c = 0; c < 4; ++c) prop("rot_" + std::to_string(c));
  h += "end_header\n";
  return h;
}

size_t ply_row_bytes(int num_sh) { return 4 * size_t(11 + 3 * num_sh); }

void ply_rows(const PlyModel& m, int64_t begin, int64_t end, uint8_t* out) {
  const int k = m.num_sh;
  std::vector<float> row(11 + 3 * size_t(k));
  for (int64_t i = begin; i < end; ++i) {
    float* r = row.data();
    const float* sh = m.sh + size_t(i) * k * 3;
    for (int c = 0; c < 3; ++c) *r++ = m.means[3 * i + c];
    for (int c = 0; c < 3; ++c) *r++ = sh[c];
    // INRIA's f_rest is channel-major: f_rest_{c * (K - 1) + (k - 1)} = sh[k][c]
    for (int c = 0; c < 3; ++c)
      for (int j = 1; j < k; ++j) *r++ = sh[3 * j + c];
    *r++ = m.opacity_logits[i];
    for (int c = 0; c < 3; ++c) *r++ = m.log_scales[3 * i + c];
    for (int c = 0; c < 4; ++c) *r++ = m.quats[4 * i + c];
    std::memcpy(out, row.data(), row.size() * 4);
    out += row.size() * 4;
  }
}

std::vector<uint8_t> ply_bytes(const PlyModel& m) {
  std::string h = ply_header(m.n, m.num_sh);
  size_t row = ply_row_bytes(m.num_sh);
  std::vector<uint8_t> out(h.size() + row * size_t(m.n));
  std::memcpy(out.data(), h.data(), h.size());
  constexpr int64_t kChunk = 4096;  // rows per call (see RALHE_NOINLINE in common.h)
  for (int64_t i = 0; i < m.n; i += kChunk)
    ply_rows(m, i, std::min(m.n, i + kChunk), out.data() + h.size() + row * size_t(i));
  return out;
}

}  // namespace ralhe
