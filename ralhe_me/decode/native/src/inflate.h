// A zlib stream inflater (RFC 1950 wrapper, RFC 1951 deflate): the header section of a .ralhe file
// is zlib.compress of its JSON (bitstream.py encode_header).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common.h"

namespace ralhe {

// The bytes of the one zlib stream at the start of `in` (bytes after its end are ignored, as
// Python's zlib.decompress does).  Stored, fixed and dynamic Huffman blocks; the Adler-32 is
// checked.  Any inconsistency, or an output beyond `max_output` bytes, throws
// CorruptDataError("<what>: ...").
std::vector<uint8_t> zlib_decompress(Bytes in, const char* what = "zlib stream",
                                     size_t max_output = size_t(1) << 28);

uint32_t adler32(const uint8_t* data, size_t size, uint32_t adler = 1);

}  // namespace ralhe
