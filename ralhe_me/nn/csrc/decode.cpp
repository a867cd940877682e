// Native kernels of the attribute synthesis (ralhe_me/decode/synthesis.py): the inverse RAHT in
// place and its adjoint (the inverse's gradient in training), the decoders' point-wise layers, and
// the index helpers of the 3x3x3 neighbour maps (nn/neighbors.py), and training's row subsets
// (nn/row_subset.py) and skip path (nn/skip_path.py).  Each has a torch/numpy reference in Python with the same
// results bit for bit (the skip path's: within float rounding), used where this module is not built; tests
// compare the two.
//
// inverse_raht, raht_plan, raht_pairs: Python wrappers of the native decoder's inverse RAHT
// (ralhe_me/decode/native/src/raht.{h,cpp}: operations, layout and plan are described there), the
// same code the native decoder runs.  Errors become ValueError, as before the move.
//
// Columns.  The input is P arrays [Q, M] (column (p, q) contiguous: the latent planes, p the
// channel, q the attribute), the output [Q, M, P] in point order (attribute-major, channel last:
// what the decoders read): out[q, order[m], p] = inverse of column (p, q) at transform-code
// position m.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "raht.h"

namespace py = pybind11;

namespace {

using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;

// ralhe::Error (the library's) -> ValueError, as these functions raised before the move
template <typename F>
auto as_value_error(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const ralhe::Error& e) {
    throw std::invalid_argument(e.what());
  }
}

// (left, right) first-leaf rows of every merge, coarsest step first.  stage_starts / stage_left:
// the plan's steps in forward order (finest first), as RahtStep.starts and RahtStep.left.
py::tuple raht_pairs(int64_t num_points, const std::vector<I64>& stage_starts, const std::vector<I64>& stage_left) {
  if (stage_starts.size() != stage_left.size()) throw std::invalid_argument("raht_pairs: starts / left count differ");
  std::vector<const int64_t*> sp, lp;
  std::vector<int64_t> sn, ln;
  for (size_t s = 0; s < stage_starts.size(); ++s) {
    if (stage_starts[s].ndim() != 1 || stage_left[s].ndim() != 1) throw std::invalid_argument("raht_pairs: steps must be 1-D");
    sp.push_back(stage_starts[s].data());
    sn.push_back(stage_starts[s].shape(0));
    lp.push_back(stage_left[s].data());
    ln.push_back(stage_left[s].shape(0));
  }
  std::vector<int64_t> left, right;
  as_value_error([&] { ralhe::raht_pairs(num_points, sp, sn, lp, ln, left, right); return 0; });
  I64 lo(int64_t(left.size())), ro(int64_t(right.size()));
  std::copy(left.begin(), left.end(), lo.mutable_data());
  std::copy(right.begin(), right.end(), ro.mutable_data());
  return py::make_tuple(lo, ro);
}

// The inverse plan straight from the points: coords int64 [M, 3] (unique, in [0, 2^depth)) ->
// (left rows, right rows, a, b, order, steps), what build_plan + raht_pairs give; steps int64
// [S, 3]: (bit, first merge, end) of every non-empty step, coarsest first.
py::tuple raht_plan(I64 coords, int64_t depth) {
  if (coords.ndim() != 2 || coords.shape(1) != 3) throw std::invalid_argument("coords must have shape [M, 3]");
  const ralhe::RahtPlan plan = as_value_error([&] { return ralhe::raht_plan(coords.data(), coords.shape(0), depth); });
  const int64_t G = int64_t(plan.left.size()), M = plan.num_points();
  I64 left(G), right(G), order(M);
  F64 a(G), b(G);
  std::copy(plan.left.begin(), plan.left.end(), left.mutable_data());
  std::copy(plan.right.begin(), plan.right.end(), right.mutable_data());
  std::copy(plan.a.begin(), plan.a.end(), a.mutable_data());
  std::copy(plan.b.begin(), plan.b.end(), b.mutable_data());
  std::copy(plan.order.begin(), plan.order.end(), order.mutable_data());
  I64 steps({int64_t(plan.steps.size()), int64_t(3)});
  int64_t* st = steps.mutable_data();
  for (const ralhe::RahtStep& x : plan.steps) {
    *st++ = x.bit;
    *st++ = x.begin;
    *st++ = x.end;
  }
  return py::make_tuple(left, right, a, b, order, steps);
}

template <typename T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

// The merges and steps handed over from Python, checked (ValueError naming the problem): the
// blocked loops of raht.cpp rely on them.  ``steps`` keeps the RahtStep array the view points to.
ralhe::RahtMerges checked_merges(const char* what, int64_t M, const I64& left, const I64& right, const F64& a,
                                 const F64& b, const I64& steps_in, std::vector<ralhe::RahtStep>& steps) {
  const int64_t G = left.shape(0);
  if (M < 1 || G != M - 1 || right.shape(0) != G || a.shape(0) != G || b.shape(0) != G)
    throw std::invalid_argument(std::string(what) + ": plan of " + std::to_string(G + 1) + " points for " +
                                std::to_string(M) + " rows");
  if (steps_in.ndim() != 2 || steps_in.shape(1) != 3)
    throw std::invalid_argument(std::string(what) + ": steps must be [S, 3] (bit, begin, end)");
  const int64_t* st = steps_in.data();
  for (int64_t s = 0; s < steps_in.shape(0); ++s, st += 3) {
    if (st[0] < 0 || st[0] > 63) throw std::invalid_argument(std::string(what) + ": a step's bit is out of range");
    steps.push_back(ralhe::RahtStep{int(st[0]), st[1], st[2]});
  }
  const ralhe::RahtMerges m{M, left.data(), right.data(), a.data(), b.data(), steps.data(), steps.size()};
  as_value_error([&] { ralhe::check_raht_steps(m); return 0; });
  return m;
}

// The plan's point order, checked (ValueError): M entries in [0, M); with ``row_of``, also a
// permutation, whose inverse (the row of each point) it fills.
void checked_order(const char* what, int64_t M, const char* rows, const I64& order_in, std::vector<int64_t>* row_of) {
  if (order_in.shape(0) != M)
    throw std::invalid_argument(std::string(what) + ": plan of " + std::to_string(order_in.shape(0)) +
                                " points for " + std::to_string(M) + " " + rows);
  const int64_t* order = order_in.data();
  for (int64_t m = 0; m < M; ++m)
    if (order[m] < 0 || order[m] >= M) throw std::invalid_argument(std::string(what) + ": order out of range");
  if (!row_of) return;
  row_of->assign(size_t(M), -1);
  for (int64_t m = 0; m < M; ++m) (*row_of)[size_t(order[m])] = m;
  for (int64_t n = 0; n < M; ++n)
    if ((*row_of)[size_t(n)] < 0) throw std::invalid_argument(std::string(what) + ": order is not a permutation");
}

template <typename T>
py::array_t<T> inverse_raht(const std::vector<Arr<T>>& columns, I64 left_rows, I64 right_rows, F64 a_in, F64 b_in,
                            I64 order_in, I64 steps_in, int threads) {
  if (columns.empty() || columns[0].ndim() != 2) throw std::invalid_argument("inverse_raht: coefficients must be P arrays [Q, M]");
  const int64_t P = int64_t(columns.size()), Q = columns[0].shape(0), M = columns[0].shape(1), X = P * Q;
  for (const auto& c : columns)
    if (c.ndim() != 2 || c.shape(0) != Q || c.shape(1) != M)
      throw std::invalid_argument("inverse_raht: the P coefficient arrays differ in shape");
  std::vector<int64_t> row_of;
  checked_order("inverse_raht", M, "coefficients", order_in, &row_of);
  std::vector<ralhe::RahtStep> steps;
  const ralhe::RahtMerges merges = checked_merges("inverse_raht", M, left_rows, right_rows, a_in, b_in, steps_in, steps);
  std::vector<const T*> column(X);  // column x = q * P + p
  for (int64_t q = 0; q < Q; ++q)
    for (int64_t p = 0; p < P; ++p) column[q * P + p] = columns[p].data() + q * M;
  std::unique_ptr<T[]> work(new T[size_t(M) * size_t(X)]);
  T* w = work.get();
  py::array_t<T> out({Q, M, P});
  T* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    ralhe::inverse_raht<T, T>(merges, column.data(), X, w, threads);
    // to point order: gather (sequential writes to the Q output planes, one row read per point)
#pragma omp parallel for num_threads(std::max(1, threads)) if (threads > 1) schedule(static)
    for (int64_t n = 0; n < M; ++n) {
      const T* row = w + row_of[n] * X;
      for (int64_t q = 0; q < Q; ++q)
        for (int64_t p = 0; p < P; ++p) o[(q * M + n) * P + p] = row[q * P + p];
    }
  }
  return out;
}

template <typename T>
py::object inverse_raht_typed(const py::list& columns, I64 left, I64 right, F64 a, F64 b, I64 order, I64 steps,
                              int threads) {
  std::vector<Arr<T>> cols;
  for (auto c : columns) cols.push_back(py::cast<Arr<T>>(c));
  return inverse_raht<T>(cols, left, right, a, b, order, steps, threads);
}

