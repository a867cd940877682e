#include "container.h"

#include "inflate.h"

namespace ralhe {

namespace {
const uint8_t kMagic[6] = {'R', 'A', 'L', 'H', 'E', 0};
constexpr size_t kPrefixSize = 10;                   // magic, u16 version, u16 count
constexpr size_t kSectionFrame = 8;                  // u32 length, u32 crc (after the name)
constexpr size_t kMaxHeaderBytes = size_t(64) << 20; // decompressed JSON; real headers are ~3 KB
}  // namespace

const Bytes* Container::find(const std::string& name) const {
  for (const auto& s : sections)
    if (s.first == name) return &s.second;
  return nullptr;
}

Bytes Container::section(const std::string& name) const {
  const Bytes* b = find(name);
  if (!b) corrupt("the file has no '" + name + "' section");
  return *b;
}

Container unpack(Bytes data) {
  if (data.size < sizeof(kMagic) || __builtin_memcmp(data.data, kMagic, sizeof(kMagic)) != 0)
    fail(ErrorKind::kBadMagic, "not a .ralhe file (wrong magic bytes)");
  if (data.size < kPrefixSize)
    fail(ErrorKind::kTruncated,
         "file is truncated: " + std::to_string(data.size) + " bytes, shorter than the file prefix");
  unsigned version = load_u16le(data.data + 6), count = load_u16le(data.data + 8);
  if (version < kOldestFormatVersion || version > kFormatVersion)
    fail(ErrorKind::kUnsupportedVersion, "format version " + std::to_string(version) +
                                             " is not supported (this decoder reads versions " +
                                             std::to_string(kOldestFormatVersion) + " to " +
                                             std::to_string(kFormatVersion) + ")");
  if (count < 1 || count > unsigned(kMaxSections)) corrupt("invalid section count " + std::to_string(count));
  size_t pos = kPrefixSize;
  std::vector<std::pair<std::string, Bytes>> sections;
  for (unsigned i = 0; i < count; ++i) {
    std::string where = std::to_string(i + 1) + " of " + std::to_string(count);
    if (pos + 1 > data.size) fail(ErrorKind::kTruncated, "file is truncated in the framing of section " + where);
    size_t name_len = data[pos];
    size_t end = pos + 1 + name_len + kSectionFrame;
    if (end > data.size) fail(ErrorKind::kTruncated, "file is truncated in the framing of section " + where);
    std::string name(reinterpret_cast<const char*>(data.data + pos + 1), name_len);
    for (char c : name)
      if (static_cast<unsigned char>(c) >= 0x80) corrupt("section " + std::to_string(i + 1) + " has a non-ASCII name");
    size_t length = load_u32le(data.data + pos + 1 + name_len);
    uint32_t crc = load_u32le(data.data + pos + 1 + name_len + 4);
    if (length > data.size - end)
      fail(ErrorKind::kTruncated, "file is truncated: section '" + name + "' needs " + std::to_string(length) +
                                      " bytes, " + std::to_string(data.size - end) + " remain");
    Bytes payload(data.data + end, length);
    if (crc32(payload) != crc) fail(ErrorKind::kChecksum, "checksum mismatch in section '" + name + "'");
    for (const auto& s : sections)
      if (s.first == name) corrupt("section '" + name + "' appears twice");
    sections.emplace_back(std::move(name), payload);
    pos = end + length;
  }
  if (pos != data.size) corrupt(std::to_string(data.size - pos) + " unexpected bytes after the last section");
  if (sections.empty() || sections.front().first != "header") corrupt("the first section is not the header");
  Container out;
  std::vector<uint8_t> text;
  try {
    text = zlib_decompress(sections.front().second, "zlib", kMaxHeaderBytes);
  } catch (const Error& e) {
    corrupt("unreadable header (" + std::string(e.what()) + ")");
  }
  out.header = parse_json(reinterpret_cast<const char*>(text.data()), text.size());
  if (out.header.type != Json::Type::kObject) corrupt("the header is not a dictionary");
  sections.erase(sections.begin());
  out.sections = std::move(sections);
  return out;
}

}  // namespace ralhe
