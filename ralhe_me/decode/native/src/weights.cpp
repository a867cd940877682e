// Exp-Golomb decoder weights (weights.h), as weights.py decode_int_tensors and
// entropy/categorical.py exp_golomb_decode.
#include "weights.h"

#include <string>

#include "bits.h"

namespace ralhe {

namespace {

constexpr int kMaxOrder = 24;          // weights.py MAX_ORDER
constexpr uint8_t kMasked = 0x80;      // weights.py MASKED
constexpr size_t kMaxSliceVarint = 9;  // weights.py MAX_SLICE_VARINT_BYTES
constexpr int64_t kMaxMaskedCount = int64_t(1) << 28;  // weights.py MAX_MASKED_COUNT

[[noreturn]] void bad(const std::string& what) { corrupt("decoder weights: " + what); }

// weights.py _unzigzag in numpy's int64 arithmetic (wrapping, floor division): exact inverse of the
// zigzag for every value a valid section holds, and Python's result for the rest.
int64_t unzigzag(uint64_t u) {
  if (!(u & 1)) return int64_t(u) >> 1;
  return int64_t(uint64_t(0) - (u + 1)) >> 1;  // -(u + 1) // 2, u + 1 even
}

// One tensor's order-0 exp-Golomb codes (of each value's u >> k, MSB first) from bit 0 of base
// [nbits bits] -> values [count]; returns the bytes they took.  This and add_low_bits run once per
// tensor, out of line in the WebAssembly build (see for_chunks in common.h).
RALHE_WASM_NOINLINE uint64_t decode_tensor_codes(const uint8_t* base, uint64_t nbits, int64_t count,
                                             int64_t* values) {
  uint64_t bit = 0;
  for (int64_t i = 0; i < count; ++i) {
    uint64_t one = first_one_bit(base, bit, nbits);
    if (one >= nbits) bad("corrupt weight codes (exp-Golomb table ends early)");
    const uint64_t zeros = one - bit, end = one + zeros + 1;
    if (end > nbits || zeros > 62) bad("corrupt weight codes (exp-Golomb table ends early or holds an oversized value)");
    values[i] = int64_t(read_bits(base, one, zeros + 1) - 1);
    bit = end;
  }
  return (bit + 7) / 8;
}

// The k low bits of every value, MSB first, packed across values from bit 0 of low, appended to
// values [count]; then the zigzag undone.
RALHE_WASM_NOINLINE void add_low_bits(const uint8_t* low, int64_t count, int k, int64_t* values) {
  uint64_t lb = 0;
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t u = (uint64_t(values[i]) << k) | read_bits(low, lb, uint64_t(k));  // numpy's int64 shift: wraps
    values[i] = unzigzag(u);
  }
}

}  // namespace

std::vector<std::vector<int64_t>> decode_int_tensors(Bytes data, const std::vector<int64_t>& counts) {
  std::vector<std::vector<int64_t>> out;
  out.reserve(counts.size());
  size_t pos = 0;
  for (size_t t = 0; t < counts.size(); ++t) {
    const int64_t count = counts[t];
    if (count < 0) bad("negative tensor size");
    if (pos >= data.size) bad("weight section ends early");
    const bool masked = data[pos] & kMasked;
    const int k = data[pos++] & ~kMasked;
    if (k >= kMaxOrder) bad("invalid exp-Golomb order " + std::to_string(k));
    // masked: a varint S of slices and their nonzero mask; only those slices' values are coded
    std::vector<uint8_t> nonzero;
    int64_t coded = count;
    if (masked) {
      const size_t start = pos;
      const uint64_t slices = read_varint(data, pos, "decoder weights: slice count");
      if (pos - start > kMaxSliceVarint) bad("the slice count's varint is too long");
      if (count > kMaxMaskedCount)
        bad("a masked tensor of " + std::to_string(count) + " weights (at most " + std::to_string(kMaxMaskedCount) + ")");
      if (slices < 1 || slices > uint64_t(count) || uint64_t(count) % slices)
        bad("a tensor of " + std::to_string(count) + " weights cannot have " + std::to_string(slices) + " slices");
      const uint64_t mask_bytes = (slices + 7) / 8;
      if (mask_bytes > data.size - pos) bad("weight section ends early");
      nonzero.resize(size_t(slices));
      int64_t set = 0;
      for (uint64_t s = 0; s < 8 * mask_bytes; ++s) {
        const int bit = (data[pos + (s >> 3)] >> (7 - (s & 7))) & 1;
        if (s >= slices && bit) bad("the slice mask has bits set past its last slice");
        if (s < slices) set += (nonzero[size_t(s)] = uint8_t(bit));
      }
      pos += size_t(mask_bytes);
      coded = set * (count / int64_t(slices));
    }
    // every code takes at least one bit: refuse counts the rest of the section cannot hold
    if (uint64_t(coded) > 8 * uint64_t(data.size - pos)) bad("weight section ends early");
    std::vector<int64_t> values(static_cast<size_t>(count));
    // order-0 exp-Golomb codes of u >> k, MSB first: z zeros, then the z + 1 bits of value + 1
    const uint64_t nbits = 8 * uint64_t(data.size - pos);
    pos += size_t(decode_tensor_codes(data.data + pos, nbits, coded, values.data()));
    // the k low bits of every value, MSB first, packed across values
    const uint64_t low_bytes = (uint64_t(coded) * k + 7) / 8;
    if (low_bytes > data.size - pos) bad("weight section ends early");
    add_low_bits(data.data + pos, coded, k, values.data());
    pos += size_t(low_bytes);
    if (masked) {  // spread the coded slices over their places, from the last (in place)
      const int64_t per = count / int64_t(nonzero.size());
      int64_t src = coded;
      for (size_t s = nonzero.size(); s-- > 0;) {
        int64_t* dst = values.data() + int64_t(s) * per;
        if (nonzero[s]) {
          src -= per;
          for (int64_t i = per; i-- > 0;) dst[i] = values[size_t(src + i)];
        } else {
          for (int64_t i = 0; i < per; ++i) dst[i] = 0;
        }
      }
    }
    out.push_back(std::move(values));
  }
  if (pos != data.size) bad(std::to_string(data.size - pos) + " unexpected bytes after the weights");
  return out;
}

}  // namespace ralhe
