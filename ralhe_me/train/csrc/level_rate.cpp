// The training rate of the latents under the per-level model (train/level_rate.py), forward and
// gradient in one pass; level_rate.py wraps it as an autograd function.
//
// Why: through torch, a step's rate term gathered [A, S, 2] scales, ran every elementwise op of
// two Laplace masses and their mixture over all sampled latents, kept each op's output for the
// backward and ran that backward op by op; with the uniform noise the image-domain steps add to
// all latents first, it cost 0.45 s of a 2.1-s step at 483k voxels.  Here each sample's bits and
// gradients stay in registers, the per-group constants (exp of the scales, their log-sigmoids)
// are computed once per group instead of once per sample, and the noise (drawn by the caller
// for the sampled latents only) is added in place.
//
// The function is LevelRate.bits_reference: two zero-mean laplace_rate_bits (entropy/laplace.py,
// branch for branch, clamps included: the log-scales' clamp passes the gradient strictly inside
// its bounds, as torch's two-sided clamp does) mixed by logaddexp with log-sigmoid weights.  It runs in
// float64 where the reference runs in float32; the results agree within float32 rounding
// (tests/test_level_rate.py).
//
// Work is split by (plane, attribute): each unit owns its row of the latent gradient and its own
// slice of the scale and mixture gradients, and sums its samples in their given order, so the
// results do not depend on the number of threads.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int API_VERSION = 1;
constexpr double kLn2 = 0.69314718055994530942;
constexpr double kFloor = 8.673617379884035e-19;  // 2**-60: laplace_rate_bits' floor on a centre mass

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// One mixture component of one group: what its bits need besides the latent.
struct Component {
  double inv_b;     // 1 / b = exp(-clamped log-scale)
  double half;      // exp(-inv_b / 2): a centre mass's exponentials are half * exp(+-d inv_b)
  double log_em1;   // log(1 - exp(-inv_b)): the tail mass's constant factor
  double tail_k;    // exp(-inv_b) / (1 - exp(-inv_b)): d log P / d inv_b in the tail, less (d - 1/2)
  bool passes;      // the log-scale is strictly inside its clamp (its gradient passes)
};

struct Group {
  Component c[2];      // narrow, wide
  double log_w[2];     // log-sigmoid(logit), log-sigmoid(-logit): the components' log weights
  double sig;          // sigmoid(logit)
};

Component component(double log_scale, double lo, double hi) {
  const double ls = std::min(std::max(log_scale, lo), hi);
  Component c;
  c.inv_b = std::exp(-ls);
  c.half = std::exp(-0.5 * c.inv_b);
  const double em1 = -std::expm1(-c.inv_b);
  c.log_em1 = std::log(em1);
  c.tail_k = std::exp(-c.inv_b) / em1;
  c.passes = log_scale > lo && log_scale < hi;
  return c;
}

double log_sigmoid(double z) { return z >= 0 ? -std::log1p(std::exp(-z)) : z - std::log1p(std::exp(z)); }

// Bits of |x| = d under a component, clamped to max_bits, with d bits / d d and d bits / d log-scale
// (both 0 where the clamp or the centre floor stops the gradient).
struct Bits {
  double bits, d_d, d_ls;
};

inline Bits component_bits(const Component& c, double d, double max_bits) {
  double log_p, dlogp_dd, dlogp_dinvb;
  if (d >= 0.5) {
    log_p = -kLn2 - (d - 0.5) * c.inv_b + c.log_em1;
    dlogp_dd = -c.inv_b;
    dlogp_dinvb = -(d - 0.5) + c.tail_k;
  } else {
    const double e = std::exp(d * c.inv_b);
    const double e1 = c.half * e, e2 = c.half / e;  // exp(-(1/2 -+ d) inv_b)
    const double p = 1.0 - 0.5 * (e1 + e2);
    if (p >= kFloor) {
      log_p = std::log(p);
      dlogp_dd = -0.5 * c.inv_b * (e1 - e2) / p;
      dlogp_dinvb = 0.5 * (e1 * (0.5 - d) + e2 * (0.5 + d)) / p;
    } else {
      log_p = std::log(kFloor);
      dlogp_dd = dlogp_dinvb = 0.0;
    }
  }
  const double raw = -log_p / kLn2;
  if (raw > max_bits) return {max_bits, 0.0, 0.0};
  return {raw, -dlogp_dd / kLn2, dlogp_dinvb * c.inv_b / kLn2};  // d inv_b / d ls = -inv_b
}

