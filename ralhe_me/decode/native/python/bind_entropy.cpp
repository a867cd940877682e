// ralhe_me.decode._native: the entropy part (Laplace tables, ARM section + latents, weights).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../src/integer_arm.h"
#include "../src/laplace_tables.h"
#include "../src/latents.h"
#include "../src/static_latents.h"
#include "../src/weights.h"
#include "bind.h"

namespace ralhe_py {

namespace {

// A Python bytes object's buffer (the object must outlive the view).
ralhe::Bytes bytes_view(const py::bytes& b) {
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(b.ptr(), &data, &size) != 0) throw py::error_already_set();
  return ralhe::Bytes(reinterpret_cast<const uint8_t*>(data), size_t(size));
}

// A header's "table_config" dict -> LaplaceTableConfig (missing fields keep their defaults, as
// LaplaceTableConfig(**d)); unknown fields and non-numbers are CorruptDataError.
ralhe::LaplaceTableConfig table_config_from(const py::dict& d) {
  ralhe::LaplaceTableConfig c;
  for (auto item : d) {
    const std::string key = py::str(item.first);
    py::handle v = item.second;
    const bool is_int = PyLong_Check(v.ptr()) && !PyBool_Check(v.ptr());
    const bool is_float = PyFloat_Check(v.ptr());
    if (key == "log_scale_min") {
      if (!is_int && !is_float) ralhe::corrupt("table config: log_scale_min must be a number");
      c.log_scale_min = v.cast<double>();
      continue;
    }
    int64_t* field = key == "log_scale_step_log2" ? &c.log_scale_step_log2
                     : key == "num_scale_bins"    ? &c.num_scale_bins
                     : key == "mean_bins_log2"    ? &c.mean_bins_log2
                     : key == "tail_log2"         ? &c.tail_log2
                     : key == "max_half_width"    ? &c.max_half_width
                                                  : nullptr;
    if (!field) ralhe::corrupt("table config: unknown field '" + key + "'");
    if (!is_int) ralhe::corrupt("table config: " + key + " must be an integer");
    int overflow = 0;
    const long long x = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
    if (overflow) ralhe::corrupt("table config: " + key + " is out of range");
    *field = x;
  }
  return c;
}

template <typename T>
py::array_t<T> to_array(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(T));
  return out;
}

// The vector becomes the array's buffer (no copy: a million points' latents are 200 MB).
template <typename T, typename Alloc>
py::array_t<T> into_array(std::vector<T, Alloc>&& v, std::vector<py::ssize_t> shape) {
  if (v.empty()) return py::array_t<T>(shape);
  auto* owned = new std::vector<T, Alloc>(std::move(v));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T, Alloc>*>(p); });
  return py::array_t<T>(shape, owned->data(), owner);
}

py::tuple laplace_tables(const py::dict& config) {
  const auto t = ralhe::get_laplace_tables(table_config_from(config));
  const py::ssize_t n = py::ssize_t(t->num_tables());
  return py::make_tuple(to_array(t->cdf, {py::ssize_t(t->cdf.size())}), to_array(t->start, {n}),
                        to_array(t->length, {n}), to_array(t->offset, {n}));
}

py::tuple quantize_pmf(const py::array_t<double, py::array::c_style | py::array::forcecast>& p) {
  if (p.ndim() != 1 || p.shape(0) < 1) throw std::invalid_argument("quantize_pmf: p must be a non-empty 1-d array");
  std::vector<int64_t> freq(size_t(p.shape(0)));
  const bool untied = ralhe::quantize_pmf_row(p.data(), p.shape(0), freq.data());
  return py::make_tuple(to_array(freq, {p.shape(0)}), untied);
}

py::list decode_latents(const py::bytes& arms_section, const py::bytes& latents_section,
                        const std::vector<int64_t>& plane_sizes, int num_attributes, int segment_length,
                        const py::dict& table_config) {
  const ralhe::LaplaceTableConfig config = table_config_from(table_config);
  const ralhe::Bytes arms_bytes = bytes_view(arms_section), latent_bytes = bytes_view(latents_section);
  ralhe::LatentPlanes planes;
  {
    py::gil_scoped_release release;
    const ralhe::QuantizedArm arms = ralhe::parse_arm(arms_bytes);
    planes = ralhe::decode_latents(latent_bytes, plane_sizes, num_attributes, arms, segment_length, config);
  }
  py::list out;
  for (size_t p = 0; p < planes.size(); ++p)
    out.append(into_array(std::move(planes[p]), {py::ssize_t(num_attributes), py::ssize_t(plane_sizes[p])}));
  return out;
}

