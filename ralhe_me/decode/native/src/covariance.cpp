// The covariance section; see covariance.h and ralhe_me/geometry/covariance_code.py.
#include "covariance.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "categorical.h"
#include "exponents.h"

namespace ralhe {

namespace {

constexpr int kVersion = 1;            // covariance_vq.FORMAT_VERSION
constexpr int kCartesianVersion = 1;   // covariance_code.CARTESIAN_VERSION: quaternion residual q - c
constexpr int kRodriguesVersion = 2;   // covariance_code.FORMAT_VERSION: Rodrigues vector from c
constexpr int kFlagGainMap = 1;        // covariance_code.FLAG_GAIN_MAP
constexpr int kFlagOwnExponents = 2;   // covariance_code.FLAG_OWN_EXPONENTS

// Runs f, prefixing a CorruptDataError's message with `where` (the Python decoder's wording).
template <typename F>
void with_prefix(const char* where, F&& f) {
  try {
    f();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kCorrupt) throw;
    corrupt(std::string(where) + e.what());
  }
}

// CovarianceCodebook.from_bytes: the float16 codewords [size, 7], high byte plane then low byte
// plane, component j of each plane under context j (high) or 7 + j (low).
void decode_codebook(Bytes data, int64_t size, CovarianceCodebook& book) {
  std::vector<int32_t> planes(size_t(14 * size));
  with_prefix("codebook: ", [&] {
    StaticCategoricalDecoder dec(data, 256);
    if (dec.num_symbols() != 14 * size)
      corrupt("stream holds " + std::to_string(dec.num_symbols()) + " symbols, " + std::to_string(14 * size) +
              " contexts given");
    std::vector<int64_t> contexts(size_t(14 * size));
    for (int64_t i = 0; i < 14 * size; ++i) contexts[i] = i % 7 + (i >= 7 * size ? 7 : 0);
    dec.decode(contexts.data(), 14 * size, planes.data());
    dec.finish();
  });
  book.size = size;
  book.log_scales.resize(size_t(3 * size));
  book.quats.resize(size_t(4 * size));
  for (int64_t i = 0; i < size; ++i)
    for (int j = 0; j < 7; ++j) {
      const int64_t at = 7 * i + j;
      const float v = half_to_float(uint16_t((planes[at] << 8) | planes[7 * size + at]));
      if (!std::isfinite(v)) corrupt("codebook holds non-finite values");
      if (j < 3)
        book.log_scales[3 * i + j] = v;
      else
        book.quats[4 * i + j - 3] = v;
    }
}

int64_t unzigzag(uint64_t z) { return (z & 1) ? -int64_t(z >> 1) - 1 : int64_t(z >> 1); }

}  // namespace

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf, NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {  // subnormal half: a normal float
    int e = 113;
    while (!(mant & 0x400)) {
      mant <<= 1;
      --e;
    }
    bits = sign | (uint32_t(e) << 23) | ((mant & 0x3FF) << 13);
  }
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

void decode_covariance_indices(Bytes data, int64_t expected, CovarianceCodebook& codebook,
                               std::vector<int32_t>& indices) {
  if (data.size == 0 || data[0] != kVersion) corrupt("not a covariance stream (bad version byte)");
  size_t pos = 1;
  const uint64_t m = read_varint(data, pos, "covariance header");
  const uint64_t k = read_varint(data, pos, "covariance header");
  if (m != uint64_t(expected))
    corrupt("covariance holds " + std::to_string(m) + " entries, the header says " + std::to_string(expected));
  codebook = CovarianceCodebook();
  indices.clear();
  if (m == 0) {
    if (k || pos != data.size) corrupt("empty covariance stream has trailing data");
    return;
  }
  if (k < 1 || k > std::min<uint64_t>(m, kMaxCodebookSize))
    corrupt("impossible codebook size " + std::to_string(k) + " for " + std::to_string(m) + " Gaussians");
  const uint64_t n = read_varint(data, pos, "covariance header");
  if (n > data.size - pos) corrupt("covariance stream is truncated");
  decode_codebook(Bytes(data.data + pos, size_t(n)), int64_t(k), codebook);
  with_prefix("covariance indices: ", [&] {
    StaticCategoricalDecoder dec(data.from(pos + size_t(n), "covariance stream"), int(k));
    if (uint64_t(dec.num_symbols()) != m)
      corrupt("stream holds " + std::to_string(dec.num_symbols()) + " indices, header says " + std::to_string(m));
    indices.resize(size_t(m));
    dec.decode_same(0, int64_t(m), indices.data());
    dec.finish();
  });
}

