// The gain map; see gain_map.h and ralhe_me/decode/gain_map.py.
#include "gain_map.h"

#include <cmath>
#include <string>

#include "categorical.h"
#include "octree.h"

namespace ralhe {

double gain_of_exponent(int e) {
  const int q = e >= 0 ? e / 2 : -((1 - e) / 2);  // floor(e / 2)
  const int r = e - 2 * q;                          // 0 or 1
  return std::ldexp(r ? std::sqrt(2.0) : 1.0, q);
}

std::vector<int32_t> decode_gain_map(Bytes section, int64_t num_voxels) {
  std::vector<int32_t> e;
  try {
    StaticCategoricalDecoder dec(section, 2 * kGainLimit + 1);
    if (dec.num_symbols() != num_voxels)
      corrupt("gain map holds " + std::to_string(dec.num_symbols()) + " voxels, the positions give " +
              std::to_string(num_voxels));
    e.resize(size_t(num_voxels));
    dec.decode_same(0, num_voxels, e.data());
    dec.finish();
  } catch (const Error& err) {
    if (err.kind() != ErrorKind::kCorrupt) throw;
    corrupt(std::string("gain map: ") + err.what());
  }
  for (int32_t& v : e) v -= kGainLimit;
  return e;
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
