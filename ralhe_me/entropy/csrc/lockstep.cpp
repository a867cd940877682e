// Native lockstep loop of the latent decoder (ralhe_me/entropy/latent_coder.py).
//
// Per step t it evaluates the integer ARM of every active segment of every attribute, turns the
// outputs into (mu_int, table index) exactly as QuantizedArm.code_indices does, reads the step's
// symbols from the CompressAI-format stream with ralhe::RansReader (rans_decoder.h), and writes the
// decoded latents back.  `run` instead hands CompressAI's RansDecoder.decode_stream the Python
// lists of each step (the reference for the reader).  The pure numpy/torch loop in
// latent_coder.py is the reference for the whole; tests compare the three.
//
// Exactness.  Every product and partial sum of the ARM is an integer whose magnitude is bounded
// (QuantizedArm._layer_bounds) below 2**52, below 2**31 while the context bound stays under
// `int32_bound` and below 2**24 under `float_bound` (both computed in Python from the same
// bounds): float32, int32 or float64 arithmetic, whichever the bound so far allows, is then
// exact, so neither the evaluation order, nor fused multiply-adds, nor the vector width can
// change a result.  The output rounding is done in int64.
//
// Layout.  Segments are contiguous (Gp = G rounded up to the lane block), so the K context rows of
// a block of segments are contiguous loads.  The contexts live in a ring of K rows, int16 [A][K][Gp]
// (contexts are clamped to +-(2**15 - 1), so int16 holds them exactly): latent t of a segment is
// row t % K, and rows start at zero (the contexts before a segment's start).  The ring stays in
// the L2 cache; the latents themselves go to vals, int32 [A][S][Gp], written once per step.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "rans_decoder.h"

namespace py = pybind11;