void decode_shapes(Bytes section, const double* point_gain, int64_t n, std::vector<float>& log_scales,
                   std::vector<float>& quats) {
  if (n < 0) fail(ErrorKind::kInvalidArgument, "decode_shapes: negative count");
  if (section.size < 10 || (section[0] != kCartesianVersion && section[0] != kRodriguesVersion))
    corrupt("not a covariance section (bad version byte or too short)");
  const bool rodrigues = section[0] == kRodriguesVersion;
  const int flags = section[1];
  if (flags > kFlagOwnExponents) corrupt("unknown covariance flags " + std::to_string(flags));
  if (flags == kFlagGainMap && point_gain == nullptr)
    corrupt("the covariance steps are scaled by a gain map, but none was given");
  if (flags != kFlagGainMap) point_gain = nullptr;  // the file's gain map (if any) does not apply here
  const float step_s = load_f32le(section.data + 2), step_q = load_f32le(section.data + 6);
  // ResidualSteps: finite, >= 0 (NaN fails too), the quaternion one <= 0.5
  if (!(std::isfinite(step_s) && step_s >= 0) || !(std::isfinite(step_q) && step_q >= 0))
    corrupt("covariance section header: residual steps must be finite and >= 0");
  if (step_q > 0.5f) corrupt("covariance section header: the quaternion step must be <= 0.5");
  size_t pos = 10;
  const uint64_t vq_size = read_varint(section, pos, "covariance section header");
  if (vq_size > section.size - pos) corrupt("covariance section is truncated");
  CovarianceCodebook book;
  std::vector<int32_t> index;
  decode_covariance_indices(Bytes(section.data + pos, size_t(vq_size)), n, book, index);
  pos += size_t(vq_size);
  std::vector<double> own_gain;  // [n] with flags 2: 2^(e / 2) of the section's step exponents
  if (flags == kFlagOwnExponents) {
    const uint64_t size = read_varint(section, pos, "covariance step exponents");
    if (size > section.size - pos) corrupt("covariance step exponents: the step exponents are truncated");
    std::vector<int32_t> e;
    with_prefix("covariance step exponents: ", [&] {
      e = decode_exponents(Bytes(section.data + pos, size_t(size)), n, [&](int64_t k) {
        return std::to_string(k) + " for " + std::to_string(n) + " shapes";
      });
    });
    pos += size_t(size);
    own_gain.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) own_gain[size_t(i)] = gain_of_exponent(e[size_t(i)]);
    point_gain = own_gain.data();
  }

  const int cols_s = step_s > 0 ? 3 : 0, cols_q = step_q > 0 ? (rodrigues ? 3 : 4) : 0, ncol = cols_s + cols_q;
  std::vector<int32_t> symbols;  // [ncol, n] component-major
  int64_t lows[7] = {0, 0, 0, 0, 0, 0, 0};
  if (n == 0 || ncol == 0) {
    if (pos != section.size) corrupt("covariance section has trailing data");
  } else {
    with_prefix("covariance residuals: ", [&] {
      for (int j = 0; j < ncol; ++j) lows[j] = unzigzag(read_varint(section, pos, "residual offsets"));
      const uint64_t span = read_varint(section, pos, "residual offsets");
      if (span < 1 || span > uint64_t(kMaxCodebookSize)) corrupt("impossible residual alphabet " + std::to_string(span));
      StaticCategoricalDecoder dec(section.from(pos, "covariance residuals"), int(span));
      if (dec.num_symbols() != ncol * n)
        corrupt("stream holds " + std::to_string(dec.num_symbols()) + " symbols, " + std::to_string(ncol * n) +
                " contexts given");
      symbols.resize(size_t(ncol * n));
      for (int j = 0; j < ncol; ++j) dec.decode_same(j, n, symbols.data() + size_t(j) * size_t(n));
      dec.finish();
    });
  }

  // codeword + (r * step) * g in float32, for every component (a zero step gives r = 0: + 0.0f,
  // as Python adds it too, which turns a -0 codeword into +0)
  log_scales.resize(size_t(3 * n));
  quats.resize(size_t(4 * n));
  auto residual = [&](int col, int64_t i) -> float {
    if (col < 0) return 0.0f;
    // int64 symbol + offset (numpy wraps), then rounded to float32 as astype(np.float32)
    return float(int64_t(uint64_t(symbols[size_t(col) * size_t(n) + size_t(i)]) + uint64_t(lows[col])));
  };
  for_chunks(n, 8192, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c = index[size_t(i)];
      const float g = point_gain ? float(point_gain[i]) : 1.0f;
      for (int a = 0; a < 3; ++a) {
        float d = residual(cols_s ? a : -1, i) * step_s;
        if (point_gain) d = d * g;
        log_scales[3 * i + a] = book.log_scales[3 * c + a] + d;
      }
      const float* cq = book.quats.data() + 4 * c;
      float* q = quats.data() + 4 * i;
      if (!rodrigues) {
        for (int a = 0; a < 4; ++a) {
          float d = residual(cols_q ? cols_s + a : -1, i) * step_q;
          if (point_gain) d = d * g;
          q[a] = cq[a] + d;
        }
        continue;
      }
      // covariance_code.compose_rotation: c * (1, t), each product rounded, sums from the left
      float t[3];
      for (int a = 0; a < 3; ++a) {
        t[a] = residual(cols_q ? cols_s + a : -1, i) * step_q;
        if (point_gain) t[a] = t[a] * g;
      }
      const float w = cq[0], x = cq[1], y = cq[2], z = cq[3];
      q[0] = ((w - t[0] * x) - t[1] * y) - t[2] * z;
      q[1] = ((x + t[0] * w) - t[1] * z) + t[2] * y;
      q[2] = ((y + t[0] * z) + t[1] * w) - t[2] * x;
      q[3] = ((z - t[0] * y) + t[1] * x) + t[2] * w;
    }
  });
}

}  // namespace ralhe
