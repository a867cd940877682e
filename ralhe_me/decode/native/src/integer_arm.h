// The ARM section: A attributes' autoregressive models in fixed point
// (ralhe_me/entropy/integer_arm.py QuantizedArm, its to_bytes / from_bytes format).
//
// Format: version (1), A, K (context size), hidden, number of hidden layers, F (activation
// fractional bits), A weight shifts, then one parameter table (a scale bin of kParamTableConfig)
// per group, groups in order per attribute, per layer: weights then biases; then one rANS stream
// of all integer parameters in the same order (weights of a layer [in][out] row-major).
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"
#include "laplace_tables.h"

namespace ralhe {

constexpr int64_t kContextClamp = (1 << 15) - 1;  // nn/arm.py CONTEXT_CLAMP
constexpr int64_t kHiddenClamp = 1 << 12;         // nn/arm.py HIDDEN_CLAMP
constexpr int64_t kMuLimit = 1 << 20;             // integer_arm.py MU_LIMIT
constexpr int kMaxWeightShift = 24;
constexpr int64_t kWeightIntLimit = 1 << 24;      // |integer weight| stays below this

// integer_arm.py PARAM_TABLE_CONFIG: the tables the ARM parameters are coded with.
LaplaceTableConfig param_table_config();

struct QuantizedArm {
  int context_size = 0;       // K: inputs of the first layer
  int hidden = 0;             // width of the hidden layers
  int num_hidden_layers = 0;  // the model has num_hidden_layers + 1 linear layers
  int activation_frac_bits = 0;  // F
  std::vector<int> weight_shifts;  // [A]: attribute a's integers are at step 2**-shift
  std::vector<std::vector<int64_t>> weights;  // per layer l: [A, in_l, out_l]
  std::vector<std::vector<int64_t>> biases;   // per layer l: [A, out_l]

  int num_attributes() const { return int(weight_shifts.size()); }
  int num_layers() const { return num_hidden_layers + 1; }
  int layer_in(int l) const { return l == 0 ? context_size : hidden; }
  int layer_out(int l) const { return l == num_hidden_layers ? 2 : hidden; }
  int in_frac(int l) const { return l == 0 ? 0 : activation_frac_bits; }
  int64_t hidden_limit() const { return kHiddenClamp << activation_frac_bits; }

  // QuantizedArm.__post_init__'s checks (shapes, shifts, weight range, float64 exactness);
  // throws CorruptDataError.
  void validate() const;
  // Upper bounds of |accumulator| per layer for |context| <= context_bound (_layer_bounds).
  std::vector<double> layer_bounds(int64_t context_bound) const;
  // The largest context bound under which every partial sum is exact in float32 (below 2**24),
  // resp. fits int32 (below 2**31, and no hidden layer shifts left); -1 if none
  // (float32_context_bound / int32_context_bound).
  int64_t float32_context_bound() const;
  int64_t int32_context_bound() const;
};

// Parses and checks an ARM section (QuantizedArm.from_bytes); throws CorruptDataError.
QuantizedArm parse_arm(Bytes section);

}  // namespace ralhe
