// The ARM section parser and the exactness bounds of the integer ARM (integer_arm.py).
#include "integer_arm.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "rans_reader.h"

namespace ralhe {

namespace {

constexpr int kFormatVersion = 1;
constexpr double kExactF64 = 4503599627370496.0;  // 2**52: one bit of room for rounding offsets
constexpr double kExactF32 = 16777216.0;          // 2**24
constexpr double kExactI32 = 2147483648.0;        // 2**31
constexpr double kSafety = 1.0 + 1e-9;            // float64 bounds inflated to stay upper bounds

[[noreturn]] void invalid(const std::string& what) { corrupt("decoded ARM invalid: " + what); }

}  // namespace

LaplaceTableConfig param_table_config() {
  LaplaceTableConfig c;
  c.log_scale_min = -1.0;
  c.log_scale_step_log2 = 2;
  c.num_scale_bins = 49;
  c.mean_bins_log2 = 0;
  c.tail_log2 = 12;
  c.max_half_width = 4096;
  return c;
}

void QuantizedArm::validate() const {
  const int a = num_attributes();
  if (a < 1 || a > 255) invalid("need 1..255 attributes, got " + std::to_string(a));
  if (!(1 <= context_size && context_size <= 255 && 1 <= hidden && hidden <= 255 && 0 <= num_hidden_layers &&
        num_hidden_layers <= 16))
    invalid("ARM config out of range");
  for (int s : weight_shifts)
    if (s < 0 || s > kMaxWeightShift)
      invalid("weight shifts must be in [0, " + std::to_string(kMaxWeightShift) + "], got " + std::to_string(s));
  if (activation_frac_bits < 0 || activation_frac_bits > 15)
    invalid("activation_frac_bits must be in [0, 15], got " + std::to_string(activation_frac_bits));
  if (int(weights.size()) != num_layers() || int(biases.size()) != num_layers())
    invalid("expected " + std::to_string(num_layers()) + " layers");
  for (int l = 0; l < num_layers(); ++l) {
    if (weights[l].size() != size_t(a) * layer_in(l) * layer_out(l) || biases[l].size() != size_t(a) * layer_out(l))
      invalid("layer " + std::to_string(l) + " has the wrong shape");
    for (const auto* v : {&weights[l], &biases[l]})
      for (int64_t x : *v)
        if (x >= kWeightIntLimit || x <= -kWeightIntLimit)
          invalid("an integer weight reaches " + std::to_string(kWeightIntLimit) + ": lower the weight shift");
  }
  const std::vector<double> worst = layer_bounds(kContextClamp);
  if (*std::max_element(worst.begin(), worst.end()) >= kExactF64)
    invalid("worst-case accumulator is not exact in float64: weights too large for their shifts");
}

std::vector<double> QuantizedArm::layer_bounds(int64_t context_bound) const {
  const int a_count = num_attributes(), f = activation_frac_bits;
  std::vector<double> out;
  std::vector<double> u, next;
  for (int a = 0; a < a_count; ++a) {
    // per attribute, layer by layer (the maximum over attributes is taken per layer below)
    u.assign(size_t(context_size), double(std::min(context_bound, kContextClamp)));
    for (int l = 0; l < num_layers(); ++l) {
      const int di = layer_in(l), dn = layer_out(l);
      const int64_t* w = weights[l].data() + size_t(a) * di * dn;
      const int64_t* b = biases[l].data() + size_t(a) * dn;
      const double bias_scale = std::ldexp(1.0, in_frac(l));
      const double down = std::ldexp(1.0, -(weight_shifts[a] + in_frac(l) - f));
      next.assign(size_t(dn), 0.0);
      double top = 0.0;
      for (int o = 0; o < dn; ++o) {
        double acc = 0.0;
        for (int i = 0; i < di; ++i) acc += u[i] * double(std::llabs(w[i * dn + o]));
        acc = (acc + double(std::llabs(b[o])) * bias_scale) * kSafety;
        top = std::max(top, acc);
        next[o] = std::min(std::floor(acc * down), double(hidden_limit()));
      }
      if (a == 0) out.push_back(top);
      else out[l] = std::max(out[l], top);
      u.swap(next);
    }
  }
  return out;
}

namespace {

int64_t find_exact_bound(const QuantizedArm& arm, double limit) {
  double big = 0.0;
  for (int l = 0; l < arm.num_layers(); ++l) {
    for (int64_t w : arm.weights[l]) big = std::max(big, double(std::llabs(w)));
    for (int64_t b : arm.biases[l]) big = std::max(big, double(std::llabs(b)) * std::ldexp(1.0, arm.in_frac(l)));
  }
  if (big >= limit) return -1;
  auto ok = [&](int64_t bound) {
    const std::vector<double> b = arm.layer_bounds(bound);
    return *std::max_element(b.begin(), b.end()) < limit;
  };
  if (!ok(0)) return -1;
  int64_t lo = 0, hi = kContextClamp;  // ok(lo) holds; the bounds grow with the context bound
  if (ok(hi)) return hi;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (ok(mid)) lo = mid;
    else hi = mid;
  }
  return lo;
}

}  // namespace

