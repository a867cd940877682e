// Native kernels of the attribute synthesis (ralhe_me/synthesis.py), for decoding (no autograd):
// the inverse RAHT in place, the decoders' point-wise layers, and the index helpers of the 3x3x3
// neighbour maps (nn/neighbors.py).  Each has a torch/numpy reference in Python with the same
// results bit for bit, used where this module is not built; tests compare the two.
//
// inverse_raht: the inverse RAHT of ralhe_me/nn/inverse_raht.py (InverseRaht.__call__, the torch
// reference, which training differentiates) with the same floating-point operations on the same
// operands:
//
//   low = v[pair_out];  prev[left] = a * low - b * high;  prev[left + 1] = b * low + a * high
//
// with a and b rounded to the data's type first, each product rounded, then the difference/sum
// rounded (this file is compiled with -ffp-contract=off: no fused multiply-adds unless written).
// Nothing is reduced, so the thread count cannot matter either.
//
// Layout.  The torch version builds each step's node array anew (rows sorted by transform code,
// singletons copied down).  Here every node lives for good in the row of its first point (its
// first leaf in transform-code order): a merged node and its left child share that row, and the
// right child's row is its own first leaf, written by the butterfly that creates it.  A
// butterfly then touches only the two rows of its pair and singletons never move: the whole
// transform runs in one [M, X] buffer.  The butterflies run in coefficient order (coarsest step
// first), reading the high-pass coefficients in blocks transposed into a small tile.  raht_plan
// (from the points) or raht_pairs (from a RahtPlan) give the (left, right) rows of every merge.
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

namespace py = pybind11;

