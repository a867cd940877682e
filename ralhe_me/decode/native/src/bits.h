// MSB-first bit fields of a byte buffer, read a byte at a time: the exp-Golomb tables and the raw
// bits beside them (categorical.cpp, weights.cpp).  Bit i is bit 7 - i % 8 of byte i / 8.
#pragma once

#include <cstdint>

namespace ralhe {

// The first 1 bit at or after bit `from`, or `nbits` when bits [from, nbits) are all 0 (nbits a
// multiple of 8, so no byte past the buffer is read).
inline uint64_t first_one_bit(const uint8_t* data, uint64_t from, uint64_t nbits) {
  uint64_t at = from;
  while (at < nbits) {
    const unsigned off = unsigned(at & 7);
    const unsigned rest = unsigned(data[at >> 3] << off) & 0xFFu;  // the byte's bits from `at` on
    if (rest) return at + unsigned(__builtin_clz(rest)) - 24;       // its leading zeros as a 32-bit value, less 24
    at += 8 - off;
  }
  return nbits;
}

// Bits [pos, pos + n) as an integer (n <= 64), MSB first; pos moves past them.
inline uint64_t read_bits(const uint8_t* data, uint64_t& pos, uint64_t n) {
  uint64_t x = 0;
  while (n > 0) {
    const unsigned off = unsigned(pos & 7);
    const unsigned take = unsigned(n < 8 - off ? n : 8 - off);
    x = (x << take) | ((unsigned(data[pos >> 3]) >> (8 - off - take)) & ((1u << take) - 1));
    pos += take;
    n -= take;
  }
  return x;
}

}  // namespace ralhe
