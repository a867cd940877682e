// The decoder weights section: integer tensors as exp-Golomb codes (ralhe_me/decode/weights.py
// encode_int_tensors / decode_int_tensors).
//
// Per tensor: one byte k (the exp-Golomb order, < 24); the order-0 exp-Golomb codes of u >> k
// packed MSB-first and zero-padded to a byte; then the k low bits of every u, MSB-first, packed and
// padded.  u is the zigzag of the value (v >= 0 -> 2v, v < 0 -> -2v - 1).  With the order byte's
// top bit set (0x80, a masked tensor), a varint S (its slices, at most 9 bytes, dividing the
// count) and ceil(S / 8) bytes of the nonzero slices' mask (MSB first, padding bits zero) come
// before the codes, which then hold the nonzero slices only; the others are zeros.  The section
// ends exactly after the last tensor.
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"

namespace ralhe {

// counts[i]: the number of integers of tensor i (its shape's product, 1 for a scalar).  Returns
// the tensors in order, each flat in the order they were written (row-major).  Throws
// CorruptDataError (Python's WeightFormatError) on a truncated or inconsistent section.
std::vector<std::vector<int64_t>> decode_int_tensors(Bytes section, const std::vector<int64_t>& counts);

}  // namespace ralhe
