// The covariance section: a VQ codeword per Gaussian plus an entropy-coded scalar residual
// (ralhe_me/geometry/covariance_code.py, covariance_vq.py).
//
// Section: version byte (2: the quaternion residual is the Rodrigues vector of the rotation from
// the codeword, 3 components; 1: the 4 components of q - c, as older files hold); flags byte (0:
// uniform steps; 1: the residual steps are scaled per point by the gain map; 2: by the section's
// own step exponents); float32 steps (log-scale, quaternion); varint length + the VQ stream; with
// flags 2, varint length + one exponent plus 8 per shape (static coder, one context, 17 symbols:
// the gain map's coding, gain 2^(e / 2)); if a step is nonzero: per coded component (3
// log-scales if that step > 0, then the 3 or 4 quaternion components if that one is) its zigzag
// offset (varint), the common span (varint) and the residual symbols (static categorical coder,
// one context per component, component-major).
// VQ stream: version byte 1, varints M and K, varint length + the K float16 codewords (high and
// low byte planes of the 7 components: 14 contexts of the static coder, 256 symbols), then the M
// indices (static coder, one context, K symbols).
//
// Reconstruction in float32 exactly as Python: log_scales = codeword + (r * step) * g, with g the
// point's gain (gain map or own exponent) rounded to float32, only when the flags say so; quaternions: t = (r * step) * g,
// then the product c * (1, t) in covariance_code.compose_rotation's order (version 2), or
// codeword + t (version 1).
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"

namespace ralhe {

constexpr int kMaxCodebookSize = 1 << 15;  // covariance_vq.MAX_CODEBOOK_SIZE

// IEEE half -> single (exact).
float half_to_float(uint16_t h);

struct CovarianceCodebook {
  int64_t size = 0;
  std::vector<float> log_scales;  // [K, 3] float16 values
  std::vector<float> quats;       // [K, 4]
};

// decode_covariance_indices: the codebook and the indices [M] of a VQ stream, where M must be
// `expected` (checked from the header, before anything is decoded).
void decode_covariance_indices(Bytes data, int64_t expected, CovarianceCodebook& codebook, std::vector<int32_t>& indices);

// decode_shapes: the n shapes of a covariance section; point_gain [n] (the gain map's per-point
// gains, or nullptr when the file has none) is used only when the section's flag says so.  A
// CorruptDataError if the section is bad, holds another count than n, or needs absent gains.
void decode_shapes(Bytes section, const double* point_gain,  // [n] or nullptr
                   int64_t n, std::vector<float>& log_scales,  // [n, 3]
                   std::vector<float>& quats);                  // [n, 4]

}  // namespace ralhe
