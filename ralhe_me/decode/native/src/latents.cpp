// The lockstep latent decoder (latents.h).
//
// Exactness.  Every product and partial sum of the ARM is an integer whose magnitude is bounded
// (QuantizedArm::layer_bounds) below 2**52, below 2**31 while the contexts stay within
// int32_bound and below 2**24 within float_bound: float32, int32 or float64 arithmetic, whichever
// the contexts of a block of segments allow, is then exact, so neither the evaluation order, nor
// the vector width, nor the compiler can change a result.  The output rounding is integer.
//
// Layout.  Segments are contiguous (Gp = G rounded up to kBlock), so the K context rows of a block
// of segments are contiguous loads.  The contexts live in a ring of K rows, int16 [A][K][Gp]
// (contexts are clamped to +-(2**15 - 1), so int16 holds them exactly): latent t of a segment is
// row t % K, and rows start at zero (the contexts before a segment's start).  The latents
// themselves go to vals, int32 [A][S][Gp], written once per step; or, with direct_output(), to a
// tile of the last kTile steps, int32 [A][kTile][Gp], copied to the output planes every kTile
// steps (each segment's kTile latents in one contiguous run): no whole-stream buffer and no
// strided gather after it.
//
// Vectors are GCC/clang vector extensions of N lanes (N segments at once): 16 with AVX-512, 8 with
// AVX2, 4 otherwise (one SSE or WebAssembly SIMD128 register of floats), so that a layer's
// accumulators stay in registers.  With GCC on x86-64 Linux all three are compiled and the CPU
// picks at load time.
#include "latents.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

// Every product and partial sum here is an exact integer (see Exactness above), so a fused
// multiply-add gives the same bits as a separate multiply and add: where the target has FMA
// (the AVX2 and AVX-512 kernels) the compiler may fuse them.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#elif defined(__clang__)
#pragma STDC FP_CONTRACT ON
#endif

// Lane vectors are passed between always-inline functions only: no ABI is involved.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace ralhe {

