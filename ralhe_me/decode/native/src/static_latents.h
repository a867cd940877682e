// The latents of a file whose header says latent_coder "static" (ralhe_me/entropy/static_latents.py):
// for every plane p, for every attribute a, a varint byte length and one stream of
// decode_static_integers (categorical.h) whose contexts are the octree levels of the RAHT
// coefficients.  The arms section is then empty.
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"
#include "latents.h"
#include "raht.h"

namespace ralhe {

// int32 [M] the octree level of every coefficient of `plan` in coefficient order: the DC at
// `depth`, the high-pass coefficient of merge g (position 1 + g) at its step's bit / 3
// (baselines/raht.py RahtPlan.coeff_levels).
std::vector<int32_t> coefficient_levels(const RahtPlan& plan, int depth);

// Per plane the latents, attribute-major int32 [num_attributes * M]; the section must be used
// exactly.  CorruptDataError names what is wrong.
LatentPlanes decode_static_latents(Bytes section, int num_planes, int num_attributes, const std::vector<int32_t>& levels);

}  // namespace ralhe