py::object inverse_raht_any(const py::list& columns, I64 left, I64 right, F64 a, F64 b, I64 order, I64 steps,
                            int threads) {
  if (columns.size() == 0) throw std::invalid_argument("inverse_raht: no coefficient arrays");
  py::object first = columns[0];
  if (py::isinstance<py::array_t<float>>(first))
    return inverse_raht_typed<float>(columns, left, right, a, b, order, steps, threads);
  if (py::isinstance<py::array_t<double>>(first))
    return inverse_raht_typed<double>(columns, left, right, a, b, order, steps, threads);
  throw std::invalid_argument("inverse_raht: coefficients must be float32 or float64");
}

// The adjoint (transpose) of inverse_raht, for its gradient in training: grad [Q, M, P] of the
// point-order output -> P arrays [Q, M], the gradient of each coefficient column (ralhe::raht_adjoint:
// the butterflies transposed in reverse order).  The same bits on any number of threads, so an
// encode trains the same latents every run.
template <typename T>
std::vector<py::array_t<T>> raht_adjoint(Arr<T> grad_in, I64 left_rows, I64 right_rows, F64 a_in, F64 b_in,
                                         I64 order_in, I64 steps_in, int threads) {
  if (grad_in.ndim() != 3) throw std::invalid_argument("raht_adjoint: the gradient must be [Q, M, P]");
  const int64_t Q = grad_in.shape(0), M = grad_in.shape(1), P = grad_in.shape(2), X = P * Q;
  checked_order("raht_adjoint", M, "gradient rows", order_in, nullptr);
  std::vector<ralhe::RahtStep> steps;
  const ralhe::RahtMerges merges = checked_merges("raht_adjoint", M, left_rows, right_rows, a_in, b_in, steps_in, steps);
  const int64_t* order = order_in.data();
  std::vector<py::array_t<T>> out;
  std::vector<T*> col(X);
  for (int64_t p = 0; p < P; ++p) out.emplace_back(std::vector<py::ssize_t>{Q, M});
  for (int64_t q = 0; q < Q; ++q)
    for (int64_t p = 0; p < P; ++p) col[q * P + p] = out[p].mutable_data() + q * M;
  std::unique_ptr<T[]> work(new T[size_t(M) * size_t(X)]);
  T* w = work.get();
  const T* g = grad_in.data();
  {
    py::gil_scoped_release release;
    // rows in transform-code order: row m holds the point order[m]'s gradients, column q * P + p
#pragma omp parallel for num_threads(std::max(1, threads)) if (threads > 1) schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      T* row = w + m * X;
      for (int64_t q = 0; q < Q; ++q)
        for (int64_t p = 0; p < P; ++p) row[q * P + p] = g[(q * M + order[m]) * P + p];
    }
    ralhe::raht_adjoint<T>(merges, w, X, col.data(), threads);
  }
  return out;
}

py::object raht_adjoint_any(const py::array& grad, I64 left, I64 right, F64 a, F64 b, I64 order, I64 steps,
                            int threads) {
  if (py::isinstance<py::array_t<float>>(grad))
    return py::cast(raht_adjoint<float>(py::cast<Arr<float>>(grad), left, right, a, b, order, steps, threads));
  if (py::isinstance<py::array_t<double>>(grad))
    return py::cast(raht_adjoint<double>(py::cast<Arr<double>>(grad), left, right, a, b, order, steps, threads));
  throw std::invalid_argument("raht_adjoint: the gradient must be float32 or float64");
}

// ---------------------------------------------------------------- point-wise layers (nn/grouped_decoder.py)
//
// y[n, a] = relu(relu(x[a, n] @ w0[a] + b0[a]) @ w1[a] + b1[a]) for the rows n < rows, float32.
// The torch version runs these products through MKL (torch.baddbmm on chunks of 1024 points);
// for chunks that size this MKL build sums each output as a chain of fused multiply-adds over
// the inputs in order, starting from the first product, and adds the bias last:
//
//   acc = x_0 * w_0;  acc = fma(x_1, w_1, acc); ...;  out = bias + acc;  relu keeps -0 and NaN
//
// which is what this kernel does (explicit fmaf: the flag -ffp-contract=off does not touch it).
// MKL picks its kernels by shape and CPU, so grouped_decoder.py uses this only after checking,
// once per shape and process, that it gives torch's bits on random data; otherwise torch runs.
// Needs AVX2 and FMA (checked at run time): strips of 32 points (8 per vector), all attributes
// of a strip before its output rows are written (contiguous).

constexpr int64_t kMaxWidth = 64;  // channels per layer handled here

bool mlp_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// relu as torch's clamp(min=0): v < 0 ? +0 : v (so -0 and NaN pass through)
__attribute__((target("avx2,fma"))) inline __m256 relu8(__m256 v) {
  return _mm256_andnot_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ), v);
}

// r[j][i] -> r[i][j]
__attribute__((target("avx2,fma"))) inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int j = 0; j < 8; j += 2) {
    t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
  }
  for (int j = 0; j < 8; j += 4) {
    u[j] = _mm256_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);
    r[j + 4] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31);
  }
}

constexpr int kStripVectors = 4;              // vectors per strip: 4 independent chains hide the FMA latency
constexpr int64_t kStrip = 8 * kStripVectors;  // points per strip of the point-wise layers

// The 32-byte aligned start of a buffer allocated with 8 floats to spare.
inline float* aligned32(std::vector<float>& buffer) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer.data()) + 31) & ~uintptr_t(31));
}

// One attribute's inputs of a strip, planar: xp[k][i] = xa[i * C0 + k] for the nb points, zero after.
inline void load_strip(const float* xa, int64_t nb, int64_t C0, float (*xp)[kStrip]) {
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t k = 0; k < C0; ++k) xp[k][i] = xa[i * C0 + k];
  for (int64_t k = 0; k < C0; ++k)
    for (int64_t i = nb; i < kStrip; ++i) xp[k][i] = 0.f;
}

// The hidden layer of a strip, h[o] = relu(b[o] + sum_k xp[k] W[k][o]), summed as MKL does (the
// first product, then fused multiply-adds in k order, the bias last): the forward's bits, which
// the backward's recomputation reproduces.
__attribute__((target("avx2,fma"))) inline void hidden_strip(const float (*xp)[kStrip], const float* w /* [C0][C1] */,
                                                             const float* b /* [C1] */, int64_t C0, int64_t C1,
                                                             __m256 (*h)[kStripVectors]) {
  constexpr int V = kStripVectors;
  for (int64_t o = 0; o < C1; ++o) {
    __m256 acc[V];
    const __m256 w0 = _mm256_set1_ps(w[o]);
    for (int v = 0; v < V; ++v) acc[v] = _mm256_mul_ps(_mm256_load_ps(&xp[0][8 * v]), w0);
    for (int64_t k = 1; k < C0; ++k) {
      const __m256 wk = _mm256_set1_ps(w[k * C1 + o]);
      for (int v = 0; v < V; ++v) acc[v] = _mm256_fmadd_ps(_mm256_load_ps(&xp[k][8 * v]), wk, acc[v]);
    }
    const __m256 bias = _mm256_set1_ps(b[o]);
    for (int v = 0; v < V; ++v) h[o][v] = relu8(_mm256_add_ps(bias, acc[v]));
  }
}

__attribute__((target("avx2,fma"))) void mlp_rows(const float* x, int64_t N, int64_t A, int64_t C0, int64_t C1,
                                                   int64_t C2, const float* w0, const float* b0, const float* w1,
                                                   const float* b1, float* y, int64_t rows) {
  constexpr int V = kStripVectors;
  constexpr int64_t S = kStrip;
  alignas(32) float xp[kMaxWidth][S];  // one attribute's inputs of the strip, planar
  std::vector<float> tile_store(size_t(A * C2 * S) + 8);
  float* tile = aligned32(tile_store);
  __m256 h[kMaxWidth][V];
  const int64_t row = A * C2;  // floats per output row
  for (int64_t s0 = 0; s0 < rows; s0 += S) {
    const int64_t nb = std::min(S, rows - s0);
    for (int64_t a = 0; a < A; ++a) {
      const float* xa = x + (a * N + s0) * C0;
      // four strips ahead in this plane: A planes at once are more streams than the prefetchers follow
      if (s0 + 5 * S <= N)
        for (int64_t off = 0; off < S * C0; off += 16)
          _mm_prefetch(reinterpret_cast<const char*>(xa + 4 * S * C0 + off), _MM_HINT_T0);
      load_strip(xa, nb, C0, xp);
      const float* va = w1 + a * C1 * C2;  // [C1][C2]
      hidden_strip(xp, w0 + a * C0 * C1, b0 + a * C1, C0, C1, h);
      for (int64_t o = 0; o < C2; ++o) {
        __m256 acc[V];
        const __m256 w = _mm256_set1_ps(va[o]);
        for (int v = 0; v < V; ++v) acc[v] = _mm256_mul_ps(h[0][v], w);
        for (int64_t k = 1; k < C1; ++k) {
          const __m256 wk = _mm256_set1_ps(va[k * C2 + o]);
          for (int v = 0; v < V; ++v) acc[v] = _mm256_fmadd_ps(h[k][v], wk, acc[v]);
        }
        const __m256 bias = _mm256_set1_ps(b1[a * C2 + o]);
        float* t = tile + (a * C2 + o) * S;
        for (int v = 0; v < V; ++v) _mm256_store_ps(t + 8 * v, relu8(_mm256_add_ps(bias, acc[v])));
      }
    }
    // the strip's rows [nb][A * C2] from the planar tile [A * C2][S]: 8 x 8 transposes
    float* ys = y + s0 * row;
    const int64_t row8 = row & ~int64_t(7);
    for (int64_t c0 = 0; c0 < row8; c0 += 8)
      for (int64_t i0 = 0; i0 < nb; i0 += 8) {
        __m256 r[8];
        for (int j = 0; j < 8; ++j) r[j] = _mm256_load_ps(tile + (c0 + j) * S + i0);
        transpose8(r);
        const int64_t ni = std::min(int64_t(8), nb - i0);
        for (int64_t j = 0; j < ni; ++j) _mm256_storeu_ps(ys + (i0 + j) * row + c0, r[j]);
      }
    for (int64_t c = row8; c < row; ++c)
      for (int64_t i = 0; i < nb; ++i) ys[i * row + c] = tile[c * S + i];
  }
}