namespace {

#if defined(RALHE_LATENT_LANES)  // a build may choose (4, 8 or 16)
constexpr int kBaseLanes = RALHE_LATENT_LANES;
#elif defined(__AVX512F__)
constexpr int kBaseLanes = 16;
#elif defined(__AVX2__)
constexpr int kBaseLanes = 8;
#else
constexpr int kBaseLanes = 4;
#endif

constexpr int kBlock = 16;    // Gp is a multiple of this (the widest lane count)
constexpr int kTile = 32;     // steps per tile (direct_output)
constexpr int kMaxDim = 256;  // ArmConfig allows up to 255 inputs / hidden units
constexpr int32_t kOutCap = 1 << 28;  // beyond every clip range of the outputs (see round_shift)

struct Model {
  int A = 0, K = 0, L = 0;            // attributes, context size, linear layers
  std::vector<int> din, dout;         // per layer
  std::vector<size_t> woff, boff;     // per (a, layer): offsets into the weight / bias arrays
  std::vector<float> wf, bf;          // float32 copies (used only where exact)
  std::vector<double> wd, bd;         // float64 copies
  std::vector<int32_t> wi, bi;        // int32 copies (used only where no sum can overflow)
  std::vector<double> hscale;         // per (a, hidden layer): 2**-k
  std::vector<int> hshift;            // per (a, hidden layer): k
  std::vector<int> kmu, kls;          // per a: output shifts to the mean / log-scale grids
  int64_t hmax = 0, cclamp = 0;
  int mbits = 0;                      // log2 of the number of mean bins
  int32_t mu_limit_q = 0, ls_min_units = 0, nbins = 0;
  int64_t float_bound = -1, int32_bound = -1;  // context bounds of the exact float32 / int32 paths
  std::vector<int32_t> zero_mu, zero_idx;  // per a: the result of an all-zero context
};

// floor(v * 2**-k + 1/2) for an exact integer v below 2**53.  A left shift (k < 0) first clamps v
// so the result stays within +-kOutCap: beyond the clip ranges applied next (|mu| <= 2**26 in 1/M
// units, scale bins within 2**20 + 4096 of zero), so the clipped result is unchanged.
inline int64_t round_shift(int64_t v, int k) {
  if (k > 0) return k > 62 ? 0 : (v >> k) + ((v >> (k - 1)) & 1);  // floor((v + 2**(k-1)) / 2**k)
  const int64_t cap = int64_t(kOutCap) >> (-k);
  return std::min(std::max(v, -cap), cap) * (int64_t(1) << (-k));
}

// The output accumulators (mu, log-scale) of one lane -> (mu_int, table index), as
// QuantizedArm.code_indices: round to the table grid, clip, split mu into mu_int and a mean bin.
inline void finish_lane(const Model& md, int a, int64_t acc_mu, int64_t acc_ls, int32_t* mu_int, int32_t* idx) {
  const int64_t m = int64_t(1) << md.mbits;
  const int64_t mu_q = std::min<int64_t>(std::max<int64_t>(round_shift(acc_mu, md.kmu[a]), -md.mu_limit_q), md.mu_limit_q);
  const int64_t sb = std::min<int64_t>(std::max<int64_t>(round_shift(acc_ls, md.kls[a]) - md.ls_min_units, 0), md.nbins - 1);
  const int64_t mi = (2 * mu_q + m) >> (md.mbits + 1);  // floor((2 mu_q + m) / (2 m))
  *mu_int = int32_t(mi);
  *idx = int32_t(sb * m + (mu_q - mi * m) + m / 2);
}

// Lane vectors of N segments.
template <int N>
struct Vec {
  typedef float F __attribute__((vector_size(N * sizeof(float))));
  typedef double D __attribute__((vector_size(N * sizeof(double))));
  typedef int32_t I __attribute__((vector_size(N * sizeof(int32_t))));
  typedef int16_t H __attribute__((vector_size(N * sizeof(int16_t))));
};

// round_shift on int32 lanes |v| < 2**31 (the float32 and int32 paths' accumulators).
template <typename I>
inline __attribute__((always_inline)) I round_shift_lanes(const I& acc, int k) {
  I v = acc;
  if (k >= 32) return I{} + 0;  // |v| < 2**31 <= 2**(k-1): floor((v + 2**(k-1)) / 2**k) = 0
  if (k > 0) return (v >> k) + ((v >> (k - 1)) & 1);
  if (k == 0) return v;
  const int32_t cap = kOutCap >> (-k);
  v = v < -cap ? -cap : v;
  v = v > cap ? cap : v;
  return v * (int32_t(1) << (-k));
}

// finish_lane on int32 lanes (the mean and scale-bin ranges fit int32: see Model's limits).
template <int N>
inline __attribute__((always_inline)) void finish_lanes(const Model& md, int a, const typename Vec<N>::I& acc_mu,
                                                        const typename Vec<N>::I& acc_ls, int nl, int32_t* mu_int,
                                                        int32_t* idx) {
  typedef typename Vec<N>::I I;
  const int32_t m = int32_t(1) << md.mbits, lim = md.mu_limit_q, lo = md.ls_min_units, top = md.nbins - 1;
  I mu_q = round_shift_lanes(acc_mu, md.kmu[a]);
  mu_q = mu_q < -lim ? -lim : mu_q;
  mu_q = mu_q > lim ? lim : mu_q;
  I sb = round_shift_lanes(acc_ls, md.kls[a]) - lo;
  sb = sb < 0 ? 0 : sb;
  sb = sb > top ? top : sb;
  const I mi = (2 * mu_q + m) >> (md.mbits + 1);
  const I ti = sb * m + (mu_q - mi * m) + m / 2;
  int32_t mo[N], io[N];
  std::memcpy(mo, &mi, sizeof(mo));
  std::memcpy(io, &ti, sizeof(io));
  std::memcpy(mu_int, mo, sizeof(int32_t) * nl);
  std::memcpy(idx, io, sizeof(int32_t) * nl);
}

// acc[o] = b[o] + sum_i x[i] * w[i][o] for a block of lanes (DO fixed: accumulators in registers).
// (GCC 12 wrongly reports acc as maybe uninitialized for int32 lanes.)
#pragma GCC diagnostic push
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
template <typename V, typename T, int DO>
inline __attribute__((always_inline)) void dense_fixed(const V* x, V* y, int di, const T* w, const T* b) {
  V acc[DO];
  for (int o = 0; o < DO; ++o) acc[o] = V{} + b[o];
  for (int i = 0; i < di; ++i) {
    const V xi = x[i];
    const T* wi = w + i * DO;
    for (int o = 0; o < DO; ++o) acc[o] += xi * wi[o];
  }
  for (int o = 0; o < DO; ++o) y[o] = acc[o];
}
#pragma GCC diagnostic pop

template <typename V, typename T>
inline __attribute__((always_inline)) void dense_any(const V* x, V* y, int di, int dn, const T* w, const T* b) {
  for (int o = 0; o < dn; ++o) y[o] = V{} + b[o];
  for (int i = 0; i < di; ++i)
    for (int o = 0; o < dn; ++o) y[o] += x[i] * w[i * dn + o];
}

// Attribute a's MLP on a block of lanes: x [K] inputs (x and y [kMaxDim] are scratch) -> the
// output accumulators (mu, log-scale), as the returned pointer's [0] and [1].  IV: int32 lanes.
template <typename V, typename IV, typename T>
inline __attribute__((always_inline)) V* mlp_lanes(const Model& md, int a, const T* W, const T* B, V* x, V* y) {
  const V hmax = V{} + T(md.hmax), zero = V{};
  for (int layer = 0; layer < md.L; ++layer) {
    const int di = md.din[layer], dn = md.dout[layer];
    const T* w = W + md.woff[size_t(a) * md.L + layer];
    const T* b = B + md.boff[size_t(a) * md.L + layer];
    switch (dn) {  // fixed widths keep the accumulators in registers
      case 2: dense_fixed<V, T, 2>(x, y, di, w, b); break;
      case 4: dense_fixed<V, T, 4>(x, y, di, w, b); break;
      case 8: dense_fixed<V, T, 8>(x, y, di, w, b); break;
      case 16: dense_fixed<V, T, 16>(x, y, di, w, b); break;
      default: dense_any<V, T>(x, y, di, dn, w, b);
    }
    if (layer + 1 == md.L) break;
    if constexpr (std::is_integral<T>::value) {
      // clamp(floor(acc * 2**-k), 0, hmax): an arithmetic shift floors (0 <= k; an int32 below
      // 2**31 shifted by 31 or more is 0 or -1, which clamps to 0 alike)
      const int k = std::min(md.hshift[size_t(a) * md.L + layer], 31);
      for (int o = 0; o < dn; ++o) {
        V v = y[o] >> k;
        v = v < zero ? zero : v;
        y[o] = v > hmax ? hmax : v;
      }
    } else {
      // clamp(floor(acc * 2**-k), 0, hmax) == trunc(clamp(acc * 2**-k, 0, hmax)): hmax is an integer
      const T sc = T(md.hscale[size_t(a) * md.L + layer]);
      for (int o = 0; o < dn; ++o) {
        V v = y[o] * sc;
        v = v < zero ? zero : v;
        v = v > hmax ? hmax : v;
        y[o] = __builtin_convertvector(__builtin_convertvector(v, IV), V);
      }
    }
    std::swap(x, y);
  }
  return y;
}

// Scratch of one step: per arithmetic, input and output lanes of every layer.
template <int N>
struct Scratch {
  typename Vec<N>::F f[2 * kMaxDim];
  typename Vec<N>::I i[2 * kMaxDim];
  typename Vec<N>::D d[2 * kMaxDim];
};
constexpr size_t kScratchBytes = sizeof(Scratch<16>);
constexpr size_t kScratchAlign = 128;  // the widest lane vector (alignof depends on the target ISA)

// The K contexts of lanes g0 .. g0 + N - 1 (rows[j] + g0) converted to the lane vectors x [K].
template <int N, typename V>
RALHE_ALWAYS_INLINE void load_contexts(int K, const int16_t* const* rows, int g0, V* x) {
  for (int j = 0; j < K; ++j) {
    typename Vec<N>::H v;
    std::memcpy(&v, rows[j] + g0, sizeof(v));
    x[j] = __builtin_convertvector(v, V);
  }
}

// The entropy model on one block of N segments (contexts rows[j] + g0, j < K; nl of the N lanes
// kept) in one arithmetic: float32 or int32 here (V the lane vector of T; x [K] its scratch, W and
// B its weights and biases), float64 below -> mo, io [nl].  In the WebAssembly build each
// arithmetic is its own function: the step that calls them runs from baseline code until an
// optimized copy is ready, and small functions are compiled sooner than one large one.
template <int N, typename V, typename T>
RALHE_WASM_NOINLINE void block_exact32(const Model& md, int a, const int16_t* const* rows, int g0, int nl,
                                       int32_t* mo, int32_t* io, V* x, const T* W, const T* B) {
  typedef typename Vec<N>::I I;
  load_contexts<N>(md.K, rows, g0, x);
  const auto* y = mlp_lanes<V, I, T>(md, a, W, B, x, x + kMaxDim);
  finish_lanes<N>(md, a, __builtin_convertvector(y[0], I), __builtin_convertvector(y[1], I), nl, mo, io);
}

template <int N>
RALHE_WASM_NOINLINE void block_float64(const Model& md, int a, const int16_t* const* rows, int g0, int nl,
                                       int32_t* mo, int32_t* io, Scratch<N>& sc) {
  typedef Vec<N> X;
  load_contexts<N>(md.K, rows, g0, sc.d);
  const auto* y =
      mlp_lanes<typename X::D, typename X::I, double>(md, a, md.wd.data(), md.bd.data(), sc.d, sc.d + kMaxDim);
  double ym[N], yl[N];
  std::memcpy(ym, &y[0], sizeof(ym));
  std::memcpy(yl, &y[1], sizeof(yl));
  for (int l = 0; l < nl; ++l) finish_lane(md, a, int64_t(ym[l]), int64_t(yl[l]), mo + l, io + l);
}

// One step: contexts of segments [0, na) of every attribute -> mu_out, idx_out [A * na] (a-major).
// Each block of N segments runs in the cheapest arithmetic exact for its own contexts.  Blocks of
// kBlock segments whose contexts are all zero (last_nonzero [A][Gp / kBlock]: the last step that
// stored a nonzero latent there, below t - K) are skipped: their results are the attribute's
// zero-context result, which the caller takes from Model (about 90% of the blocks of a typical
// file).
template <int N>
inline __attribute__((always_inline)) void eval_step_lanes(const Model& md, const int16_t* ring, int64_t Gp, int t,
                                                           int na, const int32_t* last_nonzero, int32_t* mu_out,
                                                           int32_t* idx_out, void* scratch) {
  typedef Vec<N> X;
  typedef typename X::H H;
  Scratch<N>& sc = *static_cast<Scratch<N>*>(scratch);
  const int16_t* rows[kMaxDim];
  for (int a = 0; a < md.A; ++a) {
    for (int j = 0; j < md.K; ++j) rows[j] = ring + (int64_t(a) * md.K + (t + j) % md.K) * Gp;
    const int32_t* live = last_nonzero + int64_t(a) * (Gp / kBlock);
    for (int g0 = 0; g0 < na; g0 += N) {
      if (live[g0 / kBlock] < t - md.K) {  // N divides kBlock: the whole block is zero-context
        g0 += kBlock - N;
        continue;
      }
      const int nl = std::min(N, na - g0);
      int32_t* mo = mu_out + int64_t(a) * na + g0;
      int32_t* io = idx_out + int64_t(a) * na + g0;
      H top = H{};  // max |context| per lane (contexts are within +-32767)
      for (int j = 0; j < md.K; ++j) {
        H v;
        std::memcpy(&v, rows[j] + g0, sizeof(v));
        v = v < 0 ? -v : v;
        top = v > top ? v : top;
      }
      int16_t tops[N];
      std::memcpy(tops, &top, sizeof(tops));
      int bound = 0;
      for (int l = 0; l < N; ++l) bound = std::max(bound, int(tops[l]));
      if (bound == 0) {  // all contexts zero (segment starts, flat regions): the precomputed result
        for (int l = 0; l < nl; ++l) {
          mo[l] = md.zero_mu[a];
          io[l] = md.zero_idx[a];
        }
        continue;
      }
      if (bound <= md.float_bound)
        block_exact32<N>(md, a, rows, g0, nl, mo, io, sc.f, md.wf.data(), md.bf.data());
      else if (bound <= md.int32_bound)
        block_exact32<N>(md, a, rows, g0, nl, mo, io, sc.i, md.wi.data(), md.bi.data());
      else
        block_float64<N>(md, a, rows, g0, nl, mo, io, sc);
    }
  }
}

typedef void (*StepFn)(const Model&, const int16_t*, int64_t, int, int, const int32_t*, int32_t*, int32_t*, void*);

void step_base(const Model& md, const int16_t* ring, int64_t Gp, int t, int na, const int32_t* last_nonzero,
               int32_t* mu, int32_t* idx, void* scratch) {
  eval_step_lanes<kBaseLanes>(md, ring, Gp, t, na, last_nonzero, mu, idx, scratch);
}

#if RALHE_X86_DISPATCH
__attribute__((target("arch=x86-64-v4"))) void step_avx512(const Model& md, const int16_t* ring, int64_t Gp, int t,
                                                           int na, const int32_t* last_nonzero, int32_t* mu,
                                                           int32_t* idx, void* scratch) {
  eval_step_lanes<16>(md, ring, Gp, t, na, last_nonzero, mu, idx, scratch);
}
__attribute__((target("arch=x86-64-v3"))) void step_avx2(const Model& md, const int16_t* ring, int64_t Gp, int t,
                                                         int na, const int32_t* last_nonzero, int32_t* mu,
                                                         int32_t* idx, void* scratch) {
  eval_step_lanes<8>(md, ring, Gp, t, na, last_nonzero, mu, idx, scratch);
}
#endif

StepFn pick_step() {
#if RALHE_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return step_avx512;
  if (__builtin_cpu_supports("x86-64-v3")) return step_avx2;
#endif
  return step_base;
}

// The result of an all-zero context for attribute a, layer by layer in float64 (exact).
void eval_zero(const Model& md, int a, int32_t* mu, int32_t* idx) {
  std::vector<double> x(md.K, 0.0), y;
  for (int layer = 0; layer < md.L; ++layer) {
    const int di = md.din[layer], dn = md.dout[layer];
    const double* w = md.wd.data() + md.woff[size_t(a) * md.L + layer];
    const double* b = md.bd.data() + md.boff[size_t(a) * md.L + layer];
    y.assign(b, b + dn);
    for (int i = 0; i < di; ++i)
      for (int o = 0; o < dn; ++o) y[o] += x[i] * w[i * dn + o];
    if (layer + 1 < md.L) {
      const double sc = md.hscale[size_t(a) * md.L + layer];
      for (int o = 0; o < dn; ++o) y[o] = std::min(std::max(std::floor(y[o] * sc), 0.0), double(md.hmax));
      x = y;
    }
  }
  finish_lane(md, a, int64_t(y[0]), int64_t(y[1]), mu, idx);
}

[[noreturn]] void bad_argument(const std::string& what) { throw std::invalid_argument(what); }

}  // namespace