namespace {

using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;

// (left, right) first-leaf rows of every merge, coarsest step first.  stage_starts / stage_left:
// the plan's steps in forward order (finest first), as RahtStep.starts and RahtStep.left.
py::tuple raht_pairs(int64_t num_points, const std::vector<I64>& stage_starts, const std::vector<I64>& stage_left) {
  if (num_points < 1) throw std::invalid_argument("raht_pairs: empty point set");
  if (stage_starts.size() != stage_left.size()) throw std::invalid_argument("raht_pairs: starts / left count differ");
  const size_t S = stage_starts.size();
  std::vector<int64_t> leaf(num_points), next;
  for (int64_t i = 0; i < num_points; ++i) leaf[i] = i;
  std::vector<std::vector<int64_t>> ls(S), rs(S);
  int64_t total = 0;
  for (size_t s = 0; s < S; ++s) {
    const int64_t n_in = int64_t(leaf.size());
    auto st = stage_starts[s].unchecked<1>();
    auto lf = stage_left[s].unchecked<1>();
    const int64_t n_out = st.shape(0), np = lf.shape(0);
    if (n_out + np != n_in) throw std::invalid_argument("raht_pairs: step " + std::to_string(s) + " does not merge its nodes");
    ls[s].resize(np);
    rs[s].resize(np);
    for (int64_t p = 0; p < np; ++p) {
      const int64_t l = lf(p);
      if (l < 0 || l + 1 >= n_in || (p > 0 && l <= lf(p - 1) + 1)) throw std::invalid_argument("raht_pairs: invalid pair");
      ls[s][p] = leaf[l];
      rs[s][p] = leaf[l + 1];
    }
    next.resize(n_out);
    int64_t prev = -1;
    for (int64_t j = 0; j < n_out; ++j) {
      const int64_t i = st(j);
      if (i <= prev || i >= n_in) throw std::invalid_argument("raht_pairs: invalid group starts");
      next[j] = leaf[i];
      prev = i;
    }
    leaf.swap(next);
    total += np;
  }
  if (leaf.size() != 1 || total != num_points - 1) throw std::invalid_argument("raht_pairs: the steps do not end in one node");
  I64 left(total), right(total);
  int64_t* lo = left.mutable_data();
  int64_t* ro = right.mutable_data();
  int64_t k = 0;
  for (size_t s = S; s-- > 0;) {
    std::copy(ls[s].begin(), ls[s].end(), lo + k);
    std::copy(rs[s].begin(), rs[s].end(), ro + k);
    k += int64_t(ls[s].size());
  }
  // every row but the DC's is the right child of exactly one merge
  std::vector<char> seen(num_points, 0);
  for (int64_t g = 0; g < total; ++g) {
    if (ro[g] <= 0 || ro[g] >= num_points || seen[ro[g]]) throw std::invalid_argument("raht_pairs: right rows are not a permutation");
    seen[ro[g]] = 1;
  }
  return py::make_tuple(left, right);
}

// The inverse plan straight from the points (what build_plan + raht_pairs give, without the
// per-step arrays training needs): coords int64 [M, 3] (unique, in [0, 2^depth)) -> the (left,
// right) rows and weights a, b of every merge, coarsest step first, and the points' order by
// transform code.  Transform code: bit 3 l + axis is bit l of that axis (x = 0), as
// baselines/raht.py transform_codes; merges along bit s pair adjacent nodes with equal code >> 1,
// a = sqrt(w1 / (w1 + w2)), b = sqrt(w2 / (w1 + w2)) in float64 as numpy computes them.
py::tuple raht_plan(I64 coords_in, int64_t depth) {
  if (coords_in.ndim() != 2 || coords_in.shape(1) != 3) throw std::invalid_argument("coords must have shape [M, 3]");
  if (depth < 0 || depth > 21) throw std::invalid_argument("depth must be an integer in [0, 21]");
  const int64_t M = coords_in.shape(0);
  if (M < 1) throw std::invalid_argument("cannot transform an empty point set");
  const int64_t* c = coords_in.data();
  const int64_t lim = int64_t(1) << depth;
  auto spread = [](uint64_t v) {
    v &= 0x1FFFFF;
    v = (v | (v << 32)) & 0x1F00000000FFFFull;
    v = (v | (v << 16)) & 0x1F0000FF0000FFull;
    v = (v | (v << 8)) & 0x100F00F00F00F00Full;
    v = (v | (v << 4)) & 0x10C30C30C30C30C3ull;
    v = (v | (v << 2)) & 0x1249249249249249ull;
    return v;
  };
  std::vector<std::pair<uint64_t, int64_t>> keyed(M);
  for (int64_t i = 0; i < M; ++i) {
    const int64_t x = c[3 * i], y = c[3 * i + 1], z = c[3 * i + 2];
    if (x < 0 || y < 0 || z < 0 || x >= lim || y >= lim || z >= lim)
      throw std::invalid_argument("coords must lie in [0, 2^" + std::to_string(depth) + ")");
    keyed[i] = {spread(uint64_t(x)) | (spread(uint64_t(y)) << 1) | (spread(uint64_t(z)) << 2), i};
  }
  // LSD radix sort by code (8-bit digits over the 3 * depth code bits); stable, so ties keep the
  // input order (ties are rejected below anyway)
  {
    std::vector<std::pair<uint64_t, int64_t>> tmp(M);
    for (int64_t shift = 0; shift < 3 * depth; shift += 8) {
      int64_t count[257] = {0};
      for (const auto& e : keyed) ++count[((e.first >> shift) & 0xFF) + 1];
      for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
      for (const auto& e : keyed) tmp[count[(e.first >> shift) & 0xFF]++] = e;
      keyed.swap(tmp);
    }
  }
  I64 order(M);
  int64_t* ord = order.mutable_data();
  std::vector<uint64_t> code(M);
  std::vector<int64_t> weight(M, 1), leaf(M);
  for (int64_t i = 0; i < M; ++i) {
    if (i > 0 && keyed[i].first == keyed[i - 1].first) throw std::invalid_argument("coords must be unique");
    ord[i] = keyed[i].second;
    code[i] = keyed[i].first;
    leaf[i] = i;
  }
  // per step (finest first): the merges; emitted coarsest first
  std::vector<int64_t> step_end;  // cumulative merge count after each step
  std::vector<int64_t> ls, rs;
  std::vector<double> as, bs;
  ls.reserve(M);
  rs.reserve(M);
  as.reserve(M);
  bs.reserve(M);
  int64_t n = M;
  for (int64_t s = 0; s < 3 * depth; ++s) {
    int64_t out = 0;
    for (int64_t i = 0; i < n;) {
      const uint64_t key = code[i] >> 1;
      if (i + 1 < n && (code[i + 1] >> 1) == key) {
        const int64_t w1 = weight[i], w2 = weight[i + 1];
        const double wsum = double(w1 + w2);
        ls.push_back(leaf[i]);
        rs.push_back(leaf[i + 1]);
        as.push_back(std::sqrt(double(w1) / wsum));
        bs.push_back(std::sqrt(double(w2) / wsum));
        code[out] = key;
        weight[out] = w1 + w2;
        leaf[out] = leaf[i];
        i += 2;
      } else {
        code[out] = key;
        weight[out] = weight[i];
        leaf[out] = leaf[i];
        i += 1;
      }
      ++out;
    }
    n = out;
    step_end.push_back(int64_t(ls.size()));
  }
  if (n != 1) throw std::invalid_argument("coords must lie in [0, 2^depth)");
  const int64_t G = M - 1;
  I64 left(G), right(G);
  F64 a(G), b(G);
  int64_t* lo = left.mutable_data();
  int64_t* ro = right.mutable_data();
  double* ao = a.mutable_data();
  double* bo = b.mutable_data();
  int64_t k = 0;
  for (size_t st = step_end.size(); st-- > 0;) {
    const int64_t begin = st ? step_end[st - 1] : 0, end = step_end[st];
    for (int64_t g = begin; g < end; ++g, ++k) {
      lo[k] = ls[g];
      ro[k] = rs[g];
      ao[k] = as[g];
      bo[k] = bs[g];
    }
  }
  return py::make_tuple(left, right, a, b, order);
}

template <typename T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
py::array_t<T> inverse_raht(const std::vector<Arr<T>>& columns, I64 left_rows, I64 right_rows, F64 a_in, F64 b_in,
                            I64 order_in) {
  if (columns.empty() || columns[0].ndim() != 2) throw std::invalid_argument("inverse_raht: coefficients must be P arrays [Q, M]");
  const int64_t P = int64_t(columns.size()), Q = columns[0].shape(0), M = columns[0].shape(1), X = P * Q;
  for (const auto& c : columns)
    if (c.ndim() != 2 || c.shape(0) != Q || c.shape(1) != M)
      throw std::invalid_argument("inverse_raht: the P coefficient arrays differ in shape");
  const int64_t G = left_rows.shape(0);
  if (M < 1 || G != M - 1 || right_rows.shape(0) != G || a_in.shape(0) != G || b_in.shape(0) != G ||
      order_in.shape(0) != M)
    throw std::invalid_argument("inverse_raht: plan of " + std::to_string(G + 1) + " points for " + std::to_string(M) +
                                " coefficients");
  const int64_t* L = left_rows.data();
  const int64_t* R = right_rows.data();
  const double* A = a_in.data();
  const double* B = b_in.data();
  const int64_t* order = order_in.data();
  {  // a valid order of merges: each reads a row that exists and creates a new one
    std::vector<char> exists(M, 0);
    exists[0] = 1;
    for (int64_t g = 0; g < G; ++g) {
      if (L[g] < 0 || L[g] >= M || R[g] < 0 || R[g] >= M || !exists[L[g]] || exists[R[g]])
        throw std::invalid_argument("inverse_raht: invalid merge rows");
      exists[R[g]] = 1;
    }
  }
  for (int64_t m = 0; m < M; ++m)
    if (order[m] < 0 || order[m] >= M) throw std::invalid_argument("inverse_raht: order out of range");

  std::unique_ptr<T[]> work(new T[size_t(M) * size_t(X)]);  // each row is written before it is read (checked)
  T* w = work.get();
  std::vector<const T*> column(X);  // column x = q * P + p
  for (int64_t q = 0; q < Q; ++q)
    for (int64_t p = 0; p < P; ++p) column[q * P + p] = columns[p].data() + q * M;
  for (int64_t x = 0; x < X; ++x) w[x] = column[x][0];  // the DC: the root's row, 0
  // Merges in blocks: the block's high-pass coefficients (rows 1 + g of every column) transposed
  // into a small tile first, so both the reads and the butterflies stay in the L1 cache.
  constexpr int64_t kBlock = 64;
  std::vector<T> tile(size_t(kBlock) * size_t(X));
  for (int64_t g0 = 0; g0 < G; g0 += kBlock) {
    const int64_t nb = std::min(kBlock, G - g0);
    for (int64_t x = 0; x < X; ++x) {
      const T* col = column[x] + 1 + g0;
      for (int64_t i = 0; i < nb; ++i) tile[i * X + x] = col[i];
    }
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t g = g0 + i;
      T* __restrict lo = w + L[g] * X;  // distinct rows (L != R), and the tile is apart
      T* __restrict hi = w + R[g] * X;
      const T* __restrict h = tile.data() + i * X;
      const T a = static_cast<T>(A[g]), b = static_cast<T>(B[g]);
      for (int64_t x = 0; x < X; ++x) {
        const T l = lo[x], al = a * l, bh = b * h[x], bl = b * l, ah = a * h[x];
        lo[x] = al - bh;
        hi[x] = bl + ah;
      }
    }
  }
  // to point order: gather (sequential writes to the Q output planes, one row read per point)
  std::vector<int64_t> row_of(M, -1);
  for (int64_t m = 0; m < M; ++m) row_of[order[m]] = m;
  py::array_t<T> out({Q, M, P});
  T* o = out.mutable_data();
  for (int64_t n = 0; n < M; ++n) {
    if (row_of[n] < 0) throw std::invalid_argument("inverse_raht: order is not a permutation");
    const T* row = w + row_of[n] * X;
    for (int64_t q = 0; q < Q; ++q)
      for (int64_t p = 0; p < P; ++p) o[(q * M + n) * P + p] = row[q * P + p];
  }
  return out;
}

