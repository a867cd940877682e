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
  // every per-point loop runs in chunks (for_chunks in common.h)
  constexpr int64_t kChunk = 8192;
  std::vector<std::pair<uint64_t, int64_t>> keyed(M);
  for_chunks(M, kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t x = c[3 * i], y = c[3 * i + 1], z = c[3 * i + 2];
      if (x < 0 || y < 0 || z < 0 || x >= lim || y >= lim || z >= lim)
        invalid("coords must lie in [0, 2^" + std::to_string(depth) + ")");
      keyed[i] = {raht_spread(uint64_t(x)) | (raht_spread(uint64_t(y)) << 1) | (raht_spread(uint64_t(z)) << 2), i};
    }
  });
  // LSD radix sort by code (8-bit digits over the 3 * depth code bits); stable
  {
    std::vector<std::pair<uint64_t, int64_t>> tmp(M);
    for (int64_t shift = 0; shift < 3 * depth; shift += 8) {
      int64_t count[257] = {0};
      const std::pair<uint64_t, int64_t>* from = keyed.data();
      std::pair<uint64_t, int64_t>* to = tmp.data();
      for_chunks(M, kChunk, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) ++count[((from[i].first >> shift) & 0xFF) + 1];
      });
      for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
      for_chunks(M, kChunk, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) to[count[(from[i].first >> shift) & 0xFF]++] = from[i];
      });
      keyed.swap(tmp);
    }
  }
  RahtPlan plan;
  plan.order.resize(M);
  std::vector<uint64_t> code(M);
  for_chunks(M, kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (i > 0 && keyed[i].first == keyed[i - 1].first) invalid("coords must be unique");
      plan.order[i] = keyed[i].second;
      code[i] = keyed[i].first;
    }
  });
  keyed = {};
  // One merge per boundary i (between positions i and i + 1) of the sorted codes, at the step of
  // their highest differing bit h[i]: the left node (rows lo[i] .. i) and the right node (rows
  // i + 1 .. hi[i]) are the runs of codes equal to code[i], code[i + 1] above bit h[i], bounded
  // by the nearest boundaries with a higher bit (two boundaries of one bit always have a higher
  // one between them).  This is the plan of the step-by-step pairing of baselines/raht.py: the
  // left and right rows are the nodes' first leaves and w1, w2 their leaf counts.
  const int64_t G = M - 1;
  std::vector<int8_t> h(G);
  for_chunks(G, kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) h[i] = int8_t(63 - __builtin_clzll(code[i] ^ code[i + 1]));
  });
  code = {};
  std::vector<int64_t> lo(G), hi(G), stack;
  for_chunks(G, kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {  // nearest boundary to the left with a higher bit
      while (!stack.empty() && h[stack.back()] < h[i]) stack.pop_back();
      lo[i] = stack.empty() ? 0 : stack.back() + 1;
      stack.push_back(i);
    }
  });
  stack.clear();
  for_chunks(G, kChunk, [&](int64_t j0, int64_t j1) {
    for (int64_t i = G - 1 - j0; i > G - 1 - j1; --i) {  // ... and to the right
      while (!stack.empty() && h[stack.back()] < h[i]) stack.pop_back();
      hi[i] = stack.empty() ? M - 1 : stack.back();
      stack.push_back(i);
    }
  });
  // coarsest step (highest bit) first, boundaries in order within a step: a counting sort by bit
  int64_t count[65] = {0};
  for_chunks(G, kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) ++count[63 - h[i]];
  });
  int64_t first[65];
  first[0] = 0;
  for (int k = 0; k < 64; ++k) first[k + 1] = first[k] + count[k];
  for (int k = 0; k < 64; ++k)
    if (count[k]) plan.steps.push_back(RahtStep{63 - k, first[k], first[k] + count[k]});
  plan.left.resize(G);
  plan.right.resize(G);
  plan.a.resize(G);
  plan.b.resize(G);
  for_chunks(G, kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t g = first[63 - h[i]]++;
      const int64_t w1 = i + 1 - lo[i], w2 = hi[i] - i;
      const double wsum = double(w1 + w2);
      plan.left[g] = lo[i];
      plan.right[g] = i + 1;
      plan.a[g] = std::sqrt(double(w1) / wsum);
      plan.b[g] = std::sqrt(double(w2) / wsum);
    }
  });
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

RahtMerges merges_of(const RahtPlan& plan) {
  return RahtMerges{plan.num_points(), plan.left.data(),  plan.right.data(),
                    plan.a.data(),     plan.b.data(),     plan.steps.data(), plan.steps.size()};
}

