// Denormalization (see attributes.h).
#include "attributes.h"

#include <limits>
#include <vector>

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
  // per point a flat run of 3 K values with the per-value std and mean laid out alike, so the
  // loop is branch-free and vectorizes.  Without a gain map the factor is 1.0: v * 1.0 is v
  // exactly, so (v * 1.0) * std is the reference's v * std.
  const int W = 3 * K;
  std::vector<double> sd(W), mn(W);
  for (int k = 0; k < K; ++k)
    for (int c = 0; c < 3; ++c) {
      sd[k * 3 + c] = std[k];
      mn[k * 3 + c] = mean[k * 3 + c];
    }
  const double* __restrict s = sd.data();
  const double* __restrict m = mn.data();
  for (int64_t n = 0; n < M; ++n) {
    const float* x = sh_norm + n * W;
    float* out = sh + n * W;
    const double g = gain ? gain[n] : 1.0;
    for (int i = 0; i < W; ++i) out[i] = static_cast<float>((static_cast<double>(x[i]) * g) * s[i] + m[i]);
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