struct LatentLoop::State {
  Model md;
  StepFn step = pick_step();
  int64_t G = 0, Gp = 0;
  int S = 0;
  int64_t bound = 0;
  std::vector<int16_t> ring;
  std::vector<int32_t> vals;
  std::vector<int32_t> mu, idx;
  std::vector<int32_t> last_nonzero;  // [A][Gp / kBlock]: see eval_step_lanes
  std::vector<int32_t*> dest;         // [A][G] when set: segment g's latents go to dest[g][t], not vals
  std::vector<int32_t> dest_length;   // [G] each segment's length (direct_output)
  std::vector<int32_t> tile;          // [A][kTile][Gp] (direct_output)

  // Steps [t0, t1] of the tile (t0 a multiple of kTile) to the outputs.
  void flush_tile(int t0, int t1) {
    for (int a = 0; a < md.A; ++a) {
      const int32_t* tb = tile.data() + int64_t(a) * kTile * Gp;
      int32_t* const* drow = dest.data() + int64_t(a) * G;
      for (int64_t g = 0; g < G; ++g) {
        const int rows = std::min(t1 + 1, dest_length[g]) - t0;
        int32_t* d = drow[g] + t0;
        for (int r = 0; r < rows; ++r) d[r] = tb[r * Gp + g];
      }
    }
  }
  std::vector<unsigned char> scratch;