int64_t QuantizedArm::float32_context_bound() const { return find_exact_bound(*this, kExactF32); }

int64_t QuantizedArm::int32_context_bound() const {
  for (int l = 0; l + 1 < num_layers(); ++l)
    for (int s : weight_shifts)
      if (s + in_frac(l) - activation_frac_bits < 0) return -1;  // the int32 kernel only shifts right
  return find_exact_bound(*this, kExactI32);
}

QuantizedArm parse_arm(Bytes data) {
  if (data.size < 6 || data[0] != kFormatVersion)
    corrupt("ARM section: not a version-" + std::to_string(kFormatVersion) + " ARM record (" +
            std::to_string(data.size) + " bytes)");
  QuantizedArm arm;
  const int a = data[1];
  arm.context_size = data[2];
  arm.hidden = data[3];
  arm.num_hidden_layers = data[4];
  arm.activation_frac_bits = data[5];
  if (!(arm.context_size >= 1 && arm.hidden >= 1 && arm.num_hidden_layers <= 16))
    corrupt("ARM section: bad ARM header: ArmConfig out of range (context " + std::to_string(arm.context_size) +
            ", hidden " + std::to_string(arm.hidden) + ", layers " + std::to_string(arm.num_hidden_layers) + ")");
  if (a < 1) corrupt("ARM section: the record holds no attributes");
  const int layers = arm.num_layers();
  const size_t n_groups = size_t(2) * layers * a;
  size_t pos = 6;
  if (data.size < pos + a + n_groups) corrupt("ARM section: ARM record truncated in its header");
  for (int i = 0; i < a; ++i) arm.weight_shifts.push_back(data[pos + i]);
  const uint8_t* bins = data.data + pos + a;
  pos += a + n_groups;
  const LaplaceTableConfig param_config = param_table_config();
  for (size_t g = 0; g < n_groups; ++g)
    if (bins[g] >= param_config.num_scale_bins) corrupt("ARM section: bad parameter table index");
  const Bytes stream = data.from(pos, "ARM parameter stream");
  if (stream.size < 8 || stream.size % 4) corrupt("ARM section: ARM parameter stream truncated");

  const auto tables = get_laplace_tables(param_config);
  size_t per_attribute = 0;
  for (int l = 0; l < layers; ++l) per_attribute += size_t(arm.layer_in(l) + 1) * arm.layer_out(l);
  if (int64_t(per_attribute * a) > max_stream_symbols(*tables, stream.size))
    corrupt("ARM section: a parameter stream of " + std::to_string(stream.size) + " bytes cannot hold " +
            std::to_string(per_attribute * a) + " parameters");
  for (int l = 0; l < layers; ++l) {
    arm.weights.emplace_back(size_t(a) * arm.layer_in(l) * arm.layer_out(l));
    arm.biases.emplace_back(size_t(a) * arm.layer_out(l));
  }
  const CdfTablesView view = tables->view();
  RansReader reader(stream.data, stream.size);
  size_t g = 0;
  for (int ai = 0; ai < a; ++ai) {
    for (int l = 0; l < layers; ++l) {
      const size_t nw = size_t(arm.layer_in(l)) * arm.layer_out(l), nb = size_t(arm.layer_out(l));
      int64_t* w = arm.weights[l].data() + ai * nw;
      int64_t* b = arm.biases[l].data() + ai * nb;
      const int tw = bins[g++], tb = bins[g++];
      for (size_t i = 0; i < nw; ++i) w[i] = view.decode(reader, tw);
      for (size_t i = 0; i < nb; ++i) b[i] = view.decode(reader, tb);
      // stop at the first sign of a short stream: a corrupt header may announce millions of weights
      if (reader.overrun()) corrupt("ARM section: the parameter stream ends early or is corrupt");
    }
  }
  arm.validate();
  return arm;
}

}  // namespace ralhe