namespace {

// Steps below bit kFineBits merge nodes inside one 2^kFineBits-code block, i.e. within runs of
// rows that the coarser merges' right rows delimit.  Those runs, grouped into blocks of about
// kBlockRows rows, run one after the other (or on threads) with all their fine steps.
constexpr int kFineBits = 12;
constexpr int64_t kBlockRows = 2048;

// The blocks of the fine steps: block r holds the rows [row[r], row[r + 1]) and, of fine step f,
// the merges [bound[r * F + f], bound[(r + 1) * F + f]).
struct FineBlocks {
  int64_t coarse_end = 0;  // the coarse steps' merges are [0, coarse_end)
  int64_t num_fine = 0;    // F
  std::vector<int64_t> row, bound;
  int64_t num_blocks() const { return int64_t(row.size()) - 1; }
};

// ``check``: throw unless every fine merge lies inside its block (the plan was not made by
// raht_plan / raht_pairs, e.g. arrays from Python), rather than race or corrupt memory.
// The first merge from g on (up to end) whose right row is not below r1; with ``check``, throws
// when a merge before it leaves the rows [r0, r1).  Called once per block and fine step.
RALHE_WASM_NOINLINE int64_t block_merges_end(const RahtMerges& p, int64_t g, int64_t end, int64_t r0,
                                             int64_t r1, bool check) {
  for (; g < end && p.right[g] < r1; ++g)
    if (check && (p.left[g] < r0 || p.right[g] < r0 || p.left[g] >= r1))
      invalid("inverse_raht: a fine merge leaves its block of rows (not a RAHT plan)");
  return g;
}

FineBlocks fine_blocks(const RahtMerges& p, bool check) {
  const int64_t M = p.num_points;
  FineBlocks fb;
  size_t s = 0;
  for (; s < p.num_steps && p.steps[s].bit >= kFineBits; ++s) fb.coarse_end = p.steps[s].end;
  fb.num_fine = int64_t(p.num_steps - s);
  std::vector<char> cut(M + 1, 0);  // a run of the fine steps starts at row r
  cut[0] = cut[M] = 1;
  for_chunks(fb.coarse_end, 8192, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) cut[p.right[g]] = 1;
  });
  std::vector<int64_t> cursor;
  for (size_t f = s; f < p.num_steps; ++f) cursor.push_back(p.steps[f].begin);
  const int64_t F = fb.num_fine;
  fb.row.push_back(0);
  fb.bound.insert(fb.bound.end(), cursor.begin(), cursor.end());
  for (int64_t r0 = 0; r0 < M;) {
    int64_t r1 = std::min(M, r0 + kBlockRows);
    while (!cut[r1]) ++r1;
    for (int64_t f = 0; f < F; ++f)  // merges within a step by right row
      cursor[f] = block_merges_end(p, cursor[f], p.steps[s + f].end, r0, r1, check);
    fb.row.push_back(r1);
    fb.bound.insert(fb.bound.end(), cursor.begin(), cursor.end());
    r0 = r1;
  }
  if (check)
    for (int64_t f = 0; f < F; ++f)
      if (cursor[f] != p.steps[s + f].end) invalid("inverse_raht: a fine step's right rows are not increasing");
  return fb;
}

// The merges g0 .. g1 - 1 in order.  The high-pass coefficients (position 1 + g of every column)
// are transposed into a small tile first, block by block, so the reads and the butterflies stay
// in L1.
template <typename T, typename S>
void run_merges(int64_t g0, int64_t g1, const RahtMerges& p, const S* const* column, int64_t X, T* w,
                std::vector<T>& tile) {
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
      T* __restrict lo = w + p.left[g] * X;  // distinct rows (L != R), and the tile is apart
      T* __restrict hi = w + p.right[g] * X;
      const T* __restrict h = tile.data() + i * X;
      const T a = static_cast<T>(p.a[g]), b = static_cast<T>(p.b[g]);
      for (int64_t x = 0; x < X; ++x) {
        const T l = lo[x], al = a * l, bh = b * h[x], bl = b * l, ah = a * h[x];
        lo[x] = al - bh;
        hi[x] = bl + ah;
      }
    }
  }
}