  void* aligned_scratch() {
    const uintptr_t p = reinterpret_cast<uintptr_t>(scratch.data());
    return scratch.data() + (kScratchAlign - p % kScratchAlign) % kScratchAlign;
  }

  void ensure_vals() {  // allocated on first use: a run straight into outputs never needs it
    if (vals.empty()) vals.assign(size_t(md.A) * S * Gp, 0);
  }

  void check_step(int t, int na) const {
    if (t < 0 || t >= S || na < 0 || na > G) bad_argument("step out of range");
  }

  // The ARM of step t; blocks skipped as zero-context are left as they were in mu and idx
  // unless fill_zero (then they get Model's zero-context result).
  void eval_step(int t, int na, bool fill_zero) {
    step(md, ring.data(), Gp, t, na, last_nonzero.data(), mu.data(), idx.data(), aligned_scratch());
    if (!fill_zero) return;
    const int64_t nb = Gp / kBlock;
    for (int a = 0; a < md.A; ++a)
      for (int64_t b = 0; b * kBlock < na; ++b)
        if (last_nonzero[a * nb + b] < t - md.K)
          for (int64_t g = b * kBlock; g < std::min<int64_t>(na, (b + 1) * kBlock); ++g) {
            mu[int64_t(a) * na + g] = md.zero_mu[a];
            idx[int64_t(a) * na + g] = md.zero_idx[a];
          }
  }

