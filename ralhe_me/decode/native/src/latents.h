// The latent decoder: every attribute's latent planes from the "latents" rANS stream
// (ralhe_me/entropy/latent_coder.py decode_latents; its lockstep loop, formerly in
// entropy/csrc/lockstep.cpp, which now wraps LatentLoop).
//
// Planes are cut into segments of segment_length; contexts (the K latents before, zero before the
// segment's start) restart at each segment.  Step t decodes position t of every segment longer
// than t, for every attribute: the integer ARM of the contexts gives (mu_int, table index), the
// symbol read is x - mu_int.  Stream order: for t, for attribute a, for segment in coding order
// (decreasing length, ties in plane then position order, so the active segments are a prefix).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common.h"
#include "integer_arm.h"
#include "laplace_tables.h"
#include "rans_reader.h"

namespace ralhe {

constexpr int64_t kLatentLimit = (1 << 24) - 1;  // |latent| of any valid stream (LATENT_LIMIT)

// Per plane, its latents (not zero-filled when sized: the decoding loop writes every one, and a
// stream that ends early is an error).
using LatentPlanes = std::vector<OutputVector<int32_t>>;

// per plane p the latents, attribute-major int32 [num_attributes * plane_sizes[p]] (Python's
// [A, n_p] arrays).  Throws CorruptDataError on a stream that runs out, an impossible escape, or
// arguments inconsistent with the ARM.  The tables of `tables` are built once per config.
LatentPlanes decode_latents(Bytes section, const std::vector<int64_t>& plane_sizes, int num_attributes,
                            const QuantizedArm& arms, int segment_length, const LaplaceTableConfig& tables);

// What the integer ARM needs beyond its weights (QuantizedArm.code_indices' constants).
struct ArmEvalParams {
  int64_t hidden_limit = 0;            // largest hidden activation, HIDDEN_CLAMP << F
  int64_t context_clamp = kContextClamp;
  int mean_bins_log2 = 0;              // table grid of the outputs
  int log_scale_step_log2 = 0;
  int64_t log_scale_min_units = 0;
  int64_t num_scale_bins = 0;
  int64_t mu_limit = kMuLimit;         // |mu| clamp, in latent units
  int64_t float_bound = -1;            // QuantizedArm.float32_context_bound()
  int64_t int32_bound = -1;            // QuantizedArm.int32_context_bound()
};
ArmEvalParams arm_eval_params(const QuantizedArm& arm, const LaplaceTableConfig& tables);

// The lockstep loop's state: the integer ARM (exact in float32, int32 or float64 SIMD lanes,
// whichever the largest latent so far allows), a ring of the last K latents of every segment,
// and the decoded latents [A][S][segments].  Arguments out of range throw std::invalid_argument.
class LatentLoop {
 public:
  // `arm` must be valid (QuantizedArm::validate); segments in coding order.
  LatentLoop(const QuantizedArm& arm, const ArmEvalParams& params, int64_t segments, int segment_length);
  ~LatentLoop();
  LatentLoop(const LatentLoop&) = delete;
  LatentLoop& operator=(const LatentLoop&) = delete;

  int num_attributes() const;
  int64_t num_tables() const;  // num_scale_bins << mean_bins_log2: table indexes are below this
  int64_t bound() const;       // the largest |latent| decoded so far

  // Step t with segments [0, na) active -> mu_int(), table_index() [A * na], attribute-major.
  void predict(int t, int na);
  const int32_t* mu_int() const;
  const int32_t* table_index() const;
  // The step's decoded residuals [A * na] (same order) -> latents x = residual + mu_int (after
  // predict(t, na)).
  void store(int t, int na, const int64_t* residuals);
  // Every step (active[t] segments at step t), symbols read from `reader` with `tables` (one per
  // table index): false when the stream ran out or held an impossible escape.
  bool run(RansReader& reader, const CdfTablesView& tables, const int64_t* active, int64_t steps);
  // Before run(): one plane's latents go straight to out [A, n] (laid out as gather() writes
  // them) instead of the loop's own buffer; once used, every segment needs an output and
  // store() and gather() are refused.
  void direct_output(int64_t first, int64_t n, const int64_t* position, int32_t* out);
  // One plane's latents out [A, n]: its segments are layout segments first .. first + ceil(n / S)
  // - 1, layout segment g at coding position position[g] (position: [segments]).
  void gather(int64_t first, int64_t n, const int64_t* position, int32_t* out) const;
  void gather(int64_t first, int64_t n, const int64_t* position, int64_t* out) const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace ralhe
