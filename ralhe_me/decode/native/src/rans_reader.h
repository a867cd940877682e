// A native reader of CompressAI's rANS streams (what compressai.ans.RansEncoder writes).
//
// Why: the decoders' loops are native, but calling CompressAI's RansDecoder.decode_stream from
// them means building Python lists of indexes and CDF tables on every step (about 60% of the
// latent stage on a 49k-Gaussian SH3 file).  This reader decodes the same bytes to the same
// symbols with the tables held as flat arrays.  The streams themselves are still written by
// CompressAI's encoder, and CompressAI's decoder stays the reference the tests compare against.
//
// The format, as CompressAI defines it: one 64-bit rANS state, renormalized by 32-bit words
// (lower bound 2**31), read from the front of the stream in little-endian order after the two
// words of the initial state; symbol frequencies with 16-bit precision.  A table with
// `length` CDF entries codes the values 0 .. length - 3 directly; length - 2 is the escape,
// followed by the out-of-range value as 4-bit raw chunks: the chunk count (runs of 15 continue
// it), then the chunks, least significant first.  A raw value r stands for r / 2 + escape when
// even and -(r >> 1) - 1 when odd.
//
// Robustness: reading past the end of the stream never touches memory outside it; the reader
// returns zero words and sets `overrun`, which the caller turns into a named error.  Escapes
// announcing more chunks than a 32-bit value can hold set `overrun` too.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "common.h"

namespace ralhe {

class RansReader {
 public:
  static constexpr int kPrecision = 16;
  static constexpr int kBypassBits = 4;
  static constexpr uint32_t kBypassMax = (1u << kBypassBits) - 1;
  static constexpr uint64_t kLow = uint64_t(1) << 31;

  RansReader() = default;
  RansReader(const uint8_t* data, size_t num_bytes) { reset(data, num_bytes); }

  void reset(const uint8_t* data, size_t num_bytes) {
    data_ = data;
    words_ = num_bytes / 4;
    pos_ = 0;
    overrun_ = false;
    const uint64_t lo = next_word();
    const uint64_t hi = next_word();
    x_ = lo | (hi << 32);
  }

  bool overrun() const { return overrun_; }

  // One symbol coded with CDF `cdf` [length] (cdf[0] = 0, cdf[length - 1] = 2**16,
  // non-decreasing) and value offset `offset`.
  int32_t decode(const int32_t* cdf, int length, int32_t offset) {
    const uint32_t cum = peek();
    // first entry greater than cum, minus one: the symbol whose interval holds cum
    const int s = int(std::upper_bound(cdf, cdf + length, int32_t(cum)) - cdf) - 1;
    return finish(cdf, length, offset, std::min(std::max(s, 0), length - 2));
  }

  // The low kPrecision bits of the state: the cumulative frequency the next symbol's interval
  // holds (what a lookup keyed on it needs).
  uint32_t peek() const { return uint32_t(x_ & ((1u << kPrecision) - 1)); }

  // decode() when the symbol is known to be at least `first` (cdf[first] <= peek(), e.g. from a
  // table of the symbol at the start of each range of cumulative frequencies): the same symbol,
  // by walking up from `first`.  cdf must be non-decreasing.
  RALHE_ALWAYS_INLINE int32_t decode_from(const int32_t* cdf, int length, int32_t offset, int first) {
    const int32_t cum = int32_t(peek());
    int s = first;
    while (s + 1 < length - 1 && cdf[s + 1] <= cum) ++s;
    return finish(cdf, length, offset, s);
  }

