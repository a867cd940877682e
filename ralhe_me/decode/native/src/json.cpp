#include "json.h"

#include <clocale>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "common.h"

namespace ralhe {
namespace {

constexpr int kMaxNesting = 512;  // deeper than any header; bounds the recursion

// m [< 2**128, > 0] * 2**e rounded to the nearest double (ties to even) when `inexact` says the
// exact value is a little above m (a nonzero remainder below m's last bit): the 53 leading bits,
// then the bits below them and the remainder decide the rounding.
double round_to_double(unsigned __int128 m, int e, bool inexact) {
  int bits = 0;
  for (unsigned __int128 t = m; t; t >>= 1) ++bits;
  if (bits > 53) {
    const int drop = bits - 53;
    const unsigned __int128 one = 1, low = m & ((one << drop) - 1), half = one << (drop - 1);
    m >>= drop;
    e += drop;
    if (low > half || (low == half && (inexact || (m & 1)))) ++m;  // 2**53 after a carry is exact too
  }
  return std::ldexp(double(uint64_t(m)), e);
}

// 10**k for k in [0, 19] and 5**k for k in [0, 27] (each below 2**64).
uint64_t power(uint64_t base, int k) {
  uint64_t p = 1;
  while (k-- > 0) p *= base;
  return p;
}

// A JSON number token's exact value, correctly rounded, when it has at most 19 significant digits
// and the value is d * 10**e with e in [-27, 19]; false otherwise (the caller falls back to strtod).
// For e >= 0 the product is exact in 128 bits; for e < 0 the digits, shifted to fill 128 bits, are
// divided by 5**-e (the 2**-e is the exponent) and the remainder says whether the quotient is exact.
bool exact_decimal(const std::string& token, double& out) {
  size_t i = 0;
  const bool negative = token[0] == '-';
  if (negative) ++i;
  uint64_t digits = 0;
  int significant = 0, exponent = 0;
  bool fraction = false;
  for (; i < token.size() && token[i] != 'e' && token[i] != 'E'; ++i) {
    if (token[i] == '.') {
      fraction = true;
      continue;
    }
    const unsigned d = unsigned(token[i] - '0');
    if (digits == 0 && d == 0) {
      exponent -= fraction;  // leading zeros: only their place counts
      continue;
    }
    if (++significant > 19) return false;
    digits = digits * 10 + d;
    exponent -= fraction;
  }
  if (i < token.size()) {  // exponent: [eE][+-]?[0-9]+ (the grammar checked it)
    ++i;
    bool minus = false;
    if (token[i] == '+' || token[i] == '-') minus = token[i++] == '-';
    int x = 0;
    for (; i < token.size(); ++i) {
      if (x > 10000) return false;
      x = x * 10 + (token[i] - '0');
    }
    exponent += minus ? -x : x;
  }
  if (digits == 0) {
    out = negative ? -0.0 : 0.0;
    return true;
  }
  double value;
  if (exponent >= 0) {
    if (exponent > 19) return false;
    value = round_to_double((unsigned __int128)digits * power(10, exponent), 0, false);
  } else {
    if (exponent < -27) return false;
    const int k = -exponent;
    const int shift = __builtin_clzll(digits);  // digits << shift has its top bit at bit 63
    const unsigned __int128 scaled = (unsigned __int128)(digits << shift) << 64;
    const uint64_t divisor = power(5, k);
    value = round_to_double(scaled / divisor, -64 - shift - k, scaled % divisor != 0);
  }
  out = negative ? -value : value;
  return true;
}

class Parser {
 public:
  Parser(const char* text, size_t size) : p_(text), size_(size) {}

  Json document() {
    skip_space();
    Json v = value(0);
    skip_space();
    if (pos_ != size_) bad("extra data");
    return v;
  }

 private:
  [[noreturn]] void bad(const char* why) const {
    corrupt("unreadable header (" + std::string(why) + " at byte " + std::to_string(pos_) + ")");
  }
  bool more() const { return pos_ < size_; }
  char peek() const { return pos_ < size_ ? p_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < size_ && (p_[pos_] == ' ' || p_[pos_] == '\t' || p_[pos_] == '\n' || p_[pos_] == '\r')) ++pos_;
  }
  bool literal(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (size_ - pos_ < n || std::char_traits<char>::compare(p_ + pos_, word, n) != 0) return false;
    pos_ += n;
    return true;
  }

