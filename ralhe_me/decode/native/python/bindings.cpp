// ralhe_me.decode._native: the native decoder for Python (see bind.h).
#include "bind.h"

#include <string>

#include "../src/common.h"

namespace py = pybind11;

// Bumped whenever a binding's signature changes (ralhe_me/native.py load_native checks it).
constexpr int kApiVersion = 1;

PYBIND11_MODULE(_native, m) {
  m.doc() = "The native RALHE decoder (ralhe_me/decode/native)";
  m.attr("API_VERSION") = kApiVersion;
  // ralhe::Error -> ralhe_me.decode.bitstream's exception of the same name (CorruptDataError for kinds
  // it does not define), so Python callers catch BitstreamError as for the Python decoder.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ralhe::Error& e) {
      py::object bitstream = py::module_::import("ralhe_me.decode.bitstream");
      const char* name = ralhe::error_name(e.kind());
      py::object cls = py::hasattr(bitstream, name) ? bitstream.attr(name) : bitstream.attr("CorruptDataError");
      PyErr_SetString(cls.ptr(), e.what());
    }
  });
  if (ralhe_py::bind_decoder) ralhe_py::bind_decoder(m);
  if (ralhe_py::bind_geometry) ralhe_py::bind_geometry(m);
  if (ralhe_py::bind_entropy) ralhe_py::bind_entropy(m);
  if (ralhe_py::bind_synthesis) ralhe_py::bind_synthesis(m);
}
