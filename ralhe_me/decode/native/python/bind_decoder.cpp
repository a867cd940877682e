// ralhe_me.decode._native.decode: the whole native decode for ralhe_me/decode/decoder.py (engine "native").
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "../src/decoder.h"
#include "../src/json.h"
#include "bind.h"

namespace ralhe_py {
namespace {

// A numpy array owning `v` (moved, no copy) with `shape`.
template <typename Vec>
py::array_t<float> to_numpy(Vec&& v, std::vector<py::ssize_t> shape) {
  auto* owned = new Vec(std::move(v));
  py::capsule free_it(owned, [](void* p) { delete static_cast<Vec*>(p); });
  return py::array_t<float>(shape, owned->data(), free_it);
}

py::dict decode(py::bytes data) {
  // the bytes object stays alive (and unchanged: bytes are immutable) while the GIL is released
  char* buffer = nullptr;
  py::ssize_t size = 0;
  if (PyBytes_AsStringAndSize(data.ptr(), &buffer, &size) != 0) throw py::error_already_set();
  ralhe::DecodedModel m;
  {
    py::gil_scoped_release release;
    m = ralhe::decode(ralhe::Bytes(reinterpret_cast<const uint8_t*>(buffer), size_t(size)));
  }
  const py::ssize_t n = m.n;
  py::dict out;
  out["num_points"] = m.n;
  out["sh_degree"] = m.sh_degree;
  out["means"] = to_numpy(std::move(m.means), {n, 3});
  out["log_scales"] = to_numpy(std::move(m.log_scales), {n, 3});
  out["quats"] = to_numpy(std::move(m.quats), {n, 4});
  out["opacity_logits"] = to_numpy(std::move(m.opacity_logits), {n});
  out["sh"] = to_numpy(std::move(m.sh), {n, py::ssize_t(m.num_sh), 3});
  py::dict seconds;
  for (const auto& s : m.seconds) seconds[py::str(s.first)] = s.second;
  out["seconds"] = seconds;
  return out;
}

// The numbers of a JSON array as the header parser reads them (its tests compare them with
// Python's float()).
std::vector<double> json_numbers(const std::string& text) {
  const ralhe::Json v = ralhe::parse_json(text.data(), text.size());
  return ralhe::json_doubles(v, "numbers");
}

}  // namespace

void bind_decoder(py::module_& m) {
  m.def("decode", &decode, py::arg("data"),
        "Decode the bytes of a .ralhe file: a dict of float32 arrays means [N, 3], log_scales [N, 3], "
        "quats [N, 4], opacity_logits [N], sh [N, K, 3], plus num_points, sh_degree and seconds (per "
        "stage).  Raises ralhe_me.decode.bitstream's BitstreamError subclasses.");
  m.def("json_numbers", &json_numbers, py::arg("text"),
        "The numbers of the JSON array `text`, parsed as the native decoder parses its headers.");
  m.attr("DECODER_VERSION") = ralhe::kDecoderVersion;
}

}  // namespace ralhe_py