// The transposed merges g1 - 1 .. g0 in reverse order; each merge's high-pass gradients go to a
// tile first, then block by block to their columns (contiguous writes).
template <typename T>
void run_adjoint(int64_t g0, int64_t g1, const RahtMerges& p, T* w, int64_t X, T* const* grads,
                 std::vector<T>& tile) {
  constexpr int64_t kBlock = 64;
  tile.resize(size_t(kBlock) * size_t(X));
  for (int64_t b1 = g1; b1 > g0; b1 -= kBlock) {
    const int64_t b0 = std::max(g0, b1 - kBlock), nb = b1 - b0;
    for (int64_t i = nb; i-- > 0;) {
      const int64_t g = b0 + i;
      T* __restrict lo = w + p.left[g] * X;
      const T* __restrict hi = w + p.right[g] * X;
      T* __restrict h = tile.data() + i * X;
      const T a = static_cast<T>(p.a[g]), b = static_cast<T>(p.b[g]), nb_ = -b;
      for (int64_t x = 0; x < X; ++x) {
        const T dl = lo[x], dr = hi[x];
        lo[x] = a * dl + b * dr;
        h[x] = nb_ * dl + a * dr;
      }
    }
    for (int64_t x = 0; x < X; ++x) {
      T* out = grads[x] + 1 + b0;
      for (int64_t i = 0; i < nb; ++i) out[i] = tile[i * X + x];
    }
  }
}

// body(r, tile) for every block r of the fine steps, on up to ``threads`` OpenMP threads where
// the build has OpenMP, each with its own tile.
template <typename T, typename Body>
void for_each_block(int64_t num_blocks, int threads, Body&& body) {
#if defined(_OPENMP)
#pragma omp parallel num_threads(std::max(1, threads)) if (threads > 1 && num_blocks > 1)
#endif
  {
    std::vector<T> tile;
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 4)
#endif
    for (int64_t r = 0; r < num_blocks; ++r) body(r, tile);
  }
  (void)threads;
}

template <typename T, typename S>
void set_dc(const S* const* column, int64_t X, T* w) {  // the DC: the root's row, 0
  for (int64_t x = 0; x < X; ++x) w[x] = column[x] ? static_cast<T>(column[x][0]) : T(0);
}

}  // namespace

void check_raht_steps(const RahtMerges& p) {
  check_raht_merges(p.num_points, p.left, p.right);
  int64_t next = 0;
  for (size_t s = 0; s < p.num_steps; ++s) {
    if (p.steps[s].begin != next || p.steps[s].end <= p.steps[s].begin ||
        (s && p.steps[s].bit >= p.steps[s - 1].bit))
      invalid("inverse_raht: the steps do not cover the merges in order, coarsest first");
    next = p.steps[s].end;
  }
  if (next != p.num_points - 1) invalid("inverse_raht: the steps do not cover the merges in order, coarsest first");
  fine_blocks(p, true);
}

template <typename T, typename S>
void inverse_raht(const RahtMerges& p, const S* const* column, int64_t X, T* w, int threads) {
  const FineBlocks fb = fine_blocks(p, false);
  const int64_t F = fb.num_fine;
  std::vector<T> tile;
  set_dc(column, X, w);
  run_merges(0, fb.coarse_end, p, column, X, w, tile);
  for_each_block<T>(fb.num_blocks(), threads, [&](int64_t r, std::vector<T>& own) {
    for (int64_t f = 0; f < F; ++f)  // coarse to fine
      run_merges(fb.bound[r * F + f], fb.bound[(r + 1) * F + f], p, column, X, w, own);
  });
}

template <typename T, typename S>
void inverse_raht(const RahtPlan& plan, const S* const* column, int64_t X, T* w) {
  inverse_raht<T, S>(merges_of(plan), column, X, w, 1);
}

template <typename T>
void raht_adjoint(const RahtMerges& p, T* w, int64_t X, T* const* grads, int threads) {
  const FineBlocks fb = fine_blocks(p, false);
  const int64_t F = fb.num_fine;
  for_each_block<T>(fb.num_blocks(), threads, [&](int64_t r, std::vector<T>& own) {
    for (int64_t f = F; f-- > 0;)  // fine to coarse
      run_adjoint(fb.bound[r * F + f], fb.bound[(r + 1) * F + f], p, w, X, grads, own);
  });
  std::vector<T> tile;
  run_adjoint(int64_t(0), fb.coarse_end, p, w, X, grads, tile);
  for (int64_t x = 0; x < X; ++x) grads[x][0] = w[x];  // the root's row: 0
}

template void inverse_raht<float, float>(const RahtMerges&, const float* const*, int64_t, float*, int);
template void inverse_raht<double, double>(const RahtMerges&, const double* const*, int64_t, double*, int);
template void inverse_raht<float, int32_t>(const RahtMerges&, const int32_t* const*, int64_t, float*, int);
template void inverse_raht<float, float>(const RahtPlan&, const float* const*, int64_t, float*);
template void inverse_raht<double, double>(const RahtPlan&, const double* const*, int64_t, double*);
template void inverse_raht<float, int32_t>(const RahtPlan&, const int32_t* const*, int64_t, float*);
template void raht_adjoint<float>(const RahtMerges&, float*, int64_t, float* const*, int);
template void raht_adjoint<double>(const RahtMerges&, double*, int64_t, double* const*, int);

}  // namespace ralhe
