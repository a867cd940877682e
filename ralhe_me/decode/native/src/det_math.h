// exp and log from IEEE basic operations only (+, -, *, /, floor, ldexp: correctly rounded on
// every CPU and in WebAssembly), so every build of the decoder gets the same bits.  Library exp
// and log are not correctly rounded and differ between glibc, musl (Emscripten) and numpy's SIMD
// loops.  det_exp is ralhe_me/entropy/laplace.py det_exp operation for operation.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace ralhe {

constexpr double kLn2Hi = 6.93147180369123816490e-01;  // k * kLn2Hi exact for |k| < 2**20
constexpr double kLn2Lo = 1.90821492927058770002e-10;
constexpr double kInvLn2 = 1.4426950408889634;

// ldexp(p, k) for p in [0.5, 2): multiplying by 2**k is exact while 2**k and the result are
// normal, which k in [-1021, 1023] guarantees; elsewhere (subnormal or infinite results)
// std::ldexp rounds.  The same bits as std::ldexp, without a library call in the common case.
inline double exact_ldexp(double p, int k) {
  if (k < -1021 || k > 1023) return std::ldexp(p, k);
  const uint64_t bits = uint64_t(k + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// exp(x) for |x| <~ 700: Cody-Waite reduction, degree-17 Taylor polynomial in Horner order.
inline double det_exp(double x) {
  double k = std::floor(x * kInvLn2 + 0.5);
  double r = (x - k * kLn2Hi) - k * kLn2Lo;
  // coefficients 1/17!, 1/16!, ..., 1/0! computed as Python's 1.0 / math.factorial(i) (exact
  // integer factorials up to 18! fit in a double's 53 bits... 18! does not, but 17! = 3.56e14 does)
  double p = 1.0 / 355687428096000.0;  // 1/17!
  // 1/16!, ..., 1/0!: each quotient correctly rounded, as Python's division (folded at compile
  // time, where GCC and clang round divisions of constants the same way)
  static constexpr double kInvFact[17] = {
      1.0 / 20922789888000.0, 1.0 / 1307674368000.0, 1.0 / 87178291200.0, 1.0 / 6227020800.0, 1.0 / 479001600.0,
      1.0 / 39916800.0,       1.0 / 3628800.0,       1.0 / 362880.0,      1.0 / 40320.0,      1.0 / 5040.0,
      1.0 / 720.0,            1.0 / 120.0,           1.0 / 24.0,          1.0 / 6.0,          1.0 / 2.0,
      1.0,                    1.0};
  for (int i = 0; i < 17; ++i) p = p * r + kInvFact[i];
  return exact_ldexp(p, static_cast<int>(k));
}

// ln(x) for finite x > 0 (to about 1 ulp): x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.1716, series to s^25.
inline double det_log(double x) {
  int e = 0;
  double m = std::frexp(x, &e);  // m in [0.5, 1)
  if (m < 0.70710678118654752440) {
    m *= 2.0;
    e -= 1;
  }
  double s = (m - 1.0) / (m + 1.0);
  double s2 = s * s;
  double poly = 1.0 / 25.0;
  for (int n = 11; n >= 0; --n) poly = poly * s2 + 1.0 / double(2 * n + 1);
  double lnm = 2.0 * s * poly;
  double k = double(e);
  return (k * kLn2Hi + lnm) + k * kLn2Lo;
}

// ln(1 + x) for x > -1, accurate for small x: with u = 1 + x rounded, ln(u) * x / (u - 1).
inline double det_log1p(double x) {
  double u = 1.0 + x;
  if (u == 1.0) return x;
  return det_log(u) * (x / (u - 1.0));
}

}  // namespace ralhe
