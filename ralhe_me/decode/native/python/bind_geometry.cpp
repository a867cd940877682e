// ralhe_me.decode._native: the geometry stages (positions, gain map, covariance, octree levels,
// voxel centers) and the static categorical decoder, for tests and callers comparing them with
// the Python reference.  Stream errors propagate as ralhe::Error (bitstream's exceptions);
// malformed arguments raise ValueError.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../src/categorical.h"
#include "../src/covariance.h"
#include "../src/gain_map.h"
#include "../src/occupancy.h"
#include "../src/octree.h"
#include "bind.h"

namespace ralhe_py {
namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

ralhe::Bytes bytes_view(const py::bytes& data) {
  char* buffer = nullptr;
  py::ssize_t size = 0;
  if (PyBytes_AsStringAndSize(data.ptr(), &buffer, &size) != 0) throw py::error_already_set();
  return ralhe::Bytes(reinterpret_cast<const uint8_t*>(buffer), size_t(size));
}

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

// int64 [M, 3] voxel coordinates in [0, 2**21) -> int32 [M * 3].
std::vector<int32_t> coords_arg(const I64Array& coords) {
  if (coords.ndim() != 2 || coords.shape(1) != 3) throw py::value_error("coords must have shape [M, 3]");
  const int64_t* p = coords.data();
  std::vector<int32_t> out(size_t(coords.size()));
  for (size_t i = 0; i < out.size(); ++i) {
    if (p[i] < 0 || p[i] >= (int64_t(1) << ralhe::kMaxDepth)) throw py::value_error("coords must lie in [0, 2^21)");
    out[i] = int32_t(p[i]);
  }
  return out;
}

std::vector<int64_t> morton_codes(const std::vector<int32_t>& xyz) {
  std::vector<int64_t> codes(xyz.size() / 3);
  for (size_t i = 0; i < codes.size(); ++i)
    codes[i] = ralhe::morton_encode(uint32_t(xyz[3 * i]), uint32_t(xyz[3 * i + 1]), uint32_t(xyz[3 * i + 2]));
  return codes;
}

py::tuple decode_positions(py::bytes data, int depth) {
  const ralhe::Bytes b = bytes_view(data);
  ralhe::DecodedPositions pos;
  {
    py::gil_scoped_release release;
    pos = ralhe::decode_positions(b, depth);
  }
  const py::ssize_t m = pos.num_points;
  return py::make_tuple(to_numpy(std::vector<int64_t>(pos.coords.begin(), pos.coords.end()), {m, 3}),
                        to_numpy(std::vector<int64_t>(pos.neighbours.begin(), pos.neighbours.end()),
                                 {m, py::ssize_t(ralhe::kNeighbours)}));
}

py::tuple decode_shapes(py::bytes data, py::object gains, int64_t n) {
  if (n < 0) throw py::value_error("n must be >= 0");
  const ralhe::Bytes b = bytes_view(data);
  F64Array g;
  if (!gains.is_none()) {
    g = F64Array::ensure(gains);
    if (!g || g.ndim() != 1 || g.shape(0) != n) throw py::value_error("gains must be None or float64 [n]");
  }
  const double* gp = gains.is_none() ? nullptr : g.data();
  std::vector<float> log_scales, quats;
  {
    py::gil_scoped_release release;
    ralhe::decode_shapes(b, gp, n, log_scales, quats);
  }
  return py::make_tuple(to_numpy(log_scales, {py::ssize_t(n), 3}), to_numpy(quats, {py::ssize_t(n), 4}));
}

py::array_t<double> decode_gain_map(py::bytes data, I64Array coords, int level) {
  const ralhe::Bytes b = bytes_view(data);
  const std::vector<int64_t> codes = morton_codes(coords_arg(coords));
  std::vector<double> gains;
  {
    py::gil_scoped_release release;
    gains = ralhe::decode_point_gains(b, codes.data(), int64_t(codes.size()), level);
  }
  return to_numpy(gains, {py::ssize_t(gains.size())});
}

py::tuple octree_levels(I64Array coords, int num_levels, int depth) {
  const std::vector<int64_t> codes = morton_codes(coords_arg(coords));
  ralhe::OctreeLevels levels = ralhe::build_octree_levels(codes.data(), int64_t(codes.size()), num_levels, depth);
  py::list sizes, p2v;
  for (size_t l = 0; l < levels.sizes.size(); ++l) {
    sizes.append(levels.sizes[l]);
    const std::vector<int32_t>& v = levels.point_to_voxel[l];
    p2v.append(to_numpy(std::vector<int64_t>(v.begin(), v.end()), {py::ssize_t(v.size())}));
  }
  return py::make_tuple(sizes, p2v);
}

// The grid of a file's header (codec.grid_from_header's keys).
ralhe::VoxelGrid grid_arg(const py::dict& header) {
  ralhe::VoxelGrid grid;
  const std::vector<double> origin = header["origin"].cast<std::vector<double>>();
  if (origin.size() != 3) throw py::value_error("origin must have 3 values");
  std::copy(origin.begin(), origin.end(), grid.origin);
  grid.extent = header["extent"].cast<double>();
  grid.depth = header["depth"].cast<int>();
  if (header.contains("contraction") && !header["contraction"].is_none()) {
    const py::dict c = header["contraction"].cast<py::dict>();
    const std::vector<double> center = c["center"].cast<std::vector<double>>();
    if (center.size() != 3) throw py::value_error("contraction center must have 3 values");
    grid.contracted = true;
    std::copy(center.begin(), center.end(), grid.contraction.center);
    grid.contraction.radius = c["radius"].cast<double>();
    grid.contraction.log_range = c["log_range"].cast<double>();
  }
  return grid;
}

py::array voxel_centers(I64Array coords, py::dict header, bool as_float64) {
  const ralhe::VoxelGrid grid = grid_arg(header);
  const std::vector<int32_t> xyz = coords_arg(coords);
  const int64_t m = int64_t(xyz.size() / 3);
  if (as_float64) {
    py::array_t<double> out({py::ssize_t(m), py::ssize_t(3)});
    ralhe::voxel_centers_f64(grid, xyz.data(), m, out.mutable_data());
    return std::move(out);
  }
  py::array_t<float> out({py::ssize_t(m), py::ssize_t(3)});
  ralhe::voxel_centers(grid, xyz.data(), m, out.mutable_data());
  return std::move(out);
}

py::array_t<int64_t> decode_categorical(py::bytes data, int alphabet_size, py::object contexts) {
  const ralhe::Bytes b = bytes_view(data);
  I64Array ctx;
  if (!contexts.is_none()) {
    ctx = I64Array::ensure(contexts);
    if (!ctx) throw py::value_error("contexts must be None or an int array");
  }
  std::vector<int32_t> symbols;
  {
    py::gil_scoped_release release;
    symbols = contexts.is_none() ? ralhe::decode_categorical(b, alphabet_size, nullptr, -1)
                                 : ralhe::decode_categorical(b, alphabet_size, ctx.data(), int64_t(ctx.size()));
  }
  return to_numpy(std::vector<int64_t>(symbols.begin(), symbols.end()), {py::ssize_t(symbols.size())});
}

}  // namespace

