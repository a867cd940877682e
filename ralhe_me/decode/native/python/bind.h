// The pybind11 module ralhe_me.decode._native is assembled from one binding file per part of the
// library (bind_<part>.cpp, each owned with its part).  A part not built yet is a null weak symbol
// and simply absent from the module.
#pragma once

#include <pybind11/pybind11.h>

namespace ralhe_py {
namespace py = pybind11;
void bind_decoder(py::module_& m) __attribute__((weak));    // bind_decoder.cpp: whole-file decode
void bind_geometry(py::module_& m) __attribute__((weak));   // bind_geometry.cpp
void bind_entropy(py::module_& m) __attribute__((weak));    // bind_entropy.cpp
void bind_synthesis(py::module_& m) __attribute__((weak));  // bind_synthesis.cpp
// Translates ralhe::Error into the Python exception ralhe_me.decode.bitstream.<ErrorName> (see
// bindings.cpp); every binding that can meet a bad stream lets ralhe::Error propagate.
}  // namespace ralhe_py