template <typename T>
py::object inverse_raht_typed(const py::list& columns, I64 left, I64 right, F64 a, F64 b, I64 order) {
  std::vector<Arr<T>> cols;
  for (auto c : columns) cols.push_back(py::cast<Arr<T>>(c));
  return inverse_raht<T>(cols, left, right, a, b, order);
}

py::object inverse_raht_any(const py::list& columns, I64 left, I64 right, F64 a, F64 b, I64 order) {
  if (columns.size() == 0) throw std::invalid_argument("inverse_raht: no coefficient arrays");
  py::object first = columns[0];
  if (py::isinstance<py::array_t<float>>(first)) return inverse_raht_typed<float>(columns, left, right, a, b, order);
  if (py::isinstance<py::array_t<double>>(first)) return inverse_raht_typed<double>(columns, left, right, a, b, order);
  throw std::invalid_argument("inverse_raht: coefficients must be float32 or float64");
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

__attribute__((target("avx2,fma"))) void mlp_rows(const float* x, int64_t N, int64_t A, int64_t C0, int64_t C1,
                                                   int64_t C2, const float* w0, const float* b0, const float* w1,
                                                   const float* b1, float* y, int64_t rows) {
  constexpr int V = 4;  // vectors per strip: 4 independent chains hide the FMA latency
  constexpr int64_t S = 8 * V;  // points per strip
  alignas(32) float xp[kMaxWidth][S];  // one attribute's inputs of the strip, planar
  std::vector<float> tile_store(size_t(A * C2 * S) + 8);
  float* tile = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(tile_store.data()) + 31) & ~uintptr_t(31));
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
      for (int64_t i = 0; i < nb; ++i)
        for (int64_t k = 0; k < C0; ++k) xp[k][i] = xa[i * C0 + k];
      for (int64_t k = 0; k < C0; ++k)
        for (int64_t i = nb; i < S; ++i) xp[k][i] = 0.f;
      const float* wa = w0 + a * C0 * C1;  // [C0][C1]
      const float* va = w1 + a * C1 * C2;  // [C1][C2]
      for (int64_t o = 0; o < C1; ++o) {
        __m256 acc[V];
        const __m256 w = _mm256_set1_ps(wa[o]);
        for (int v = 0; v < V; ++v) acc[v] = _mm256_mul_ps(_mm256_load_ps(&xp[0][8 * v]), w);
        for (int64_t k = 1; k < C0; ++k) {
          const __m256 wk = _mm256_set1_ps(wa[k * C1 + o]);
          for (int v = 0; v < V; ++v) acc[v] = _mm256_fmadd_ps(_mm256_load_ps(&xp[k][8 * v]), wk, acc[v]);
        }
        const __m256 bias = _mm256_set1_ps(b0[a * C1 + o]);
        for (int v = 0; v < V; ++v) h[o][v] = relu8(_mm256_add_ps(bias, acc[v]));
      }
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
  if (C0 < 1 || C1 < 1 || C2 < 1 || C0 > kMaxWidth || C1 > kMaxWidth || C2 > kMaxWidth)
    throw std::invalid_argument("pointwise_mlp: layer widths must lie in [1, 64]");
  if (rows < 0 || rows > N) throw std::invalid_argument("pointwise_mlp: rows out of range");
  float* out = y.mutable_data();
  {
    py::gil_scoped_release release;
    mlp_rows(x.data(), N, A, C0, C1, C2, w0.data(), b0.data(), w1.data(), b1.data(), out, rows);
  }
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

}  // namespace