void bind_geometry(py::module_& m) {
  m.def("decode_positions", &decode_positions, py::arg("data"), py::arg("depth"),
        "occupancy.decode_positions(data, depth, with_neighbours=True): (coords int64 [M, 3], neighbour rows "
        "int64 [M, 26], -1 empty)");
  m.def("decode_shapes", &decode_shapes, py::arg("data"), py::arg("gains"), py::arg("n"),
        "covariance_code.decode_shapes for n shapes (gains float64 [n] or None): (log_scales float32 [n, 3], "
        "quats float32 [n, 4])");
  m.def("decode_gain_map", &decode_gain_map, py::arg("data"), py::arg("coords"), py::arg("level"),
        "point_gains(decode_gain_map(data, V), gain_voxels(coords, level)): gains float64 [M]");
  m.def("octree_levels", &octree_levels, py::arg("coords"), py::arg("num_levels"), py::arg("depth"),
        "OctreeLevels.build: (voxel counts per level, point_to_voxel int64 [M] per level)");
  m.def("voxel_centers", &voxel_centers, py::arg("coords"), py::arg("header"), py::arg("as_float64") = false,
        "codec.grid_from_header(header).centers(coords): float32 [M, 3] (float64 before the rounding with "
        "as_float64)");
  m.def("decode_categorical", &decode_categorical, py::arg("data"), py::arg("alphabet_size"),
        py::arg("contexts") = py::none(), "categorical.decode_categorical: symbols int64 [N]");
}

}  // namespace ralhe_py
