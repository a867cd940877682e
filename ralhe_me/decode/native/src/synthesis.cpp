// The attribute synthesis (see synthesis.h for the canonical order of operations).
//
// Vectorization: across attributes.  All K + 1 attributes of a point run the same operations on
// the same neighbours with their own weights, so lanes hold attributes: lane l of group g is
// attribute t = g * N + l (SH triplets 0..K-1, opacity K, zero weights beyond), N = 4 or 8.
// Opacity's single output sits in output channel 0 of its lane (channels 1 and 2 get zero
// weights and are dropped).  The convolutions then need no gathers or masks: a neighbour's row
// holds its hidden values of all lanes contiguously.  Each lane computes exactly the scalar chain
// of synthesis.h, so the lane count never changes a bit.
//
// Passes: one lane group at a time runs every stage over all points: the upsampled inputs (raht:
// the inverse transform, rows in transform-code order), the point-wise layers (reading the input
// rows in order, writing per point), conv0, then conv1 + the skip path into the outputs.  The
// buffers hold N attributes, not K + 1: 12 N + 4 N (h2 + h3) bytes per point with the default
// widths, plus a 4-byte kernel mask per point.
#include "synthesis.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

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

// Lane vectors are passed between always-inline functions only: no ABI is involved.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// N attributes per vector: 4 (16 bytes: SSE, NEON, wasm SIMD128) or, where the CPU has AVX2, 8.
template <int N>
struct Lanes {
  typedef float V __attribute__((vector_size(4 * N)));
  typedef int32_t I __attribute__((vector_size(4 * N)));
};

// An array of lane vectors on a 64-byte boundary.  (Not std::vector: code built
// without AVX aligns a 32-byte vector type to 16 bytes only, and the AVX2 kernels read these
// arrays with aligned loads.)
template <typename V>
class VecArray {
 public:
  VecArray() = default;
  explicit VecArray(size_t n) { allocate(n, false); }  // uninitialized (scratch written before read)
  void assign(size_t n) { allocate(n, true); }

 private:
  void allocate(size_t n, bool zero) {
    raw_ = Block(n * sizeof(V) + 64);
    unsigned char* raw = static_cast<unsigned char*>(raw_.data());
    if (zero) std::memset(raw, 0, n * sizeof(V) + 64);
    const uintptr_t p = reinterpret_cast<uintptr_t>(raw);
    data_ = reinterpret_cast<V*>(raw + (64 - p % 64) % 64);
  }

 public:
  V& operator[](size_t i) { return data_[i]; }
  const V& operator[](size_t i) const { return data_[i]; }
  V* data() { return data_; }
  const V* data() const { return data_; }

 private:
  Block raw_;
  V* data_ = nullptr;
};
constexpr int kKernel = 27;
constexpr int kCenter = 13;