  // The symbols of step t (after eval_step) into the step's rows (vals or tile) and the ring.
  // One call per step (RALHE_NOINLINE: see common.h).
  RALHE_NOINLINE void decode_step(RansReader& reader, const CdfTablesView& tables, int t, int na,
                                             int64_t& top_out) {
    RansReader rd = reader;  // a local copy: its state stays in registers
    int64_t top = top_out;
    const int32_t* pmu = mu.data();
    const int32_t* pidx = idx.data();
    const int32_t clamp = int32_t(md.cclamp);
    const int64_t nb = Gp / kBlock;
    for (int a = 0; a < md.A; ++a) {
      int32_t* vrow = dest.empty() ? vals.data() + (int64_t(a) * S + t) * Gp
                                   : tile.data() + (int64_t(a) * kTile + t % kTile) * Gp;
      int16_t* rrow = ring.data() + (int64_t(a) * md.K + t % md.K) * Gp;
      int32_t* live = last_nonzero.data() + a * nb;
      // the zero-context table, for the blocks eval_step skipped
      const int64_t zt = md.zero_idx[a];
      const int32_t* zcdf = tables.cdf + tables.start[zt];
      const int zlen = tables.length[zt], zoff = tables.offset[zt];
      const int32_t zmu = md.zero_mu[a];
      for (int64_t b = 0; b * kBlock < na; ++b) {
        const int g1 = int(std::min<int64_t>(na, (b + 1) * kBlock));
        const bool zero = live[b] < t - md.K;
        bool nonzero = false;
        for (int g = int(b * kBlock); g < g1; ++g) {
          // as put(): a valid stream has |x| <= kLatentLimit; garbage from a corrupt one saturates
          int64_t x = zero ? int64_t(rd.decode_near(zcdf, zlen, zoff, -zoff)) + zmu
                           : int64_t(tables.decode(rd, pidx[g])) + pmu[g];
          x = std::min<int64_t>(std::max<int64_t>(x, INT32_MIN + 1), INT32_MAX);
          const int32_t v = int32_t(x);
          vrow[g] = v;
          rrow[g] = int16_t(std::min(std::max(v, -clamp), clamp));
          top = std::max<int64_t>(top, v < 0 ? -int64_t(v) : v);
          nonzero |= v != 0;
        }
        if (nonzero) live[b] = int32_t(t);
      }
      pmu += na;
      pidx += na;
    }
    reader = rd;
    top_out = top;
  }

