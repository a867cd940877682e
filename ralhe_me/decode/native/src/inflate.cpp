// Inflate as RFC 1951 describes it: canonical Huffman codes decoded bit by bit from per-length
// counts (the header is a few kilobytes, so simplicity beats lookup tables here).
#include "inflate.h"

#include <string>

namespace ralhe {
namespace {

constexpr int kMaxBits = 15;      // longest code
constexpr int kMaxLitLen = 286;   // literal/length symbols that may appear in a code
constexpr int kMaxDist = 30;      // distance symbols that may appear in a code
constexpr int kFixedLitLen = 288; // the fixed code has 288 lengths (286, 287 never decode)

// Base lengths and extra bits of length symbols 257..285, base distances and extra bits of 0..29.
constexpr uint16_t kLenBase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                   31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr uint8_t kLenExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                   2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr uint16_t kDistBase[30] = {1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
                                    193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr uint8_t kDistExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6,
                                    6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

// Canonical Huffman code: how many codes of each length, and the symbols sorted by (length, value).
struct Huffman {
  uint16_t count[kMaxBits + 1] = {};
  uint16_t symbol[kFixedLitLen] = {};
};

class Inflater {
 public:
  Inflater(Bytes in, const char* what, size_t max_output) : in_(in), what_(what), max_output_(max_output) {}

  std::vector<uint8_t> run() {
    if (in_.size < 2) bad("incomplete or truncated stream");
    uint8_t cmf = in_[0], flg = in_[1];
    if ((cmf & 0x0F) != 8) bad("unknown compression method");
    if ((cmf >> 4) > 7) bad("invalid window size");
    if (((unsigned(cmf) << 8) | flg) % 31 != 0) bad("incorrect header check");
    if (flg & 0x20) bad("a preset dictionary is needed");
    pos_ = 2;
    bool last = false;
    while (!last) {
      last = bits(1) != 0;
      switch (bits(2)) {
        case 0: stored(); break;
        case 1: fixed(); break;
        case 2: dynamic(); break;
        default: bad("invalid block type");
      }
    }
    // The Adler-32 (big-endian) starts at the next byte boundary.
    bitbuf_ = 0;
    bitcnt_ = 0;
    if (in_.size - pos_ < 4) bad("incomplete or truncated stream");
    uint32_t want = (uint32_t(in_[pos_]) << 24) | (uint32_t(in_[pos_ + 1]) << 16) | (uint32_t(in_[pos_ + 2]) << 8) |
                    uint32_t(in_[pos_ + 3]);
    if (adler32(out_.data(), out_.size()) != want) bad("incorrect data check");
    return std::move(out_);
  }

 private:
  [[noreturn]] void bad(const char* why) const { corrupt(std::string(what_) + ": " + why); }

  // `n` (<= 16) bits, least significant first.
  uint32_t bits(int n) {
    while (bitcnt_ < n) {
      if (pos_ >= in_.size) bad("incomplete or truncated stream");
      bitbuf_ |= uint32_t(in_[pos_++]) << bitcnt_;
      bitcnt_ += 8;
    }
    uint32_t v = bitbuf_ & ((1u << n) - 1);
    bitbuf_ >>= n;
    bitcnt_ -= n;
    return v;
  }

  void emit(uint8_t b) {
    if (out_.size() >= max_output_) bad("output exceeds its limit");
    out_.push_back(b);
  }

  void stored() {
    bitbuf_ = 0;  // the rest of the current byte is padding
    bitcnt_ = 0;
    if (in_.size - pos_ < 4) bad("incomplete or truncated stream");
    unsigned len = load_u16le(in_.data + pos_), nlen = load_u16le(in_.data + pos_ + 2);
    pos_ += 4;
    if (len != (~nlen & 0xFFFFu)) bad("invalid stored block lengths");
    if (in_.size - pos_ < len) bad("incomplete or truncated stream");
    if (len > max_output_ - out_.size()) bad("output exceeds its limit");
    out_.insert(out_.end(), in_.data + pos_, in_.data + pos_ + len);
    pos_ += len;
  }

  // Build `h` from code lengths; 0 if complete, > 0 if incomplete, throws if over-subscribed.
  int build(Huffman& h, const uint8_t* lengths, int n, const char* which) {
    for (auto& c : h.count) c = 0;
    for (int i = 0; i < n; ++i) h.count[lengths[i]]++;
    if (h.count[0] == n) return 0;  // no codes at all: fine until one is decoded (then "invalid code")
    int left = 1;
    for (int len = 1; len <= kMaxBits; ++len) {
      left = (left << 1) - h.count[len];
      if (left < 0) bad((std::string("invalid ") + which + " code lengths set").c_str());
    }
    uint16_t offs[kMaxBits + 2];
    offs[1] = 0;
    for (int len = 1; len < kMaxBits; ++len) offs[len + 1] = uint16_t(offs[len] + h.count[len]);
    for (int i = 0; i < n; ++i)
      if (lengths[i]) h.symbol[offs[lengths[i]]++] = uint16_t(i);
    return left;
  }

  int decode(const Huffman& h) {
    int code = 0, first = 0, index = 0;
    for (int len = 1; len <= kMaxBits; ++len) {
      code |= int(bits(1));
      int count = h.count[len];
      if (code - count < first) return h.symbol[index + (code - first)];
      index += count;
      first = (first + count) << 1;
      code <<= 1;
    }
    bad("invalid code");  // ran out of codes (an incomplete code's unused pattern)
  }

  void codes(const Huffman& lit, const Huffman& dist) {
    for (;;) {
      int sym = decode(lit);
      if (sym < 256) {
        emit(uint8_t(sym));
      } else if (sym == 256) {
        return;
      } else {
        sym -= 257;
        if (sym >= 29) bad("invalid literal/length code");
        size_t len = kLenBase[sym] + bits(kLenExtra[sym]);
        int ds = decode(dist);
        if (ds >= kMaxDist) bad("invalid distance code");
        size_t d = kDistBase[ds] + bits(kDistExtra[ds]);
        if (d > out_.size()) bad("invalid distance too far back");
        if (len > max_output_ - out_.size()) bad("output exceeds its limit");
        size_t from = out_.size() - d;
        for (size_t i = 0; i < len; ++i) out_.push_back(out_[from + i]);  // may overlap: byte by byte
      }
    }
  }

  void fixed() {
    static const struct Tables {
      Huffman lit, dist;
      Tables() {
        uint8_t l[kFixedLitLen];
        for (int i = 0; i < 144; ++i) l[i] = 8;
        for (int i = 144; i < 256; ++i) l[i] = 9;
        for (int i = 256; i < 280; ++i) l[i] = 7;
        for (int i = 280; i < kFixedLitLen; ++i) l[i] = 8;
        build_plain(lit, l, kFixedLitLen);
        uint8_t d[30];
        for (auto& v : d) v = 5;
        build_plain(dist, d, 30);
      }
      static void build_plain(Huffman& h, const uint8_t* lengths, int n) {
        for (int i = 0; i < n; ++i) h.count[lengths[i]]++;
        uint16_t offs[kMaxBits + 2] = {};
        for (int len = 1; len < kMaxBits; ++len) offs[len + 1] = uint16_t(offs[len] + h.count[len]);
        for (int i = 0; i < n; ++i)
          if (lengths[i]) h.symbol[offs[lengths[i]]++] = uint16_t(i);
      }
    } tables;
    codes(tables.lit, tables.dist);
  }

  void dynamic() {
    static const uint8_t kOrder[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    int nlen = int(bits(5)) + 257, ndist = int(bits(5)) + 1, ncode = int(bits(4)) + 4;
    if (nlen > kMaxLitLen || ndist > kMaxDist) bad("too many length or distance symbols");
    uint8_t lengths[kMaxLitLen + kMaxDist] = {};
    for (int i = 0; i < ncode; ++i) lengths[kOrder[i]] = uint8_t(bits(3));
    Huffman lencode, lit, dist;
    if (build(lencode, lengths, 19, "code") != 0) bad("invalid code lengths set");
    int i = 0;
    while (i < nlen + ndist) {
      int sym = decode(lencode);
      if (sym < 16) {
        lengths[i++] = uint8_t(sym);
        continue;
      }
      uint8_t value = 0;
      int repeat;
      if (sym == 16) {
        if (i == 0) bad("invalid bit length repeat");
        value = lengths[i - 1];
        repeat = 3 + int(bits(2));
      } else if (sym == 17) {
        repeat = 3 + int(bits(3));
      } else {
        repeat = 11 + int(bits(7));
      }
      if (i + repeat > nlen + ndist) bad("invalid bit length repeat");
      while (repeat--) lengths[i++] = value;
    }
    if (lengths[256] == 0) bad("invalid code -- missing end-of-block");
    // Incomplete codes are allowed only when they hold a single code (zlib's rule).
    int left = build(lit, lengths, nlen, "literal/lengths");
    if (left && nlen - lit.count[0] != 1) bad("invalid literal/lengths set");
    left = build(dist, lengths + nlen, ndist, "distances");
    if (left && ndist - dist.count[0] != 1) bad("invalid distances set");
    codes(lit, dist);
  }

  Bytes in_;
  const char* what_;
  size_t max_output_;
  size_t pos_ = 0;
  uint32_t bitbuf_ = 0;
  int bitcnt_ = 0;
  std::vector<uint8_t> out_;
};

}  // namespace

uint32_t adler32(const uint8_t* data, size_t size, uint32_t adler) {
  constexpr uint32_t kMod = 65521;
  uint32_t a = adler & 0xFFFF, b = adler >> 16;
  while (size) {
    size_t chunk = size < 5552 ? size : 5552;  // the most bytes before b can overflow 32 bits
    size -= chunk;
    while (chunk--) {
      a += *data++;
      b += a;
    }
    a %= kMod;
    b %= kMod;
  }
  return (b << 16) | a;
}

std::vector<uint8_t> zlib_decompress(Bytes in, const char* what, size_t max_output) {
  return Inflater(in, what, max_output).run();
}

}  // namespace ralhe
