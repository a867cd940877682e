// ralhe_me.decode._native: the attribute synthesis and denormalization (src/synthesis.h,
// src/attributes.h), which ralhe_me/decode/synthesis.py and reconstruction.py reconstruct_attributes call.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "../src/attributes.h"
#include "../src/common.h"
#include "../src/synthesis.h"
#include "../src/static_latents.h"
#include "bind.h"

namespace {

namespace py = pybind11;

[[noreturn]] void invalid(const std::string& message) { ralhe::fail(ralhe::ErrorKind::kInvalidArgument, message); }

// A C-contiguous array of exactly dtype T (never a silent conversion) with `ndim` dimensions
// (-1: any) and the given sizes (-1: any).
template <typename T>
py::array_t<T> checked(const py::handle& obj, const std::string& what, int ndim, std::vector<int64_t> shape = {}) {
  if (!py::isinstance<py::array>(obj)) invalid(what + " must be a numpy array");
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (!py::array_t<T>::check_(arr))  // an equivalent dtype (int64 is 'l' or 'q'), native byte order
    invalid(what + " must have dtype " + std::string(py::str(py::dtype::of<T>())) + ", got " +
            std::string(py::str(arr.dtype())));
  if (ndim >= 0 && arr.ndim() != ndim)
    invalid(what + " must be " + std::to_string(ndim) + "-D, got " + std::to_string(arr.ndim()) + "-D");
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] >= 0 && arr.shape(i) != shape[i])
      invalid(what + " has size " + std::to_string(arr.shape(i)) + " in dimension " + std::to_string(i) +
              ", expected " + std::to_string(shape[i]));
  if (!(arr.flags() & py::array::c_style)) invalid(what + " must be C-contiguous");
  return py::reinterpret_borrow<py::array_t<T>>(arr);
}

int dict_int(const py::dict& d, const char* key) {
  if (!d.contains(key)) invalid(std::string("architecture lacks '") + key + "'");
  py::object v = d[key];
  if (!py::isinstance<py::int_>(v)) invalid(std::string("architecture '") + key + "' must be an integer");
  const long long x = v.cast<long long>();
  if (x < -(1LL << 30) || x > (1LL << 30)) invalid(std::string("architecture '") + key + "' is out of range");
  return int(x);
}

// The header's "architecture" dict (config.py ArchitectureConfig as dataclasses.asdict).
ralhe::Architecture architecture_from(const py::dict& d) {
  ralhe::Architecture a;
  if (!d.contains("transform") || !py::isinstance<py::str>(d["transform"])) invalid("architecture lacks 'transform'");
  a.transform = d["transform"].cast<std::string>();
  a.num_levels = dict_int(d, "num_levels");
  a.latent_channels = dict_int(d, "latent_channels");
  if (!d.contains("skip")) invalid("architecture lacks 'skip'");
  a.skip = py::bool_(d["skip"]);
  if (!d.contains("decoder_linear")) invalid("architecture lacks 'decoder_linear'");
  const auto lin = d["decoder_linear"].cast<std::vector<long long>>();
  if (lin.size() != 2) invalid("architecture 'decoder_linear' must hold two widths");
  for (int i = 0; i < 2; ++i) {
    if (lin[i] < 0 || lin[i] > (1LL << 30)) invalid("architecture 'decoder_linear' is out of range");
    a.decoder_linear[i] = int(lin[i]);
  }
  a.decoder_conv = dict_int(d, "decoder_conv");
  a.arm_context = dict_int(d, "arm_context");
  a.arm_hidden = dict_int(d, "arm_hidden");
  a.segment_length = dict_int(d, "segment_length");
  ralhe::check_architecture(a);
  return a;
}

