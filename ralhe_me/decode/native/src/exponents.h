// Half-octave exponents (ralhe_me/entropy/exponents.py): signed integers e, |e| <= 8, standing for
// the factor 2^(e / 2), coded by the static categorical coder in one context (17 symbols, e + 8).
// The gain map and the covariance section's per-Gaussian step exponents share them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common.h"

namespace ralhe {

constexpr int kExponentLimit = 8;  // exponents.EXPONENT_LIMIT

// 2^(e / 2), bit for bit numpy's np.power(2.0, e / 2.0): 2^q or sqrt(2) * 2^q (both exact scalings
// of a correctly rounded value), e = 2q + r.
double gain_of_exponent(int e);

// The exponents [count] (in [-8, 8]) of a stream; when it holds n != count symbols, nothing is
// decoded and the error is corrupt(count_error(n)).
std::vector<int32_t> decode_exponents(Bytes section, int64_t count,
                                      const std::function<std::string(int64_t)>& count_error);

}  // namespace ralhe