namespace {

constexpr int kLanes = 16;   // segments evaluated together (one AVX-512 float register)
constexpr int kMaxDim = 256; // ArmConfig allows up to 255 inputs / hidden units

struct Model {
  int A = 0, K = 0, L = 0;  // attributes, context size, linear layers
  std::vector<int> din, dout;  // per layer
  std::vector<size_t> woff, boff;  // per (a, layer): offsets into the weight / bias arrays
  std::vector<float> wf, bf;  // float32 copies (used only where exact)
  std::vector<double> wd, bd;  // float64 copies
  std::vector<int32_t> wi, bi;  // int32 copies (used only where no sum can overflow)
  std::vector<double> hscale;  // per (a, hidden layer): 2**-k
  std::vector<int> hshift;  // per (a, hidden layer): k
  std::vector<int> kmu, kls;  // per a: output shifts to the mean / log-scale grids
  int64_t hmax = 0, cclamp = 0;
  int mbits = 0;  // log2 of the number of mean bins
  int64_t mu_limit_q = 0, ls_min_units = 0, nbins = 0;
  std::vector<int64_t> zero_mu, zero_idx;  // per a: the result of an all-zero context
};

inline int64_t round_shift(int64_t acc, int k) {
  // floor((acc + (k > 0 ? 2**(k-1) : 0)) * 2**-k), acc an exact integer
  if (k > 0) return (acc + (int64_t(1) << (k - 1))) >> k;  // arithmetic shift: floor
  return acc * (int64_t(1) << (-k));
}

inline void finish_row(const Model& md, int a, int64_t acc_mu, int64_t acc_ls, int64_t* mu_int, int64_t* idx) {
  const int64_t m = int64_t(1) << md.mbits;
  int64_t mu_q = round_shift(acc_mu, md.kmu[a]);
  mu_q = std::min(std::max(mu_q, -md.mu_limit_q), md.mu_limit_q);
  int64_t sb = round_shift(acc_ls, md.kls[a]) - md.ls_min_units;
  sb = std::min(std::max(sb, int64_t(0)), md.nbins - 1);
  const int64_t mi = (2 * mu_q + m) >> (md.mbits + 1);  // floor((2 mu_q + m) / (2 m))
  *mu_int = mi;
  *idx = sb * m + (mu_q - mi * m) + m / 2;
}

// finish_row on a block of lanes (vectorizable: the shifts are constant per attribute).
template <typename T>
inline __attribute__((always_inline)) void finish_block(const Model& md, int a, const T* y_mu, const T* y_ls,
                                                        int nl, int64_t* mu_int, int64_t* idx) {
  alignas(64) int64_t am[kLanes], as[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    am[l] = int64_t(y_mu[l]);
    as[l] = int64_t(y_ls[l]);
  }
  for (int which = 0; which < 2; ++which) {
    int64_t* v = which ? as : am;
    const int k = which ? md.kls[a] : md.kmu[a];
    if (k > 0) {
      const int64_t add = int64_t(1) << (k - 1);
      for (int l = 0; l < kLanes; ++l) v[l] = (v[l] + add) >> k;
    } else {
      const int64_t mul = int64_t(1) << (-k);
      for (int l = 0; l < kLanes; ++l) v[l] *= mul;
    }
  }
  const int64_t m = int64_t(1) << md.mbits, lim = md.mu_limit_q, lo = md.ls_min_units, top = md.nbins - 1;
  const int sh = md.mbits + 1;
  alignas(64) int64_t mo[kLanes], io[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const int64_t mu_q = std::min(std::max(am[l], -lim), lim);
    const int64_t sb = std::min(std::max(as[l] - lo, int64_t(0)), top);
    const int64_t mi = (2 * mu_q + m) >> sh;
    mo[l] = mi;
    io[l] = sb * m + (mu_q - mi * m) + m / 2;
  }
  std::memcpy(mu_int, mo, sizeof(int64_t) * nl);
  std::memcpy(idx, io, sizeof(int64_t) * nl);
}

// Lane vectors (GCC vector extensions: one zmm per float vector with AVX-512, split otherwise).
template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float V __attribute__((vector_size(kLanes * sizeof(float))));
  typedef int32_t I __attribute__((vector_size(kLanes * sizeof(int32_t))));
};
template <>
struct Lanes<double> {
  typedef double V __attribute__((vector_size(kLanes * sizeof(double))));
  typedef int32_t I __attribute__((vector_size(kLanes * sizeof(int32_t))));
};
template <>
struct Lanes<int32_t> {
  typedef int32_t V __attribute__((vector_size(kLanes * sizeof(int32_t))));
  typedef int32_t I __attribute__((vector_size(kLanes * sizeof(int32_t))));
};
typedef int16_t I16 __attribute__((vector_size(kLanes * sizeof(int16_t))));