py::tuple synthesize(const py::dict& architecture, int num_sh, const py::list& weights, int64_t shift,
                     const py::object& coords_in, int depth, const py::object& neighbours_in,
                     const py::list& point_to_voxel_in, const py::list& planes_in) {
  const ralhe::Architecture arch = architecture_from(architecture);
  if (num_sh < 1 || num_sh > 1024) invalid("num_sh must lie in [1, 1024], got " + std::to_string(num_sh));
  const auto shapes = ralhe::decoder_weight_shapes(arch, num_sh);
  if (weights.size() != shapes.size())
    invalid(std::to_string(weights.size()) + " weight arrays given, the architecture has " +
            std::to_string(shapes.size()));
  std::vector<std::vector<int64_t>> ints(weights.size());
  for (size_t t = 0; t < weights.size(); ++t) {
    auto w = checked<int64_t>(weights[t], "weights[" + std::to_string(t) + "]", int(shapes[t].size()), shapes[t]);
    ints[t].assign(w.data(), w.data() + w.size());
  }
  const ralhe::SynthesisWeights sw = ralhe::dequantize_weights(arch, num_sh, ints, shift);

  auto neighbours = checked<int32_t>(neighbours_in, "neighbours", 2, {-1, 26});
  const int64_t M = neighbours.shape(0);
  const bool raht = arch.transform == "raht";
  py::array_t<int32_t> coords;
  if (raht) coords = checked<int32_t>(coords_in, "coords", 2, {M, 3});
  std::vector<py::array_t<int32_t>> p2v_arrays;
  std::vector<const int32_t*> p2v;
  if (!raht) {
    if (int64_t(point_to_voxel_in.size()) != arch.num_levels)
      invalid(std::to_string(point_to_voxel_in.size()) + " point_to_voxel arrays for " +
              std::to_string(arch.num_levels) + " levels");
    for (size_t l = 0; l < point_to_voxel_in.size(); ++l) {
      p2v_arrays.push_back(checked<int32_t>(point_to_voxel_in[l], "point_to_voxel[" + std::to_string(l) + "]", 1, {M}));
      p2v.push_back(p2v_arrays.back().data());
    }
  }
  const int64_t A = num_sh + 1;
  std::vector<py::array_t<int32_t>> plane_arrays;
  std::vector<ralhe::PlaneView> planes;
  for (size_t p = 0; p < planes_in.size(); ++p) {
    plane_arrays.push_back(checked<int32_t>(planes_in[p], "planes[" + std::to_string(p) + "]", 2, {A, raht ? M : -1}));
    planes.push_back(ralhe::PlaneView{plane_arrays.back().data(), int64_t(plane_arrays.back().size())});
  }
  py::array_t<float> sh({M, int64_t(num_sh), int64_t(3)});
  py::array_t<float> opacity(M);
  float* sh_out = sh.mutable_data();
  float* op_out = opacity.mutable_data();
  const int32_t* c = raht ? coords.data() : nullptr;
  const int32_t* nb = neighbours.data();
  {
    py::gil_scoped_release release;
    ralhe::synthesize(arch, num_sh, sw, M, c, depth, nb, p2v, planes, sh_out, op_out);
  }
  return py::make_tuple(sh, opacity);
}

py::tuple denormalize(const py::object& sh_in, const py::object& op_in, const py::object& mean_in,
                      const py::object& std_in, const py::object& gain_in) {
  auto sh_norm = checked<float>(sh_in, "sh_norm", 3, {-1, -1, 3});
  const int64_t M = sh_norm.shape(0), K = sh_norm.shape(1);
  auto op_norm = checked<float>(op_in, "opacity_norm", 1, {M});
  auto mean = checked<double>(mean_in, "mean", 2, {K + 1, 3});
  auto std_ = checked<double>(std_in, "std", 1, {K + 1});
  py::array_t<double> gain;
  if (!gain_in.is_none()) gain = checked<double>(gain_in, "gain", 1, {M});
  py::array_t<float> sh({M, K, int64_t(3)});
  py::array_t<float> logits(M);
  const double* g = gain_in.is_none() ? nullptr : gain.data();
  const float* x = sh_norm.data();
  const float* o = op_norm.data();
  float* sh_out = sh.mutable_data();
  float* lo_out = logits.mutable_data();
  {
    py::gil_scoped_release release;
    ralhe::denormalize_sh(x, M, int(K), mean.data(), std_.data(), g, sh_out);
    ralhe::denormalize_opacity_logits(o, M, int(K), mean.data(), std_.data(), lo_out);
  }
  return py::make_tuple(sh, logits);
}

}  // namespace

void ralhe_py::bind_synthesis(py::module_& m) {
  m.def(
      "coefficient_levels",
      [](const py::object& coords_obj, int depth) {
        if (depth < 0 || depth > 21) invalid("depth must be in [0, 21], got " + std::to_string(depth));
        const auto coords = checked<int32_t>(coords_obj, "coords", 2, {-1, 3});
        const int64_t M = coords.shape(0);
        std::vector<int32_t> levels;
        {
          py::gil_scoped_release release;
          levels = ralhe::coefficient_levels(ralhe::raht_plan(coords.data(), M, depth), depth);
        }
        return py::array_t<int32_t>(py::ssize_t(levels.size()), levels.data());
      },
      py::arg("coords"), py::arg("depth"),
      "The octree level of every RAHT coefficient of the voxels coords int32 [M, 3] (coefficient order; "
      "DC: depth), as baselines/raht.py RahtPlan.coeff_levels.");
  m.def("synthesize", &synthesize, py::arg("architecture"), py::arg("num_sh"), py::arg("weights"), py::arg("shift"),
        py::arg("coords"), py::arg("depth"), py::arg("neighbours"), py::arg("point_to_voxel"), py::arg("planes"),
        "Integer latent planes -> (normalized SH [M, K, 3], normalized opacity [M]), float32, the canonical order "
        "of src/synthesis.h.  architecture: the header's dict; weights: int64 arrays in file order (their shapes), "
        "value int * 2**-shift; coords int32 [M, 3] (raht); neighbours int32 [M, 26] (NEIGHBOUR_OFFSETS order, "
        "-1: empty); point_to_voxel: int32 [M] per level (pyramid; else empty); planes: int32 [A, n_p] each.");
  m.def("denormalize", &denormalize, py::arg("sh_norm"), py::arg("opacity_norm"), py::arg("mean"), py::arg("std"),
        py::arg("gain") = py::none(),
        "(sh_norm float32 [M, K, 3], opacity_norm float32 [M], mean float64 [K + 1, 3], std float64 [K + 1], "
        "gain float64 [M] or None) -> (SH float32 [M, K, 3], opacity logits float32 [M]).");
}