  // Latent x of segment g at step t (attribute a): into vals and the context ring.
  void put(int a, int t, int g, int64_t x, int64_t& top) {
    // a valid stream has |x| <= kLatentLimit; saturate garbage from a corrupt one
    x = std::min<int64_t>(std::max<int64_t>(x, INT32_MIN + 1), INT32_MAX);
    vals[(int64_t(a) * S + t) * Gp + g] = int32_t(x);
    ring[(int64_t(a) * md.K + t % md.K) * Gp + g] = int16_t(std::min<int64_t>(std::max<int64_t>(x, -md.cclamp), md.cclamp));
    top = std::max(top, x < 0 ? -x : x);
    if (x) last_nonzero[int64_t(a) * (Gp / kBlock) + g / kBlock] = t;
  }
};

ArmEvalParams arm_eval_params(const QuantizedArm& arm, const LaplaceTableConfig& tables) {
  ArmEvalParams p;
  p.hidden_limit = arm.hidden_limit();
  p.context_clamp = kContextClamp;
  p.mean_bins_log2 = int(tables.mean_bins_log2);
  p.log_scale_step_log2 = int(tables.log_scale_step_log2);
  p.log_scale_min_units = tables.log_scale_min_units();
  p.num_scale_bins = tables.num_scale_bins;
  p.mu_limit = kMuLimit;
  p.float_bound = arm.float32_context_bound();
  p.int32_bound = arm.int32_context_bound();
  return p;
}

LatentLoop::LatentLoop(const QuantizedArm& arm, const ArmEvalParams& p, int64_t segments, int segment_length)
    : s_(new State) {
  State& st = *s_;
  Model& md = st.md;
  md.A = arm.num_attributes();
  md.L = arm.num_layers();
  if (md.A < 1 || md.L < 1 || int(arm.weights.size()) != md.L || int(arm.biases.size()) != md.L ||
      arm.context_size < 1 || arm.context_size >= kMaxDim || arm.hidden < 1 || arm.hidden >= kMaxDim)
    bad_argument("bad ARM shapes");
  if (segments < 0 || segments > INT32_MAX - kBlock || segment_length < 1) bad_argument("bad segment layout");
  if (p.context_clamp < 0 || p.context_clamp > 32767) bad_argument("context clamp must fit int16");
  // the ranges LaplaceTableConfig and QuantizedArm allow (the int32 output rounding relies on them)
  if (p.mean_bins_log2 < 0 || p.mean_bins_log2 > 6 || p.log_scale_step_log2 < 0 || p.log_scale_step_log2 > 12 ||
      p.num_scale_bins < 1 || p.num_scale_bins > 4096 || p.log_scale_min_units < -(1 << 20) ||
      p.log_scale_min_units > (1 << 20) || p.mu_limit < 0 || p.mu_limit > (1 << 20) || p.hidden_limit < 0 ||
      p.hidden_limit > (int64_t(1) << 27))
    bad_argument("ARM output parameters out of range");
  for (int s : arm.weight_shifts)
    if (s < 0 || s > kMaxWeightShift) bad_argument("weight shift out of range");
  if (arm.activation_frac_bits < 0 || arm.activation_frac_bits > 15) bad_argument("activation_frac_bits out of range");
  for (int l = 0; l < md.L; ++l) {
    const int di = arm.layer_in(l), dn = arm.layer_out(l);
    if (arm.weights[l].size() != size_t(md.A) * di * dn || arm.biases[l].size() != size_t(md.A) * dn)
      bad_argument("bad ARM layer shapes");
    md.din.push_back(di);
    md.dout.push_back(dn);
  }
  md.K = md.din[0];
  md.hmax = p.hidden_limit;
  md.cclamp = p.context_clamp;
  md.mbits = p.mean_bins_log2;
  md.mu_limit_q = int32_t(p.mu_limit << p.mean_bins_log2);
  md.ls_min_units = int32_t(p.log_scale_min_units);
  md.nbins = int32_t(p.num_scale_bins);
  md.float_bound = p.float_bound;
  md.int32_bound = p.int32_bound;
  const int frac = arm.activation_frac_bits;
  for (int a = 0; a < md.A; ++a) {
    for (int l = 0; l < md.L; ++l) {
      const int in_frac = l == 0 ? 0 : frac;
      const int di = md.din[l], dn = md.dout[l];
      md.woff.push_back(md.wd.size());
      md.boff.push_back(md.bd.size());
      const int64_t* w = arm.weights[l].data() + size_t(a) * di * dn;
      const int64_t* b = arm.biases[l].data() + size_t(a) * dn;
      for (int i = 0; i < di * dn; ++i) md.wd.push_back(double(w[i]));
      for (int o = 0; o < dn; ++o) md.bd.push_back(std::ldexp(double(b[o]), in_frac));
      const int k = arm.weight_shifts[a] + in_frac - frac;
      md.hscale.push_back(std::ldexp(1.0, -k));
      md.hshift.push_back(k);
    }
    const int in_frac = md.L > 1 ? frac : 0;
    md.kmu.push_back(arm.weight_shifts[a] + in_frac - p.mean_bins_log2);
    md.kls.push_back(arm.weight_shifts[a] + in_frac - p.log_scale_step_log2);
  }
  md.wf.assign(md.wd.begin(), md.wd.end());
  md.bf.assign(md.bd.begin(), md.bd.end());
  if (p.int32_bound >= 0) {  // checked by the caller: every weight, bias and partial sum below 2**31
    for (double v : md.wd) md.wi.push_back(int32_t(v));
    for (double v : md.bd) md.bi.push_back(int32_t(v));
  }
  md.zero_mu.assign(md.A, 0);
  md.zero_idx.assign(md.A, 0);
  for (int a = 0; a < md.A; ++a) eval_zero(md, a, &md.zero_mu[a], &md.zero_idx[a]);
  st.G = segments;
  st.S = segment_length;
  st.Gp = ((segments + kBlock - 1) / kBlock) * kBlock;
  st.ring.assign(size_t(md.A) * md.K * st.Gp, 0);
  st.last_nonzero.assign(size_t(md.A) * (st.Gp / kBlock), -md.K - 1);  // contexts before step 0 are zeros
  st.mu.resize(size_t(md.A) * st.G);
  st.idx.resize(size_t(md.A) * st.G);
  st.scratch.resize(kScratchBytes + kScratchAlign);
}