using F32 = py::array_t<float, py::array::c_style>;

void check_mlp_widths(const char* function, int64_t C0, int64_t C1, int64_t C2) {
  if (C0 < 1 || C1 < 1 || C2 < 1 || C0 > kMaxWidth || C1 > kMaxWidth || C2 > kMaxWidth)
    throw std::invalid_argument(std::string(function) + ": layer widths must lie in [1, 64]");
}

// x [A, N, C0], w0 [A, C0, C1], b0 [A, 1, C1], w1 [A, C1, C2], b1 [A, 1, C2], y [N, A, C2] (written
// for the first `rows` points).
void pointwise_mlp(F32 x, F32 w0, F32 b0, F32 w1, F32 b1, py::array y_out, int64_t rows) {
  if (!mlp_supported()) throw std::runtime_error("pointwise_mlp: needs a CPU with AVX2 and FMA");
  // the output is written in place: never a converted copy
  if (!py::isinstance<py::array_t<float>>(y_out) || !(y_out.flags() & py::array::c_style) || !y_out.writeable())
    throw std::invalid_argument("pointwise_mlp: y must be a writeable C-contiguous float32 array");
  auto y = py::reinterpret_borrow<py::array_t<float>>(y_out);
  if (x.ndim() != 3 || w0.ndim() != 3 || b0.ndim() != 3 || w1.ndim() != 3 || b1.ndim() != 3 || y.ndim() != 3)
    throw std::invalid_argument("pointwise_mlp: every array must be 3-D");
  const int64_t A = x.shape(0), N = x.shape(1), C0 = x.shape(2), C1 = w0.shape(2), C2 = w1.shape(2);
  if (w0.shape(0) != A || w0.shape(1) != C0 || b0.shape(0) != A || b0.shape(1) != 1 || b0.shape(2) != C1 ||
      w1.shape(0) != A || w1.shape(1) != C1 || b1.shape(0) != A || b1.shape(1) != 1 || b1.shape(2) != C2 ||
      y.shape(0) != N || y.shape(1) != A || y.shape(2) != C2)
    throw std::invalid_argument("pointwise_mlp: shapes do not fit");
  check_mlp_widths("pointwise_mlp", C0, C1, C2);
  if (rows < 0 || rows > N) throw std::invalid_argument("pointwise_mlp: rows out of range");
  float* out = y.mutable_data();
  {
    py::gil_scoped_release release;
    mlp_rows(x.data(), N, A, C0, C1, C2, w0.data(), b0.data(), w1.data(), b1.data(), out, rows);
  }
}

// ---------------------------------------------------------------- point-wise layers, backward (training)
//
// The gradients of y = relu(relu(x W0 + b0) W1 + b1) (training's _PointwiseMLP.backward): with
// three input channels and a 12-wide hidden layer, torch spent its time on per-chunk slicing,
// masks and strided copies rather than arithmetic (about a quarter of an image-domain refinement
// step).  Here each strip of 32 points recomputes its hidden layer, and the weight gradients
// collect in per-lane vector sums.  The points are cut into blocks of a size that depends on N
// only; each block's sums are reduced lane by lane, and the blocks in order, so the result does
// not depend on the number of threads.  It agrees with the torch reference within float rounding
// (tests/test_grouped_decoder.py).

struct MlpShape {
  int64_t N, A, C0, C1, C2;
  int64_t params() const { return C0 * C1 + C1 + C1 * C2 + C2; }  // gw0, gb0, gw1, gb1 of one attribute
};

// One row r of a layer y = x W over a strip: adds left * right[j] (the weight gradient's row
// W[r][:], per lane) into sums[j] and returns in d the row's product W[r, :] . right (the input
// gradient of x[r]); right holds the n output gradients.
__attribute__((target("avx2,fma"))) inline void weight_row_grads(const __m256* left, const __m256 (*right)[kStripVectors],
                                                                 int64_t n, const float* w_row, float* sums,
                                                                 __m256* d) {
  constexpr int V = kStripVectors;
  for (int v = 0; v < V; ++v) d[v] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    __m256 sum = _mm256_load_ps(sums + 8 * j);
    const __m256 w = _mm256_set1_ps(w_row[j]);
    for (int v = 0; v < V; ++v) {
      sum = _mm256_fmadd_ps(left[v], right[j][v], sum);
      d[v] = _mm256_fmadd_ps(right[j][v], w, d[v]);
    }
    _mm256_store_ps(sums + 8 * j, sum);
  }
}

// One block of points [p0, p1): gx rows (when gx), and every attribute's weight-gradient sums
// into part [A][params] (overwritten).
__attribute__((target("avx2,fma"))) void mlp_backward_block(
    const MlpShape& s, const float* x, const float* w0, const float* b0, const float* w1, const float* y,
    const float* gy, float* gx, int64_t p0, int64_t p1, float* part) {
  constexpr int V = kStripVectors;
  constexpr int64_t S = kStrip;
  const int64_t A = s.A, C0 = s.C0, C1 = s.C1, C2 = s.C2, P = s.params(), row = A * C2;
  // per-lane sums of every attribute's parameters: [A][P] vectors
  std::vector<float> acc_store(size_t(A * P * 8) + 8, 0.f);
  float* acc = aligned32(acc_store);
  std::vector<float> tile_store(size_t(row * S) + 8);  // the strip's masked output gradients, planar
  float* tile = aligned32(tile_store);
  alignas(32) float xp[kMaxWidth][S];
  alignas(32) float gxp[kMaxWidth][S];
  __m256 h[kMaxWidth][V], gh[kMaxWidth][V], g2[kMaxWidth][V];
  for (int64_t s0 = p0; s0 < p1; s0 += S) {
    const int64_t nb = std::min(S, p1 - s0);
    // g2 = gy * (y > 0) for the strip, [row][S]; lanes past nb are zero, so they add nothing
    for (int64_t i = 0; i < nb; ++i) {
      const float* yi = y + (s0 + i) * row;
      const float* gi = gy + (s0 + i) * row;
      for (int64_t c = 0; c < row; ++c) tile[c * S + i] = yi[c] > 0.f ? gi[c] : 0.f;
    }
    for (int64_t c = 0; c < row; ++c)
      for (int64_t i = nb; i < S; ++i) tile[c * S + i] = 0.f;
    for (int64_t a = 0; a < A; ++a) {
      load_strip(x + (a * s.N + s0) * C0, nb, C0, xp);
      const float* wa = w0 + a * C0 * C1;  // [C0][C1]
      const float* va = w1 + a * C1 * C2;  // [C1][C2]
      // this attribute's lane sums, 8 floats each
      float* gw0 = acc + a * P * 8;  // [C0][C1]
      float* gb0 = gw0 + C0 * C1 * 8;  // [C1]
      float* gw1 = gb0 + C1 * 8;       // [C1][C2]
      float* gb1 = gw1 + C1 * C2 * 8;  // [C2]
      hidden_strip(xp, wa, b0 + a * C1, C0, C1, h);  // recomputed with the forward's bits
      for (int64_t o = 0; o < C2; ++o) {
        const float* t = tile + (a * C2 + o) * S;
        __m256 sum = _mm256_load_ps(gb1 + 8 * o);
        for (int v = 0; v < V; ++v) {
          g2[o][v] = _mm256_load_ps(t + 8 * v);
          sum = _mm256_add_ps(sum, g2[o][v]);
        }
        _mm256_store_ps(gb1 + 8 * o, sum);
      }
      for (int64_t o = 0; o < C1; ++o) {
        // gw1[o][:] += h[o] g2[:];  gh[o] = (W1[o, :] . g2) where h[o] > 0
        __m256 d[V];
        weight_row_grads(h[o], g2, C2, va + o * C2, gw1 + 8 * o * C2, d);
        __m256 sum = _mm256_load_ps(gb0 + 8 * o);
        for (int v = 0; v < V; ++v) {
          gh[o][v] = _mm256_and_ps(d[v], _mm256_cmp_ps(h[o][v], _mm256_setzero_ps(), _CMP_GT_OQ));
          sum = _mm256_add_ps(sum, gh[o][v]);
        }
        _mm256_store_ps(gb0 + 8 * o, sum);
      }
      for (int64_t k = 0; k < C0; ++k) {
        // gw0[k][:] += x[k] gh[:];  gx[k] = W0[k, :] . gh
        __m256 xk[V], d[V];
        for (int v = 0; v < V; ++v) xk[v] = _mm256_load_ps(&xp[k][8 * v]);
        weight_row_grads(xk, gh, C1, wa + k * C1, gw0 + 8 * k * C1, d);
        for (int v = 0; v < V; ++v) _mm256_store_ps(&gxp[k][8 * v], d[v]);
      }
      if (gx != nullptr) {
        float* ga = gx + (a * s.N + s0) * C0;
        for (int64_t i = 0; i < nb; ++i)
          for (int64_t k = 0; k < C0; ++k) ga[i * C0 + k] = gxp[k][i];
      }
    }
  }
  // lanes in order, then into the block's part
  for (int64_t i = 0; i < A * P; ++i) {
    const float* lanes = acc + 8 * i;
    float sum = lanes[0];
    for (int l = 1; l < 8; ++l) sum += lanes[l];
    part[i] = sum;
  }
}

