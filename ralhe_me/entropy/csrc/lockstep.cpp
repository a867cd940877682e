// Python binding of the latent decoder's lockstep loop (ralhe_me/entropy/latent_coder.py).
//
// The loop itself is ralhe::LatentLoop in the native decoder's library
// (decode/native/src/latents.{h,cpp}: the integer ARM, exact in float32/int32/float64 SIMD, and
// the symbols read with ralhe::RansReader); this file only converts Python arguments.  `run`
// instead hands CompressAI's RansDecoder.decode_stream the Python lists of each step (the
// reference for the reader).  The pure numpy/torch loop in latent_coder.py is the reference for
// the whole; tests compare the three.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "latents.h"
#include "laplace_tables.h"
#include "rans_reader.h"

namespace py = pybind11;

namespace {

typedef py::array_t<int32_t, py::array::c_style | py::array::forcecast> Int32Array;
typedef py::array_t<int64_t, py::array::c_style | py::array::forcecast> Int64Array;

// A reader over a Python bytes object (which must outlive it).
ralhe::RansReader reader_over(const py::bytes& data) {
  char* buffer = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(data.ptr(), &buffer, &size) != 0) throw py::error_already_set();
  return ralhe::RansReader(reinterpret_cast<const uint8_t*>(buffer), size_t(size));
}

// LaplaceTables.flat (cdf_flat, cdf_start, cdf_lengths, offsets) as a checked view; the arrays
// must outlive it.
ralhe::CdfTablesView flat_view(const Int32Array& cdf_flat, const Int64Array& cdf_start, const Int32Array& cdf_lengths,
                               const Int32Array& offsets) {
  if (cdf_flat.ndim() != 1 || cdf_start.ndim() != 1 || cdf_lengths.ndim() != 1 || offsets.ndim() != 1 ||
      cdf_lengths.size() != cdf_start.size() || offsets.size() != cdf_start.size())
    throw std::invalid_argument("flat tables must be 1-d with one start, length and offset per table");
  ralhe::CdfTablesView view{cdf_flat.data(), cdf_start.data(), cdf_lengths.data(), offsets.data(),
                            int64_t(cdf_start.size())};
  view.check(int64_t(cdf_flat.size()));
  return view;
}

// A QuantizedArm's integer arrays (weights[l]: int64 [A, in, out], biases[l]: int64 [A, out]).
ralhe::QuantizedArm arm_from(py::list weights, py::list biases, const std::vector<int>& shifts, int frac_bits) {
  ralhe::QuantizedArm arm;
  arm.weight_shifts = shifts;
  arm.activation_frac_bits = frac_bits;
  const int layers = int(py::len(weights)), a = int(shifts.size());
  if (a < 1 || layers < 1 || int(py::len(biases)) != layers) throw std::invalid_argument("bad ARM shapes");
  arm.num_hidden_layers = layers - 1;
  for (int l = 0; l < layers; ++l) {
    Int64Array w(weights[l]), b(biases[l]);
    if (w.ndim() != 3 || b.ndim() != 2 || w.shape(0) != a || b.shape(0) != a || b.shape(1) != w.shape(2))
      throw std::invalid_argument("bad ARM layer shapes");
    if (l == 0) arm.context_size = int(std::min<py::ssize_t>(w.shape(1), 1 << 20));
    if (l == 0 && layers > 1) arm.hidden = int(std::min<py::ssize_t>(w.shape(2), 1 << 20));
    if (w.shape(1) != arm.layer_in(l) || w.shape(2) != arm.layer_out(l))
      throw std::invalid_argument("ARM layers do not chain (or the last has not 2 outputs)");
    arm.weights.emplace_back(w.data(), w.data() + w.size());
    arm.biases.emplace_back(b.data(), b.data() + b.size());
  }
  if (layers == 1) arm.hidden = 1;
  return arm;
}

class Lockstep {
 public:
  Lockstep(int segments, int segment_length, py::list weights, py::list biases, std::vector<int> shifts,
           int frac_bits, int64_t hidden_limit, int64_t context_clamp, int mean_bins_log2, int log_scale_step_log2,
           int64_t log_scale_min_units, int64_t num_scale_bins, int64_t mu_limit, int64_t float_bound,
           int64_t int32_bound, py::list cdfs, py::list cdf_lengths, py::list offsets)
      : G_(segments), S_(segment_length), cdfs_(cdfs), lengths_(cdf_lengths), offsets_(offsets) {
    if (py::len(cdfs) != py::len(cdf_lengths) || py::len(cdfs) != py::len(offsets))
      throw std::invalid_argument("table lists differ in length");
    ralhe::ArmEvalParams p;
    p.hidden_limit = hidden_limit;
    p.context_clamp = context_clamp;
    p.mean_bins_log2 = mean_bins_log2;
    p.log_scale_step_log2 = log_scale_step_log2;
    p.log_scale_min_units = log_scale_min_units;
    p.num_scale_bins = num_scale_bins;
    p.mu_limit = mu_limit;
    p.float_bound = float_bound;
    p.int32_bound = int32_bound;
    loop_.reset(new ralhe::LatentLoop(arm_from(weights, biases, shifts, frac_bits), p, segments, segment_length));
    if (int64_t(py::len(cdfs)) != loop_->num_tables()) throw std::invalid_argument("table count mismatch");
    remap_.assign(size_t(loop_->num_tables()), -1);
  }

