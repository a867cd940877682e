// The whole decode of a .ralhe file (ralhe_me/decode/decoder.py _decode, _checked and the reconstruction.py
// helpers it calls): container, header checks, positions, gain map, covariance, decoder weights,
// ARMs, latents, synthesis, denormalization, voxel centers.
//
// Errors: ralhe::Error with the Python decoder's kinds.  A valid file whose attributes a baseline
// coder wrote (header "attribute_codec" "raht" or "scalar") is ErrorKind::kUnsupported.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "container.h"
#include "ply.h"

namespace ralhe {

constexpr const char* kDecoderVersion = "0.1.0";  // ralhe_me.__version__ of the reference decoder

struct DecodedModel {
  int64_t n = 0;
  int sh_degree = 0;
  int num_sh = 1;                      // (sh_degree + 1)^2
  OutputVector<float> means;           // [n, 3] voxel centers (world)
  std::vector<float> log_scales;       // [n, 3]
  std::vector<float> quats;            // [n, 4] (w, x, y, z)
  OutputVector<float> opacity_logits;  // [n]
  OutputVector<float> sh;              // [n, num_sh, 3]
  // (stage, seconds) in decode order; the stages of decoder.py ("positions", "gains",
  // "covariance", "latents", "attributes"), "container" (unpack) first.
  std::vector<std::pair<std::string, double>> seconds;

  PlyModel ply() const;  // views of the arrays above
};

// Decode the bytes of a whole file (`data` only has to live during the call).
DecodedModel decode(Bytes data);
// Decode an unpacked file (its section views must be alive).
DecodedModel decode(const Container& container);

}  // namespace ralhe