std::string shape_of(const py::buffer_info& b) {
  std::string s = "[";
  for (size_t i = 0; i < b.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(b.shape[i]);
  return s + "]";
}

struct Unit {
  const float* values;    // [M] this attribute's row of the plane
  const int64_t* pos;     // [S]
  const float* noise;     // [S] or null
  int64_t count;          // S
  double scale;           // the plane's subsample factor
  const Group* groups;    // [L]
  float* grad_values;     // [M] or null
  double* grad_ls;        // [L, 2] or null
  double* grad_logit;     // [L] or null
};

// The unit's scaled bits; its gradients added into its own slices.
double unit_rate(const Unit& u, const int64_t* index, double max_bits) {
  double total = 0.0;
  for (int64_t s = 0; s < u.count; ++s) {
    const int64_t m = u.pos[s];
    const double x = double(u.values[m]) + (u.noise ? double(u.noise[s]) : 0.0);
    const int64_t g = index[m];
    const Group& gr = u.groups[g];
    const double d = std::fabs(x);
    const Bits bn = component_bits(gr.c[0], d, max_bits), bw = component_bits(gr.c[1], d, max_bits);
    const double u1 = gr.log_w[0] - bn.bits * kLn2, u2 = gr.log_w[1] - bw.bits * kLn2;
    // log_p = logaddexp(u1, u2) = hi + log(1 + t), t = exp(lo - hi); d log_p / d u1, u2 = the
    // components' posterior weights: 1 / (1 + t) for the larger, t / (1 + t) for the other
    const double t = std::exp(-std::fabs(u1 - u2));
    const double log_p = std::max(u1, u2) + std::log1p(t);
    total += -log_p / kLn2;
    if (!u.grad_values && !u.grad_ls) continue;
    const double w_hi = 1.0 / (1.0 + t), w_lo = t * w_hi;
    const double w1 = u1 >= u2 ? w_hi : w_lo, w2 = u1 >= u2 ? w_lo : w_hi;
    if (u.grad_values) {
      const double sign = x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0);
      u.grad_values[m] += float(u.scale * (w1 * bn.d_d + w2 * bw.d_d) * sign);
    }
    if (u.grad_ls) {
      if (gr.c[0].passes) u.grad_ls[2 * g] += u.scale * w1 * bn.d_ls;
      if (gr.c[1].passes) u.grad_ls[2 * g + 1] += u.scale * w2 * bw.d_ls;
      // d log-sigmoid(z) / dz = sigmoid(-z); bits = -log_p / ln 2
      u.grad_logit[g] += u.scale * -(w1 * (1.0 - gr.sig) - w2 * gr.sig) / kLn2;
    }
  }
  return total * u.scale;
}

