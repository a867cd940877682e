// The JSON of a .ralhe header (json.loads of bitstream.py): a value tree and typed getters whose
// failures are CorruptDataErrors naming the key ("header lacks depth", "invalid depth ...").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ralhe {

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  Type type = Type::kNull;
  bool boolean = false;
  // Numbers: `number` always; an integer literal (no fraction, no exponent) that fits int64
  // also sets is_int and `integer` (exact, as Python's int).
  double number = 0.0;
  bool is_int = false;
  int64_t integer = 0;
  std::string string;
  std::vector<Json> items;                             // array
  std::vector<std::pair<std::string, Json>> members;   // object, file order, keys unique

  bool is_null() const { return type == Type::kNull; }
  // The member `key` of an object, or nullptr (absent, or this is not an object).
  const Json* find(const std::string& key) const;
};

// Parse UTF-8 JSON text as Python's json.loads: NaN / Infinity / -Infinity accepted, a repeated
// key keeps its last value, trailing non-space is an error.  Throws CorruptDataError
// "unreadable header (<why> at byte <i>)".
Json parse_json(const char* text, size_t size);

// Typed access.  `name` is what messages call the value (e.g. "architecture.num_levels").
const Json& require(const Json& object, const char* key, const std::string& name);  // "header lacks <name>"
int64_t json_int(const Json& v, const std::string& name);       // an integer (or bool, as Python's int)
double json_double(const Json& v, const std::string& name);     // any number (or bool)
bool json_bool(const Json& v, const std::string& name);         // Python's truthiness of any value
std::string json_string(const Json& v, const std::string& name);
// A list of numbers; with null_is_nan, null entries are NaN (numpy's asarray(..., float64)).
std::vector<double> json_doubles(const Json& v, const std::string& name, size_t expected_size = size_t(-1),
                                 bool null_is_nan = false);

}  // namespace ralhe