// x [A, N, C0], w0 [A, C0, C1], b0 [A, 1, C1], w1 [A, C1, C2], y [N, A, C2] (the forward's output),
// gy [N, A, C2] -> (gx [A, N, C0] or None, gw0, gb0, gw1, gb1 in the weights' shapes).
py::tuple pointwise_mlp_backward(F32 x, F32 w0, F32 b0, F32 w1, F32 y, F32 gy, bool want_gx, int threads) {
  if (!mlp_supported()) throw std::runtime_error("pointwise_mlp_backward: needs a CPU with AVX2 and FMA");
  if (x.ndim() != 3 || w0.ndim() != 3 || b0.ndim() != 3 || w1.ndim() != 3 || y.ndim() != 3 || gy.ndim() != 3)
    throw std::invalid_argument("pointwise_mlp_backward: every array must be 3-D");
  const MlpShape s{x.shape(1), x.shape(0), x.shape(2), w0.shape(2), w1.shape(2)};
  if (w0.shape(0) != s.A || w0.shape(1) != s.C0 || b0.shape(0) != s.A || b0.shape(1) != 1 || b0.shape(2) != s.C1 ||
      w1.shape(0) != s.A || w1.shape(1) != s.C1 || y.shape(0) != s.N || y.shape(1) != s.A || y.shape(2) != s.C2 ||
      gy.shape(0) != s.N || gy.shape(1) != s.A || gy.shape(2) != s.C2)
    throw std::invalid_argument("pointwise_mlp_backward: shapes do not fit");
  check_mlp_widths("pointwise_mlp_backward", s.C0, s.C1, s.C2);
  const int64_t P = s.params();
  // blocks: at least 2,048 points, at most 256 of them; a function of N alone
  int64_t block = std::max<int64_t>(2048, (s.N + 255) / 256);
  block = (block + kStrip - 1) / kStrip * kStrip;
  const int64_t blocks = s.N == 0 ? 0 : (s.N + block - 1) / block;
  py::array_t<float> gx_arr = want_gx ? py::array_t<float>({s.A, s.N, s.C0}) : py::array_t<float>();
  float* gx = want_gx ? gx_arr.mutable_data() : nullptr;
  std::vector<float> parts(size_t(blocks * s.A * P));
  {
    py::gil_scoped_release release;
    const float *xd = x.data(), *w0d = w0.data(), *b0d = b0.data(), *w1d = w1.data(), *yd = y.data(), *gyd = gy.data();
#pragma omp parallel for num_threads(std::max(1, threads)) if (threads > 1) schedule(dynamic, 1)
    for (int64_t b = 0; b < blocks; ++b)
      mlp_backward_block(s, xd, w0d, b0d, w1d, yd, gyd, gx, b * block, std::min(s.N, (b + 1) * block),
                         parts.data() + b * s.A * P);
  }
  std::vector<float> total(size_t(s.A * P), 0.f);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t i = 0; i < s.A * P; ++i) total[i] += parts[b * s.A * P + i];
  py::array_t<float> gw0({s.A, s.C0, s.C1}), gb0({s.A, int64_t(1), s.C1}), gw1({s.A, s.C1, s.C2}),
      gb1({s.A, int64_t(1), s.C2});
  float *o0 = gw0.mutable_data(), *o1 = gb0.mutable_data(), *o2 = gw1.mutable_data(), *o3 = gb1.mutable_data();
  for (int64_t a = 0; a < s.A; ++a) {
    const float* t = total.data() + a * P;
    std::copy(t, t + s.C0 * s.C1, o0 + a * s.C0 * s.C1);
    t += s.C0 * s.C1;
    std::copy(t, t + s.C1, o1 + a * s.C1);
    t += s.C1;
    std::copy(t, t + s.C1 * s.C2, o2 + a * s.C1 * s.C2);
    t += s.C1 * s.C2;
    std::copy(t, t + s.C2, o3 + a * s.C2);
  }
  return py::make_tuple(want_gx ? py::object(gx_arr) : py::object(py::none()), gw0, gb0, gw1, gb1);
}

// ---------------------------------------------------------------- row subsets (nn/row_subset.py)
//
// Training decodes random runs of voxels: the point-wise layers read the inverse transform's
// output [A, N, C] on in_rows, the skip path on rows (both strictly increasing).  gather_rows
// copies attributes [a0, a1) on both; scatter_rows writes the gradient of those attributes of
// the whole output, gx on in_rows plus gs on rows and zero elsewhere, each element once (no
// zero fill, no scattered read-modify-write as in index_add_).  Work is split by attribute and
// fixed blocks of rows, with no sum across them: the same bits on any thread count, and the same
// as the torch reference (zeros, index_copy_ of gx, index_add_ of gs).

constexpr int64_t kRowBlock = 8192;

void check_rows(const char* what, const I64& rows, int64_t n) {
  if (rows.ndim() != 1) throw std::invalid_argument(std::string(what) + ": rows must be 1-D");
  const int64_t* r = rows.data();
  for (int64_t i = 0; i < rows.shape(0); ++i)
    if (r[i] < 0 || r[i] >= n || (i && r[i] <= r[i - 1]))
      throw std::invalid_argument(std::string(what) + ": rows must be strictly increasing in [0, " + std::to_string(n) +
                                  ")");
}

