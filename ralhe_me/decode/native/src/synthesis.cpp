// The attribute synthesis (see synthesis.h for the canonical order of operations).
//
// Vectorization: across attributes.  All K + 1 attributes of a point run the same operations on
// the same neighbours with their own weights, so lanes hold attributes: lane l of group g is
// attribute t = g * kLanes + l (SH triplets 0..K-1, opacity K, zero weights beyond).  Opacity's
// single output sits in output channel 0 of its lane (channels 1 and 2 get zero weights and are
// dropped).  The convolutions then need no gathers or masks: a neighbour's row holds its hidden
// values of all lanes contiguously.  Each lane computes exactly the scalar chain of synthesis.h.
//
// Passes: one lane group at a time runs every stage over all points: the upsampled inputs (raht:
// the inverse transform, rows in transform-code order), the point-wise layers and the skip path
// (reading the input rows in order, writing per point), conv0, then conv1 + skip into the
// outputs.  The buffers hold kLanes attributes, not K + 1: about 200 bytes per point in all.
#include "synthesis.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "common.h"
#include "raht.h"

// No fused multiply-adds even in a build that forgets -ffp-contract=off (every build passes it).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace ralhe {
namespace {

constexpr int kLanes = 4;  // attributes per vector (16 bytes: SSE, NEON, wasm SIMD128)
typedef float Vec __attribute__((vector_size(4 * kLanes)));
typedef int32_t IVec __attribute__((vector_size(4 * kLanes)));
constexpr int kKernel = 27;
constexpr int kCenter = 13;

inline Vec load(const float* p) {  // kLanes floats (the RAHT writes the inputs as floats)
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline Vec relu(Vec v) {  // v < 0 ? +0 : v per lane (torch's clamp(min=0))
  const IVec negative = v < Vec{};
  return (Vec)((IVec)v & ~negative);
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Tensor indices in file order.
enum : int { kL0W, kL0B, kL1W, kL1B, kC0K, kC0B, kC1K, kC1B, kPerDecoder };
constexpr int kShSkip = 2 * kPerDecoder, kShSkipBias = kShSkip + 1, kOpSkip = kShSkip + 2, kOpSkipBias = kShSkip + 3;

struct Widths {
  int in, h1, h2, h3;
};

// The weights of one lane group, lane l of every Vec belonging to attribute g * kLanes + l.
struct LaneWeights {
  std::vector<Vec> w0, b0;  // [in, h1], [h1]
  std::vector<Vec> w1, b1;  // [h1, h2], [h2]
  std::vector<Vec> c0, cb0;  // [27, h2, h3], [h3]
  std::vector<Vec> c1, cb1;  // [27, h3, 3], [3]
  std::vector<Vec> sk, skb;  // [in, 3], [3] (zeros without skip)
};

LaneWeights lane_weights(const Widths& w, int K, bool skip, const SynthesisWeights& weights, int group) {
  const int in = w.in, h1 = w.h1, h2 = w.h2, h3 = w.h3;
  LaneWeights lw;
  lw.w0.assign(size_t(in) * h1, Vec{});
  lw.b0.assign(h1, Vec{});
  lw.w1.assign(size_t(h1) * h2, Vec{});
  lw.b1.assign(h2, Vec{});
  lw.c0.assign(size_t(kKernel) * h2 * h3, Vec{});
  lw.cb0.assign(h3, Vec{});
  lw.c1.assign(size_t(kKernel) * h3 * 3, Vec{});
  lw.cb1.assign(3, Vec{});
  lw.sk.assign(size_t(in) * 3, Vec{});
  lw.skb.assign(3, Vec{});
  for (int l = 0; l < kLanes; ++l) {
    const int t = group * kLanes + l;
    if (t > K) break;  // padding lanes keep zero weights
    const bool sh = t < K;
    const int base = sh ? 0 : kPerDecoder, a = sh ? t : 0, d = sh ? 3 : 1;
    const auto& T = weights.tensors;
    for (int i = 0; i < in; ++i)
      for (int j = 0; j < h1; ++j) lw.w0[i * h1 + j][l] = T[base + kL0W][(size_t(a) * in + i) * h1 + j];
    for (int j = 0; j < h1; ++j) lw.b0[j][l] = T[base + kL0B][size_t(a) * h1 + j];
    for (int i = 0; i < h1; ++i)
      for (int j = 0; j < h2; ++j) lw.w1[i * h2 + j][l] = T[base + kL1W][(size_t(a) * h1 + i) * h2 + j];
    for (int j = 0; j < h2; ++j) lw.b1[j][l] = T[base + kL1B][size_t(a) * h2 + j];
    for (int k = 0; k < kKernel; ++k)
      for (int i = 0; i < h2; ++i)
        for (int o = 0; o < h3; ++o)
          lw.c0[(size_t(k) * h2 + i) * h3 + o][l] = T[base + kC0K][((size_t(a) * kKernel + k) * h2 + i) * h3 + o];
    for (int o = 0; o < h3; ++o) lw.cb0[o][l] = T[base + kC0B][size_t(a) * h3 + o];
    for (int k = 0; k < kKernel; ++k)
      for (int i = 0; i < h3; ++i)
        for (int o = 0; o < d; ++o)
          lw.c1[(size_t(k) * h3 + i) * 3 + o][l] = T[base + kC1K][((size_t(a) * kKernel + k) * h3 + i) * d + o];
    for (int o = 0; o < d; ++o) lw.cb1[o][l] = T[base + kC1B][size_t(a) * d + o];
    if (skip) {
      const int s = sh ? kShSkip : kOpSkip, sb = sh ? kShSkipBias : kOpSkipBias;
      for (int i = 0; i < in; ++i)
        for (int o = 0; o < d; ++o) lw.sk[i * 3 + o][l] = T[s][(size_t(a) * in + i) * d + o];
      for (int o = 0; o < d; ++o) lw.skb[o][l] = T[sb][size_t(a) * d + o];
    }
  }
  return lw;
}

// Each point's existing neighbours in kernel order: entries start[n] .. start[n + 1] - 1, the
// neighbour's row and its kernel offset (MinkowskiEngine order; the point itself at 13).
struct NeighbourList {
  std::vector<int64_t> start;  // [M + 1]
  std::vector<int32_t> row;
  std::vector<int32_t> offset;
};

NeighbourList neighbour_list(int64_t M, const int32_t* rows /* [M, 26] */) {
  // kernel offset k = (dx + 1) + 3 (dy + 1) + 9 (dz + 1) -> NEIGHBOUR_OFFSETS column
  // 9 (dx + 1) + 3 (dy + 1) + (dz + 1), minus one past the (absent) center
  int column[kKernel];
  for (int k = 0; k < kKernel; ++k) {
    const int j = 9 * (k % 3) + 3 * (k / 3 % 3) + k / 9;
    column[k] = j > kCenter ? j - 1 : j;
  }
  NeighbourList list;
  list.start.resize(M + 1);
  int64_t count = M;  // the points themselves
  for (int64_t n = 0; n < M; ++n) {
    const int32_t* r = rows + n * 26;
    bool bad = false;
    int32_t present = 0;
    for (int j = 0; j < 26; ++j) {  // branch-free: v + 1 in [0, M] as unsigned
      bad |= uint32_t(r[j]) + 1u > uint32_t(M);
      present += r[j] >= 0;
    }
    if (bad)
      for (int j = 0; j < 26; ++j)
        if (r[j] < -1 || r[j] >= M)
          corrupt("neighbour row " + std::to_string(r[j]) + " of point " + std::to_string(n) + " is outside [-1, " +
                  std::to_string(M) + ")");
    count += present;
  }
  list.row.resize(count + kKernel);  // slack: every offset is written, kept only if it exists
  list.offset.resize(count + kKernel);
  int64_t e = 0;
  for (int64_t n = 0; n < M; ++n) {
    list.start[n] = e;
    const int32_t* r = rows + n * 26;
    for (int k = 0; k < kKernel; ++k) {
      const int32_t v = k == kCenter ? int32_t(n) : r[column[k]];
      list.row[e] = v;
      list.offset[e] = k;
      e += v >= 0;
    }
  }
  list.start[M] = e;
  return list;
}

// One lane group over all points.  x [M, in, kLanes] upsampled inputs, row m those of point
// point_of[m] (null: point m), read in row order; hid2 [M, h2], hid3 [M, h3] and skip [M, 3]
// scratch.  Template widths (0: runtime) let the compiler unroll the common shapes; the
// operations are the same either way.
template <int IN, int H1, int H2, int H3>
void run_group(const Widths& wd, const LaneWeights& w, int64_t M, const float* x, const int64_t* point_of,
               const NeighbourList& nb, bool skip, Vec* hid2, Vec* hid3, Vec* skipped, int K, int group,
               float* sh_norm, float* opacity_norm) {
  const int in = IN ? IN : wd.in, h1 = H1 ? H1 : wd.h1, h2 = H2 ? H2 : wd.h2, h3 = H3 ? H3 : wd.h3;
  const Vec* __restrict w0 = w.w0.data();
  const Vec* __restrict w1 = w.w1.data();
  const Vec* __restrict sk = w.sk.data();
  // point-wise layers and skip path
  for (int64_t m = 0; m < M; ++m) {
    const int64_t n = point_of ? point_of[m] : m;
    const float* xr = x + m * in * kLanes;
    Vec xv[kMaxDecoderWidth], acc[kMaxDecoderWidth];
    for (int i = 0; i < in; ++i) xv[i] = load(xr + i * kLanes);
    for (int j = 0; j < h2; ++j) acc[j] = w.b1[j];
    // hidden value i of linear0 is added to every linear1 chain as soon as it exists: each
    // chain still sums its terms in order i = 0, 1, ..., and nothing is stored
    for (int i = 0; i < h1; ++i) {
      Vec h = w.b0[i];
      for (int k = 0; k < in; ++k) h = h + xv[k] * w0[k * h1 + i];
      h = relu(h);
      for (int j = 0; j < h2; ++j) acc[j] = acc[j] + h * w1[i * h2 + j];
    }
    Vec* __restrict out = hid2 + n * h2;
    for (int j = 0; j < h2; ++j) out[j] = relu(acc[j]);
    if (skip)
      for (int o = 0; o < 3; ++o) {
        Vec s = w.skb[o];
        for (int i = 0; i < in; ++i) s = s + xv[i] * sk[i * 3 + o];
        skipped[n * 3 + o] = s;
      }
  }
  // conv0 + relu
  const int64_t* __restrict start = nb.start.data();
  const int32_t* __restrict nrow = nb.row.data();
  const int32_t* __restrict noff = nb.offset.data();
  const Vec* __restrict c0 = w.c0.data();
  for (int64_t n = 0; n < M; ++n) {
    Vec acc[kMaxDecoderWidth];
    for (int o = 0; o < h3; ++o) acc[o] = w.cb0[o];
    for (int64_t e = start[n]; e < start[n + 1]; ++e) {
      const Vec* __restrict hm = hid2 + int64_t(nrow[e]) * h2;
      const Vec* __restrict wk = c0 + noff[e] * h2 * h3;
      for (int i = 0; i < h2; ++i)
        for (int o = 0; o < h3; ++o) acc[o] = acc[o] + hm[i] * wk[i * h3 + o];
    }
    Vec* __restrict out = hid3 + n * h3;
    for (int o = 0; o < h3; ++o) out[o] = relu(acc[o]);
  }
  // conv1 + skip, scattered to the outputs
  const Vec* __restrict c1 = w.c1.data();
  const int t0 = group * kLanes;
  for (int64_t n = 0; n < M; ++n) {
    Vec acc[3] = {w.cb1[0], w.cb1[1], w.cb1[2]};
    for (int64_t e = start[n]; e < start[n + 1]; ++e) {
      const Vec* __restrict hm = hid3 + int64_t(nrow[e]) * h3;
      const Vec* __restrict wk = c1 + noff[e] * h3 * 3;
      for (int i = 0; i < h3; ++i)
        for (int o = 0; o < 3; ++o) acc[o] = acc[o] + hm[i] * wk[i * 3 + o];
    }
    if (skip)
      for (int o = 0; o < 3; ++o) acc[o] = acc[o] + skipped[n * 3 + o];
    for (int l = 0; l < kLanes; ++l) {
      const int t = t0 + l;
      if (t < K) {
        float* o = sh_norm + (n * K + t) * 3;
        o[0] = acc[0][l];
        o[1] = acc[1][l];
        o[2] = acc[2][l];
      } else if (t == K) {
        opacity_norm[n] = acc[0][l];
      }
    }
  }
}

using GroupFn = void (*)(const Widths&, const LaneWeights&, int64_t, const float*, const int64_t*, const NeighbourList&,
                         bool, Vec*, Vec*, Vec*, int, int, float*, float*);

GroupFn group_kernel(const Widths& w) {
  if (w.in == 3 && w.h1 == 12 && w.h2 == 4 && w.h3 == 2) return run_group<3, 12, 4, 2>;  // the default
  if (w.in == 7 && w.h1 == 21 && w.h2 == 4 && w.h3 == 2) return run_group<7, 21, 4, 2>;  // the paper's
  return run_group<0, 0, 0, 0>;
}

}  // namespace

void check_architecture(const Architecture& arch) {
  if (arch.transform != "raht" && arch.transform != "pyramid")
    corrupt("unknown transform '" + arch.transform + "' (choose from raht, pyramid)");
  if (arch.num_levels < 1 || arch.num_levels > 22) corrupt("invalid num_levels " + std::to_string(arch.num_levels));
  const int widths[] = {arch.latent_channels, arch.decoder_linear[0], arch.decoder_linear[1], arch.decoder_conv};
  for (int v : widths)
    if (v < 1) corrupt("invalid decoder width " + std::to_string(v) + " in the architecture");
  if (arch.segment_length < 1 || arch.arm_context < 0 || arch.arm_hidden < 1)
    corrupt("invalid entropy model sizes in the architecture");
  const int in = decoder_in_channels(arch);
  for (int v : {in, arch.decoder_linear[0], arch.decoder_linear[1], arch.decoder_conv})
    if (v > kMaxDecoderWidth)
      fail(ErrorKind::kUnsupported, "decoder width " + std::to_string(v) + " exceeds the supported " +
                                        std::to_string(kMaxDecoderWidth));
}

int decoder_in_channels(const Architecture& arch) {
  const int64_t per = arch.transform == "pyramid" ? arch.num_levels : 1;
  const int64_t in = per * arch.latent_channels;
  return in > (1 << 20) ? (1 << 20) : int(in);  // absurd sizes are refused by check_architecture
}

std::vector<std::vector<int64_t>> decoder_weight_shapes(const Architecture& arch, int num_sh) {
  const int64_t in = decoder_in_channels(arch), h1 = arch.decoder_linear[0], h2 = arch.decoder_linear[1],
                h3 = arch.decoder_conv;
  std::vector<std::vector<int64_t>> shapes;
  for (int decoder = 0; decoder < 2; ++decoder) {  // the SH group (d = 3), then opacity (d = 1)
    const int64_t a = decoder == 0 ? num_sh : 1, d = decoder == 0 ? 3 : 1;
    shapes.push_back({a, in, h1});
    shapes.push_back({a, 1, h1});
    shapes.push_back({a, h1, h2});
    shapes.push_back({a, 1, h2});
    shapes.push_back({a, kKernel, h2, h3});
    shapes.push_back({a, 1, h3});
    shapes.push_back({a, kKernel, h3, d});
    shapes.push_back({a, 1, d});
  }
  if (arch.skip) {
    shapes.push_back({num_sh, in, 3});
    shapes.push_back({num_sh, 1, 3});
    shapes.push_back({1, in, 1});
    shapes.push_back({1, 1, 1});
  }
  return shapes;
}

SynthesisWeights dequantize_weights(const Architecture& arch, int num_sh, const std::vector<std::vector<int64_t>>& ints,
                                    int64_t shift) {
  check_architecture(arch);
  if (num_sh < 1) corrupt("invalid number of SH coefficients " + std::to_string(num_sh));
  if (shift < -1023) corrupt("invalid decoder_shift " + std::to_string(shift));
  const auto shapes = decoder_weight_shapes(arch, num_sh);
  if (ints.size() != shapes.size())
    corrupt(std::to_string(ints.size()) + " decoder weight tensors, the architecture has " +
            std::to_string(shapes.size()));
  // 2.0 ** -shift as Python computes it (exact, or 0 below the smallest subnormal)
  const double scale = shift > 1074 ? 0.0 : __builtin_ldexp(1.0, int(-shift));
  SynthesisWeights w;
  w.tensors.resize(ints.size());
  for (size_t t = 0; t < ints.size(); ++t) {
    int64_t count = 1;
    for (int64_t s : shapes[t]) count *= s;
    if (int64_t(ints[t].size()) != count)
      corrupt("decoder weight tensor " + std::to_string(t) + " holds " + std::to_string(ints[t].size()) +
              " values, its shape " + shape_string(shapes[t]) + " " + std::to_string(count));
    w.tensors[t].resize(count);
    for (int64_t i = 0; i < count; ++i) w.tensors[t][i] = static_cast<float>(static_cast<double>(ints[t][i]) * scale);
  }
  return w;
}

void synthesize(const Architecture& arch, int num_sh, const SynthesisWeights& weights, int64_t M,
                const int32_t* coords, int depth, const int32_t* neighbours,
                const std::vector<const int32_t*>& point_to_voxel, const std::vector<PlaneView>& planes,
                float* sh_norm, float* opacity_norm) {
  check_architecture(arch);
  if (num_sh < 1 || num_sh > 1024) corrupt("invalid number of SH coefficients " + std::to_string(num_sh));
  if (M < 0 || M > INT32_MAX) corrupt("invalid number of points " + std::to_string(M));
  const auto shapes = decoder_weight_shapes(arch, num_sh);
  if (weights.tensors.size() != shapes.size())
    corrupt(std::to_string(weights.tensors.size()) + " decoder weight tensors, the architecture has " +
            std::to_string(shapes.size()));
  for (size_t t = 0; t < shapes.size(); ++t) {
    int64_t count = 1;
    for (int64_t s : shapes[t]) count *= s;
    if (int64_t(weights.tensors[t].size()) != count)
      corrupt("decoder weight tensor " + std::to_string(t) + " does not have the shape " + shape_string(shapes[t]));
  }
  const bool raht = arch.transform == "raht";
  const Widths wd{decoder_in_channels(arch), arch.decoder_linear[0], arch.decoder_linear[1], arch.decoder_conv};
  const int in = wd.in, K = num_sh, A = num_sh + 1;
  if (int64_t(planes.size()) != in)
    corrupt(std::to_string(planes.size()) + " latent planes, the architecture has " + std::to_string(in));
  if (M == 0) return;
  if (!neighbours || (raht && !coords) || !sh_norm || !opacity_norm)
    fail(ErrorKind::kInvalidArgument, "synthesize: null array");
  std::vector<int64_t> plane_size(in);  // n_p: latents per attribute of plane p
  for (int p = 0; p < in; ++p) {
    if (!planes[p].data || planes[p].size % A != 0)
      corrupt("latent plane " + std::to_string(p) + " holds " + std::to_string(planes[p].size) +
              " latents, not a multiple of " + std::to_string(A) + " attributes");
    plane_size[p] = planes[p].size / A;
    if (raht && plane_size[p] != M)
      corrupt("latent plane " + std::to_string(p) + " holds " + std::to_string(plane_size[p]) +
              " latents per attribute for " + std::to_string(M) + " points");
  }
  if (!raht) {  // each level's ancestor rows must index every plane of that level
    const int L = arch.num_levels;
    if (int64_t(point_to_voxel.size()) != L)
      corrupt(std::to_string(point_to_voxel.size()) + " point_to_voxel arrays for " + std::to_string(L) + " levels");
    for (int l = 0; l < L; ++l) {
      if (!point_to_voxel[l]) fail(ErrorKind::kInvalidArgument, "synthesize: null point_to_voxel array");
      int32_t lo = 0, hi = -1;
      for (int64_t n = 0; n < M; ++n) {
        lo = std::min(lo, point_to_voxel[l][n]);
        hi = std::max(hi, point_to_voxel[l][n]);
      }
      for (int p = l; p < in; p += L)
        if (lo < 0 || hi >= plane_size[p])
          corrupt("point_to_voxel of level " + std::to_string(l) + " refers to voxel " +
                  std::to_string(lo < 0 ? lo : hi) + " of " + std::to_string(plane_size[p]));
    }
  }
  const NeighbourList nb = neighbour_list(M, neighbours);

  RahtPlan plan;
  if (raht) {
    plan = raht_plan(coords, M, depth);
  }
  // every element is written before it is read: no zero-filling
  std::unique_ptr<float[]> x(new float[size_t(M) * in * kLanes]);  // [rows, in, kLanes]
  std::unique_ptr<Vec[]> hid2(new Vec[size_t(M) * wd.h2]), hid3(new Vec[size_t(M) * wd.h3]);
  std::unique_ptr<Vec[]> skipped(new Vec[arch.skip ? size_t(M) * 3 : 0]);
  const GroupFn kernel = group_kernel(wd);
  const int groups = (A + kLanes - 1) / kLanes;
  for (int g = 0; g < groups; ++g) {
    const LaneWeights lw = lane_weights(wd, K, arch.skip, weights, g);
    if (raht) {  // column p * kLanes + l of row m: channel p of lane l
      std::vector<const int32_t*> columns(size_t(in) * kLanes, nullptr);
      for (int p = 0; p < in; ++p)
        for (int l = 0; l < kLanes; ++l) {
          const int t = g * kLanes + l;
          if (t < A) columns[p * kLanes + l] = planes[p].data + int64_t(t) * M;
        }
      inverse_raht<float, int32_t>(plan, columns.data(), int64_t(in) * kLanes, x.get());
    } else {
      const int L = arch.num_levels;
      for (int p = 0; p < in; ++p) {
        const int32_t* p2v = point_to_voxel[p % L];
        for (int l = 0; l < kLanes; ++l) {
          const int t = g * kLanes + l;
          const int32_t* plane = t < A ? planes[p].data + int64_t(t) * plane_size[p] : nullptr;
          float* xl = x.get() + p * kLanes + l;
          for (int64_t n = 0; n < M; ++n) xl[n * in * kLanes] = plane ? static_cast<float>(plane[p2v[n]]) : 0.f;
        }
      }
    }
    kernel(wd, lw, M, x.get(), raht ? plan.order.data() : nullptr, nb, arch.skip, hid2.get(), hid3.get(), skipped.get(), K, g,
           sh_norm, opacity_norm);
  }
}

void synthesize(const Architecture& arch, int num_sh, const SynthesisWeights& weights, int64_t M,
                const int32_t* coords, int depth, const int32_t* neighbours,
                const std::vector<const int32_t*>& point_to_voxel, const std::vector<std::vector<int32_t>>& planes,
                float* sh_norm, float* opacity_norm) {
  std::vector<PlaneView> views;
  for (const auto& p : planes) views.push_back(PlaneView{p.data(), int64_t(p.size())});
  synthesize(arch, num_sh, weights, M, coords, depth, neighbours, point_to_voxel, views, sh_norm, opacity_norm);
}

}  // namespace ralhe