template <typename V>
RALHE_ALWAYS_INLINE V load(const float* p) {  // a vector of floats (the RAHT writes the inputs as floats)
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V, typename I>
RALHE_ALWAYS_INLINE V relu(const V& v) {  // v < 0 ? +0 : v per lane (torch's clamp(min=0))
  const I negative = v < V{};
  return (V)((I)v & ~negative);
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

// The weights of one lane group, lane l of every vector belonging to attribute g * N + l.
template <int N>
struct LaneWeights {
  typedef typename Lanes<N>::V V;
  VecArray<V> w0, b0;  // [in, h1], [h1]
  VecArray<V> w1, b1;  // [h1, h2], [h2]
  VecArray<V> c0, cb0;  // [27, h2, h3], [h3]
  VecArray<V> c1, cb1;  // [27, h3, 3], [3]
  VecArray<V> sk, skb;  // [in, 3], [3] (zeros without skip)
};

template <int N>
LaneWeights<N> lane_weights(const Widths& w, int K, bool skip, const SynthesisWeights& weights, int group) {
  const int in = w.in, h1 = w.h1, h2 = w.h2, h3 = w.h3;
  LaneWeights<N> lw;
  lw.w0.assign(size_t(in) * h1);
  lw.b0.assign(h1);
  lw.w1.assign(size_t(h1) * h2);
  lw.b1.assign(h2);
  lw.c0.assign(size_t(kKernel) * h2 * h3);
  lw.cb0.assign(h3);
  lw.c1.assign(size_t(kKernel) * h3 * 3);
  lw.cb1.assign(3);
  lw.sk.assign(size_t(in) * 3);
  lw.skb.assign(3);
  for (int l = 0; l < N; ++l) {
    const int t = group * N + l;
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

// Each point's kernel: bit k of mask[n] set where kernel offset k (MinkowskiEngine order; the
// point itself at 13, always set) has a point, whose row is rows[n * 26 + column[k]] (n at 13).
// 4 bytes per point: the convolutions walk the set bits in ascending k, the canonical order.
struct Kernels {
  std::vector<uint32_t> mask;  // [M]
  const int32_t* rows = nullptr;  // [M, 26]
  int column[kKernel];
};

// Masks of rows [begin, end): one call per chunk of points (see RALHE_NOINLINE in common.h).
RALHE_NOINLINE void mask_rows(const Kernels& kn, int64_t M, int64_t begin, int64_t end, uint32_t* mask) {
  for (int64_t n = begin; n < end; ++n) {
    const int32_t* r = kn.rows + n * 26;
    bool bad = false;
    uint32_t m = 1u << kCenter;
    for (int k = 0; k < kKernel; ++k) {  // branch-free: v + 1 in [0, M] as unsigned
      if (k == kCenter) continue;
      const int32_t v = r[kn.column[k]];
      bad |= uint32_t(v) + 1u > uint32_t(M);
      m |= uint32_t(v >= 0) << k;
    }
    if (bad)
      for (int j = 0; j < 26; ++j)
        if (r[j] < -1 || r[j] >= M)
          corrupt("neighbour row " + std::to_string(r[j]) + " of point " + std::to_string(n) + " is outside [-1, " +
                  std::to_string(M) + ")");
    mask[n] = m;
  }
}

Kernels kernel_masks(int64_t M, const int32_t* rows /* [M, 26] */) {
  Kernels kn;
  kn.rows = rows;
  // kernel offset k = (dx + 1) + 3 (dy + 1) + 9 (dz + 1) -> NEIGHBOUR_OFFSETS column
  // 9 (dx + 1) + 3 (dy + 1) + (dz + 1), minus one past the (absent) center
  for (int k = 0; k < kKernel; ++k) {
    const int j = 9 * (k % 3) + 3 * (k / 3 % 3) + k / 9;
    kn.column[k] = k == kCenter ? 0 : (j > kCenter ? j - 1 : j);
  }
  kn.mask.resize(size_t(M));
  constexpr int64_t kChunk = 4096;
  for (int64_t b = 0; b < M; b += kChunk) mask_rows(kn, M, b, std::min(M, b + kChunk), kn.mask.data());
  return kn;
}

// f(0), f(1), ..., f(n - 1) in this order: written out when the count C is known at compile time
// (C > 0, and then n == C), so that small arrays of running sums stay in registers (a loop kept
// them on the stack, each term waiting on a store and a load); a loop otherwise.
template <typename F, int... I>
RALHE_ALWAYS_INLINE void repeat_fixed(F& f, std::integer_sequence<int, I...>) {
  (f(I), ...);
}
template <int C, typename F>
RALHE_ALWAYS_INLINE void repeat(int n, F&& f) {
  if constexpr (C > 0)
    repeat_fixed(f, std::make_integer_sequence<int, C>{});
  else
    for (int i = 0; i < n; ++i) f(i);
}

RALHE_ALWAYS_INLINE int lowest_bit(uint32_t m) {  // m != 0
  return __builtin_ctz(m);
}

// What a lane group's passes read and write.  x [M, in, N] upsampled inputs, row m those of
// point point_of[m] (null: point m) and point n's at row row_of[n] (null: row n); hid2 [M, h2]
// and hid3 [M, h3] scratch.
template <int N>
struct GroupData {
  typedef typename Lanes<N>::V V;
  Widths wd;
  const LaneWeights<N>* w;
  const float* x;
  const int64_t* point_of;
  const int64_t* row_of;
  const Kernels* kn;
  bool skip;
  V* hid2;
  V* hid3;
  int K, group;
  float* sh_norm;
  float* opacity_norm;
  const ShDenormalization* denorm;  // null: normalized SH
};

// The passes of a lane group over rows or points [begin, end); each pass needs the previous one
// complete over all points.  Template widths (0: runtime) let the compiler unroll the common
// shapes; the operations are the same either way.

// Pass 0, the point-wise layers of rows [begin, end).
template <int N, int IN, int H1, int H2>
RALHE_ALWAYS_INLINE void pointwise_pass(const GroupData<N>& gd, int64_t begin, int64_t end) {
  typedef typename Lanes<N>::V V;
  typedef typename Lanes<N>::I I;
  const LaneWeights<N>& w = *gd.w;
  const int in = IN ? IN : gd.wd.in, h1 = H1 ? H1 : gd.wd.h1, h2 = H2 ? H2 : gd.wd.h2;
  const V* __restrict w0 = w.w0.data();
  const V* __restrict w1 = w.w1.data();
  for (int64_t m = begin; m < end; ++m) {
    const float* xr = gd.x + m * in * N;
    V xv[IN ? IN : kMaxDecoderWidth], acc[H2 ? H2 : kMaxDecoderWidth];
    repeat<IN>(in, [&](int i) RALHE_INLINE_LAMBDA { xv[i] = load<V>(xr + i * N); });
    repeat<H2>(h2, [&](int j) RALHE_INLINE_LAMBDA { acc[j] = w.b1[j]; });
    // hidden value i of linear0 is added to every linear1 chain as soon as it exists: each
    // chain still sums its terms in order i = 0, 1, ..., and nothing is stored
    repeat<H1>(h1, [&](int i) RALHE_INLINE_LAMBDA {
      V h = w.b0[i];
      repeat<IN>(in, [&](int k) RALHE_INLINE_LAMBDA { h = h + xv[k] * w0[k * h1 + i]; });
      h = relu<V, I>(h);
      repeat<H2>(h2, [&](int j) RALHE_INLINE_LAMBDA { acc[j] = acc[j] + h * w1[i * h2 + j]; });
    });
    V* __restrict out = gd.hid2 + (gd.point_of ? gd.point_of[m] : m) * h2;
    repeat<H2>(h2, [&](int j) RALHE_INLINE_LAMBDA { out[j] = relu<V, I>(acc[j]); });
  }
}

// Pass 1, conv0 + relu of points [begin, end).
template <int N, int H2, int H3>
RALHE_ALWAYS_INLINE void conv0_pass(const GroupData<N>& gd, int64_t begin, int64_t end) {
  typedef typename Lanes<N>::V V;
  typedef typename Lanes<N>::I I;
  const LaneWeights<N>& w = *gd.w;
  const Kernels& kn = *gd.kn;
  const int h2 = H2 ? H2 : gd.wd.h2, h3 = H3 ? H3 : gd.wd.h3;
  const uint32_t* __restrict masks = kn.mask.data();
  const V* __restrict c0 = w.c0.data();
  for (int64_t n = begin; n < end; ++n) {
    V acc[H3 ? H3 : kMaxDecoderWidth];
    repeat<H3>(h3, [&](int o) RALHE_INLINE_LAMBDA { acc[o] = w.cb0[o]; });
    const int32_t* r = kn.rows + n * 26;
    for (uint32_t bits = masks[n]; bits; bits &= bits - 1) {
      const int k = lowest_bit(bits);
      const int64_t nb = k == kCenter ? n : r[kn.column[k]];
      const V* __restrict hm = gd.hid2 + nb * h2;
      const V* __restrict wk = c0 + k * h2 * h3;
      repeat<H2>(h2, [&](int i) RALHE_INLINE_LAMBDA {
        repeat<H3>(h3, [&](int o) RALHE_INLINE_LAMBDA { acc[o] = acc[o] + hm[i] * wk[i * h3 + o]; });
      });
    }
    V* __restrict out = gd.hid3 + n * h3;
    repeat<H3>(h3, [&](int o) RALHE_INLINE_LAMBDA { out[o] = relu<V, I>(acc[o]); });
  }
}

// Pass 2, conv1 + skip (from the point's input row) of points [begin, end), scattered to the
// outputs.  Without Branch (a lane group whose branch weights are all +0, see branch_is_zero),
// conv1's sums are left at their bias, +0: the same bits as the full passes, since every hidden
// value is then +0 (a +0 bias plus products x * +0 = +-0, relu) and each conv1 term adds
// +0 * +0.  That needs finite inputs x, which they are: int32 latents converted to float
// (pyramid), or their inverse RAHT (raht), an orthonormal transform whose outputs stay below
// 2^31 * sqrt(M) in magnitude.
template <int N, int IN, int H3, bool Branch>
RALHE_ALWAYS_INLINE void conv1_pass(const GroupData<N>& gd, int64_t begin, int64_t end) {
  typedef typename Lanes<N>::V V;
  const LaneWeights<N>& w = *gd.w;
  const Kernels& kn = *gd.kn;
  const int in = IN ? IN : gd.wd.in, h3 = H3 ? H3 : gd.wd.h3, K = gd.K, t0 = gd.group * N;
  const uint32_t* __restrict masks = kn.mask.data();
  const V* __restrict c1 = w.c1.data();
  const V* __restrict sk = w.sk.data();
  for (int64_t n = begin; n < end; ++n) {
    V acc[3] = {w.cb1[0], w.cb1[1], w.cb1[2]};
    if constexpr (Branch) {
      const int32_t* r = kn.rows + n * 26;
      for (uint32_t bits = masks[n]; bits; bits &= bits - 1) {
        const int k = lowest_bit(bits);
        const int64_t nb = k == kCenter ? n : r[kn.column[k]];
        const V* __restrict hm = gd.hid3 + nb * h3;
        const V* __restrict wk = c1 + k * h3 * 3;
        repeat<H3>(h3, [&](int i) RALHE_INLINE_LAMBDA {
          repeat<3>(3, [&](int o) RALHE_INLINE_LAMBDA { acc[o] = acc[o] + hm[i] * wk[i * 3 + o]; });
        });
      }
    }
    if (gd.skip) {
      const float* xr = gd.x + (gd.row_of ? gd.row_of[n] : n) * in * N;
      V xv[IN ? IN : kMaxDecoderWidth];
      repeat<IN>(in, [&](int i) RALHE_INLINE_LAMBDA { xv[i] = load<V>(xr + i * N); });
      repeat<3>(3, [&](int o) RALHE_INLINE_LAMBDA {
        V s = w.skb[o];
        repeat<IN>(in, [&](int i) RALHE_INLINE_LAMBDA { s = s + xv[i] * sk[i * 3 + o]; });
        acc[o] = acc[o] + s;
      });
    }
    float lanes[3][N];
    std::memcpy(lanes, acc, sizeof lanes);
    if (gd.denorm) {  // attributes.cpp denormalize_sh, value by value
      const ShDenormalization& dn = *gd.denorm;
      const double g = dn.gain ? dn.gain[n] : 1.0;
      for (int l = 0; l < N && t0 + l < K; ++l) {
        const int t = t0 + l;
        float* o = gd.sh_norm + (n * K + t) * 3;
        for (int c = 0; c < 3; ++c)
          o[c] = static_cast<float>((static_cast<double>(lanes[c][l]) * g) * dn.std[t] + dn.mean[t * 3 + c]);
      }
      if (t0 <= K && K < t0 + N) gd.opacity_norm[n] = lanes[0][K - t0];
      continue;
    }
    for (int l = 0; l < N; ++l) {
      const int t = t0 + l;
      if (t < K) {
        float* o = gd.sh_norm + (n * K + t) * 3;
        o[0] = lanes[0][l];
        o[1] = lanes[1][l];
        o[2] = lanes[2][l];
      } else if (t == K) {
        gd.opacity_norm[n] = lanes[0][l];
      }
    }
  }
}

template <int N, int IN, int H1, int H2, int H3>
RALHE_ALWAYS_INLINE void run_pass(const GroupData<N>& gd, int pass, int64_t begin, int64_t end) {
  if (pass == 0)
    pointwise_pass<N, IN, H1, H2>(gd, begin, end);
  else if (pass == 1)
    conv0_pass<N, H2, H3>(gd, begin, end);
  else if (pass == 2)
    conv1_pass<N, IN, H3, true>(gd, begin, end);
  else
    conv1_pass<N, IN, H3, false>(gd, begin, end);  // kSkipOnlyPass
}

// The kernels per lane count: N = 4 everywhere, N = 8 compiled for AVX2 (x86-64-v3) where GCC can
// dispatch at load time.  AVX2 brings FMA, which -ffp-contract=off and the pragma above keep
// unused: the bits are those of every other build.
template <int N>
using PassFn = void (*)(const GroupData<N>&, int, int64_t, int64_t);
constexpr int kSkipOnlyPass = 3;  // pass 2 without conv1, for a lane group whose branch is +0

#define RALHE_PASS_KERNEL(NAME, TARGET, N, IN, H1, H2, H3)                            \
  TARGET void NAME(const GroupData<N>& gd, int pass, int64_t begin, int64_t end) {    \
    run_pass<N, IN, H1, H2, H3>(gd, pass, begin, end);                                \
  }

RALHE_PASS_KERNEL(pass4_default, , 4, 3, 12, 4, 2)  // the default architecture
RALHE_PASS_KERNEL(pass4_paper, , 4, 7, 21, 4, 2)    // the paper's
RALHE_PASS_KERNEL(pass4_any, , 4, 0, 0, 0, 0)
#if RALHE_X86_DISPATCH
#define RALHE_AVX2 __attribute__((target("arch=x86-64-v3")))
RALHE_PASS_KERNEL(pass8_default, RALHE_AVX2, 8, 3, 12, 4, 2)
RALHE_PASS_KERNEL(pass8_paper, RALHE_AVX2, 8, 7, 21, 4, 2)
RALHE_PASS_KERNEL(pass8_any, RALHE_AVX2, 8, 0, 0, 0, 0)
#endif

template <int N>
PassFn<N> pass_kernel(const Widths& w);
template <>
PassFn<4> pass_kernel<4>(const Widths& w) {
  if (w.in == 3 && w.h1 == 12 && w.h2 == 4 && w.h3 == 2) return pass4_default;
  if (w.in == 7 && w.h1 == 21 && w.h2 == 4 && w.h3 == 2) return pass4_paper;
  return pass4_any;
}
#if RALHE_X86_DISPATCH
template <>
PassFn<8> pass_kernel<8>(const Widths& w) {
  if (w.in == 3 && w.h1 == 12 && w.h2 == 4 && w.h3 == 2) return pass8_default;
  if (w.in == 7 && w.h1 == 21 && w.h2 == 4 && w.h3 == 2) return pass8_paper;
  return pass8_any;
}
#endif

// RALHE_SYNTHESIS_FULL=1 in the environment runs every lane group's branch passes, also where
// the branch is all +0, for the tests that compare the skip-only pass with them.
bool full_passes_requested() {
  const char* v = std::getenv("RALHE_SYNTHESIS_FULL");
  return v && std::string(v) == "1";
}

#if RALHE_X86_DISPATCH
// Lanes to use: 8 on a CPU with AVX2, else 4 (builds without the dispatcher always use 4).
// RALHE_SYNTHESIS_LANES=4 in the environment forces 4, for the tests that compare both.
int lanes_for_this_cpu() {
  if (const char* v = std::getenv("RALHE_SYNTHESIS_LANES"))
    if (std::string(v) == "4") return 4;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") ? 8 : 4;
}
#endif

// The upsampled inputs of one lane group: x [M, in, N] (raht: rows in transform-code order).
template <int N>
void group_inputs(const Architecture& arch, int A, int64_t M, int in, int g, const RahtPlan& plan,
                  const std::vector<const int32_t*>& point_to_voxel, const std::vector<PlaneView>& planes,
                  const std::vector<int64_t>& plane_size, float* x) {
  if (arch.transform == "raht") {  // column p * N + l of row m: channel p of lane l
    std::vector<const int32_t*> columns(size_t(in) * N, nullptr);
    for (int p = 0; p < in; ++p)
      for (int l = 0; l < N; ++l) {
        const int t = g * N + l;
        if (t < A) columns[p * N + l] = planes[p].data + int64_t(t) * M;
      }
    inverse_raht<float, int32_t>(plan, columns.data(), int64_t(in) * N, x);
    return;
  }
  const int L = arch.num_levels;
  for (int p = 0; p < in; ++p) {
    const int32_t* p2v = point_to_voxel[p % L];
    for (int l = 0; l < N; ++l) {
      const int t = g * N + l;
      const int32_t* plane = t < A ? planes[p].data + int64_t(t) * plane_size[p] : nullptr;
      float* xl = x + p * N + l;
      for (int64_t n = 0; n < M; ++n) xl[n * in * N] = plane ? static_cast<float>(plane[p2v[n]]) : 0.f;
    }
  }
}

// What every lane group shares: the plan, the kernels, and the scratch buffers, sized for the
// widest group (a narrower one uses the front of each as vectors of its own width).
struct GroupShared {
  const Architecture& arch;
  const Widths& wd;
  int K;
  const SynthesisWeights& weights;
  int64_t M;
  const Kernels& kn;
  const RahtPlan& plan;
  const std::vector<const int32_t*>& point_to_voxel;
  const std::vector<PlaneView>& planes;
  const std::vector<int64_t>& plane_size;
  const int64_t* row_of;  // [M] the transform-code row of each point (raht with skip), else null
  float* x;               // [M, in, lanes] upsampled inputs
  void* hid2;             // [M, h2] lane vectors
  void* hid3;             // [M, h3] lane vectors
  float* sh_norm;
  float* opacity_norm;
  const ShDenormalization* denorm;
  bool full_passes;  // run the branch passes even where the branch is +0 (RALHE_SYNTHESIS_FULL)
};

// Whether attribute t's branch (linear0 .. conv1 with their biases, not the skip path) is all +0:
// a pruned branch (encode/branch_pruning.py) is written as integer zeros, which dequantize to +0.
bool branch_is_zero(const SynthesisWeights& weights, int K, int t) {
  const bool sh = t < K;
  const int base = sh ? 0 : kPerDecoder;
  const size_t a = sh ? size_t(t) : 0, count = sh ? size_t(K) : 1;
  for (int j = base; j < base + kPerDecoder; ++j) {
    const std::vector<float>& T = weights.tensors[j];
    const size_t per = T.size() / count;
    for (size_t i = a * per; i < (a + 1) * per; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &T[i], sizeof bits);
      if (bits != 0) return false;
    }
  }
  return true;
}

// Whether some lane group runs the branch passes (a branch not all +0, no skip path, or
// full_passes: RALHE_SYNTHESIS_FULL).
bool branch_passes_needed(const Architecture& arch, int K, const SynthesisWeights& weights, bool full_passes) {
  bool needed = !arch.skip || full_passes;
  for (int t = 0; t <= K && !needed; ++t) needed = !branch_is_zero(weights, K, t);
  return needed;
}

// Lane group g of N lanes (attributes g * N .. g * N + N - 1): its inputs, then its three passes,
// or, where every lane's branch is +0 and the skip path exists, the skip path alone (pass 3, see
// conv1_pass).
template <int N>
void run_group(const GroupShared& s, int g) {
  typedef typename Lanes<N>::V V;
  const bool raht = s.arch.transform == "raht";
  const LaneWeights<N> lw = lane_weights<N>(s.wd, s.K, s.arch.skip, s.weights, g);
  group_inputs<N>(s.arch, s.K + 1, s.M, s.wd.in, g, s.plan, s.point_to_voxel, s.planes, s.plane_size, s.x);
  bool zero = s.arch.skip;
  for (int t = g * N; t < std::min(g * N + N, s.K + 1); ++t) zero = zero && branch_is_zero(s.weights, s.K, t);
  const GroupData<N> gd{s.wd, &lw, s.x, raht ? s.plan.order.data() : nullptr, s.row_of, &s.kn, s.arch.skip,
                        static_cast<V*>(s.hid2), static_cast<V*>(s.hid3), s.K, g, s.sh_norm, s.opacity_norm,
                        s.denorm};
  const PassFn<N> kernel = pass_kernel<N>(s.wd);
  // passes run in chunks of points, one call each (see RALHE_NOINLINE in common.h)
  constexpr int64_t kChunk = 4096;
  if (zero && !s.full_passes) {
    for (int64_t b = 0; b < s.M; b += kChunk) kernel(gd, kSkipOnlyPass, b, std::min(s.M, b + kChunk));
    return;
  }
  for (int pass = 0; pass < 3; ++pass)
    for (int64_t b = 0; b < s.M; b += kChunk) kernel(gd, pass, b, std::min(s.M, b + kChunk));
}

// All lane groups with N lanes, except that with N = 8 a last group of at most 4 attributes (SH
// degree 3's opacity: 17 = 8 + 8 + 1) runs with 4: half the inverse-transform columns and half
// the buffer traffic of an 8-lane group that would be mostly padding.  Lanes are independent,
// so the width of a group changes no bit.
template <int N>
void synthesize_lanes(const Architecture& arch, const Widths& wd, int K, const SynthesisWeights& weights, int64_t M,
                      const Kernels& kn, const RahtPlan& plan, const std::vector<const int32_t*>& point_to_voxel,
                      const std::vector<PlaneView>& planes, const std::vector<int64_t>& plane_size, float* sh_norm,
                      float* opacity_norm, const ShDenormalization* denorm, bool full_passes, bool branch_passes) {
  typedef typename Lanes<N>::V V;
  const bool raht = arch.transform == "raht";
  const int in = wd.in, A = K + 1;
  std::vector<int64_t> row_of;  // the transform-code row of each point (the skip path reads it)
  if (raht && arch.skip) {
    row_of.resize(size_t(M));
    int64_t* rows = row_of.data();
    const int64_t* order = plan.order.data();
    for_chunks(M, 8192, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) rows[order[m]] = m;
    });
  }
  // every element is written before it is read: no zero-filling
  Block x_block(size_t(M) * in * N * sizeof(float));
  float* x = static_cast<float*>(x_block.data());  // [rows, in, N]
  VecArray<V> hid2, hid3;  // not allocated when no group needs them (every branch +0)
  if (branch_passes) {
    hid2 = VecArray<V>(size_t(M) * wd.h2);
    hid3 = VecArray<V>(size_t(M) * wd.h3);
  }
  const GroupShared shared{arch, wd, K, weights, M, kn, plan, point_to_voxel, planes, plane_size,
                           row_of.empty() ? nullptr : row_of.data(), x, hid2.data(), hid3.data(), sh_norm,
                           opacity_norm, denorm, full_passes};
  const int tail = N == 8 ? A % 8 : 0;
  const int full = tail >= 1 && tail <= 4 ? A / N : (A + N - 1) / N;
  for (int g = 0; g < full; ++g) run_group<N>(shared, g);
  if (full * N < A) run_group<4>(shared, full * N / 4);
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
                float* sh_norm, float* opacity_norm, const ShDenormalization* denorm, const RahtPlan* given_plan) {
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
  // the kernels are read by the branch passes only (every branch +0: no masks, no row checks)
  const bool full_passes = full_passes_requested();
  const bool branch_passes = branch_passes_needed(arch, K, weights, full_passes);
  const Kernels kn = branch_passes ? kernel_masks(M, neighbours) : Kernels{};
  RahtPlan own_plan;
  if (raht && !given_plan) own_plan = raht_plan(coords, M, depth);
  if (raht && given_plan && given_plan->num_points() != M)
    fail(ErrorKind::kInvalidArgument, "synthesize: the given RAHT plan is not of these points");
  const RahtPlan& plan = raht && given_plan ? *given_plan : own_plan;
#if RALHE_X86_DISPATCH
  // (up to 4 attributes, SH degree 0, fill one 4-lane group: 8 lanes would only add padding)
  const int lanes = A <= 4 ? 4 : lanes_for_this_cpu();
  if (lanes == 8) {
    synthesize_lanes<8>(arch, wd, K, weights, M, kn, plan, point_to_voxel, planes, plane_size, sh_norm, opacity_norm,
                        denorm, full_passes, branch_passes);
    return;
  }
#endif
  synthesize_lanes<4>(arch, wd, K, weights, M, kn, plan, point_to_voxel, planes, plane_size, sh_norm, opacity_norm,
                      denorm, full_passes, branch_passes);
}

void synthesize(const Architecture& arch, int num_sh, const SynthesisWeights& weights, int64_t M,
                const int32_t* coords, int depth, const int32_t* neighbours,
                const std::vector<const int32_t*>& point_to_voxel, const std::vector<std::vector<int32_t>>& planes,
                float* sh_norm, float* opacity_norm, const ShDenormalization* denorm) {
  std::vector<PlaneView> views;
  for (const auto& p : planes) views.push_back(PlaneView{p.data(), int64_t(p.size())});
  synthesize(arch, num_sh, weights, M, coords, depth, neighbours, point_to_voxel, views, sh_norm, opacity_norm,
             denorm);
}

}  // namespace ralhe