// src [A, N, C] -> (src[a0:a1, in_rows], src[a0:a1, rows])
py::tuple gather_rows(F32 src, I64 in_rows, I64 rows, int64_t a0, int64_t a1, int threads) {
  if (src.ndim() != 3) throw std::invalid_argument("gather_rows: src must be [A, N, C]");
  const int64_t A = src.shape(0), N = src.shape(1), C = src.shape(2);
  if (a0 < 0 || a1 < a0 || a1 > A) throw std::invalid_argument("gather_rows: attributes out of range");
  check_rows("gather_rows", in_rows, N);
  check_rows("gather_rows", rows, N);
  const int64_t G = a1 - a0, N2 = in_rows.shape(0), S = rows.shape(0);
  py::array_t<float> x({G, N2, C}), s({G, S, C});
  {
    py::gil_scoped_release release;
    const float* sd = src.data();
    float *xd = x.mutable_data(), *ssd = s.mutable_data();
    const int64_t *ir = in_rows.data(), *rr = rows.data();
    const int64_t bx = (N2 + kRowBlock - 1) / kRowBlock, bs = (S + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for num_threads(std::max(1, threads)) if (threads > 1) schedule(static)
    for (int64_t t = 0; t < G * (bx + bs); ++t) {
      const int64_t a = t / (bx + bs), b = t % (bx + bs);
      const bool second = b >= bx;
      const int64_t* idx = second ? rr : ir;
      const int64_t count = second ? S : N2, lo = (second ? b - bx : b) * kRowBlock;
      const int64_t hi = std::min(count, lo + kRowBlock);
      const float* from = sd + (a0 + a) * N * C;
      float* to = (second ? ssd : xd) + a * count * C;
      for (int64_t i = lo; i < hi; ++i) std::memcpy(to + i * C, from + idx[i] * C, size_t(C) * sizeof(float));
    }
  }
  return py::make_tuple(x, s);
}

// grad [A, N, C] (written for attributes a0 .. a0 + G): gx [G, N2, C] on in_rows plus gs [G, S, C]
// on rows, zero elsewhere
void scatter_rows(py::array_t<float, py::array::c_style> grad, F32 gx, F32 gs, I64 in_rows, I64 rows, int64_t a0,
                  int threads) {
  if (grad.ndim() != 3 || gx.ndim() != 3 || gs.ndim() != 3)
    throw std::invalid_argument("scatter_rows: grad, gx and gs must be 3-D");
  const int64_t A = grad.shape(0), N = grad.shape(1), C = grad.shape(2), G = gx.shape(0);
  check_rows("scatter_rows", in_rows, N);
  check_rows("scatter_rows", rows, N);
  const int64_t N2 = in_rows.shape(0), S = rows.shape(0);
  if (a0 < 0 || a0 + G > A || gx.shape(1) != N2 || gx.shape(2) != C || gs.shape(0) != G || gs.shape(1) != S ||
      gs.shape(2) != C)
    throw std::invalid_argument("scatter_rows: shapes do not fit");
  float* gd = grad.mutable_data();
  {
    py::gil_scoped_release release;
    const float *xd = gx.data(), *sd = gs.data();
    const int64_t *ir = in_rows.data(), *rr = rows.data();
    const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for num_threads(std::max(1, threads)) if (threads > 1) schedule(static)
    for (int64_t t = 0; t < G * blocks; ++t) {
      const int64_t a = t / blocks, lo = (t % blocks) * kRowBlock, hi = std::min(N, lo + kRowBlock);
      int64_t i = std::lower_bound(ir, ir + N2, lo) - ir, j = std::lower_bound(rr, rr + S, lo) - rr;
      float* out = gd + (a0 + a) * N * C;
      const float *xa = xd + a * N2 * C, *sa = sd + a * S * C;
      for (int64_t r = lo; r < hi; ++r) {
        float* o = out + r * C;
        if (i < N2 && ir[i] == r) {
          std::memcpy(o, xa + i * C, size_t(C) * sizeof(float));
          ++i;
        } else {
          std::fill(o, o + C, 0.f);
        }
        if (j < S && rr[j] == r) {
          for (int64_t c = 0; c < C; ++c) o[c] += sa[j * C + c];
          ++j;
        }
      }
    }
  }
}

// ---------------------------------------------------------------- skip path in training (nn/skip_path.py)
//
// out[a, n, j] = dec[n, a, j] + (b[a, j] + sum_c x[a, n, c] w[a, c, j]): the decoder's point-major
// output plus the skip path's per-attribute linear map, attribute-major, in one pass.  Torch
// computes it as a batched product with 3 inputs per output (slow: about 90 ms forward and 190 ms
// backward at 483k voxels), then a transposing copy and an add.  The backward gives the decoder's
// gradient point-major again, the latents', and the map's, whose sums over the points run per
// fixed block of points (a function of N alone) in double and are added in block order: the same
// bits on any thread count.  Training only; decoding keeps torch's products (and their bits).

constexpr int64_t kSkipBlock = 1024;  // points: 1024 x A x d floats of point-major rows stay in L2

void check_skip_shapes(const char* what, int64_t A, int64_t N, int64_t C, int64_t D, const F32& x, const F32& w) {
  if (x.ndim() != 3 || x.shape(0) != A || x.shape(1) != N || x.shape(2) != C || w.ndim() != 3 || w.shape(0) != A ||
      w.shape(1) != C || w.shape(2) != D)
    throw std::invalid_argument(std::string(what) + ": shapes do not fit");
  if (C > kMaxWidth || D > kMaxWidth) throw std::invalid_argument(std::string(what) + ": too many channels");
}

// One block of points [lo, hi) of every attribute; CC, DD: the channel counts when known at
// compile time (the presets' 3 -> 3 and 3 -> 1, unrolled), else 0 and the runtime C, D.
template <int CC, int DD>
void skip_add_block(int64_t A, int64_t N, int64_t C_, int64_t D_, const float* dd, const float* xd, const float* wd,
                    const float* bd, float* od, int64_t lo, int64_t hi) {
  const int64_t C = CC ? CC : C_, D = DD ? DD : D_;
  for (int64_t a = 0; a < A; ++a) {  // the block's point-major rows stay in cache across attributes
    const float *wa = wd + a * C * D, *ba = bd + a * D;
    for (int64_t n = lo; n < hi; ++n) {
      const float* xn = xd + (a * N + n) * C;
      const float* dn = dd + (n * A + a) * D;
      float* o = od + (a * N + n) * D;
      for (int64_t j = 0; j < D; ++j) {
        float acc = ba[j];
        for (int64_t c = 0; c < C; ++c) acc += xn[c] * wa[c * D + j];
        o[j] = dn[j] + acc;
      }
    }
  }
}

// Attribute a of one block: the decoder's gradient (point-major), the latents', and the block's
// sums for the map (part: C x D products, then D biases).
template <int CC, int DD>
void skip_backward_block(int64_t A, int64_t N, int64_t C_, int64_t D_, const float* gd, const float* xd,
                         const float* wd, float* gdd, float* gxd, double* part, int64_t a, int64_t lo, int64_t hi) {
  const int64_t C = CC ? CC : C_, D = DD ? DD : D_;
  const float* wa = wd + a * C * D;
  for (int64_t n = lo; n < hi; ++n) {
    const float* gn = gd + (a * N + n) * D;
    const float* xn = xd + (a * N + n) * C;
    float* gxn = gxd + (a * N + n) * C;
    float* gdn = gdd + (n * A + a) * D;
    for (int64_t j = 0; j < D; ++j) {
      gdn[j] = gn[j];
      part[C * D + j] += gn[j];
    }
    for (int64_t c = 0; c < C; ++c) {
      float acc = 0.f;
      for (int64_t j = 0; j < D; ++j) {
        acc += gn[j] * wa[c * D + j];
        part[c * D + j] += double(xn[c]) * double(gn[j]);
      }
      gxn[c] = acc;
    }
  }
}

// dec [N, A, D], x [A, N, C], w [A, C, D], b [A, 1, D] -> out [A, N, D]
py::array_t<float> skip_add(F32 dec, F32 x, F32 w, F32 b, int threads) {
  if (dec.ndim() != 3 || b.ndim() != 3) throw std::invalid_argument("skip_add: dec and b must be 3-D");
  const int64_t N = dec.shape(0), A = dec.shape(1), D = dec.shape(2), C = x.ndim() == 3 ? x.shape(2) : 0;
  check_skip_shapes("skip_add", A, N, C, D, x, w);
  if (b.shape(0) != A || b.shape(1) != 1 || b.shape(2) != D) throw std::invalid_argument("skip_add: shapes do not fit");
  py::array_t<float> out({A, N, D});
  {
    py::gil_scoped_release release;
    const float *dd = dec.data(), *xd = x.data(), *wd = w.data(), *bd = b.data();
    float* od = out.mutable_data();
    const auto run = C == 3 && D == 3 ? skip_add_block<3, 3> : C == 3 && D == 1 ? skip_add_block<3, 1>
                                                                                : skip_add_block<0, 0>;
    const int64_t blocks = (N + kSkipBlock - 1) / kSkipBlock;
#pragma omp parallel for num_threads(std::max(1, threads)) if (threads > 1) schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk)
      run(A, N, C, D, dd, xd, wd, bd, od, blk * kSkipBlock, std::min(N, (blk + 1) * kSkipBlock));
  }
  return out;
}

// g [A, N, D], x [A, N, C], w [A, C, D] -> (g_dec [N, A, D], gx [A, N, C], gw [A, C, D], gb [A, 1, D])
py::tuple skip_add_backward(F32 g, F32 x, F32 w, int threads) {
  if (g.ndim() != 3) throw std::invalid_argument("skip_add_backward: g must be [A, N, D]");
  const int64_t A = g.shape(0), N = g.shape(1), D = g.shape(2), C = x.ndim() == 3 ? x.shape(2) : 0;
  check_skip_shapes("skip_add_backward", A, N, C, D, x, w);
  const int64_t blocks = (N + kSkipBlock - 1) / kSkipBlock, P = C * D + D;  // per attribute: gw, gb
  py::array_t<float> g_dec({N, A, D}), gx({A, N, C}), gw({A, C, D}), gb({A, int64_t(1), D});
  std::vector<double> parts(size_t(A * blocks * P), 0.0);
  {
    py::gil_scoped_release release;
    const float *gd = g.data(), *xd = x.data(), *wd = w.data();
    float *gdd = g_dec.mutable_data(), *gxd = gx.mutable_data();
    const auto run = C == 3 && D == 3 ? skip_backward_block<3, 3> : C == 3 && D == 1 ? skip_backward_block<3, 1>
                                                                                     : skip_backward_block<0, 0>;
#pragma omp parallel for num_threads(std::max(1, threads)) if (threads > 1) schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk)  // block-major: its point-major rows stay in cache
      for (int64_t a = 0; a < A; ++a)
        run(A, N, C, D, gd, xd, wd, gdd, gxd, parts.data() + (blk * A + a) * P, a, blk * kSkipBlock,
            std::min(N, (blk + 1) * kSkipBlock));
    float *gwd = gw.mutable_data(), *gbd = gb.mutable_data();
    for (int64_t a = 0; a < A; ++a) {
      std::vector<double> total(size_t(P), 0.0);
      for (int64_t blk = 0; blk < blocks; ++blk)
        for (int64_t i = 0; i < P; ++i) total[size_t(i)] += parts[size_t((blk * A + a) * P + i)];
      for (int64_t i = 0; i < C * D; ++i) gwd[a * C * D + i] = float(total[size_t(i)]);
      for (int64_t j = 0; j < D; ++j) gbd[a * D + j] = float(total[size_t(C * D + j)]);
    }
  }
  return py::make_tuple(g_dec, gx, gw, gb);
}

// ---------------------------------------------------------------- neighbour maps (nn/neighbors.py)

// NeighborMap.from_neighbour_rows: rows [N, 26] (-1: empty) -> table [N, 27] with column k =
// rows[:, perm[k]] for k != 13, the identity at 13 and N for an empty neighbour; and in the same
// pass the map's neighbour pairs as conv_pairs(table, N, skip_center=true) returns them.
py::tuple neighbour_table(I64 rows_in, I64 perm_in) {
  if (rows_in.ndim() != 2 || rows_in.shape(1) != 26 || perm_in.ndim() != 1 || perm_in.shape(0) != 26)
    throw std::invalid_argument("neighbour_table: rows must be [N, 26] and perm [26]");
  const int64_t n = rows_in.shape(0);
  const int64_t* rows = rows_in.data();
  const int64_t* perm = perm_in.data();
  for (int k = 0; k < 26; ++k)
    if (perm[k] < 0 || perm[k] >= 26) throw std::invalid_argument("neighbour_table: perm out of range");
  I64 table({n, int64_t(27)});
  int64_t* t = table.mutable_data();
  std::vector<std::vector<int64_t>> in_k(27), out_k(27);  // the pairs of each kernel offset
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* r = rows + i * 26;
    int64_t* o = t + i * 27;
    for (int k = 0, j = 0; k < 27; ++k) {
      if (k == 13) {
        o[k] = i;
        continue;
      }
      const int64_t v = r[perm[j++]];
      bad |= (v < -1) | (v >= n);
      if (v >= 0) {
        o[k] = v;
        in_k[k].push_back(v);
        out_k[k].push_back(i);
      } else {
        o[k] = n;
      }
    }
  }
  if (bad) throw std::invalid_argument("neighbour_table: neighbour rows must lie in [-1, N)");
  I64 starts(28);
  int64_t* st = starts.mutable_data();
  st[0] = 0;
  for (int k = 0; k < 27; ++k) st[k + 1] = st[k] + int64_t(in_k[k].size());
  I64 in_rows(st[27]), out_rows(st[27]);
  for (int k = 0; k < 27; ++k) {
    std::copy(in_k[k].begin(), in_k[k].end(), in_rows.mutable_data() + st[k]);
    std::copy(out_k[k].begin(), out_k[k].end(), out_rows.mutable_data() + st[k]);
  }
  return py::make_tuple(table, in_rows, out_rows, starts);
}