  Json value(int depth) {
    if (depth > kMaxNesting) bad("nesting too deep");
    if (!more()) bad("expecting value");
    Json v;
    char c = peek();
    if (c == '{') {
      v.type = Json::Type::kObject;
      ++pos_;
      skip_space();
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      for (;;) {
        skip_space();
        if (peek() != '"') bad("expecting property name enclosed in double quotes");
        std::string key = string_body();
        skip_space();
        if (peek() != ':') bad("expecting ':' delimiter");
        ++pos_;
        skip_space();
        Json member = value(depth + 1);
        bool replaced = false;
        for (auto& kv : v.members)
          if (kv.first == key) {  // Python's dict keeps the last value
            kv.second = std::move(member);
            replaced = true;
            break;
          }
        if (!replaced) v.members.emplace_back(std::move(key), std::move(member));
        skip_space();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        if (peek() == '}') {
          ++pos_;
          return v;
        }
        bad("expecting ',' delimiter");
      }
    }
    if (c == '[') {
      v.type = Json::Type::kArray;
      ++pos_;
      skip_space();
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      for (;;) {
        skip_space();
        v.items.push_back(value(depth + 1));
        skip_space();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        if (peek() == ']') {
          ++pos_;
          return v;
        }
        bad("expecting ',' delimiter");
      }
    }
    if (c == '"') {
      v.type = Json::Type::kString;
      v.string = string_body();
      return v;
    }
    if (literal("true") || literal("false")) {
      v.type = Json::Type::kBool;
      v.boolean = p_[pos_ - 2] == 'u';  // tr[u]e, fal[s]e
      return v;
    }
    if (literal("null")) return v;
    v.type = Json::Type::kNumber;
    if (literal("NaN")) {
      v.number = std::numeric_limits<double>::quiet_NaN();
      return v;
    }
    if (literal("Infinity")) {
      v.number = std::numeric_limits<double>::infinity();
      return v;
    }
    if (literal("-Infinity")) {
      v.number = -std::numeric_limits<double>::infinity();
      return v;
    }
    number(v);
    return v;
  }

  // JSON number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  void number(Json& v) {
    size_t start = pos_;
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++pos_;
    } else {
      pos_ = start;
      bad("expecting value");
    }
    bool integral = true;
    if (peek() == '.' && pos_ + 1 < size_ && p_[pos_ + 1] >= '0' && p_[pos_ + 1] <= '9') {
      integral = false;
      ++pos_;
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      size_t at = pos_++;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (peek() >= '0' && peek() <= '9') {
        integral = false;
        while (peek() >= '0' && peek() <= '9') ++pos_;
      } else {
        pos_ = at;  // not an exponent: Python stops the number here (then "extra data")
      }
    }
    std::string token(p_ + start, pos_ - start);
    if (integral) {
      // exact int64 when it fits (Python ints are unbounded: larger ones keep only the double)
      bool neg = token[0] == '-';
      uint64_t mag = 0;
      bool fits = true;
      for (size_t i = neg ? 1 : 0; i < token.size(); ++i) {
        unsigned d = unsigned(token[i] - '0');
        if (mag > (uint64_t(1) << 63) / 10 || (mag == (uint64_t(1) << 63) / 10 && d > 8)) fits = false;
        if (!fits) break;
        mag = mag * 10 + d;
      }
      if (fits && (neg || mag <= uint64_t(INT64_MAX))) {
        v.is_int = true;
        v.integer = neg ? int64_t(0 - mag) : int64_t(mag);
      }
    }
    v.number = to_double(token);
  }

  // The token's value, correctly rounded as Python's float(): exactly (exact_decimal) when its
  // digits and exponent are in range, which covers what Python's repr writes (at most 17 digits)
  // for magnitudes from about 1e-11 to 1e36, the header's numbers; otherwise strtod (correctly
  // rounded in glibc and musl; it reads the locale's decimal point, so the token is rewritten
  // with it).  In WebAssembly strtod works in software 128-bit floats, which a cold decode paid
  // for every number of the header.
  static double to_double(std::string token) {
    double exact;
    if (exact_decimal(token, exact)) return exact;
    const char* point = std::localeconv()->decimal_point;
    if (point && point[0] && !(point[0] == '.' && point[1] == '\0')) {
      size_t dot = token.find('.');
      if (dot != std::string::npos) token.replace(dot, 1, point);
    }
    return std::strtod(token.c_str(), nullptr);
  }

  unsigned hex4() {
    if (size_ - pos_ < 4) bad("invalid \\uXXXX escape");
    unsigned u = 0;
    for (int i = 0; i < 4; ++i) {
      char c = p_[pos_++];
      unsigned d;
      if (c >= '0' && c <= '9') d = unsigned(c - '0');
      else if (c >= 'a' && c <= 'f') d = unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') d = unsigned(c - 'A' + 10);
      else { pos_ -= size_t(i + 1); bad("invalid \\uXXXX escape"); }
      u = u * 16 + d;
    }
    return u;
  }

  static void put_utf8(std::string& s, unsigned cp) {
    if (cp < 0x80) {
      s += char(cp);
    } else if (cp < 0x800) {
      s += char(0xC0 | (cp >> 6));
      s += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += char(0xE0 | (cp >> 12));
      s += char(0x80 | ((cp >> 6) & 0x3F));
      s += char(0x80 | (cp & 0x3F));
    } else {
      s += char(0xF0 | (cp >> 18));
      s += char(0x80 | ((cp >> 12) & 0x3F));
      s += char(0x80 | ((cp >> 6) & 0x3F));
      s += char(0x80 | (cp & 0x3F));
    }
  }

  // A string starting at the opening quote; the result is UTF-8.
  std::string string_body() {
    ++pos_;
    std::string s;
    for (;;) {
      if (!more()) bad("unterminated string");
      unsigned char c = static_cast<unsigned char>(p_[pos_]);
      if (c == '"') {
        ++pos_;
        return s;
      }
      if (c < 0x20) bad("invalid control character");
      if (c != '\\') {
        s += char(c);
        ++pos_;
        continue;
      }
      ++pos_;
      if (!more()) bad("unterminated string");
      char e = p_[pos_++];
      switch (e) {
        case '"': s += '"'; break;
        case '\\': s += '\\'; break;
        case '/': s += '/'; break;
        case 'b': s += '\b'; break;
        case 'f': s += '\f'; break;
        case 'n': s += '\n'; break;
        case 'r': s += '\r'; break;
        case 't': s += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          // a high surrogate followed by an escaped low one is one code point (Python's rule);
          // lone surrogates are kept as their (WTF-8) bytes
          if (cp >= 0xD800 && cp <= 0xDBFF && size_ - pos_ >= 6 && p_[pos_] == '\\' && p_[pos_ + 1] == 'u') {
            size_t save = pos_;
            pos_ += 2;
            unsigned lo = hex4();
            if (lo >= 0xDC00 && lo <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            else pos_ = save;
          }
          put_utf8(s, cp);
          break;
        }
        default:
          --pos_;
          bad("invalid \\escape");
      }
    }
  }

  const char* p_;
  size_t size_;
  size_t pos_ = 0;
};