LatentLoop::~LatentLoop() = default;

int LatentLoop::num_attributes() const { return s_->md.A; }
int64_t LatentLoop::num_tables() const { return s_->md.nbins << s_->md.mbits; }
int64_t LatentLoop::bound() const { return s_->bound; }
const int32_t* LatentLoop::mu_int() const { return s_->mu.data(); }
const int32_t* LatentLoop::table_index() const { return s_->idx.data(); }

void LatentLoop::predict(int t, int na) {
  s_->check_step(t, na);
  s_->eval_step(t, na, true);
}

void LatentLoop::store(int t, int na, const int64_t* res) {
  State& st = *s_;
  st.check_step(t, na);
  if (!st.dest.empty()) bad_argument("store() after direct_output()");
  st.ensure_vals();
  int64_t top = st.bound;
  for (int a = 0; a < st.md.A; ++a)
    for (int g = 0; g < na; ++g) {
      const int64_t i = int64_t(a) * na + g;
      st.put(a, t, g, res[i] + st.mu[i], top);
    }
  st.bound = top;
}

bool LatentLoop::run(RansReader& reader, const CdfTablesView& tables, const int64_t* active, int64_t steps) {
  State& st = *s_;
  if (tables.count != num_tables()) bad_argument("the tables must have one entry per table index");
  if (steps > st.S) bad_argument("more steps than the segment length");
  const int A = st.md.A;
  if (st.dest.empty()) {
    st.ensure_vals();
  } else {
    for (int32_t* d : st.dest)
      if (!d) bad_argument("direct_output() must cover every segment");
    st.tile.assign(size_t(A) * kTile * st.Gp, 0);
  }
  int64_t top = st.bound;
  RansReader rd = reader;  // written back at the end
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t na64 = active[t];
    if (na64 < 0 || na64 > st.G) bad_argument("step out of range");
    const int na = int(na64);
    st.eval_step(int(t), na, false);
    st.decode_step(rd, tables, int(t), na, top);
    if (!st.dest.empty() && ((t + 1) % kTile == 0 || t + 1 == steps)) st.flush_tile(int(t - t % kTile), int(t));
    if (rd.overrun()) break;  // the symbols of this step are garbage: stop here
  }
  reader = rd;
  st.bound = top;
  return !rd.overrun();
}

namespace {

template <typename T>
void gather_plane(const std::vector<int32_t>& vals, int A, int S, int64_t G, int64_t Gp, int64_t first, int64_t n,
                  const int64_t* position, T* out) {
  const int64_t ng = (n + S - 1) / S;
  if (first < 0 || n < 0 || first > G || ng > G - first) bad_argument("plane segments out of range");
  const int64_t* pos = position + first;
  for (int64_t j = 0; j < ng; ++j)
    if (pos[j] < 0 || pos[j] >= G) bad_argument("position out of range");
  for (int a = 0; a < A; ++a) {
    const int32_t* base = vals.data() + int64_t(a) * S * Gp;
    T* orow = out + int64_t(a) * n;
    for (int64_t j = 0; j < ng; ++j) {
      const int64_t c = pos[j];
      const int64_t len = std::min<int64_t>(S, n - j * S);
      T* dst = orow + j * S;
      for (int64_t s = 0; s < len; ++s) dst[s] = T(base[s * Gp + c]);
    }
  }
}

}  // namespace

