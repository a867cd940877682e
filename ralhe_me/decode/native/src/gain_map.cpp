// The gain map; see gain_map.h and ralhe_me/decode/gain_map.py.
#include "gain_map.h"

#include <string>

#include "octree.h"

namespace ralhe {

std::vector<int32_t> decode_gain_map(Bytes section, int64_t num_voxels) {
  try {
    return decode_exponents(section, num_voxels, [&](int64_t n) {
      return "gain map holds " + std::to_string(n) + " voxels, the positions give " + std::to_string(num_voxels);
    });
  } catch (const Error& err) {
    if (err.kind() != ErrorKind::kCorrupt) throw;
    corrupt(std::string("gain map: ") + err.what());
  }
}

std::vector<double> decode_point_gains(Bytes section, const int64_t* codes, int64_t m, int level) {
  if (level < 0 || level > kMaxGainLevel) corrupt("gain level must be in [0, 20], got " + std::to_string(level));
  std::vector<int32_t> p2v(static_cast<size_t>(m));
  const int64_t num_voxels = level_voxels(codes, m, level, p2v.data());
  const std::vector<int32_t> e = decode_gain_map(section, num_voxels);
  double table[2 * kGainLimit + 1];
  for (int k = -kGainLimit; k <= kGainLimit; ++k) table[k + kGainLimit] = gain_of_exponent(k);
  std::vector<double> gains(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) gains[i] = table[e[p2v[i]] + kGainLimit];
  return gains;
}

}  // namespace ralhe
