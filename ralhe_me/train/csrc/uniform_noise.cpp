// Latents plus uniform noise in [-1/2, 1/2), the training's stand-in for rounding
// (train/quantization.py wraps it as an autograd function).
//
// Why: torch draws CPU uniforms from one Mersenne Twister, one number at a time on one thread:
// the noise of the attribute steps' latents (51 x 483k numbers) took 87 ms of a 1.05-s step,
// the add another 30 ms.  Here the noise of element i is a counter-based hash of (seed, i), so
// the elements are independent of each other and of the thread that computes them, and the add
// happens in the same pass.
//
// The hash is SplitMix64's output function of seed + (i + 1) * golden ratio (the generator of
// Java's SplittableRandom, which passes BigCrush on such counters); its top 24 bits make a
// float32 in [0, 1) exactly (k * 2^-24), less 1/2.  The result depends on the seed and the
// element index alone: the same on any thread count (tests/test_uniform_noise.py checks it against
// a numpy version of the same formula).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int API_VERSION = 1;
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

inline float uniform_at(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * kGolden;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return float(uint32_t(z >> 40)) * (1.0f / 16777216.0f) - 0.5f;  // exact: 24 bits
}

// values (any shape, float32) -> values + noise (a new array of the same shape)
py::array_t<float> add_uniform_noise(F32 values, uint64_t seed, int threads) {
  const int64_t n = values.size();
  std::vector<py::ssize_t> shape(values.shape(), values.shape() + values.ndim());
  py::array_t<float> out(shape);
  const float* in = values.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    constexpr int64_t kChunk = 1 << 16;
#pragma omp parallel for schedule(static) num_threads(std::max(1, threads))
    for (int64_t start = 0; start < n; start += kChunk) {
      const int64_t end = std::min(n, start + kChunk);
      for (int64_t i = start; i < end; ++i) o[i] = in[i] + uniform_at(seed, uint64_t(i));
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_uniform_noise_cpu, m) {
  m.doc() = "Latents plus counter-based uniform noise (see train/quantization.py)";
  m.attr("API_VERSION") = API_VERSION;
  m.def("add_uniform_noise", &add_uniform_noise, py::arg("values"), py::arg("seed"), py::arg("threads"));
}