// acc[o] = b[o] + sum_i x[i] * w[i][o] for a block of lanes (DO fixed: accumulators in registers).
// (GCC 12 wrongly reports acc as maybe uninitialized for int32 lanes in the AVX-512 clone.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <typename T, int DO>
inline __attribute__((always_inline)) void dense_fixed(const typename Lanes<T>::V* x, typename Lanes<T>::V* y,
                                                       int di, const T* w, const T* b) {
  typedef typename Lanes<T>::V V;
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

template <typename T>
inline __attribute__((always_inline)) void dense_any(const typename Lanes<T>::V* x, typename Lanes<T>::V* y, int di,
                                                     int dn, const T* w, const T* b) {
  typedef typename Lanes<T>::V V;
  for (int o = 0; o < dn; ++o) y[o] = V{} + b[o];
  for (int i = 0; i < di; ++i)
    for (int o = 0; o < dn; ++o) y[o] += x[i] * w[i * dn + o];
}

// One step: contexts of segments [0, na) of every attribute -> mu_int, idx [A * na] (a-major).
template <typename T>
inline __attribute__((always_inline)) void eval_step_impl(const Model& md, const T* W, const T* B,
                                                          const int16_t* ring, int64_t Gp, int t, int na,
                                                          int64_t* mu_out, int64_t* idx_out) {
  typedef typename Lanes<T>::V V;
  typedef typename Lanes<T>::I I;
  V xa[kMaxDim], ya[kMaxDim];
  const V hmax = V{} + T(md.hmax), zero = V{};
  const int16_t* rows[kMaxDim];
  for (int a = 0; a < md.A; ++a) {
    for (int j = 0; j < md.K; ++j) rows[j] = ring + (int64_t(a) * md.K + (t + j) % md.K) * Gp;
    for (int g0 = 0; g0 < na; g0 += kLanes) {
      const int nl = std::min(kLanes, na - g0);
      I16 any = I16{};
      for (int j = 0; j < md.K; ++j) {
        I16 v;
        std::memcpy(&v, rows[j] + g0, sizeof(v));
        any |= v;
        xa[j] = __builtin_convertvector(v, V);
      }
      int64_t* mo = mu_out + int64_t(a) * na + g0;
      int64_t* io = idx_out + int64_t(a) * na + g0;
      int16_t anys[kLanes];
      std::memcpy(anys, &any, sizeof(anys));
      int16_t nz = 0;
      for (int l = 0; l < kLanes; ++l) nz |= anys[l];
      if (!nz) {
        for (int l = 0; l < nl; ++l) {
          mo[l] = md.zero_mu[a];
          io[l] = md.zero_idx[a];
        }
        continue;
      }
      V* x = xa;
      V* y = ya;
      for (int layer = 0; layer < md.L; ++layer) {
        const int di = md.din[layer], dn = md.dout[layer];
        const T* w = W + md.woff[size_t(a) * md.L + layer];
        const T* b = B + md.boff[size_t(a) * md.L + layer];
        switch (dn) {  // fixed widths keep the accumulators in registers
          case 2: dense_fixed<T, 2>(x, y, di, w, b); break;
          case 4: dense_fixed<T, 4>(x, y, di, w, b); break;
          case 8: dense_fixed<T, 8>(x, y, di, w, b); break;
          case 16: dense_fixed<T, 16>(x, y, di, w, b); break;
          default: dense_any<T>(x, y, di, dn, w, b);
        }
        if (layer + 1 < md.L) {
          if constexpr (std::is_integral<T>::value) {
            // clamp(floor(acc * 2**-k), 0, hmax): an arithmetic shift floors (k >= 0 checked)
            const int k = md.hshift[size_t(a) * md.L + layer];
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
              y[o] = __builtin_convertvector(__builtin_convertvector(v, I), V);
            }
          }
          std::swap(x, y);
        }
      }
      T ymu[kLanes], yls[kLanes];
      std::memcpy(ymu, &y[0], sizeof(ymu));
      std::memcpy(yls, &y[1], sizeof(yls));
      finish_block(md, a, ymu, yls, nl, mo, io);
    }
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void eval_step_f32(
    const Model& md, const int16_t* ring, int64_t Gp, int t, int na, int64_t* mu, int64_t* idx) {
  eval_step_impl<float>(md, md.wf.data(), md.bf.data(), ring, Gp, t, na, mu, idx);
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void eval_step_i32(
    const Model& md, const int16_t* ring, int64_t Gp, int t, int na, int64_t* mu, int64_t* idx) {
  eval_step_impl<int32_t>(md, md.wi.data(), md.bi.data(), ring, Gp, t, na, mu, idx);
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void eval_step_f64(
    const Model& md, const int16_t* ring, int64_t Gp, int t, int na, int64_t* mu, int64_t* idx) {
  eval_step_impl<double>(md, md.wd.data(), md.bd.data(), ring, Gp, t, na, mu, idx);
}

// A reader over a Python bytes object (which must outlive it).
ralhe::RansReader reader_over(const py::bytes& data) {
  char* buffer = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(data.ptr(), &buffer, &size) != 0) throw py::error_already_set();
  return ralhe::RansReader(reinterpret_cast<const uint8_t*>(buffer), size_t(size));
}

typedef py::array_t<int32_t, py::array::c_style | py::array::forcecast> Int32Array;
typedef py::array_t<int64_t, py::array::c_style | py::array::forcecast> Int64Array;

// The table family as flat arrays (LaplaceTables.flat): table t is cdf_flat[cdf_start[t]:] with
// cdf_lengths[t] entries and value offset offsets[t].  Checked once; the arrays must outlive it.
class FlatTables {
 public:
  FlatTables(const Int32Array& cdf_flat, const Int64Array& cdf_start, const Int32Array& cdf_lengths,
             const Int32Array& offsets)
      : cdf_(cdf_flat.data()), start_(cdf_start.data()), len_(cdf_lengths.data()), off_(offsets.data()),
        count_(cdf_start.size()) {
    if (cdf_flat.ndim() != 1 || cdf_start.ndim() != 1 || cdf_lengths.ndim() != 1 || offsets.ndim() != 1 ||
        cdf_lengths.size() != count_ || offsets.size() != count_)
      throw std::invalid_argument("flat tables must be 1-d with one start, length and offset per table");
    for (int64_t t = 0; t < count_; ++t)
      if (len_[t] < 3 || start_[t] < 0 || start_[t] + len_[t] > cdf_flat.size())
        throw std::invalid_argument("flat table out of range");
  }

  int64_t count() const { return count_; }

  int32_t decode(ralhe::RansReader& reader, int64_t t) const {
    if (t < 0 || t >= count_) throw std::invalid_argument("table index out of range");
    return reader.decode(cdf_ + start_[t], len_[t], off_[t]);
  }

 private:
  const int32_t* cdf_;
  const int64_t* start_;
  const int32_t* len_;
  const int32_t* off_;
  int64_t count_;
};

class Lockstep {
 public:
  // weights[l]: int64 [A, in, out]; biases[l]: int64 [A, out]; see QuantizedArm.
  Lockstep(int segments, int segment_length, py::list weights, py::list biases, std::vector<int> shifts,
           int frac_bits, int64_t hidden_limit, int64_t context_clamp, int mean_bins_log2, int log_scale_step_log2,
           int64_t log_scale_min_units, int64_t num_scale_bins, int64_t mu_limit, int64_t float_bound,
           int64_t int32_bound, py::list cdfs, py::list cdf_lengths, py::list offsets)
      : G_(segments), S_(segment_length), float_bound_(float_bound), int32_bound_(int32_bound), cdfs_(cdfs), lengths_(cdf_lengths),
        offsets_(offsets) {
    Model& md = md_;
    md.A = int(shifts.size());
    md.L = int(py::len(weights));
    if (md.A < 1 || md.L < 1 || int(py::len(biases)) != md.L) throw std::invalid_argument("bad ARM shapes");
    if (py::len(cdfs) != py::len(cdf_lengths) || py::len(cdfs) != py::len(offsets))
      throw std::invalid_argument("table lists differ in length");
    num_tables_ = int64_t(py::len(cdfs));
    md.hmax = hidden_limit;
    md.cclamp = context_clamp;
    if (context_clamp < 0 || context_clamp > 32767) throw std::invalid_argument("context clamp must fit int16");
    md.mbits = mean_bins_log2;
    md.mu_limit_q = mu_limit << mean_bins_log2;
    md.ls_min_units = log_scale_min_units;
    md.nbins = num_scale_bins;
    if (num_tables_ != (num_scale_bins << mean_bins_log2)) throw std::invalid_argument("table count mismatch");
    std::vector<py::array_t<int64_t, py::array::c_style | py::array::forcecast>> ws, bs;
    for (int l = 0; l < md.L; ++l) {
      ws.emplace_back(weights[l]);
      bs.emplace_back(biases[l]);
      const auto& w = ws.back();
      if (w.ndim() != 3 || w.shape(0) != md.A || bs.back().ndim() != 2 || bs.back().shape(1) != w.shape(2))
        throw std::invalid_argument("bad ARM layer shapes");
      if (w.shape(1) > kMaxDim || w.shape(2) > kMaxDim) throw std::invalid_argument("ARM layer too wide");
      if (l > 0 && w.shape(1) != md.dout.back()) throw std::invalid_argument("ARM layers do not chain");
      md.din.push_back(int(w.shape(1)));
      md.dout.push_back(int(w.shape(2)));
    }
    if (md.dout.back() != 2) throw std::invalid_argument("the last ARM layer must have 2 outputs");
    md.K = md.din[0];
    for (int a = 0; a < md.A; ++a) {
      for (int l = 0; l < md.L; ++l) {
        const int in_frac = l == 0 ? 0 : frac_bits;
        const int di = md.din[l], dn = md.dout[l];
        md.woff.push_back(md.wd.size());
        md.boff.push_back(md.bd.size());
        const int64_t* w = ws[l].data() + int64_t(a) * di * dn;
        const int64_t* b = bs[l].data() + int64_t(a) * dn;
        for (int i = 0; i < di * dn; ++i) md.wd.push_back(double(w[i]));
        for (int o = 0; o < dn; ++o) md.bd.push_back(std::ldexp(double(b[o]), in_frac));
        const int k = shifts[a] + in_frac - frac_bits;
        md.hscale.push_back(std::ldexp(1.0, -k));
        md.hshift.push_back(k);
      }
      const int in_frac = md.L > 1 ? frac_bits : 0;
      md.kmu.push_back(shifts[a] + in_frac - mean_bins_log2);
      md.kls.push_back(shifts[a] + in_frac - log_scale_step_log2);
    }
    md.wf.assign(md.wd.begin(), md.wd.end());
    md.bf.assign(md.bd.begin(), md.bd.end());
    if (int32_bound_ >= 0) {  // Python checked: every weight, bias and partial sum below 2**31, shifts >= 0
      for (double v : md.wd) md.wi.push_back(int32_t(v));
      for (double v : md.bd) md.bi.push_back(int32_t(v));
    }
    // The result of an all-zero context, per attribute (evaluated once, in float64).
    Gp_ = ((int64_t(G_) + kLanes - 1) / kLanes) * kLanes;
    md.zero_mu.assign(md.A, 0);
    md.zero_idx.assign(md.A, 0);
    {
      std::vector<int64_t> zm(size_t(md.A) * kLanes), zi(size_t(md.A) * kLanes);
      eval_zero(md, zm, zi);
      for (int a = 0; a < md.A; ++a) {
        md.zero_mu[a] = zm[size_t(a) * kLanes];
        md.zero_idx[a] = zi[size_t(a) * kLanes];
      }
    }
    ring_.assign(size_t(md.A) * md.K * Gp_, 0);
    vals_.assign(size_t(md.A) * S_ * Gp_, 0);
    mu_.resize(size_t(md.A) * G_);
    idx_.resize(size_t(md.A) * G_);
    remap_.assign(num_tables_, -1);
  }

  int num_attributes() const { return md_.A; }
  int64_t bound() const { return bound_; }

  // ARM of step t -> (table indexes, cdfs, lengths, offsets): decode_stream's arguments, with only
  // the tables this step uses (ascending), indexes remapped to them.
  py::tuple prepare(int t, int na) {
    check_step(t, na);
    const int64_t n = int64_t(md_.A) * na;
    eval_step(t, na);
    std::vector<int64_t> used;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t ti = idx_[i];
      if (ti < 0 || ti >= num_tables_) throw std::runtime_error("table index out of range");
      if (remap_[ti] < 0) {
        remap_[ti] = 0;
        used.push_back(ti);
      }
    }
    std::sort(used.begin(), used.end());
    py::list cdfs(used.size()), lens(used.size()), offs(used.size());
    for (size_t u = 0; u < used.size(); ++u) {
      remap_[used[u]] = int64_t(u);
      cdfs[u] = cdfs_[used[u]];
      lens[u] = lengths_[used[u]];
      offs[u] = offsets_[used[u]];
    }
    PyObject* idx = PyList_New(n);
    if (!idx) throw py::error_already_set();
    for (int64_t i = 0; i < n; ++i) {
      PyObject* v = PyLong_FromLongLong(remap_[idx_[i]]);
      if (!v) {
        Py_DECREF(idx);
        throw py::error_already_set();
      }
      PyList_SET_ITEM(idx, i, v);
    }
    for (int64_t u : used) remap_[u] = -1;
    return py::make_tuple(py::reinterpret_steal<py::list>(idx), cdfs, lens, offs);
  }

  // The decoded residuals of step t (decode_stream's list) -> latents x = r + mu_int.
  void ingest(int t, int na, py::handle residuals) {
    check_step(t, na);
    const int64_t n = int64_t(md_.A) * na;
    PyObject* seq = PySequence_Fast(residuals.ptr(), "residuals must be a sequence");
    if (!seq) throw py::error_already_set();
    if (PySequence_Fast_GET_SIZE(seq) != n) {
      Py_DECREF(seq);
      throw std::runtime_error("decode_stream returned a wrong number of symbols");
    }
    PyObject** items = PySequence_Fast_ITEMS(seq);
    std::vector<int64_t> res(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const long long r = PyLong_AsLongLong(items[i]);
      if (r == -1 && PyErr_Occurred()) {
        Py_DECREF(seq);
        throw py::error_already_set();
      }
      res[i] = r;
    }
    Py_DECREF(seq);
    store(t, na, res.data());
  }

  // Decoded residuals r [A * na] of step t -> latents x = r + mu_int, into vals_ and the ring.
  void store(int t, int na, const int64_t* res) {
    int64_t bound = bound_;
    for (int a = 0; a < md_.A; ++a) {
      int32_t* row = vals_.data() + (int64_t(a) * S_ + t) * Gp_;
      int16_t* crow = ring_.data() + (int64_t(a) * md_.K + t % md_.K) * Gp_;
      for (int g = 0; g < na; ++g) {
        const int64_t i = int64_t(a) * na + g;
        int64_t x = res[i] + mu_[i];
        // a valid stream has |x| <= LATENT_LIMIT < 2**24; saturate garbage from a corrupt one
        x = std::min<int64_t>(std::max<int64_t>(x, INT32_MIN + 1), INT32_MAX);
        row[g] = int32_t(x);
        crow[g] = int16_t(std::min<int64_t>(std::max<int64_t>(x, -md_.cclamp), md_.cclamp));
        bound = std::max(bound, x < 0 ? -x : x);
      }
    }
    bound_ = bound;
  }

  // The whole loop: active[t] segments at step t; decode(indexes, cdfs, lengths, offsets) -> list.
  void run(py::object decode, py::array_t<int64_t, py::array::c_style | py::array::forcecast> active) {
    auto act = active.unchecked<1>();
    for (py::ssize_t t = 0; t < act.shape(0); ++t) {
      const int na = int(act(t));
      py::tuple args = prepare(int(t), na);
      py::object res = decode(*args);
      ingest(int(t), na, res);
    }
  }

  // The whole loop with the rANS decoding native too (ralhe::RansReader, the same symbols as
  // CompressAI's decoder on the same bytes): `data` is the stream, the tables are flat arrays
  // (cdf_flat int32, table t's `cdf_lengths[t]` entries from cdf_start[t]; its value offset).
  // Returns false when the stream ran out or held an impossible escape (a corrupt stream).
  bool run_native(py::bytes data, Int64Array active, Int32Array cdf_flat, Int64Array cdf_start,
                  Int32Array cdf_lengths, Int32Array offsets) {
    auto act = active.unchecked<1>();
    const FlatTables tables(cdf_flat, cdf_start, cdf_lengths, offsets);
    if (tables.count() != num_tables_) throw std::invalid_argument("flat tables must have one entry per table");
    ralhe::RansReader reader = reader_over(data);
    std::vector<int64_t> res;
    for (py::ssize_t t = 0; t < act.shape(0); ++t) {
      const int na = int(act(t));
      check_step(int(t), na);
      const int64_t n = int64_t(md_.A) * na;
      eval_step(int(t), na);
      res.resize(size_t(n));
      for (int64_t i = 0; i < n; ++i) res[i] = tables.decode(reader, idx_[i]);
      if (reader.overrun()) return false;
      store(int(t), na, res.data());
    }
    return true;
  }

  // Per level int64 [A, n_l]: level l holds segments seg0[l] .. seg0[l] + nseg[l] - 1 (natural
  // order), segment g at coding position position[g].
  py::list levels(std::vector<int64_t> sizes, py::array_t<int64_t, py::array::c_style | py::array::forcecast> position) {
    auto pos = position.unchecked<1>();
    if (pos.shape(0) != G_) throw std::invalid_argument("position must have one entry per segment");
    py::list out;
    int64_t g0 = 0;
    const int A = md_.A;
    for (int64_t n : sizes) {
      const int64_t ng = (n + S_ - 1) / S_;
      py::array_t<int64_t> arr({int64_t(A), n});
      int64_t* o = arr.mutable_data();
      for (int a = 0; a < A; ++a) {
        const int32_t* base = vals_.data() + int64_t(a) * S_ * Gp_;
        int64_t* orow = o + int64_t(a) * n;
        for (int64_t j = 0; j < ng; ++j) {
          const int64_t c = pos(g0 + j);
          if (c < 0 || c >= G_) throw std::invalid_argument("position out of range");
          const int64_t len = std::min<int64_t>(S_, n - j * S_);
          int64_t* dst = orow + j * S_;
          for (int64_t s = 0; s < len; ++s) dst[s] = base[s * Gp_ + c];
        }
      }
      g0 += ng;
      out.append(arr);
    }
    if (g0 != G_) throw std::invalid_argument("level sizes do not match the segments");
    return out;
  }

 private:
  // The ARM of step t in the fastest arithmetic that is exact under the context bound so far.
  void eval_step(int t, int na) {
    if (bound_ <= float_bound_)
      eval_step_f32(md_, ring_.data(), Gp_, t, na, mu_.data(), idx_.data());
    else if (bound_ <= int32_bound_)
      eval_step_i32(md_, ring_.data(), Gp_, t, na, mu_.data(), idx_.data());
    else
      eval_step_f64(md_, ring_.data(), Gp_, t, na, mu_.data(), idx_.data());
  }

  void check_step(int t, int na) const {
    if (t < 0 || t >= S_ || na < 0 || na > G_) throw std::invalid_argument("step out of range");
  }

  static void eval_zero(const Model& md, std::vector<int64_t>& mu, std::vector<int64_t>& idx) {
    // an all-zero context, evaluated layer by layer in float64 (exact)
    const Model& m = md;
    for (int a = 0; a < md.A; ++a) {
      std::vector<double> x(md.K, 0.0), y;
      for (int layer = 0; layer < m.L; ++layer) {
        const int di = m.din[layer], dn = m.dout[layer];
        const double* w = m.wd.data() + m.woff[size_t(a) * m.L + layer];
        const double* b = m.bd.data() + m.boff[size_t(a) * m.L + layer];
        y.assign(dn, 0.0);
        for (int o = 0; o < dn; ++o) y[o] = b[o];
        for (int i = 0; i < di; ++i)
          for (int o = 0; o < dn; ++o) y[o] += x[i] * w[i * dn + o];
        if (layer + 1 < m.L) {
          const double sc = m.hscale[size_t(a) * m.L + layer];
          for (int o = 0; o < dn; ++o) y[o] = std::min(std::max(std::floor(y[o] * sc), 0.0), double(m.hmax));
          x = y;
        }
      }
      for (int l = 0; l < kLanes; ++l)
        finish_row(m, a, int64_t(y[0]), int64_t(y[1]), &mu[size_t(a) * kLanes + l], &idx[size_t(a) * kLanes + l]);
    }
  }

  Model md_;
  int G_, S_;
  int64_t Gp_ = 0;
  int64_t float_bound_;
  int64_t int32_bound_;
  int64_t bound_ = 0;
  int64_t num_tables_ = 0;
  py::list cdfs_, lengths_, offsets_;
  std::vector<int16_t> ring_;
  std::vector<int32_t> vals_;
  std::vector<int64_t> mu_, idx_, remap_;
};

// The native reader on its own: symbols [n] for table indexes [n] (what CompressAI's
// RansDecoder.decode_with_indexes returns); raises ValueError on a stream that runs out.
py::array_t<int32_t> read_symbols(py::bytes data, Int64Array indexes, Int32Array cdf_flat, Int64Array cdf_start,
                                  Int32Array cdf_lengths, Int32Array offsets) {
  const FlatTables tables(cdf_flat, cdf_start, cdf_lengths, offsets);
  ralhe::RansReader reader = reader_over(data);
  const int64_t n = indexes.size();
  py::array_t<int32_t> out(n);
  int32_t* o = out.mutable_data();
  const int64_t* idx = indexes.data();
  for (int64_t i = 0; i < n; ++i) o[i] = tables.decode(reader, idx[i]);
  if (reader.overrun()) throw std::invalid_argument("rANS stream ends before its last symbol");
  return out;
}

}  // namespace

PYBIND11_MODULE(_lockstep_cpu, m) {
  m.attr("API_VERSION") = 2;  // bumped whenever the Python side calls it differently (ralhe_me/native.py)
  m.doc() = "Native lockstep loop of the latent decoder (integer ARM + a reader of CompressAI's rANS format).";
  py::class_<Lockstep>(m, "Lockstep")
      .def(py::init<int, int, py::list, py::list, std::vector<int>, int, int64_t, int64_t, int, int, int64_t, int64_t,
                    int64_t, int64_t, int64_t, py::list, py::list, py::list>(),
           py::arg("segments"), py::arg("segment_length"), py::arg("weights"), py::arg("biases"), py::arg("shifts"),
           py::arg("frac_bits"), py::arg("hidden_limit"), py::arg("context_clamp"), py::arg("mean_bins_log2"),
           py::arg("log_scale_step_log2"), py::arg("log_scale_min_units"), py::arg("num_scale_bins"),
           py::arg("mu_limit"), py::arg("float_bound"), py::arg("int32_bound"), py::arg("cdfs"), py::arg("cdf_lengths"), py::arg("offsets"))
      .def_property_readonly("num_attributes", &Lockstep::num_attributes)
      .def_property_readonly("bound", &Lockstep::bound)
      .def("prepare", &Lockstep::prepare, py::arg("t"), py::arg("na"))
      .def("ingest", &Lockstep::ingest, py::arg("t"), py::arg("na"), py::arg("residuals"))
      .def("run", &Lockstep::run, py::arg("decode"), py::arg("active"))
      .def("run_native", &Lockstep::run_native, py::arg("data"), py::arg("active"), py::arg("cdf_flat"),
           py::arg("cdf_start"), py::arg("cdf_lengths"), py::arg("offsets"))
      .def("levels", &Lockstep::levels, py::arg("sizes"), py::arg("position"));
  m.def("read_symbols", &read_symbols, py::arg("data"), py::arg("indexes"), py::arg("cdf_flat"), py::arg("cdf_start"),
        py::arg("cdf_lengths"), py::arg("offsets"));
}