  // decode() for a table whose likely symbol is `hint` (a Laplace table's center): the same
  // symbol, found by galloping out from the hint, so a symbol d places away costs about
  // 2 log2(d + 1) comparisons instead of log2(length) unpredictable ones.  cdf must be
  // non-decreasing (as every table CdfTablesView::check accepts and the families build).
  RALHE_ALWAYS_INLINE int32_t decode_near(const int32_t* cdf, int length, int32_t offset, int hint) {
    const int32_t cum = int32_t(peek());
    int lo, hi;  // the symbol is in [lo, hi): cdf[lo] <= cum (or lo = 0), cdf[hi] > cum (or hi = length - 1)
    hint = std::min(std::max(hint, 0), length - 2);
    if (cdf[hint] <= cum) {
      lo = hint;
      int step = 1;
      hi = lo + 1;
      while (hi < length - 1 && cdf[hi] <= cum) {
        lo = hi;
        hi = lo + (step <<= 1);
        if (hi > length - 1) hi = length - 1;
      }
    } else {
      hi = hint;
      int step = 1;
      lo = hi - 1;
      while (lo > 0 && cdf[lo] > cum) {
        hi = lo;
        lo = hi - (step <<= 1);
        if (lo < 0) lo = 0;
      }
    }
    while (hi - lo > 1) {
      const int mid = lo + (hi - lo) / 2;
      if (cdf[mid] <= cum)
        lo = mid;
      else
        hi = mid;
    }
    return finish(cdf, length, offset, lo);
  }

 private:
  int32_t finish(const int32_t* cdf, int length, int32_t offset, int s) {
    const uint32_t mask = (1u << kPrecision) - 1;
    const uint32_t start = uint32_t(cdf[s]);
    const uint32_t freq = uint32_t(cdf[s + 1]) - start;
    x_ = uint64_t(freq) * (x_ >> kPrecision) + (x_ & mask) - start;
    renormalize();
    int32_t value = s;
    const int32_t escape = length - 2;
    if (value == escape) value = decode_escape(escape);
    return value + offset;
  }

 public:
  // One binary-alphabet symbol whose CDF is [0, f0, 2**16, 2**16] (the escape never coded).
  int decode_bit(uint32_t f0) {
    const uint32_t mask = (1u << kPrecision) - 1;
    const uint32_t cum = uint32_t(x_ & mask);
    // branch-free (the bit is hard to predict): mask1 is all ones for a 1
    const uint32_t bit = uint32_t(cum >= f0);
    const uint32_t mask1 = 0u - bit;
    const uint32_t start = f0 & mask1;
    const uint32_t freq = (((1u << kPrecision) - f0) & mask1) | (f0 & ~mask1);
    x_ = uint64_t(freq) * (x_ >> kPrecision) + (x_ & mask) - start;
    renormalize();
    return int(bit);
  }

 private:
  uint32_t next_word() {
    if (pos_ >= words_) {
      overrun_ = true;
      return 0;
    }
    const uint8_t* p = data_ + 4 * pos_++;
    return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
  }

  void renormalize() {
    if (x_ < kLow) x_ = (x_ << 32) | next_word();
  }

  uint32_t raw_bits() {
    const uint32_t v = uint32_t(x_ & kBypassMax);
    x_ >>= kBypassBits;
    renormalize();
    return v;
  }

  int32_t decode_escape(int32_t escape) {
    // A 32-bit raw value has at most 8 chunks, so a valid count is one chunk below 15: a count
    // continued past it (or above 8) only comes from a corrupt stream.
    const uint32_t count = raw_bits();
    if (count > 8) {
      overrun_ = true;
      return escape;
    }
    uint32_t raw = 0;
    for (uint32_t j = 0; j < count; ++j) raw |= raw_bits() << (j * kBypassBits);
    const int64_t half = int64_t(raw >> 1);
    const int64_t value = (raw & 1) ? -half - 1 : half + escape;
    if (value > INT32_MAX / 2 || value < INT32_MIN / 2) {
      overrun_ = true;
      return escape;
    }
    return int32_t(value);
  }

  const uint8_t* data_ = nullptr;
  size_t words_ = 0, pos_ = 0;
  uint64_t x_ = 0;
  bool overrun_ = false;
};

}  // namespace ralhe
