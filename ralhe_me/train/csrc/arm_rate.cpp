// The training rate of the latents under the float ARM, forward and gradient in one pass
// (ralhe_me/train/arm_rate.py wraps it as an autograd function).
//
// Why: a training step's rate term through torch built [A, P, K] context tensors, every
// elementwise op of the MLP and of the Laplace bits on them, and a scatter-add (index_put with
// accumulate) of the context gradients: about 70% of a quality-preset step at 100k voxels.  Here
// each sample's contexts, MLP, bits and gradients stay in registers and L1.
//
// The function is AttributeSynthesis.positions_rate_bits (decode/synthesis.py) with BatchedArm
// (nn/arm.py) and laplace_rate_bits (entropy/laplace.py), the gradients those give through
// autograd, clamps included (a clamp passes the gradient where its input is within its bounds,
// ends included, as torch's does).  The MLP runs in float32, the Laplace bits in float64; the
// results agree with the torch reference within float rounding (tests/test_arm_rate.py).
//
// Work is split by attribute (each has its own ARM and its own row of latents), one thread per
// attribute at a time, and every sum runs in a fixed order: the results do not depend on the
// number of threads.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

constexpr int API_VERSION = 1;
constexpr int kLanes = 8;       // samples per block: the MLP loops run across them (SIMD)
constexpr int kMaxWidth = 255;  // ArmConfig's bound on the context size and the hidden width

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

struct Layer {
  int in = 0, out = 0;
  const float* w = nullptr;  // [A, in, out]
  const float* b = nullptr;  // [A, out]
};

struct Constants {
  float context_clamp, hidden_clamp, log_scale_min, log_scale_max;
  double max_bits;
};

// Bits of x under Laplace(mu, exp(ls)) over [x - 1/2, x + 1/2], and their derivatives in mu and
// ls (laplace_rate_bits, branch for branch).
struct LaplaceBits {
  double bits, d_mu, d_ls;
};

