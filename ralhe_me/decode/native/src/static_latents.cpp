// The static latents section; see static_latents.h and ralhe_me/entropy/static_latents.py.
#include "static_latents.h"

#include <string>

#include "categorical.h"

namespace ralhe {

std::vector<int32_t> coefficient_levels(const RahtPlan& plan, int depth) {
  const int64_t M = plan.num_points();
  std::vector<int32_t> levels(size_t(M > 0 ? M : 0));
  if (M == 0) return levels;
  levels[0] = depth;
  for (const RahtStep& s : plan.steps)
    for (int64_t g = s.begin; g < s.end; ++g) levels[size_t(1 + g)] = s.bit / 3;
  return levels;
}

LatentPlanes decode_static_latents(Bytes section, int num_planes, int num_attributes, const std::vector<int32_t>& levels) {
  const int64_t M = int64_t(levels.size());
  // contexts as ranks among the levels that occur (scalar.py dense_unique: sorted values)
  int32_t top = 0;
  for (int32_t l : levels) top = l > top ? l : top;
  std::vector<int32_t> rank(size_t(top) + 1, -1);
  for (int32_t l : levels) rank[size_t(l)] = 0;
  int32_t used = 0;
  for (auto& r : rank)
    if (r == 0) r = used++;
  std::vector<int32_t> ranks(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i) ranks[size_t(i)] = rank[size_t(levels[size_t(i)])];

  LatentPlanes planes(static_cast<size_t>(num_planes));
  size_t pos = 0;
  for (int p = 0; p < num_planes; ++p) {
    planes[size_t(p)].resize(size_t(num_attributes) * size_t(M));
    for (int a = 0; a < num_attributes; ++a) {
      const uint64_t length = read_varint(section, pos, "static latents");
      if (length > section.size - pos)
        corrupt("static latents: stream " + std::to_string(a) + " of plane " + std::to_string(p) + " is truncated");
      try {
        decode_static_integers(Bytes(section.data + pos, size_t(length)), ranks.data(), used, M,
                               planes[size_t(p)].data() + size_t(a) * size_t(M));
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kCorrupt) throw;
        corrupt(std::string("static latents: ") + e.what());
      }
      pos += size_t(length);
    }
  }
  if (pos != section.size) corrupt("static latents: " + std::to_string(section.size - pos) + " trailing bytes");
  return planes;
}

}  // namespace ralhe
