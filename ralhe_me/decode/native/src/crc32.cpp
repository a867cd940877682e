// CRC-32 eight bytes per step (slicing-by-8: one table per byte position of a 64-bit word, the
// same remainder as the bitwise definition), in out-of-line blocks: a section's checksum is
// one long loop, and WebAssembly engines only switch a function to optimized code between calls
// (common.h, RALHE_NOINLINE).
#include <algorithm>

#include "common.h"

namespace ralhe {
namespace {

struct CrcTables {
  uint32_t t[8][256];
};

constexpr CrcTables make_crc_tables() {
  CrcTables s{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    s.t[0][i] = c;
  }
  for (int k = 1; k < 8; ++k)
    for (uint32_t i = 0; i < 256; ++i) s.t[k][i] = (s.t[k - 1][i] >> 8) ^ s.t[0][s.t[k - 1][i] & 0xFF];
  return s;
}

constexpr CrcTables kCrc = make_crc_tables();

// The running (inverted) remainder after `n` more bytes.
RALHE_NOINLINE uint32_t crc32_block(const uint8_t* p, size_t n, uint32_t c) {
  const auto& t = kCrc.t;
  for (; n >= 8; p += 8, n -= 8) {
    const uint32_t lo = load_u32le(p) ^ c, hi = load_u32le(p + 4);
    c = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^ t[3][hi & 0xFF] ^
        t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
  }
  for (; n; ++p, --n) c = t[0][(c ^ *p) & 0xFF] ^ (c >> 8);
  return c;
}

}  // namespace

uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc) {
  constexpr size_t kBlock = size_t(1) << 14;
  crc = ~crc;
  for (size_t i = 0; i < size; i += kBlock) crc = crc32_block(data + i, std::min(kBlock, size - i), crc);
  return ~crc;
}

}  // namespace ralhe
