// Denormalization of the synthesized signals: normalized SH and opacity -> SH coefficients and
// opacity logits.  Python reference: ralhe_me/attributes.py denormalize_sh and
// denormalize_opacity_logits, the same float64 operations in the same order, except that the
// logarithms are det_math.h's (numpy's log is not the same on every machine).
#pragma once

#include <cstdint>

namespace ralhe {

constexpr double kOpacityEps = 1e-4;  // attributes.py OPACITY_EPS

// sh[n, k, c] = float32((double(sh_norm[n, k, c]) * gain[n]) * std[k] + mean[k, c]), without the
// gain factor when gain is null.  sh_norm, sh [M, K, 3] (may be the same array); mean [K + 1, 3];
// std [K + 1]; gain [M].
void denormalize_sh(const float* sh_norm, int64_t M, int K, const double* mean, const double* std, const double* gain,
                    float* sh);

// logits[n] = float32(det_log(a) - det_log1p(-a)), a = clip(double(opacity_norm[n]) * std[K] +
// mean[K, 0], kOpacityEps, 1 - kOpacityEps); NaN stays (a quiet) NaN.  opacity_norm, logits [M]
// (may be the same array).
void denormalize_opacity_logits(const float* opacity_norm, int64_t M, int K, const double* mean, const double* std,
                                float* logits);

}  // namespace ralhe