void LatentLoop::direct_output(int64_t first, int64_t n, const int64_t* position, int32_t* out) {
  State& st = *s_;
  const int64_t ng = (n + st.S - 1) / st.S;
  if (first < 0 || n < 0 || first > st.G || ng > st.G - first) bad_argument("plane segments out of range");
  if (!st.vals.empty()) bad_argument("direct_output() after store() or run()");
  st.dest.resize(size_t(st.md.A) * st.G, nullptr);
  st.dest_length.resize(size_t(st.G), 0);
  for (int64_t j = 0; j < ng; ++j) {
    const int64_t c = position[first + j];
    if (c < 0 || c >= st.G) bad_argument("position out of range");
    st.dest_length[c] = int32_t(std::min<int64_t>(st.S, n - j * st.S));
    for (int a = 0; a < st.md.A; ++a) st.dest[a * st.G + c] = out + a * n + j * st.S;
  }
}

void LatentLoop::gather(int64_t first, int64_t n, const int64_t* position, int32_t* out) const {
  if (s_->vals.empty()) bad_argument("gather() needs run() or store() without direct_output()");
  gather_plane(s_->vals, s_->md.A, s_->S, s_->G, s_->Gp, first, n, position, out);
}

void LatentLoop::gather(int64_t first, int64_t n, const int64_t* position, int64_t* out) const {
  if (s_->vals.empty()) bad_argument("gather() needs run() or store() without direct_output()");
  gather_plane(s_->vals, s_->md.A, s_->S, s_->G, s_->Gp, first, n, position, out);
}

LatentPlanes decode_latents(Bytes section, const std::vector<int64_t>& plane_sizes, int num_attributes,
                            const QuantizedArm& arms, int segment_length, const LaplaceTableConfig& table_config) {
  const int A = num_attributes;
  arms.validate();
  if (arms.num_attributes() != A)
    corrupt("latents: the ARM has " + std::to_string(arms.num_attributes()) + " attributes, the latents " +
            std::to_string(A));
  if (segment_length < 1) corrupt("latents: segment_length must be >= 1, got " + std::to_string(segment_length));
  // The segment layout (contexts.py SegmentLayout): per plane ceil(n / S) segments, the last one short.
  const int64_t S = segment_length;
  std::vector<int64_t> lengths;  // [G] in layout order
  int64_t total = 0;
  for (int64_t n : plane_sizes) {
    if (n < 0 || n > (int64_t(1) << 40)) corrupt("latents: invalid plane size " + std::to_string(n));
    total += n;
  }
  LatentPlanes out;
  out.reserve(plane_sizes.size());
  if (total == 0) {
    for (size_t p = 0; p < plane_sizes.size(); ++p) out.emplace_back();
    return out;
  }
  if (section.size < 8 || section.size % 4)
    corrupt("latents: a stream of " + std::to_string(section.size) + " bytes cannot hold " +
            std::to_string(total * A) + " symbols");
  const auto tables = get_laplace_tables(table_config);
  if (total > max_stream_symbols(*tables, section.size) / A)
    corrupt("latents: a stream of " + std::to_string(section.size) + " bytes cannot hold " +
            std::to_string(total * A) + " symbols");
  for (int64_t n : plane_sizes)
    for (int64_t j = 0; j * S < n; ++j) lengths.push_back(std::min(S, n - j * S));
  const int64_t G = int64_t(lengths.size());
  if (G > INT32_MAX - 64) corrupt("latents: too many segments");
  // Coding order: by decreasing length, ties in layout order; position[g]: coding rank of layout g.
  std::vector<int64_t> order(static_cast<size_t>(G)), position(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) order[g] = g;
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return lengths[x] > lengths[y]; });
  for (int64_t c = 0; c < G; ++c) position[order[c]] = c;
  const int64_t steps = lengths[order[0]];
  std::vector<int64_t> active(static_cast<size_t>(steps));  // segments longer than t: a prefix of the coding order
  int64_t na = G;
  for (int64_t t = 0; t < steps; ++t) {
    while (na > 0 && lengths[order[na - 1]] <= t) --na;
    active[t] = na;
  }

  LatentLoop loop(arms, arm_eval_params(arms, table_config), G, int(S));
  int64_t first = 0;
  for (int64_t n : plane_sizes) {
    out.emplace_back(size_t(A) * n);
    loop.direct_output(first, n, position.data(), out.back().data());
    first += (n + S - 1) / S;
  }
  RansReader reader(section.data, section.size);
  if (!loop.run(reader, tables->view(), active.data(), steps))
    corrupt("latents: the latent stream is corrupt: it ends before its last symbol or holds an impossible escape");
  return out;
}

}  // namespace ralhe