// NeighborMap.subset_plan (nn/neighbors.py): table [N, 27] (N: empty), out_rows [S] (strictly
// increasing) -> (in_rows [N2], mid_rows [N1], fwd0 [N1, 27], fwd1 [S, 27]): mid_rows are
// out_rows and their neighbours, in_rows mid_rows and theirs (both sorted), fwd1 maps each output
// row's neighbours to positions in mid_rows and fwd0 each mid row's to positions in in_rows
// (N1, N2: empty).  Marks in arrays of N bytes where the torch version sorts millions of rows.
py::tuple subset_plan(I64 table_in, I64 out_rows_in, int threads) {
  if (table_in.ndim() != 2 || table_in.shape(1) != 27) throw std::invalid_argument("subset_plan: table must be [N, 27]");
  const int64_t N = table_in.shape(0);
  check_rows("subset_plan", out_rows_in, N);
  const int64_t* table = table_in.data();
  const int64_t* out_rows = out_rows_in.data();
  const int64_t S = out_rows_in.shape(0);
  std::vector<int64_t> mid, inn;
  std::vector<int64_t> pos_mid(size_t(N) + 1), pos_in(size_t(N) + 1);
  {
    py::gil_scoped_release release;
    std::vector<uint8_t> mark(size_t(N) + 1, 0);
    auto dilate = [&](const int64_t* rows, int64_t count, std::vector<int64_t>& out, std::vector<int64_t>& pos) {
      std::fill(mark.begin(), mark.end(), 0);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t* t = table + rows[i] * 27;
        for (int k = 0; k < 27; ++k) {
          if (t[k] < 0 || t[k] > N) throw std::invalid_argument("subset_plan: table entries must lie in [0, N]");
          mark[size_t(t[k])] = 1;
        }
      }
      mark[size_t(N)] = 0;
      for (int64_t r = 0; r < N; ++r)
        if (mark[size_t(r)]) {
          pos[size_t(r)] = int64_t(out.size());
          out.push_back(r);
        }
      pos[size_t(N)] = int64_t(out.size());  // the empty neighbour: one past the last row
    };
    dilate(out_rows, S, mid, pos_mid);
    dilate(mid.data(), int64_t(mid.size()), inn, pos_in);
  }
  const int64_t N1 = int64_t(mid.size()), N2 = int64_t(inn.size());
  I64 in_rows(N2), mid_rows(N1), fwd0({N1, int64_t(27)}), fwd1({S, int64_t(27)});
  std::copy(inn.begin(), inn.end(), in_rows.mutable_data());
  std::copy(mid.begin(), mid.end(), mid_rows.mutable_data());
  {
    py::gil_scoped_release release;
    int64_t *f0 = fwd0.mutable_data(), *f1 = fwd1.mutable_data();
    const int64_t* m = mid.data();
#pragma omp parallel for num_threads(std::max(1, threads)) if (threads > 1) schedule(static)
    for (int64_t i = 0; i < N1 + S; ++i) {
      const bool second = i >= N1;
      const int64_t row = second ? out_rows[i - N1] : m[i];
      const std::vector<int64_t>& pos = second ? pos_mid : pos_in;
      int64_t* f = second ? f1 + (i - N1) * 27 : f0 + i * 27;
      const int64_t* t = table + row * 27;
      for (int k = 0; k < 27; ++k) f[k] = pos[size_t(t[k])];
    }
  }
  return py::make_tuple(in_rows, mid_rows, fwd0, fwd1);
}

// ConvMap.pair_plan's pairs: fwd [N_out, 27] (num_in: empty) -> input rows, output rows (sorted by
// kernel offset, then output row) and starts [28] of each offset; the zero offset left out when
// skip_center.
py::tuple conv_pairs(I64 fwd_in, int64_t num_in, bool skip_center) {
  if (fwd_in.ndim() != 2 || fwd_in.shape(1) != 27) throw std::invalid_argument("conv_pairs: fwd must be [N, 27]");
  const int64_t n = fwd_in.shape(0);
  const int64_t* fwd = fwd_in.data();
  std::vector<int64_t> count(27, 0);
  for (int64_t i = 0; i < n; ++i)
    for (int k = 0; k < 27; ++k) {
      const int64_t v = fwd[i * 27 + k];
      if (v < 0 || v > num_in) throw std::invalid_argument("conv_pairs: fwd entries must lie in [0, num_in]");
      count[k] += v < num_in;
    }
  if (skip_center) count[13] = 0;
  I64 starts(28);
  int64_t* st = starts.mutable_data();
  st[0] = 0;
  for (int k = 0; k < 27; ++k) st[k + 1] = st[k] + count[k];
  const int64_t total = st[27];
  I64 in_rows(total), out_rows(total);
  int64_t* ir = in_rows.mutable_data();
  int64_t* orow = out_rows.mutable_data();
  std::vector<int64_t> pos(st, st + 27);
  for (int64_t i = 0; i < n; ++i)
    for (int k = 0; k < 27; ++k) {
      const int64_t v = fwd[i * 27 + k];
      if (v < num_in && !(skip_center && k == 13)) {
        const int64_t p = pos[k]++;
        ir[p] = v;
        orow[p] = i;
      }
    }
  return py::make_tuple(in_rows, out_rows, starts);
}

// A stable counting sort of rows [P] (each in [0, num_rows)): the permutation and the start of
// each row's run, what embedding_bag sums over.
py::tuple bags(I64 rows_in, int64_t num_rows) {
  if (rows_in.ndim() != 1 || num_rows < 0) throw std::invalid_argument("bags: rows must be [P]");
  const int64_t p = rows_in.shape(0);
  const int64_t* rows = rows_in.data();
  I64 offsets(num_rows), order(p);
  int64_t* off = offsets.mutable_data();
  int64_t* ord = order.mutable_data();
  std::fill(off, off + num_rows, 0);
  for (int64_t i = 0; i < p; ++i) {
    if (rows[i] < 0 || rows[i] >= num_rows) throw std::invalid_argument("bags: rows out of range");
    if (rows[i] + 1 < num_rows) ++off[rows[i] + 1];
  }
  for (int64_t r = 1; r < num_rows; ++r) off[r] += off[r - 1];
  std::vector<int64_t> pos(off, off + num_rows);
  for (int64_t i = 0; i < p; ++i) ord[pos[rows[i]]++] = i;
  return py::make_tuple(order, offsets);
}

// ---------------------------------------------------------------- grouped 3x3x3 convolution (nn/grouped_decoder.py)
//
// out[n, a, :] = sum_k x[fwd[n, k], a, :] @ kernel[a, k] over the occupied neighbours
// (fwd[n, k] == num_in: empty), x [N_in, A, C_in] and out [N_out, A, C_out] point-major, kernel
// [A, 27, C_in, C_out].  Why: torch gathers each offset's input rows, multiplies them by the
// block-diagonal [A * C_in, A * C_out] kernel (A times the arithmetic) and sums the products into
// their rows with embedding_bag: about 30 ms forward and 42 ms backward per convolution at 483k
// voxels, a fifth of a training step.  Here each output row sums its neighbours in registers.
//
// Order of operations (the same bits on any thread count): an output row adds its neighbours in
// kernel order; an input row's gradient adds the pairs that read it in the order of the reverse
// map (output row, then offset); the kernel's gradient sums fixed blocks of output rows (a
// function of N_out alone) in float and adds the blocks in order in double.  Torch's order is
// another, so the two agree to float rounding (tests/test_grouped_conv_native.py).

