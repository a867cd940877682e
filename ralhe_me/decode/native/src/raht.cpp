// The inverse RAHT: plan from the points, pairs from a forward plan, the in-place inverse.
#include "raht.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "common.h"

// No fused multiply-adds even in a build that forgets -ffp-contract=off (every build passes it).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace ralhe {
namespace {

[[noreturn]] void invalid(const std::string& message) { fail(ErrorKind::kInvalidArgument, message); }

uint64_t raht_spread(uint64_t v) {  // bit i -> bit 3 i, 21 bits
  v &= 0x1FFFFF;
  v = (v | (v << 32)) & 0x1F00000000FFFFull;
  v = (v | (v << 16)) & 0x1F0000FF0000FFull;
  v = (v | (v << 8)) & 0x100F00F00F00F00Full;
  v = (v | (v << 4)) & 0x10C30C30C30C30C3ull;
  v = (v | (v << 2)) & 0x1249249249249249ull;
  return v;
}

}  // namespace

template <typename C>
RahtPlan raht_plan(const C* c, int64_t M, int64_t depth) {
  if (depth < 0 || depth > 21) invalid("depth must be an integer in [0, 21]");
  if (M < 1) invalid("cannot transform an empty point set");
  const int64_t lim = int64_t(1) << depth;
  std::vector<std::pair<uint64_t, int64_t>> keyed(M);
  for (int64_t i = 0; i < M; ++i) {
    const int64_t x = c[3 * i], y = c[3 * i + 1], z = c[3 * i + 2];
    if (x < 0 || y < 0 || z < 0 || x >= lim || y >= lim || z >= lim)
      invalid("coords must lie in [0, 2^" + std::to_string(depth) + ")");
    keyed[i] = {raht_spread(uint64_t(x)) | (raht_spread(uint64_t(y)) << 1) | (raht_spread(uint64_t(z)) << 2), i};
  }
  // LSD radix sort by code (8-bit digits over the 3 * depth code bits); stable
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
  RahtPlan plan;
  plan.order.resize(M);
  std::vector<uint64_t> code(M);
  for (int64_t i = 0; i < M; ++i) {
    if (i > 0 && keyed[i].first == keyed[i - 1].first) invalid("coords must be unique");
    plan.order[i] = keyed[i].second;
    code[i] = keyed[i].first;
  }
  keyed = {};
  // One merge per boundary i (between positions i and i + 1) of the sorted codes, at the step of
  // their highest differing bit h[i]: the left node (rows lo[i] .. i) and the right node (rows
  // i + 1 .. hi[i]) are the runs of codes equal to code[i], code[i + 1] above bit h[i], bounded
  // by the nearest boundaries with a higher bit (two boundaries of one bit always have a higher
  // one between them).  This is the plan of the step-by-step pairing of baselines/raht.py: the
  // left and right rows are the nodes' first leaves and w1, w2 their leaf counts.
  const int64_t G = M - 1;
  std::vector<int8_t> h(G);
  for (int64_t i = 0; i < G; ++i) h[i] = int8_t(63 - __builtin_clzll(code[i] ^ code[i + 1]));
  code = {};
  std::vector<int64_t> lo(G), hi(G), stack;
  for (int64_t i = 0; i < G; ++i) {  // nearest boundary to the left with a higher bit
    while (!stack.empty() && h[stack.back()] < h[i]) stack.pop_back();
    lo[i] = stack.empty() ? 0 : stack.back() + 1;
    stack.push_back(i);
  }
  stack.clear();
  for (int64_t i = G; i-- > 0;) {  // ... and to the right
    while (!stack.empty() && h[stack.back()] < h[i]) stack.pop_back();
    hi[i] = stack.empty() ? M - 1 : stack.back();
    stack.push_back(i);
  }
  // coarsest step (highest bit) first, boundaries in order within a step: a counting sort by bit
  int64_t count[65] = {0};
  for (int64_t i = 0; i < G; ++i) ++count[63 - h[i]];
  int64_t first[65];
  first[0] = 0;
  for (int k = 0; k < 64; ++k) first[k + 1] = first[k] + count[k];
  for (int k = 0; k < 64; ++k)
    if (count[k]) plan.steps.push_back(RahtStep{63 - k, first[k], first[k] + count[k]});
  plan.left.resize(G);
  plan.right.resize(G);
  plan.a.resize(G);
  plan.b.resize(G);
  for (int64_t i = 0; i < G; ++i) {
    const int64_t g = first[63 - h[i]]++;
    const int64_t w1 = i + 1 - lo[i], w2 = hi[i] - i;
    const double wsum = double(w1 + w2);
    plan.left[g] = lo[i];
    plan.right[g] = i + 1;
    plan.a[g] = std::sqrt(double(w1) / wsum);
    plan.b[g] = std::sqrt(double(w2) / wsum);
  }
  return plan;
}