py::dict parse_arm(const py::bytes& data) {
  const ralhe::QuantizedArm arm = ralhe::parse_arm(bytes_view(data));
  const py::ssize_t a = arm.num_attributes();
  py::list weights, biases;
  for (int l = 0; l < arm.num_layers(); ++l) {
    weights.append(to_array(arm.weights[l], {a, py::ssize_t(arm.layer_in(l)), py::ssize_t(arm.layer_out(l))}));
    biases.append(to_array(arm.biases[l], {a, py::ssize_t(arm.layer_out(l))}));
  }
  py::dict out;
  out["context_size"] = arm.context_size;
  out["hidden"] = arm.hidden;
  out["num_hidden_layers"] = arm.num_hidden_layers;
  out["activation_frac_bits"] = arm.activation_frac_bits;
  out["weight_shifts"] = arm.weight_shifts;
  out["weights"] = weights;
  out["biases"] = biases;
  out["float32_context_bound"] = arm.float32_context_bound();
  out["int32_context_bound"] = arm.int32_context_bound();
  return out;
}

py::list decode_int_tensors(const py::bytes& data, const std::vector<int64_t>& counts) {
  const ralhe::Bytes view = bytes_view(data);
  std::vector<std::vector<int64_t>> tensors;
  {
    py::gil_scoped_release release;
    tensors = ralhe::decode_int_tensors(view, counts);
  }
  py::list out;
  for (auto& t : tensors) {
    const py::ssize_t n = py::ssize_t(t.size());
    out.append(into_array(std::move(t), {n}));
  }
  return out;
}

py::list decode_static_latents(const py::bytes& section, int num_planes, int num_attributes,
                               const std::vector<int32_t>& levels) {
  if (num_planes < 0 || num_attributes < 0) ralhe::fail(ralhe::ErrorKind::kInvalidArgument, "negative plane or attribute count");
  const ralhe::Bytes view = bytes_view(section);
  ralhe::LatentPlanes planes;
  {
    py::gil_scoped_release release;
    planes = ralhe::decode_static_latents(view, num_planes, num_attributes, levels);
  }
  py::list out;
  for (auto& p : planes) out.append(into_array(std::move(p), {py::ssize_t(num_attributes), py::ssize_t(levels.size())}));
  return out;
}

}  // namespace

void bind_entropy(py::module_& m) {
  m.def("laplace_tables", &laplace_tables, py::arg("config"),
        "The Laplace table family of a table_config dict: (cdf_flat int32, cdf_start int64, cdf_lengths int32, "
        "offsets int32), as laplace.LaplaceTables.flat.");
  m.def("quantize_pmf", &quantize_pmf, py::arg("p"),
        "One row of probabilities float64 [n] -> (frequencies int64 [n], as laplace._quantize_pmf; whether no "
        "index tie decided them, so that the mirrored row gets them mirrored).");
  m.def("decode_latents", &decode_latents, py::arg("arms_section"), py::arg("latents_section"),
        py::arg("plane_sizes"), py::arg("num_attributes"), py::arg("segment_length"), py::arg("table_config"),
        "The ARM section and the latent stream -> per plane int32 [A, n_p] (latent_coder.decode_latents).");
  m.def("decode_static_latents", &decode_static_latents, py::arg("section"), py::arg("num_planes"),
        py::arg("num_attributes"), py::arg("levels"),
        "A static latents section and the coefficient levels int32 [M] -> per plane int32 [A, M] "
        "(static_latents.decode_static_latents).");
  m.def("parse_arm", &parse_arm, py::arg("data"),
        "An ARM section -> dict of its header fields, weights[l] int64 [A, in, out], biases[l] int64 [A, out] and "
        "its exactness bounds (integer_arm.QuantizedArm.from_bytes).");
  m.def("decode_int_tensors", &decode_int_tensors, py::arg("data"), py::arg("counts"),
        "The decoder weights section -> per tensor flat int64 [count] (weights.decode_int_tensors).");
}

}  // namespace ralhe_py