constexpr int64_t kConvBlock = 4096;  // output rows per block of the kernel's gradient

struct ConvShape {
  int64_t n_in, n_out, A, C_in, C_out;
};

ConvShape check_conv(const char* what, const F32& x, const F32& kernel, const I64& fwd, int64_t num_in) {
  if (x.ndim() != 3 || kernel.ndim() != 4 || fwd.ndim() != 2 || fwd.shape(1) != 27)
    throw std::invalid_argument(std::string(what) + ": need x [N_in, A, C_in], kernel [A, 27, C_in, C_out], fwd [N_out, 27]");
  ConvShape c{x.shape(0), fwd.shape(0), x.shape(1), x.shape(2), kernel.shape(3)};
  if (kernel.shape(0) != c.A || kernel.shape(1) != 27 || kernel.shape(2) != c.C_in)
    throw std::invalid_argument(std::string(what) + ": kernel [" + std::to_string(kernel.shape(0)) + ", " +
                                std::to_string(kernel.shape(1)) + ", " + std::to_string(kernel.shape(2)) +
                                ", C_out] does not fit x [N_in, " + std::to_string(c.A) + ", " + std::to_string(c.C_in) + "]");
  if (num_in != c.n_in)
    throw std::invalid_argument(std::string(what) + ": the map reads " + std::to_string(num_in) + " input rows, x has " +
                                std::to_string(c.n_in));
  return c;
}

// The loops below check each fwd entry and reverse pair as they read it (no pass of its own) and
// throw this after the parallel region.
void refuse_bad_map(bool bad, const char* what) {
  if (bad)
    throw std::invalid_argument(std::string(what) + ": fwd entries must lie in [0, num_in] and the reverse map's "
                                "pairs in fwd");
}

// fwd [N_out, 27] -> (offsets [N_in + 1], pairs [P] = n * 27 + k): the pairs reading each input
// row, by output row then offset (a counting sort)
py::tuple conv_reverse(I64 fwd_in, int64_t num_in, int threads) {
  if (fwd_in.ndim() != 2 || fwd_in.shape(1) != 27 || num_in < 0)
    throw std::invalid_argument("conv_reverse: fwd must be [N_out, 27]");
  const int64_t n_out = fwd_in.shape(0);
  const int64_t* fwd = fwd_in.data();
  // Each thread counts, then places, the pairs of its own contiguous rows; a row's pairs go
  // after those of the earlier threads' rows: the serial order on any thread count.
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(threads, (n_out + kConvBlock - 1) / kConvBlock));
  std::vector<int64_t> count(size_t(T * (num_in + 1)), 0);  // [T, N_in + 1]
  I64 offsets(num_in + 1);
  int64_t* off = offsets.mutable_data();
  bool bad = false;
  {
    py::gil_scoped_release release;
#pragma omp parallel for num_threads(int(T)) if (T > 1) schedule(static, 1) reduction(|| : bad)
    for (int64_t t = 0; t < T; ++t) {
      int64_t* ct = count.data() + t * (num_in + 1);
      for (int64_t i = n_out * t / T * 27; i < n_out * (t + 1) / T * 27; ++i) {
        const int64_t m = fwd[i];
        if (m < 0 || m > num_in)
          bad = true;
        else if (m < num_in)
          ++ct[m];
      }
    }
  }
  if (bad) throw std::invalid_argument("conv_reverse: fwd entries must lie in [0, num_in]");
  off[0] = 0;
  for (int64_t m = 0; m < num_in; ++m) {  // the thread counts become each thread's start in row m
    int64_t at = off[m];
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = count[t * (num_in + 1) + m];
      count[t * (num_in + 1) + m] = at;
      at += n;
    }
    off[m + 1] = at;
  }
  I64 pairs(off[num_in]);
  int64_t* pr = pairs.mutable_data();
  {
    py::gil_scoped_release release;
#pragma omp parallel for num_threads(int(T)) if (T > 1) schedule(static, 1)
    for (int64_t t = 0; t < T; ++t) {
      int64_t* pos = count.data() + t * (num_in + 1);
      for (int64_t i = n_out * t / T * 27; i < n_out * (t + 1) / T * 27; ++i)
        if (fwd[i] < num_in) pr[pos[fwd[i]]++] = i;
    }
  }
  return py::make_tuple(offsets, pairs);
}

// visit(k, m) for output row n's occupied neighbours m, in kernel order; an entry outside
// [0, num_in] sets bad (refuse_bad_map throws after the parallel region)
template <typename Visit>
inline void for_each_neighbour(const int64_t* f, int64_t n, int64_t num_in, bool& bad, Visit&& visit) {
  for (int k = 0; k < 27; ++k) {
    const int64_t m = f[n * 27 + k];
    if (m == num_in) continue;
    if (m < 0 || m > num_in) {
      bad = true;
      continue;
    }
    visit(k, m);
  }
}

// The kernel as [27, A, C_in, C_out]: one offset's A small matrices in a row.
std::vector<float> offset_major(const float* w, const ConvShape& c) {
  const int64_t block = c.C_in * c.C_out;
  std::vector<float> out(static_cast<size_t>(27 * c.A * block));
  for (int64_t a = 0; a < c.A; ++a)
    for (int64_t k = 0; k < 27; ++k)
      std::memcpy(out.data() + (k * c.A + a) * block, w + (a * 27 + k) * block, size_t(block) * sizeof(float));
  return out;
}

// The per-pair products, for all A attributes of a row.  CI, CO > 0: channel counts fixed at
// compile time (the loops unrolled), 0: read from ci, co.
template <int CI, int CO>
struct PairKernels {
  // acc[a, o] += sum_c x[a, c] w[a, c, o]   (w: one offset's [A, C_in, C_out])
  static void forward(const float* x, const float* w, float* acc, int64_t A, int64_t ci_rt, int64_t co_rt) {
    const int64_t ci = CI > 0 ? CI : ci_rt, co = CO > 0 ? CO : co_rt;
    for (int64_t a = 0; a < A; ++a, x += ci, w += ci * co, acc += co)
      for (int64_t i = 0; i < ci; ++i)
        for (int64_t o = 0; o < co; ++o) acc[o] += x[i] * w[i * co + o];
  }
  // gx[a, c] += sum_o g[a, o] w[a, c, o]
  static void input_grad(const float* g, const float* w, float* gx, int64_t A, int64_t ci_rt, int64_t co_rt) {
    const int64_t ci = CI > 0 ? CI : ci_rt, co = CO > 0 ? CO : co_rt;
    for (int64_t a = 0; a < A; ++a, g += co, w += ci * co, gx += ci)
      for (int64_t i = 0; i < ci; ++i) {
        float s = 0.f;
        for (int64_t o = 0; o < co; ++o) s += g[o] * w[i * co + o];
        gx[i] += s;
      }
  }
  // gw[a, c, o] += x[a, c] g[a, o]
  static void kernel_grad(const float* x, const float* g, float* gw, int64_t A, int64_t ci_rt, int64_t co_rt) {
    const int64_t ci = CI > 0 ? CI : ci_rt, co = CO > 0 ? CO : co_rt;
    for (int64_t a = 0; a < A; ++a, x += ci, g += co, gw += ci * co)
      for (int64_t i = 0; i < ci; ++i)
        for (int64_t o = 0; o < co; ++o) gw[i * co + o] += x[i] * g[o];
  }
};

using PairFn = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t);
struct PairFns {
  PairFn forward, input_grad, kernel_grad;
};

template <int CI, int CO>
PairFns pair_fns() {
  return {&PairKernels<CI, CO>::forward, &PairKernels<CI, CO>::input_grad, &PairKernels<CI, CO>::kernel_grad};
}

// The decoders' shapes (hidden_linear[1] -> hidden_conv -> out: 4 -> 2 -> 3 and 1 by default)
// unrolled; any other at run time.
PairFns choose_pair_fns(int64_t ci, int64_t co) {
  if (ci == 4 && co == 2) return pair_fns<4, 2>();
  if (ci == 2 && co == 3) return pair_fns<2, 3>();
  if (ci == 2 && co == 1) return pair_fns<2, 1>();
  if (ci == 4 && co == 4) return pair_fns<4, 4>();
  if (ci == 4 && co == 3) return pair_fns<4, 3>();
  if (ci == 4 && co == 1) return pair_fns<4, 1>();
  return pair_fns<0, 0>();
}

