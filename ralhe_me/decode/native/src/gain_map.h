// The importance gain map (ralhe_me/decode/gain_map.py): one exponent e in [-8, 8] per occupied voxel
// of octree level G, coded with the static categorical coder (one context, 17 symbols, e + 8);
// every point below the voxel gets the gain 2^(e / 2).
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"
#include "exponents.h"  // gain_of_exponent

namespace ralhe {

constexpr int kGainLimit = kExponentLimit;  // gain_map.GAIN_LIMIT
constexpr int kMaxGainLevel = 20;  // gain_voxels' bound on the level

// decode_gain_map: the exponents [num_voxels] (in [-8, 8]) of a gain-map section; the stream's
// count is checked against num_voxels before anything is decoded.
std::vector<int32_t> decode_gain_map(Bytes section, int64_t num_voxels);

// gain_voxels + decode_gain_map + point_gains: the gain [m] of every point, for the points'
// sorted Morton codes [m] and the map's octree level (0..20).
std::vector<double> decode_point_gains(Bytes section, const int64_t* codes,  // [m]
                                       int64_t m, int level);

}  // namespace ralhe
