// Half-octave exponents; see exponents.h and ralhe_me/entropy/exponents.py.
#include "exponents.h"

#include <cmath>

#include "categorical.h"

namespace ralhe {

double gain_of_exponent(int e) {
  const int q = e >= 0 ? e / 2 : -((1 - e) / 2);  // floor(e / 2)
  const int r = e - 2 * q;                          // 0 or 1
  return std::ldexp(r ? std::sqrt(2.0) : 1.0, q);
}

std::vector<int32_t> decode_exponents(Bytes section, int64_t count,
                                      const std::function<std::string(int64_t)>& count_error) {
  StaticCategoricalDecoder dec(section, 2 * kExponentLimit + 1);
  if (dec.num_symbols() != count) corrupt(count_error(dec.num_symbols()));
  std::vector<int32_t> e(static_cast<size_t>(count));
  dec.decode_same(0, count, e.data());
  dec.finish();
  for (int32_t& v : e) v -= kExponentLimit;
  return e;
}

}  // namespace ralhe