PYBIND11_MODULE(_decode_cpu, m) {
  m.attr("API_VERSION") = 1;  // bumped whenever the Python side calls it differently (ralhe_me/native.py)
  m.doc() = "Kernels of the attribute synthesis: the inverse RAHT in place, neighbour-map and pair-plan helpers.";
  m.def("raht_plan", &raht_plan, py::arg("coords"), py::arg("depth"));
  m.def("raht_pairs", &raht_pairs, py::arg("num_points"), py::arg("stage_starts"), py::arg("stage_left"));
  m.def("inverse_raht", &inverse_raht_any, py::arg("columns"), py::arg("left"), py::arg("right"), py::arg("a"),
        py::arg("b"), py::arg("order"));
  m.def("mlp_supported", &mlp_supported);
  m.def("pointwise_mlp", &pointwise_mlp, py::arg("x"), py::arg("w0"), py::arg("b0"), py::arg("w1"), py::arg("b1"),
        py::arg("y"), py::arg("rows"));
  m.def("neighbour_table", &neighbour_table, py::arg("rows"), py::arg("perm"));
  m.def("conv_pairs", &conv_pairs, py::arg("fwd"), py::arg("num_in"), py::arg("skip_center"));
  m.def("bags", &bags, py::arg("rows"), py::arg("num_rows"));
}