  int num_attributes() const { return loop_->num_attributes(); }
  int64_t bound() const { return loop_->bound(); }

  // ARM of step t -> (table indexes, cdfs, lengths, offsets): decode_stream's arguments, with only
  // the tables this step uses (ascending), indexes remapped to them.
  py::tuple prepare(int t, int na) {
    loop_->predict(t, na);
    const int64_t n = int64_t(loop_->num_attributes()) * na;
    const int32_t* idx = loop_->table_index();
    std::vector<int64_t> used;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t ti = idx[i];
      if (ti < 0 || ti >= loop_->num_tables()) throw std::runtime_error("table index out of range");
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
    PyObject* out = PyList_New(n);
    if (!out) throw py::error_already_set();
    for (int64_t i = 0; i < n; ++i) {
      PyObject* v = PyLong_FromLongLong(remap_[idx[i]]);
      if (!v) {
        Py_DECREF(out);
        throw py::error_already_set();
      }
      PyList_SET_ITEM(out, i, v);
    }
    for (int64_t u : used) remap_[u] = -1;
    return py::make_tuple(py::reinterpret_steal<py::list>(out), cdfs, lens, offs);
  }

  // The decoded residuals of step t (decode_stream's list) -> latents x = r + mu_int.
  void ingest(int t, int na, py::handle residuals) {
    const int64_t n = int64_t(loop_->num_attributes()) * na;
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
    loop_->store(t, na, res.data());
  }

  // The whole loop: active[t] segments at step t; decode(indexes, cdfs, lengths, offsets) -> list.
  void run(py::object decode, Int64Array active) {
    auto act = active.unchecked<1>();
    for (py::ssize_t t = 0; t < act.shape(0); ++t) {
      const int na = int(act(t));
      py::tuple args = prepare(int(t), na);
      py::object res = decode(*args);
      ingest(int(t), na, res);
    }
  }

  // The whole loop with the rANS decoding native too (ralhe::RansReader, the same symbols as
  // CompressAI's decoder on the same bytes): `data` is the stream, the tables LaplaceTables.flat.
  // Returns false when the stream ran out or held an impossible escape (a corrupt stream).
  bool run_native(py::bytes data, Int64Array active, Int32Array cdf_flat, Int64Array cdf_start,
                  Int32Array cdf_lengths, Int32Array offsets) {
    if (active.ndim() != 1) throw std::invalid_argument("active must be 1-d");
    const ralhe::CdfTablesView tables = flat_view(cdf_flat, cdf_start, cdf_lengths, offsets);
    ralhe::RansReader reader = reader_over(data);
    return loop_->run(reader, tables, active.data(), int64_t(active.size()));
  }

  // Per level int64 [A, n_l]: level l holds segments seg0[l] .. seg0[l] + nseg[l] - 1 (natural
  // order), segment g at coding position position[g].
  py::list levels(std::vector<int64_t> sizes, Int64Array position) {
    if (position.ndim() != 1 || position.size() != G_)
      throw std::invalid_argument("position must have one entry per segment");
    py::list out;
    int64_t g0 = 0;
    const int64_t a = loop_->num_attributes();
    for (int64_t n : sizes) {
      if (n < 0) throw std::invalid_argument("negative level size");
      py::array_t<int64_t> arr({a, n});
      loop_->gather(g0, n, position.data(), arr.mutable_data());
      g0 += (n + S_ - 1) / S_;
      out.append(arr);
    }
    if (g0 != G_) throw std::invalid_argument("level sizes do not match the segments");
    return out;
  }

 private:
  int64_t G_;
  int S_;
  std::unique_ptr<ralhe::LatentLoop> loop_;
  py::list cdfs_, lengths_, offsets_;
  std::vector<int64_t> remap_;
};

// The native reader on its own: symbols [n] for table indexes [n] (what CompressAI's
// RansDecoder.decode_with_indexes returns); raises ValueError on a stream that runs out.
py::array_t<int32_t> read_symbols(py::bytes data, Int64Array indexes, Int32Array cdf_flat, Int64Array cdf_start,
                                  Int32Array cdf_lengths, Int32Array offsets) {
  const ralhe::CdfTablesView tables = flat_view(cdf_flat, cdf_start, cdf_lengths, offsets);
  ralhe::RansReader reader = reader_over(data);
  const int64_t n = indexes.size();
  py::array_t<int32_t> out(n);
  int32_t* o = out.mutable_data();
  const int64_t* idx = indexes.data();
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] < 0 || idx[i] >= tables.count) throw std::invalid_argument("table index out of range");
    o[i] = tables.decode(reader, idx[i]);
  }
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
           py::arg("mu_limit"), py::arg("float_bound"), py::arg("int32_bound"), py::arg("cdfs"), py::arg("cdf_lengths"),
           py::arg("offsets"))
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