const char* type_name(const Json& v) {
  switch (v.type) {
    case Json::Type::kNull: return "null";
    case Json::Type::kBool: return "a boolean";
    case Json::Type::kNumber: return v.is_int ? "an integer" : "a number";
    case Json::Type::kString: return "a string";
    case Json::Type::kArray: return "a list";
    case Json::Type::kObject: return "a dictionary";
  }
  return "a value";
}

}  // namespace

const Json* Json::find(const std::string& key) const {
  if (type != Type::kObject) return nullptr;
  for (const auto& kv : members)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

Json parse_json(const char* text, size_t size) { return Parser(text, size).document(); }

const Json& require(const Json& object, const char* key, const std::string& name) {
  if (object.type != Json::Type::kObject) {
    size_t dot = name.rfind('.');
    corrupt(dot == std::string::npos ? "the header is not a dictionary" : "invalid " + name.substr(0, dot) + ": expected a dictionary, got " + type_name(object));
  }
  const Json* v = object.find(key);
  if (!v) corrupt("header lacks " + name);
  return *v;
}

int64_t json_int(const Json& v, const std::string& name) {
  if (v.type == Json::Type::kBool) return v.boolean ? 1 : 0;
  if (v.type == Json::Type::kNumber && v.is_int) return v.integer;
  if (v.type == Json::Type::kNumber && std::isfinite(v.number) && !v.is_int && v.number == std::floor(v.number) &&
      std::fabs(v.number) < 9.2e18)
    return int64_t(v.number);  // a float literal with an integral value (Python's int() accepts it)
  corrupt("invalid " + name + ": expected an integer, got " + type_name(v));
}

double json_double(const Json& v, const std::string& name) {
  if (v.type == Json::Type::kBool) return v.boolean ? 1.0 : 0.0;
  if (v.type == Json::Type::kNumber) return v.number;
  corrupt("invalid " + name + ": expected a number, got " + type_name(v));
}

bool json_bool(const Json& v, const std::string&) {
  switch (v.type) {  // Python's bool() of the value (the header's flags are used as `if flag:`)
    case Json::Type::kNull: return false;
    case Json::Type::kBool: return v.boolean;
    case Json::Type::kNumber: return v.number != 0.0;  // NaN is true
    case Json::Type::kString: return !v.string.empty();
    case Json::Type::kArray: return !v.items.empty();
    case Json::Type::kObject: return !v.members.empty();
  }
  return false;
}

std::string json_string(const Json& v, const std::string& name) {
  if (v.type == Json::Type::kString) return v.string;
  corrupt("invalid " + name + ": expected a string, got " + type_name(v));
}

std::vector<double> json_doubles(const Json& v, const std::string& name, size_t expected_size, bool null_is_nan) {
  if (v.type != Json::Type::kArray) corrupt("invalid " + name + ": expected a list, got " + type_name(v));
  if (expected_size != size_t(-1) && v.items.size() != expected_size)
    corrupt("invalid " + name + ": " + std::to_string(v.items.size()) + " values, expected " +
            std::to_string(expected_size));
  std::vector<double> out;
  out.reserve(v.items.size());
  for (size_t i = 0; i < v.items.size(); ++i) {
    if (null_is_nan && v.items[i].is_null()) out.push_back(std::numeric_limits<double>::quiet_NaN());
    else out.push_back(json_double(v.items[i], name + "[" + std::to_string(i) + "]"));
  }
  return out;
}

}  // namespace ralhe
