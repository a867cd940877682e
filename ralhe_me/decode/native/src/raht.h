// The inverse RAHT (region-adaptive Haar transform) on an octree: the "raht" synthesis turns
// each latent plane (RAHT coefficients, one per point) into per-point values with it.
// Python reference: ralhe_me/nn/inverse_raht.py (InverseRaht.__call__, torch) and the plan of
// ralhe_me/baselines/raht.py build_plan; the pybind11 wrapper ralhe_me/nn/csrc/decode.cpp
// (extension _decode_cpu) exposes these functions to that module.
//
// Operations (float T, weights rounded to T first, each product and sum rounded: no FMA):
//
//   low = v[left];  v[left] = a * low - b * high;  v[right] = b * low + a * high
//
// Layout.  Every node lives for good in the row of its first leaf (in transform-code order): a
// merged node and its left child share that row, the right child's row is its own first leaf,
// written by the butterfly that creates it.  Butterflies run in coefficient order (coarsest step
// first) and touch only the two rows of their pair, so the whole transform runs in place in one
// [M, X] buffer (X columns transformed alike).  Coefficient order: the DC, then the high-pass
// coefficient of merge g at position 1 + g.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ralhe {

struct RahtStep {  // the merges [begin, end) of one transform step: nodes differing in code bit `bit`
  int bit;
  int64_t begin, end;
};

struct RahtPlan {
  std::vector<int64_t> left, right;  // [M - 1] rows of each merge (first leaves), coarsest step first
  std::vector<double> a, b;          // [M - 1] sqrt(w1 / (w1 + w2)), sqrt(w2 / (w1 + w2)) in float64
  std::vector<int64_t> order;        // [M] the input point at each transform-code position
  std::vector<RahtStep> steps;       // the non-empty steps, coarsest (highest bit) first
  int64_t num_points() const { return int64_t(order.size()); }
};

// The plan of the points coords [M, 3] (unique, in [0, 2^depth), depth in [0, 21]); C is int32_t
// or int64_t.  Transform code: bit 3 l + axis is bit l of that axis (x = 0), as
// baselines/raht.py transform_codes.  Throws ralhe::Error (kInvalidArgument) naming the problem.
template <typename C>
RahtPlan raht_plan(const C* coords, int64_t num_points, int64_t depth);

// (left, right) rows of every merge, coarsest step first, from a forward plan's steps (finest
// first): RahtStep.starts (sizes starts_size[s]) and RahtStep.left (left_size[s]).
void raht_pairs(int64_t num_points, const std::vector<const int64_t*>& starts,
                const std::vector<int64_t>& starts_size, const std::vector<const int64_t*>& left,
                const std::vector<int64_t>& left_size, std::vector<int64_t>& left_rows,
                std::vector<int64_t>& right_rows);

// Throws unless the merges (left, right) [M - 1] each read a row that exists and create a new one.
void check_raht_merges(int64_t num_points, const int64_t* left, const int64_t* right);

// A plan's merges and steps without owning them (a RahtPlan's, or arrays handed over from Python).
struct RahtMerges {
  int64_t num_points = 0;
  const int64_t* left = nullptr;   // [M - 1]
  const int64_t* right = nullptr;  // [M - 1]
  const double* a = nullptr;       // [M - 1]
  const double* b = nullptr;       // [M - 1]
  const RahtStep* steps = nullptr;  // coarsest first, covering the merges [0, M - 1) in order
  std::size_t num_steps = 0;
};
RahtMerges merges_of(const RahtPlan& plan);

// Throws unless the steps cover the merges [0, M - 1) in order, coarsest first, and every merge of
// a fine step (bit < 12, the steps the blocked loops below run block by block) stays inside its
// block of rows, its right rows increasing: what lets blocks run in any order, and on threads.
// Also checks the merges as check_raht_merges.
void check_raht_steps(const RahtMerges& merges);

// The inverse transform of X coefficient columns (columns[x]: [M] in coefficient order, type S
// converted to T with static_cast; nullptr: a zero column) into work [M, X] (row m: transform-code
// position m; column x at offset x), cache-blocked: the coarse steps run over the whole buffer,
// the fine ones block by block of rows, each block's rows staying in cache while all its fine
// steps run.  Every butterfly is the same operations on the same operands in any block order, so
// the bits do not depend on the blocking or on ``threads`` (blocks run on up to that many OpenMP
// threads where the build has OpenMP).  The merges must pass check_raht_steps (not re-checked).
// T: float or double; S: T, int32_t.
template <typename T, typename S>
void inverse_raht(const RahtMerges& merges, const S* const* columns, int64_t X, T* work, int threads = 1);

template <typename T, typename S>
void inverse_raht(const RahtPlan& plan, const S* const* columns, int64_t X, T* work);

// The adjoint (transpose) of inverse_raht, for its gradient in training: work [M, X] holds the
// gradient of each transform-code row (it is overwritten); grads[x] [M] receives the gradient of
// column x's coefficients.  The butterflies transposed in the reverse order (fine blocks first,
// finest step first, then the coarse steps):
//   dlow = a * dl + b * dr;  dhigh = (-b) * dl + a * dr   (dl, dr: the gradients of rows left, right)
// with dlow staying in the left row and dhigh the gradient of the merge's high-pass coefficient;
// the root's row ends with the DC's.  The same bits on any number of threads.
template <typename T>
void raht_adjoint(const RahtMerges& merges, T* work, int64_t X, T* const* grads, int threads = 1);

}  // namespace ralhe
