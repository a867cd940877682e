// The .ralhe container (bitstream.py unpack): magic, version, named sections with CRC-32s, and
// the zlib-compressed JSON header, with bitstream.py's error kinds and messages.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "json.h"

namespace ralhe {

constexpr uint16_t kFormatVersion = 3;        // bitstream.py FORMAT_VERSION (2: masked decoder weights, 3: static latents)
constexpr uint16_t kOldestFormatVersion = 1;  // bitstream.py OLDEST_FORMAT_VERSION
constexpr int kMaxSections = 64;

struct Container {
  Json header;                                         // a JSON object
  std::vector<std::pair<std::string, Bytes>> sections; // file order, the header excluded; views of the file

  const Bytes* find(const std::string& name) const;    // nullptr if absent
  Bytes section(const std::string& name) const;        // CorruptDataError "the file has no '<name>' section"
};

// Parse and verify a whole file (`file` must outlive the result's section views).
Container unpack(Bytes file);

}  // namespace ralhe
