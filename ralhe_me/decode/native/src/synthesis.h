// The attribute synthesis: integer latent planes -> normalized SH and opacity of every point.
// Python reference: ralhe_me/decode/synthesis.py AttributeSynthesis.decode (rows=None), with
// nn/grouped_decoder.py GroupedSparseDecoder.forward and nn/inverse_raht.py; the encoder's
// reconstruction (reconstruction.py reconstruct_attributes) runs this very code through the Python binding.
//
// Attributes: the K = (sh_degree + 1)^2 SH triplets (one decoder group, d = 3 outputs each) and
// opacity (d = 1).  Each decoder reads in = planes_per_channel * C upsampled latents per point:
//   "raht":    plane p (one per channel) holds RAHT coefficients; x_p = inverse RAHT (raht.h)
//   "pyramid": plane p = c * L + l holds level l's latents; x_p = the latent of the point's
//              ancestor at level l (point_to_voxel[l])
// (a latent converted to float32 by rounding to nearest, as torch's conversion).
//
// CANONICAL ORDER of the float32 operations (every product and every sum rounded to float32, no
// fused multiply-add: built with -ffp-contract=off; relu(v) = v < 0 ? +0 : v, so -0 and NaN pass):
//   point-wise layer (linear0, linear1; relu after each):
//       out_j = relu(((b_j + x_0 * w_0j) + x_1 * w_1j) + ... + x_{in-1} * w_{in-1,j})
//   3x3x3 convolution (conv0 with relu after it, conv1 without):
//       out_o = bias_o, then for kernel offset k = 0..26 in MinkowskiEngine order (offset
//       (k % 3 - 1, k / 3 % 3 - 1, k / 9 - 1), 13 = the point itself), skipping empty neighbours,
//       for input channel i = 0..C_in-1 in order:  out_o = out_o + h[neighbour_k][i] * W[k][i][o]
//   skip path (arch.skip):  s_o = ((sb_o + x_0 * S_0o) + x_1 * S_1o) + ...
//   output = conv1_o + s_o   (or conv1_o without skip)
// One left-to-right chain per output value: nothing is reordered, so any vectorization across
// independent outputs (here: across attributes, see synthesis.cpp) gives these bits.
//
// Weights (synthesis.decoder_parameters() order, GroupedSparseDecoder registration order):
// for the SH group (A = K, d = 3), then opacity (A = 1, d = 1):
//   linear0_weight [A, in, h1], linear0_bias [A, 1, h1], linear1_weight [A, h1, h2],
//   linear1_bias [A, 1, h2], conv0_kernel [A, 27, h2, h3], conv0_bias [A, 1, h3],
//   conv1_kernel [A, 27, h3, d], conv1_bias [A, 1, d]
// then with skip: sh.skip [K, in, 3], sh.skip_bias [K, 1, 3], opacity.skip [1, in, 1],
// opacity.skip_bias [1, 1, 1].  Value = float32(double(int) * 2^-shift) (weights.py dequantize).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "raht.h"

namespace ralhe {

// config.py ArchitectureConfig (the header's "architecture").
struct Architecture {
  std::string transform = "raht";  // "raht" or "pyramid"
  int num_levels = 7;              // L
  int latent_channels = 3;         // C
  bool skip = true;
  int decoder_linear[2] = {12, 4};  // h1, h2
  int decoder_conv = 2;             // h3
  int arm_context = 16;
  int arm_hidden = 8;
  int segment_length = 512;
};

constexpr int kMaxDecoderWidth = 64;  // widths (in, h1, h2, h3) this decoder supports

// Throws CorruptDataError for an unknown transform or sizes < 1, UnsupportedFileError for widths
// above kMaxDecoderWidth.
void check_architecture(const Architecture& arch);
// Decoder inputs per point: C (raht) or C * L (pyramid).
int decoder_in_channels(const Architecture& arch);
// The shapes of the weight tensors in file order (see above).
std::vector<std::vector<int64_t>> decoder_weight_shapes(const Architecture& arch, int num_sh);

struct SynthesisWeights {
  std::vector<std::vector<float>> tensors;  // file order, C-order flattened
};
// weights.py dequantize of the file's integers (each tensor flattened; sizes checked against
// decoder_weight_shapes).  shift < -1023 is corrupt (Python's 2.0 ** -shift overflows).
SynthesisWeights dequantize_weights(const Architecture& arch, int num_sh, const std::vector<std::vector<int64_t>>& ints,
                                    int64_t shift);

struct PlaneView {  // one latent plane [A, n_p] attribute-major (A = num_sh + 1)
  const int32_t* data = nullptr;
  int64_t size = 0;
};

// Optional in synthesize: the SH written already denormalized, attributes.h denormalize_sh's
// operations applied to each value as the synthesis makes it (the same bits, without a second
// pass over the [M, K, 3] output).
struct ShDenormalization {
  const double* mean = nullptr;  // [K + 1, 3]
  const double* std = nullptr;   // [K + 1]
  const double* gain = nullptr;  // [M], or null: no gain map
};

// Decode all M points.  Inputs (checked; bad ones throw ralhe::Error naming the problem):
//   coords [M, 3] in [0, 2^depth), unique (raht only; any order, Morton in a file)
//   neighbours [M, 26] row of the voxel at coord + geometry/occupancy.py NEIGHBOUR_OFFSETS[j]
//       ((dx, dy, dz) in {-1, 0, 1}^3 \ 0 with dx slowest), -1 where empty
//   point_to_voxel: per level l < L, [M] the row of each point's level-l ancestor (pyramid only)
//   planes: planes_per_channel * C planes, plane p of size A * n_p (n_p = M for raht)
// Outputs: sh_norm [M, K, 3] (denormalized where denorm is given) and opacity_norm [M],
// point-major.
void synthesize(const Architecture& arch, int num_sh, const SynthesisWeights& weights, int64_t M,
                const int32_t* coords, int depth, const int32_t* neighbours,
                const std::vector<const int32_t*>& point_to_voxel, const std::vector<PlaneView>& planes,
                float* sh_norm, float* opacity_norm, const ShDenormalization* denorm = nullptr,
                const RahtPlan* plan = nullptr);  // "raht": the plan of coords if the caller has it
void synthesize(const Architecture& arch, int num_sh, const SynthesisWeights& weights, int64_t M,
                const int32_t* coords, int depth, const int32_t* neighbours,
                const std::vector<const int32_t*>& point_to_voxel, const std::vector<std::vector<int32_t>>& planes,
                float* sh_norm, float* opacity_norm, const ShDenormalization* denorm = nullptr);

}  // namespace ralhe