// planes[p] [A, M]; positions[p] [S_p]; noise: empty or noise[p] [A, S_p] (added to the sampled
// latents); scales[p]: the factor of plane p's sum; index [M] (each latent's group in [0, L));
// log_scale [P, A, L, 2]; mix_logit [P, A, L] ->
// (bits [P, A] float64, grad planes (list of [A, M] float32) or None, grad log_scale, grad mix_logit
// (float32) or None).
py::tuple level_rate(const std::vector<F32>& planes, const std::vector<I64>& positions,
                     const std::vector<F32>& noise, const std::vector<double>& scales, I64 index, F32 log_scale,
                     F32 mix_logit, double log_scale_min, double log_scale_max, double max_bits, bool grad_values,
                     bool grad_params, int threads) {
  const int64_t P = int64_t(planes.size());
  if (P == 0) throw std::invalid_argument("level_rate: need at least one latent plane");
  if (int64_t(positions.size()) != P || int64_t(scales.size()) != P || (!noise.empty() && int64_t(noise.size()) != P))
    throw std::invalid_argument("level_rate: need one positions array and scale (and noise array, if any) per plane");
  auto lsb = log_scale.request();
  auto mlb = mix_logit.request();
  if (lsb.ndim != 4 || lsb.shape[0] != P || lsb.shape[3] != 2)
    throw std::invalid_argument("level_rate: log_scale must be [P, A, L, 2] with P = " + std::to_string(P) + ", got " +
                                shape_of(lsb));
  const int64_t A = lsb.shape[1], L = lsb.shape[2];
  if (mlb.ndim != 3 || mlb.shape[0] != P || mlb.shape[1] != A || mlb.shape[2] != L)
    throw std::invalid_argument("level_rate: mix_logit must be [P, A, L] as log_scale's first three, got " +
                                shape_of(mlb) + " beside " + shape_of(lsb));
  if (index.ndim() != 1) throw std::invalid_argument("level_rate: index must be [M]");
  const int64_t M = index.shape(0);
  const int64_t* idx = index.data();
  for (int64_t m = 0; m < M; ++m)
    if (idx[m] < 0 || idx[m] >= L)
      throw std::invalid_argument("level_rate: group " + std::to_string(idx[m]) + " of latent " + std::to_string(m) +
                                  " outside the " + std::to_string(L) + " groups");
  std::vector<py::buffer_info> pb;
  for (int64_t p = 0; p < P; ++p) {
    pb.push_back(planes[p].request());
    if (pb.back().ndim != 2 || pb.back().shape[0] != A || pb.back().shape[1] != M)
      throw std::invalid_argument("level_rate: plane " + std::to_string(p) + " is " + shape_of(pb.back()) + ", expected [" +
                                  std::to_string(A) + ", " + std::to_string(M) + "]");
    const int64_t* pos = positions[p].data();
    if (positions[p].ndim() != 1) throw std::invalid_argument("level_rate: positions must be 1-D arrays");
    for (int64_t s = 0; s < positions[p].shape(0); ++s)
      if (pos[s] < 0 || pos[s] >= M)
        throw std::invalid_argument("level_rate: position " + std::to_string(pos[s]) + " outside the " +
                                    std::to_string(M) + " latents of plane " + std::to_string(p));
    if (!noise.empty() && (noise[p].ndim() != 2 || noise[p].shape(0) != A || noise[p].shape(1) != positions[p].shape(0)))
      throw std::invalid_argument("level_rate: noise of plane " + std::to_string(p) + " must be [A, S] = [" +
                                  std::to_string(A) + ", " + std::to_string(positions[p].shape(0)) + "]");
  }

  // per (plane, attribute, group) constants
  const float* lsp = static_cast<const float*>(lsb.ptr);
  const float* mlp = static_cast<const float*>(mlb.ptr);
  std::vector<Group> groups(size_t(P * A * L));
  for (int64_t k = 0; k < P * A * L; ++k) {
    Group& g = groups[size_t(k)];
    for (int c = 0; c < 2; ++c) g.c[c] = component(double(lsp[2 * k + c]), log_scale_min, log_scale_max);
    const double z = double(mlp[k]);
    g.log_w[0] = log_sigmoid(z);
    g.log_w[1] = log_sigmoid(-z);
    g.sig = 1.0 / (1.0 + std::exp(-z));
  }

  py::array_t<double> bits({P, A});
  double* bp = bits.mutable_data();
  py::object gv_out = py::none();
  std::vector<float*> gvp(size_t(P), nullptr);
  if (grad_values) {
    py::list gl;
    for (int64_t p = 0; p < P; ++p) {
      py::array_t<float> g({A, M});
      gvp[size_t(p)] = g.mutable_data();  // each row is zeroed by the unit that owns it
      gl.append(g);
    }
    gv_out = gl;
  }
  std::vector<double> gls, glogit;
  if (grad_params) {
    gls.assign(size_t(P * A * L * 2), 0.0);
    glogit.assign(size_t(P * A * L), 0.0);
  }
  std::vector<Unit> units(size_t(P * A));
  for (int64_t p = 0; p < P; ++p)
    for (int64_t a = 0; a < A; ++a) {
      Unit& u = units[size_t(p * A + a)];
      const int64_t k = p * A + a;
      u.values = static_cast<const float*>(pb[size_t(p)].ptr) + a * M;
      u.pos = positions[size_t(p)].data();
      u.count = positions[size_t(p)].shape(0);
      u.noise = noise.empty() ? nullptr : noise[size_t(p)].data() + a * u.count;
      u.scale = scales[size_t(p)];
      u.groups = groups.data() + k * L;
      u.grad_values = grad_values ? gvp[size_t(p)] + a * M : nullptr;
      u.grad_ls = grad_params ? gls.data() + k * L * 2 : nullptr;
      u.grad_logit = grad_params ? glogit.data() + k * L : nullptr;
    }
  {
    py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) num_threads(std::max(1, threads))
    for (int64_t k = 0; k < P * A; ++k) {
      const Unit& u = units[size_t(k)];
      if (u.grad_values) std::memset(u.grad_values, 0, sizeof(float) * size_t(M));
      bp[k] = unit_rate(u, idx, max_bits);
    }
  }
  py::object gls_out = py::none(), glogit_out = py::none();
  if (grad_params) {
    py::array_t<float> g1({P, A, L, int64_t(2)});
    py::array_t<float> g2({P, A, L});
    std::transform(gls.begin(), gls.end(), g1.mutable_data(), [](double v) { return float(v); });
    std::transform(glogit.begin(), glogit.end(), g2.mutable_data(), [](double v) { return float(v); });
    gls_out = g1;
    glogit_out = g2;
  }
  return py::make_tuple(bits, gv_out, gls_out, glogit_out);
}

}  // namespace

PYBIND11_MODULE(_level_rate_cpu, m) {
  m.doc() = "The per-level model's training rate with its gradient in one pass (see level_rate.py)";
  m.attr("API_VERSION") = API_VERSION;
  m.def("level_rate", &level_rate, py::arg("planes"), py::arg("positions"), py::arg("noise"), py::arg("scales"),
        py::arg("index"), py::arg("log_scale"), py::arg("mix_logit"), py::arg("log_scale_min"),
        py::arg("log_scale_max"), py::arg("max_bits"), py::arg("grad_values"), py::arg("grad_params"),
        py::arg("threads"));
}