template RahtPlan raht_plan<int32_t>(const int32_t*, int64_t, int64_t);
template RahtPlan raht_plan<int64_t>(const int64_t*, int64_t, int64_t);

void raht_pairs(int64_t num_points, const std::vector<const int64_t*>& starts, const std::vector<int64_t>& starts_size,
                const std::vector<const int64_t*>& lefts, const std::vector<int64_t>& left_size,
                std::vector<int64_t>& left_rows, std::vector<int64_t>& right_rows) {
  if (num_points < 1) invalid("raht_pairs: empty point set");
  const size_t S = starts.size();
  if (lefts.size() != S || starts_size.size() != S || left_size.size() != S)
    invalid("raht_pairs: starts / left count differ");
  std::vector<int64_t> leaf(num_points), next;
  for (int64_t i = 0; i < num_points; ++i) leaf[i] = i;
  std::vector<std::vector<int64_t>> ls(S), rs(S);
  int64_t total = 0;
  for (size_t s = 0; s < S; ++s) {
    const int64_t n_in = int64_t(leaf.size());
    const int64_t* st = starts[s];
    const int64_t* lf = lefts[s];
    const int64_t n_out = starts_size[s], np = left_size[s];
    if (n_out < 0 || np < 0 || n_out + np != n_in)
      invalid("raht_pairs: step " + std::to_string(s) + " does not merge its nodes");
    ls[s].resize(np);
    rs[s].resize(np);
    for (int64_t p = 0; p < np; ++p) {
      const int64_t l = lf[p];
      if (l < 0 || l + 1 >= n_in || (p > 0 && l <= lf[p - 1] + 1)) invalid("raht_pairs: invalid pair");
      ls[s][p] = leaf[l];
      rs[s][p] = leaf[l + 1];
    }
    next.resize(n_out);
    int64_t prev = -1;
    for (int64_t j = 0; j < n_out; ++j) {
      const int64_t i = st[j];
      if (i <= prev || i >= n_in) invalid("raht_pairs: invalid group starts");
      next[j] = leaf[i];
      prev = i;
    }
    leaf.swap(next);
    total += np;
  }
  if (leaf.size() != 1 || total != num_points - 1) invalid("raht_pairs: the steps do not end in one node");
  left_rows.resize(total);
  right_rows.resize(total);
  int64_t k = 0;
  for (size_t s = S; s-- > 0;) {
    std::copy(ls[s].begin(), ls[s].end(), left_rows.begin() + k);
    std::copy(rs[s].begin(), rs[s].end(), right_rows.begin() + k);
    k += int64_t(ls[s].size());
  }
  // every row but the DC's is the right child of exactly one merge
  std::vector<char> seen(num_points, 0);
  for (int64_t g = 0; g < total; ++g) {
    const int64_t r = right_rows[g];
    if (r <= 0 || r >= num_points || seen[r]) invalid("raht_pairs: right rows are not a permutation");
    seen[r] = 1;
  }
}

void check_raht_merges(int64_t M, const int64_t* L, const int64_t* R) {
  if (M < 1) invalid("inverse_raht: empty point set");
  std::vector<char> exists(M, 0);
  exists[0] = 1;
  for (int64_t g = 0; g < M - 1; ++g) {
    if (L[g] < 0 || L[g] >= M || R[g] < 0 || R[g] >= M || !exists[L[g]] || exists[R[g]])
      invalid("inverse_raht: invalid merge rows");
    exists[R[g]] = 1;
  }
}