// bias: [A, C_out] added to each row after its sum (the same bits as adding it afterwards), or None
py::array_t<float> grouped_conv(F32 x, F32 kernel, I64 fwd, int64_t num_in, py::object bias_obj, int threads) {
  const ConvShape c = check_conv("grouped_conv", x, kernel, fwd, num_in);
  std::vector<float> bias;
  if (!bias_obj.is_none()) {
    const F32 b = bias_obj.cast<F32>();
    if (b.size() != c.A * c.C_out)
      throw std::invalid_argument("grouped_conv: the bias must hold A x C_out = " + std::to_string(c.A * c.C_out) +
                                  " values, got " + std::to_string(b.size()));
    bias.assign(b.data(), b.data() + b.size());
  }
  py::array_t<float> out({c.n_out, c.A, c.C_out});
  bool bad = false;
  {
    py::gil_scoped_release release;
    const std::vector<float> wk = offset_major(kernel.data(), c);
    const PairFns fns = choose_pair_fns(c.C_in, c.C_out);
    const float* xd = x.data();
    const int64_t* f = fwd.data();
    float* od = out.mutable_data();
    const int64_t width_in = c.A * c.C_in, width_out = c.A * c.C_out, per_offset = c.A * c.C_in * c.C_out;
#pragma omp parallel for num_threads(std::max(1, threads)) if (threads > 1) schedule(static) reduction(|| : bad)
    for (int64_t n = 0; n < c.n_out; ++n) {
      float* acc = od + n * width_out;
      std::fill(acc, acc + width_out, 0.f);
      for_each_neighbour(f, n, num_in, bad, [&](int k, int64_t m) {
        fns.forward(xd + m * width_in, wk.data() + k * per_offset, acc, c.A, c.C_in, c.C_out);
      });
      if (!bias.empty())
        for (int64_t j = 0; j < width_out; ++j) acc[j] += bias[size_t(j)];
    }
  }
  refuse_bad_map(bad, "grouped_conv");
  return out;
}

// -> (grad x [N_in, A, C_in] or None, grad kernel [A, 27, C_in, C_out] or None); rev_offsets and
// rev_pairs: conv_reverse(fwd, num_in)
py::tuple grouped_conv_backward(F32 x, F32 kernel, I64 fwd, int64_t num_in, F32 g, I64 rev_offsets, I64 rev_pairs,
                                bool want_x, bool want_kernel, int threads) {
  const ConvShape c = check_conv("grouped_conv_backward", x, kernel, fwd, num_in);
  if (g.ndim() != 3 || g.shape(0) != c.n_out || g.shape(1) != c.A || g.shape(2) != c.C_out)
    throw std::invalid_argument("grouped_conv_backward: the gradient must be [N_out, A, C_out]");
  if (rev_offsets.ndim() != 1 || rev_offsets.shape(0) != num_in + 1 || rev_pairs.ndim() != 1)
    throw std::invalid_argument("grouped_conv_backward: the reverse map must be conv_reverse(fwd, num_in)");
  const int64_t* ro = rev_offsets.data();
  const int64_t* rp = rev_pairs.data();
  if (ro[0] != 0 || ro[num_in] != rev_pairs.shape(0))
    throw std::invalid_argument("grouped_conv_backward: the reverse map's offsets do not span its pairs");
  bool bad = false;
  const int64_t width_in = c.A * c.C_in, width_out = c.A * c.C_out, per_offset = c.A * c.C_in * c.C_out;
  const int64_t kernel_size = 27 * per_offset;
  py::object gx_obj = py::none(), gw_obj = py::none();
  py::array_t<float> gx, gw;
  if (want_x) {
    gx = py::array_t<float>({c.n_in, c.A, c.C_in});
    gx_obj = gx;
  }
  if (want_kernel) {
    gw = py::array_t<float>({c.A, int64_t(27), c.C_in, c.C_out});
    gw_obj = gw;
  }
  {
    py::gil_scoped_release release;
    const std::vector<float> wk = offset_major(kernel.data(), c);
    const PairFns fns = choose_pair_fns(c.C_in, c.C_out);
    const float *xd = x.data(), *gd = g.data();
    const int64_t* f = fwd.data();
    const int nt = std::max(1, threads);
    if (want_x) {
      float* gxd = gx.mutable_data();
      const int64_t num_pairs = rev_pairs.shape(0);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static) reduction(|| : bad)
      for (int64_t m = 0; m < c.n_in; ++m) {
        float* row = gxd + m * width_in;
        std::fill(row, row + width_in, 0.f);
        if (ro[m] > ro[m + 1] || ro[m + 1] > num_pairs) {
          bad = true;
          continue;
        }
        for (int64_t p = ro[m]; p < ro[m + 1]; ++p) {
          if (rp[p] < 0 || rp[p] >= c.n_out * 27 || f[rp[p]] != m) {
            bad = true;
            continue;
          }
          fns.input_grad(gd + (rp[p] / 27) * width_out, wk.data() + (rp[p] % 27) * per_offset, row, c.A, c.C_in,
                         c.C_out);
        }
      }
    }
    if (want_kernel) {
      const int64_t blocks = (c.n_out + kConvBlock - 1) / kConvBlock;
      std::vector<float> partial(size_t(blocks * kernel_size), 0.f);  // per block, offset-major
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static) reduction(|| : bad)
      for (int64_t b = 0; b < blocks; ++b) {
        float* pw = partial.data() + b * kernel_size;
        const int64_t hi = std::min(c.n_out, (b + 1) * kConvBlock);
        for (int64_t n = b * kConvBlock; n < hi; ++n)
          for_each_neighbour(f, n, num_in, bad, [&](int k, int64_t m) {
            fns.kernel_grad(xd + m * width_in, gd + n * width_out, pw + k * per_offset, c.A, c.C_in, c.C_out);
          });
      }
      std::vector<double> total(size_t(kernel_size), 0.0);
      for (int64_t b = 0; b < blocks; ++b)
        for (int64_t i = 0; i < kernel_size; ++i) total[i] += partial[b * kernel_size + i];
      float* gwd = gw.mutable_data();  // back to [A, 27, C_in, C_out]
      const int64_t block = c.C_in * c.C_out;
      for (int64_t k = 0; k < 27; ++k)
        for (int64_t a = 0; a < c.A; ++a)
          for (int64_t i = 0; i < block; ++i) gwd[(a * 27 + k) * block + i] = float(total[(k * c.A + a) * block + i]);
    }
  }
  refuse_bad_map(bad, "grouped_conv_backward");
  return py::make_tuple(gx_obj, gw_obj);
}

}  // namespace

PYBIND11_MODULE(_decode_cpu, m) {
  m.attr("API_VERSION") = 5;  // bumped whenever the Python side calls it differently (ralhe_me/native.py)
  m.doc() = "Kernels of the attribute synthesis: the inverse RAHT in place, neighbour-map and pair-plan helpers.";
  m.def("raht_plan", &raht_plan, py::arg("coords"), py::arg("depth"));
  m.def("raht_pairs", &raht_pairs, py::arg("num_points"), py::arg("stage_starts"), py::arg("stage_left"));
  m.def("inverse_raht", &inverse_raht_any, py::arg("columns"), py::arg("left"), py::arg("right"), py::arg("a"),
        py::arg("b"), py::arg("order"), py::arg("steps"), py::arg("threads") = 1);
  m.def("raht_adjoint", &raht_adjoint_any, py::arg("grad"), py::arg("left"), py::arg("right"), py::arg("a"),
        py::arg("b"), py::arg("order"), py::arg("steps"), py::arg("threads") = 1);
  m.def("mlp_supported", &mlp_supported);
  m.def("pointwise_mlp", &pointwise_mlp, py::arg("x"), py::arg("w0"), py::arg("b0"), py::arg("w1"), py::arg("b1"),
        py::arg("y"), py::arg("rows"));
  m.def("pointwise_mlp_backward", &pointwise_mlp_backward, py::arg("x"), py::arg("w0"), py::arg("b0"), py::arg("w1"),
        py::arg("y"), py::arg("gy"), py::arg("want_gx"), py::arg("threads") = 1);
  m.def("neighbour_table", &neighbour_table, py::arg("rows"), py::arg("perm"));
  m.def("conv_pairs", &conv_pairs, py::arg("fwd"), py::arg("num_in"), py::arg("skip_center"));
  m.def("bags", &bags, py::arg("rows"), py::arg("num_rows"));
  m.def("skip_add", &skip_add, py::arg("dec"), py::arg("x"), py::arg("w"), py::arg("b"), py::arg("threads") = 1);
  m.def("skip_add_backward", &skip_add_backward, py::arg("g"), py::arg("x"), py::arg("w"), py::arg("threads") = 1);
  m.def("subset_plan", &subset_plan, py::arg("table"), py::arg("out_rows"), py::arg("threads") = 1);
  m.def("gather_rows", &gather_rows, py::arg("src"), py::arg("in_rows"), py::arg("rows"), py::arg("a0"), py::arg("a1"),
        py::arg("threads") = 1);
  m.def("scatter_rows", &scatter_rows, py::arg("grad"), py::arg("gx"), py::arg("gs"), py::arg("in_rows"),
        py::arg("rows"), py::arg("a0"), py::arg("threads") = 1);
  m.def("conv_reverse", &conv_reverse, py::arg("fwd"), py::arg("num_in"), py::arg("threads") = 1);
  m.def("grouped_conv", &grouped_conv, py::arg("x"), py::arg("kernel"), py::arg("fwd"), py::arg("num_in"),
        py::arg("bias") = py::none(), py::arg("threads") = 1);
  m.def("grouped_conv_backward", &grouped_conv_backward, py::arg("x"), py::arg("kernel"), py::arg("fwd"),
        py::arg("num_in"), py::arg("g"), py::arg("rev_offsets"), py::arg("rev_pairs"), py::arg("want_x"),
        py::arg("want_kernel"), py::arg("threads") = 1);
}
