// Denormalization (see attributes.h).
#include "attributes.h"

#include <limits>

// No fused multiply-adds even in a build that forgets -ffp-contract=off (every build passes it).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "det_math.h"

namespace ralhe {

void denormalize_sh(const float* sh_norm, int64_t M, int K, const double* mean, const double* std, const double* gain,
                    float* sh) {
  for (int64_t n = 0; n < M; ++n) {
    const float* x = sh_norm + n * K * 3;
    float* out = sh + n * K * 3;
    for (int k = 0; k < K; ++k)
      for (int c = 0; c < 3; ++c) {
        double v = static_cast<double>(x[k * 3 + c]);
        v = gain ? (v * gain[n]) * std[k] : v * std[k];
        out[k * 3 + c] = static_cast<float>(v + mean[k * 3 + c]);
      }
  }
}

void denormalize_opacity_logits(const float* opacity_norm, int64_t M, int K, const double* mean, const double* std,
                                float* logits) {
  const double lo = kOpacityEps, hi = 1.0 - kOpacityEps, s = std[K], m = mean[K * 3];
  for (int64_t n = 0; n < M; ++n) {
    const double a = static_cast<double>(opacity_norm[n]) * s + m;
    if (a != a) {
      logits[n] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const double alpha = a < lo ? lo : (a > hi ? hi : a);
    logits[n] = static_cast<float>(det_log(alpha) - det_log1p(-alpha));
  }
}

}  // namespace ralhe