namespace {

// The merges g0 .. g1 - 1 in order.  The high-pass coefficients (position 1 + g of every column)
// are transposed into a small tile first, block by block, so the reads and the butterflies stay
// in L1.
template <typename T, typename S>
void run_merges(int64_t g0, int64_t g1, const int64_t* L, const int64_t* R, const double* A, const double* B,
                const S* const* column, int64_t X, T* w, std::vector<T>& tile) {
  constexpr int64_t kBlock = 64;
  tile.resize(size_t(kBlock) * size_t(X));
  for (int64_t b0 = g0; b0 < g1; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, g1 - b0);
    for (int64_t x = 0; x < X; ++x) {
      const S* col = column[x];
      if (col) {
        col += 1 + b0;
        for (int64_t i = 0; i < nb; ++i) tile[i * X + x] = static_cast<T>(col[i]);
      } else {
        for (int64_t i = 0; i < nb; ++i) tile[i * X + x] = T(0);
      }
    }
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t g = b0 + i;
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
}

template <typename T, typename S>
void set_dc(const S* const* column, int64_t X, T* w) {  // the DC: the root's row, 0
  for (int64_t x = 0; x < X; ++x) w[x] = column[x] ? static_cast<T>(column[x][0]) : T(0);
}

}  // namespace

template <typename T, typename S>
void inverse_raht(int64_t M, const int64_t* L, const int64_t* R, const double* A, const double* B,
                  const S* const* column, int64_t X, T* w) {
  std::vector<T> tile;
  set_dc(column, X, w);
  run_merges(0, M - 1, L, R, A, B, column, X, w, tile);
}

template <typename T, typename S>
void inverse_raht(const RahtPlan& plan, const S* const* column, int64_t X, T* w) {
  // Steps below bit kFineBits merge nodes inside one 2^kFineBits-code block, i.e. within runs of
  // rows that the coarser merges' right rows delimit.  Those runs, grouped into chunks of about
  // kChunkRows rows, are processed one after the other with all their fine steps.
  constexpr int kFineBits = 12;
  constexpr int64_t kChunkRows = 2048;
  const int64_t M = plan.num_points();
  const int64_t *L = plan.left.data(), *R = plan.right.data();
  const double *A = plan.a.data(), *B = plan.b.data();
  std::vector<T> tile;
  set_dc(column, X, w);
  size_t s = 0;
  int64_t coarse_end = 0;
  for (; s < plan.steps.size() && plan.steps[s].bit >= kFineBits; ++s) coarse_end = plan.steps[s].end;
  run_merges(0, coarse_end, L, R, A, B, column, X, w, tile);
  std::vector<char> cut(M + 1, 0);  // a run of the fine steps starts at row r
  cut[0] = cut[M] = 1;
  for (int64_t g = 0; g < coarse_end; ++g) cut[R[g]] = 1;
  std::vector<int64_t> cursor, end;  // per fine step: next merge, end
  for (size_t f = s; f < plan.steps.size(); ++f) {
    cursor.push_back(plan.steps[f].begin);
    end.push_back(plan.steps[f].end);
  }
  for (int64_t r0 = 0; r0 < M;) {
    int64_t r1 = std::min(M, r0 + kChunkRows);
    while (!cut[r1]) ++r1;
    for (size_t f = 0; f < cursor.size(); ++f) {  // coarse to fine; merges within a step by row
      int64_t g1 = cursor[f];
      while (g1 < end[f] && R[g1] < r1) ++g1;
      run_merges(cursor[f], g1, L, R, A, B, column, X, w, tile);
      cursor[f] = g1;
    }
    r0 = r1;
  }
}

template void inverse_raht<float, float>(int64_t, const int64_t*, const int64_t*, const double*, const double*,
                                         const float* const*, int64_t, float*);
template void inverse_raht<double, double>(int64_t, const int64_t*, const int64_t*, const double*, const double*,
                                           const double* const*, int64_t, double*);
template void inverse_raht<float, int32_t>(int64_t, const int64_t*, const int64_t*, const double*, const double*,
                                           const int32_t* const*, int64_t, float*);
template void inverse_raht<float, float>(const RahtPlan&, const float* const*, int64_t, float*);
template void inverse_raht<double, double>(const RahtPlan&, const double* const*, int64_t, double*);
template void inverse_raht<float, int32_t>(const RahtPlan&, const int32_t* const*, int64_t, float*);

}  // namespace ralhe