LaplaceBits laplace_bits(double x, double mu, double ls, double max_bits) {
  constexpr double kLn2 = 0.69314718055994530942;
  const double inv_b = std::exp(-ls);
  const double diff = x - mu;
  const double d = std::fabs(diff);
  double log_p, dlogp_dd, dlogp_dinvb;
  if (d >= 0.5) {
    const double em1 = -std::expm1(-inv_b);  // 1 - exp(-1/b)
    log_p = -kLn2 - (d - 0.5) * inv_b + std::log(em1);
    dlogp_dd = -inv_b;
    dlogp_dinvb = -(d - 0.5) + std::exp(-inv_b) / em1;
  } else {
    const double e1 = std::exp(-(0.5 - d) * inv_b), e2 = std::exp(-(0.5 + d) * inv_b);
    const double p = 1.0 - 0.5 * (e1 + e2);
    constexpr double kFloor = 8.673617379884035e-19;  // 2**-60
    if (p >= kFloor) {
      log_p = std::log(p);
      dlogp_dd = -0.5 * inv_b * (e1 - e2) / p;
      dlogp_dinvb = 0.5 * (e1 * (0.5 - d) + e2 * (0.5 + d)) / p;
    } else {
      log_p = std::log(kFloor);
      dlogp_dd = dlogp_dinvb = 0.0;
    }
  }
  const double raw = -log_p / kLn2;
  LaplaceBits out{std::min(raw, max_bits), 0.0, 0.0};
  if (raw <= max_bits) {
    const double g = -1.0 / kLn2;  // d bits / d log_p
    const double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
    out.d_mu = g * dlogp_dd * -sign;
    out.d_ls = g * dlogp_dinvb * -inv_b;
  }
  return out;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // V never crosses a call between the clones (all inline)
#endif

// kLanes floats (GCC/Clang vector extension: SIMD of whatever width the target has)
typedef float V __attribute__((vector_size(4 * kLanes)));

__attribute__((always_inline)) inline V clamp(const V& v, float lo, float hi) {
  V out = v < lo ? V{} + lo : v;
  return out > hi ? V{} + hi : out;
}

// n zeroed lane vectors on a 64-byte boundary (std::vector drops the vector type's alignment)
class VecBuf {
 public:
  VecBuf() = default;
  explicit VecBuf(size_t n) { assign(n); }
  void assign(size_t n) {
    p_.reset(static_cast<V*>(std::aligned_alloc(64, std::max<size_t>(1, n) * sizeof(V))));
    if (!p_) throw std::bad_alloc();
    std::memset(static_cast<void*>(p_.get()), 0, n * sizeof(V));
    n_ = n;
  }
  V* data() { return p_.get(); }
  V& operator[](size_t i) { return p_.get()[i]; }
  bool empty() const { return n_ == 0; }

 private:
  struct Free {
    void operator()(V* p) const { std::free(p); }
  };
  std::unique_ptr<V, Free> p_;
  size_t n_ = 0;
};

// Scratch of one thread: per layer the block's activations [width][kLanes] and pass masks.
struct Scratch {
  VecBuf act;   // [L + 1][kMaxWidth]: inputs of each layer, then the last outputs
  VecBuf mask;  // same layout: 1 where the clamp after that value passes the gradient
  VecBuf grad;  // [2][kMaxWidth]: gradient ping-pong
  explicit Scratch(size_t layers) : act((layers + 1) * kMaxWidth), mask((layers + 1) * kMaxWidth), grad(2 * kMaxWidth) {}
  float* a(size_t l) { return reinterpret_cast<float*>(act.data() + l * kMaxWidth); }
  float* m(size_t l) { return reinterpret_cast<float*>(mask.data() + l * kMaxWidth); }
  float* g(size_t i) { return reinterpret_cast<float*>(grad.data() + i * kMaxWidth); }
};

// One attribute: bits of its samples, and (when wanted) the gradients of their sum.
__attribute__((target_clones("avx2", "default")))
double attribute_rate(int a, const float* values, int64_t T, const int64_t* positions, const int64_t* starts,
                      int64_t P, const std::vector<Layer>& layers, const Constants& c, float* grad_values,
                      const std::vector<float*>& grad_w, const std::vector<float*>& grad_b, Scratch& s) {
  const size_t L = layers.size();
  const int K = layers[0].in;
  const float* row = values + int64_t(a) * T;
  float* grow = grad_values ? grad_values + int64_t(a) * T : nullptr;
  if (grow) std::fill(grow, grow + T, 0.f);  // here, on the attribute's thread: the rows zero in parallel
  const bool want_grad = grad_values != nullptr || !grad_w.empty();
  // weight-gradient sums per weight and lane [weights][kLanes], over the blocks in order
  VecBuf gw_sum, gb_sum;
  size_t num_w = 0, num_b = 0;
  if (!grad_w.empty()) {
    for (const Layer& l : layers) num_w += size_t(l.in) * l.out, num_b += size_t(l.out);
    gw_sum.assign(num_w);
    gb_sum.assign(num_b);
  }
  double total = 0.0;
  float x[kLanes];
  for (int64_t p0 = 0; p0 < P; p0 += kLanes) {
    const int nl = int(std::min<int64_t>(kLanes, P - p0));
    // contexts: zero before the segment start, and in the lanes past the last sample
    float* h0 = s.a(0);
    float* m0 = s.m(0);
    for (int j = 0; j < kLanes; ++j) {
      const int64_t first = j < nl ? positions[p0 + j] - K : 0;  // source of context 0
      const int64_t valid_from = j < nl ? starts[p0 + j] - first : K;  // contexts k >= this are valid
      for (int k = 0; k < K; ++k) h0[k * kLanes + j] = k >= valid_from ? row[first + k] : 0.f;
    }
    for (int k = 0; k < K; ++k) {
      V* hk = reinterpret_cast<V*>(h0) + k;
      const V h = clamp(*hk, -c.context_clamp, c.context_clamp);
      reinterpret_cast<V*>(m0)[k] = *hk == h ? V{} + 1.f : V{};
      *hk = h;
    }
    for (int j = 0; j < kLanes; ++j) x[j] = j < nl ? row[positions[p0 + j]] : 0.f;
    // the MLP, layer by layer across the lanes
    for (size_t l = 0; l < L; ++l) {
      const Layer& ly = layers[l];
      const float* w = ly.w + size_t(a) * ly.in * ly.out;
      const float* b = ly.b + size_t(a) * ly.out;
      const V* in = reinterpret_cast<const V*>(s.a(l));
      V* out = reinterpret_cast<V*>(s.a(l + 1));
      V* om = reinterpret_cast<V*>(s.m(l + 1));
      const bool last = l + 1 == L;
      for (int o = 0; o < ly.out; ++o) {
        V z = V{} + b[o];
        for (int i = 0; i < ly.in; ++i) z += in[i] * w[i * ly.out + o];
        // the clamp after the layer: hidden activations to [0, hidden_clamp], the log-scale to
        // the table range, mu none
        const float lo = !last ? 0.f : o == 1 ? c.log_scale_min : -INFINITY;
        const float hi = !last ? c.hidden_clamp : o == 1 ? c.log_scale_max : INFINITY;
        const V h = clamp(z, lo, hi);
        om[o] = z == h ? V{} + 1.f : V{};
        out[o] = h;
      }
    }
    // the bits, and the gradient of their sum at the outputs (mu, log-scale)
    const float* outv = s.a(L);
    float* dz = s.g(0);  // [out][kLanes] of the current layer
    for (int j = 0; j < kLanes; ++j) {
      if (j >= nl) {
        dz[j] = dz[kLanes + j] = 0.f;
        continue;
      }
      const LaplaceBits lb = laplace_bits(x[j], outv[j], outv[kLanes + j], c.max_bits);
      total += lb.bits;
      dz[j] = float(lb.d_mu);
      dz[kLanes + j] = float(lb.d_ls) * s.m(L)[kLanes + j];
      if (grow) grow[positions[p0 + j]] += float(-lb.d_mu);  // d bits / d x = -d bits / d mu
    }
    if (!want_grad) continue;
    // back through the layers
    size_t wofs = num_w, bofs = num_b;
    float* cur = dz;
    float* nxt = s.g(1);
    for (size_t l = L; l-- > 0;) {
      const Layer& ly = layers[l];
      const float* w = ly.w + size_t(a) * ly.in * ly.out;
      const float* in = s.a(l);
      const V* cv = reinterpret_cast<const V*>(cur);
      const V* iv = reinterpret_cast<const V*>(in);
      if (!gw_sum.empty()) {  // per-lane sums, added across lanes at the end
        wofs -= size_t(ly.in) * ly.out;
        bofs -= size_t(ly.out);
        V* sb = gb_sum.data() + bofs;
        V* sw = gw_sum.data() + wofs;
        for (int o = 0; o < ly.out; ++o) sb[o] += cv[o];
        for (int i = 0; i < ly.in; ++i)
          for (int o = 0; o < ly.out; ++o) sw[i * ly.out + o] += iv[i] * cv[o];
      }
      if (l == 0 && !grow) break;
      const V* mk = reinterpret_cast<const V*>(s.m(l));
      V* nv = reinterpret_cast<V*>(nxt);
      for (int i = 0; i < ly.in; ++i) {
        V g = V{};
        for (int o = 0; o < ly.out; ++o) g += cv[o] * w[i * ly.out + o];
        nv[i] = g * mk[i];
      }
      std::swap(cur, nxt);
    }
    if (grow)  // cur: d bits / d contexts [K][kLanes]
      for (int j = 0; j < nl; ++j)
        for (int k = 0; k < K; ++k) {
          const int64_t src = positions[p0 + j] - K + k;
          if (src >= starts[p0 + j]) grow[src] += cur[k * kLanes + j];
        }
  }
  if (!gw_sum.empty()) {
    size_t wofs = 0, bofs = 0;
    for (size_t l = 0; l < L; ++l) {
      const Layer& ly = layers[l];
      float* gw = grad_w[l] + size_t(a) * ly.in * ly.out;
      float* gb = grad_b[l] + size_t(a) * ly.out;
      auto lanes_sum = [](const V& v) {  // in float64, lanes in order
        double t = 0.0;
        for (int j = 0; j < kLanes; ++j) t += v[j];
        return float(t);
      };
      for (size_t i = 0; i < size_t(ly.in) * ly.out; ++i) gw[i] = lanes_sum(gw_sum[wofs + i]);
      for (int o = 0; o < ly.out; ++o) gb[o] = lanes_sum(gb_sum[bofs + o]);
      wofs += size_t(ly.in) * ly.out;
      bofs += size_t(ly.out);
    }
  }
  return total;
}

std::string shape_of(const py::buffer_info& b) {
  std::string s = "[";
  for (size_t i = 0; i < b.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(b.shape[i]);
  return s + "]";
}

// values [A, T], positions [P], starts [P] (the segment start of each position), weights[l]
// [A, in, out], biases[l] [A, out] -> (bits per attribute [A] float64, grad_values [A, T] or None,
// grad_weights, grad_biases (lists, empty unless wanted)).
py::tuple arm_rate(F32 values, I64 positions, I64 starts, const std::vector<F32>& weights,
                   const std::vector<F32>& biases, double context_clamp, double hidden_clamp, double log_scale_min,
                   double log_scale_max, double max_bits, bool grad_values, bool grad_params, int threads) {
  auto vb = values.request();
  if (vb.ndim != 2) throw std::invalid_argument("arm_rate: values must be [A, T], got " + shape_of(vb));
  const int64_t A = vb.shape[0], T = vb.shape[1];
  if (positions.ndim() != 1 || starts.ndim() != 1 || starts.shape(0) != positions.shape(0))
    throw std::invalid_argument("arm_rate: positions and starts must be two [P] arrays");
  const int64_t P = positions.shape(0);
  if (weights.empty() || weights.size() != biases.size())
    throw std::invalid_argument("arm_rate: weights and biases must be two non-empty lists of one length");
  std::vector<Layer> layers;
  for (size_t l = 0; l < weights.size(); ++l) {
    auto wb = weights[l].request();
    auto bb = biases[l].request();
    if (wb.ndim != 3 || wb.shape[0] != A || bb.ndim != 2 || bb.shape[0] != A || bb.shape[1] != wb.shape[2])
      throw std::invalid_argument("arm_rate: layer " + std::to_string(l) + " has weights " + shape_of(wb) +
                                  " and biases " + shape_of(bb) + " for " + std::to_string(A) + " attributes");
    Layer ly;
    ly.in = int(wb.shape[1]);
    ly.out = int(wb.shape[2]);
    if (ly.in < 1 || ly.in > kMaxWidth || ly.out < 1 || ly.out > kMaxWidth)
      throw std::invalid_argument("arm_rate: layer widths must be in [1, 255], got " + shape_of(wb));
    if (l > 0 && ly.in != layers.back().out)
      throw std::invalid_argument("arm_rate: layer " + std::to_string(l) + " takes " + std::to_string(ly.in) +
                                  " inputs, the layer before gives " + std::to_string(layers.back().out));
    ly.w = static_cast<const float*>(wb.ptr);
    ly.b = static_cast<const float*>(bb.ptr);
    layers.push_back(ly);
  }
  if (layers.back().out != 2) throw std::invalid_argument("arm_rate: the last layer must give 2 outputs (mu, log-scale)");
  const int64_t* pos = positions.data();
  const int64_t* st = starts.data();
  for (int64_t i = 0; i < P; ++i)
    if (pos[i] < 0 || pos[i] >= T || st[i] < 0 || st[i] > pos[i])
      throw std::invalid_argument("arm_rate: position " + std::to_string(pos[i]) + " (segment start " +
                                  std::to_string(st[i]) + ") outside the " + std::to_string(T) + " latents");
  const Constants c{float(context_clamp), float(hidden_clamp), float(log_scale_min), float(log_scale_max), max_bits};

  py::array_t<double> bits(A);
  py::object gv = py::none();
  float* gvp = nullptr;
  if (grad_values) {
    py::array_t<float> g({A, T});
    gvp = g.mutable_data();  // each row is zeroed by the thread that computes its attribute
    gv = g;
  }
  py::list gws, gbs;
  std::vector<float*> gwp, gbp;
  if (grad_params)
    for (const Layer& ly : layers) {
      py::array_t<float> gw({A, int64_t(ly.in), int64_t(ly.out)});
      py::array_t<float> gb({A, int64_t(ly.out)});
      gwp.push_back(gw.mutable_data());
      gbp.push_back(gb.mutable_data());
      gws.append(gw);
      gbs.append(gb);
    }
  double* bp = bits.mutable_data();
  const float* vp = static_cast<const float*>(vb.ptr);
  {
    py::gil_scoped_release release;
    std::string error;
#pragma omp parallel num_threads(std::max(1, threads))
    {
      Scratch s(layers.size());
#pragma omp for schedule(dynamic, 1)
      for (int64_t a = 0; a < A; ++a) bp[a] = attribute_rate(int(a), vp, T, pos, st, P, layers, c, gvp, gwp, gbp, s);
    }
  }
  return py::make_tuple(bits, gv, gws, gbs);
}

}  // namespace

PYBIND11_MODULE(_arm_rate_cpu, m) {
  m.doc() = "The float ARM's training rate with its gradient in one pass (see arm_rate.py)";
  m.attr("API_VERSION") = API_VERSION;
  m.def("arm_rate", &arm_rate, py::arg("values"), py::arg("positions"), py::arg("starts"), py::arg("weights"),
        py::arg("biases"), py::arg("context_clamp"), py::arg("hidden_clamp"), py::arg("log_scale_min"),
        py::arg("log_scale_max"), py::arg("max_bits"), py::arg("grad_values"), py::arg("grad_params"),
        py::arg("threads"));
}
