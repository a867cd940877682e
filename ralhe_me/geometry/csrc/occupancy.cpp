// The octree occupancy decoder's per-level loop for Python (_occupancy_cpu): a thin pybind11
// wrapper over the native decoder's loop (decode/native/src/occupancy.cpp, the one definition).
//
// decode_positions in occupancy.py is the reference; the loop reads its symbols either with the
// native reader of CompressAI's rANS format (the segments RansStreamReader checked) or by handing
// CompressAI's RansDecoder.decode_stream (a Python callable) each batch, so the decoded bits, and
// with them the points and neighbour rows, are identical.  Tests compare the paths.
//
// Corrupt input: the checks that need the decoded data (nodes per level against the point count,
// symbols requested against the symbols in the stream, decode_stream's answer) raise
// CorruptStream, which occupancy.py turns into OccupancyStreamError.  The header, check sum and
// rANS segment layout are checked in Python before this runs.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "categorical.h"
#include "occupancy.h"

namespace py = pybind11;

namespace {

struct CorruptStream : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr int kNeighbours = ralhe::kNeighbours;  // column order: occupancy.NEIGHBOUR_OFFSETS
constexpr int64_t kTotalFreq = ralhe::kTotalFreq;

using IntArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// occupancy.py passes its neighbourhood tables; the loop derives its own, so they must agree.
template <int R, int C>
void check_table(const IntArray& src, const int (&expected)[R][C], const char* name) {
  if (src.ndim() != 2 || src.shape(0) != R || src.shape(1) != C)
    throw std::invalid_argument(std::string(name) + " has the wrong shape");
  const int64_t* p = src.data();
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      if (p[r * C + c] != expected[r][c])
        throw std::invalid_argument(std::string(name) + " differs from the native decoder's table");
}

// Hands batches of (table index per symbol, f0 per table) to CompressAI's decode_stream, one call
// per rANS segment a batch touches, as RansStreamReader.read does.
class RansFeed : public ralhe::OccupancyBitSource {
 public:
  RansFeed(py::object next_segment, int64_t num_symbols)
      : next_segment_(std::move(next_segment)), total_(num_symbols), cdf_cache_(kTotalFreq) {
    zero_ = small_int(0);  // decode_stream's answers are these (CPython caches small ints)
    one_ = small_int(1);
    Py_DECREF(zero_);  // ints_ holds them
    Py_DECREF(one_);
  }

  ~RansFeed() override {
    for (PyObject* o : cdf_cache_) Py_XDECREF(o);
    for (PyObject* o : ints_) Py_XDECREF(o);
  }

  int64_t consumed() const override { return consumed_; }

  void decode(const int32_t* index, int64_t n, const int64_t* f0s, int64_t nt, uint8_t* bits) override {
    if (consumed_ + n > total_) throw CorruptStream("more symbols requested than the stream holds");
    py::list cdfs(nt), lengths(nt), offsets(nt);
    for (int64_t t = 0; t < nt; ++t) {
      PyList_SET_ITEM(cdfs.ptr(), t, cdf_row(f0s[t]));
      PyList_SET_ITEM(lengths.ptr(), t, small_int(4));
      PyList_SET_ITEM(offsets.ptr(), t, small_int(0));
    }
    PyObject* raw = PyList_New(n);
    if (!raw) throw py::error_already_set();
    py::list indexes = py::reinterpret_steal<py::list>(raw);
    for (int64_t i = 0; i < n; ++i) PyList_SET_ITEM(raw, i, small_int(index[i]));
    int64_t done = 0;
    while (done < n) {
      if (left_in_segment_ == 0) open_segment();
      const int64_t take = std::min(left_in_segment_, n - done);
      py::object chunk = indexes;
      if (take != n) {
        PyObject* s = PyList_GetSlice(raw, done, done + take);
        if (!s) throw py::error_already_set();
        chunk = py::reinterpret_steal<py::object>(s);
      }
      py::object out = decode_stream_(chunk, cdfs, lengths, offsets);
      read_bits(out, take, bits + done);
      done += take;
      left_in_segment_ -= take;
    }
    consumed_ += n;
  }

 private:
  // next_segment() -> (the segment's decode_stream, its symbol count): RansStreamReader's switch.
  void open_segment() {
    py::tuple seg = next_segment_();
    if (seg.size() != 2) throw std::invalid_argument("next_segment must return (decode_stream, count)");
    decode_stream_ = seg[0];
    left_in_segment_ = seg[1].cast<int64_t>();
    if (left_in_segment_ <= 0) throw CorruptStream("rANS segment holds no symbols");
  }

  void read_bits(const py::object& out, int64_t count, uint8_t* bits) {
    PyObject* seq = PySequence_Fast(out.ptr(), "decode_stream must return a list");
    if (!seq) throw py::error_already_set();
    py::object hold = py::reinterpret_steal<py::object>(seq);
    if (PySequence_Fast_GET_SIZE(seq) != count)
      throw CorruptStream("decode_stream returned " + std::to_string(PySequence_Fast_GET_SIZE(seq)) +
                          " symbols, " + std::to_string(count) + " requested");
    PyObject** items = PySequence_Fast_ITEMS(seq);
    for (int64_t i = 0; i < count; ++i) {
      if (items[i] == zero_ || items[i] == one_) {  // the usual answer: no conversion needed
        bits[i] = items[i] == one_;
        continue;
      }
      const long v = PyLong_AsLong(items[i]);
      if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
      if (v != 0 && v != 1) throw CorruptStream("decoded a symbol outside the binary alphabet");
      bits[i] = uint8_t(v);
    }
  }

  // A new reference to the Python int v (cached: most indexes exceed CPython's small ints).
  PyObject* small_int(int64_t v) {
    while (int64_t(ints_.size()) <= v) {
      PyObject* o = PyLong_FromLongLong(int64_t(ints_.size()));
      if (!o) throw py::error_already_set();
      ints_.push_back(o);
    }
    Py_INCREF(ints_[v]);
    return ints_[v];
  }

  // A new reference to the CDF list [0, f0, 2**16, 2**16] (built once per f0; decode_stream only
  // reads it).
  PyObject* cdf_row(int64_t f0) {
    PyObject*& row = cdf_cache_[f0];
    if (!row) {
      row = PyList_New(4);
      if (!row) throw py::error_already_set();
      const int64_t v[4] = {0, f0, kTotalFreq, kTotalFreq};
      for (int j = 0; j < 4; ++j) {
        PyObject* o = PyLong_FromLongLong(v[j]);
        if (!o) throw py::error_already_set();
        PyList_SET_ITEM(row, j, o);
      }
    }
    Py_INCREF(row);
    return row;
  }

  py::object next_segment_, decode_stream_;
  int64_t total_, consumed_ = 0, left_in_segment_ = 0;
  std::vector<PyObject*> cdf_cache_;  // by f0 (owned references)
  std::vector<PyObject*> ints_;       // 0, 1, 2, ... (owned references)
  PyObject* zero_ = nullptr;          // borrowed from ints_
  PyObject* one_ = nullptr;
};

// Returns (node codes int64 [M], neighbour rows int64 [M, 26] or None).  `source`: a list of
// (segment bytes, symbol count) pairs for the native reader, or RansStreamReader.next_segment
// (CompressAI's decode_stream of each segment).
py::tuple decode_levels(py::object source, int64_t num_points, int64_t num_bits, int depth,
                        bool use_child_neighbours, int decay_shift, int64_t num_contexts, bool with_neighbours,
                        IntArray face, IntArray corner, IntArray outward, IntArray child_parent,
                        IntArray child_octant) {
  const ralhe::OccupancyTables& geo = ralhe::occupancy_tables();
  check_table(face, geo.face, "face");
  check_table(corner, geo.corner, "corner");
  check_table(outward, geo.outward, "outward");
  check_table(child_parent, geo.child_parent, "child_parent");
  check_table(child_octant, geo.child_octant, "child_octant");
  ralhe::OccupancyConfig config;
  config.child_neighbours = use_child_neighbours;
  config.decay_shift = decay_shift;
  if (depth < 1 || depth > 21 || decay_shift < 0 || decay_shift > 7 || num_points < 1 || num_bits < 0)
    throw std::invalid_argument("decode_levels: bad arguments");
  if (num_contexts != config.num_contexts()) throw std::invalid_argument("decode_levels: contexts differ from the config");

  std::unique_ptr<ralhe::OccupancyBitSource> feed;
  py::list keep;  // the segments' bytes, alive while the reader points into them
  if (py::isinstance<py::list>(source)) {
    std::vector<ralhe::RansSegment> segments;
    for (py::handle item : source) {
      py::tuple pair = py::reinterpret_borrow<py::tuple>(item);
      if (pair.size() != 2 || !py::isinstance<py::bytes>(pair[0]))
        throw std::invalid_argument("segments must be (bytes, count) pairs");
      keep.append(pair[0]);
      char* buffer = nullptr;
      Py_ssize_t size = 0;
      if (PyBytes_AsStringAndSize(pair[0].ptr(), &buffer, &size) != 0) throw py::error_already_set();
      segments.push_back({ralhe::Bytes(reinterpret_cast<const uint8_t*>(buffer), size_t(size)),
                          pair[1].cast<int64_t>()});
    }
    feed = std::make_unique<ralhe::SegmentBitSource>(ralhe::SegmentedRansReader(std::move(segments), num_bits));
  } else {
    feed = std::make_unique<RansFeed>(source, num_bits);
  }
  ralhe::OccupancyLeaves leaves;
  try {
    leaves = ralhe::decode_occupancy_levels(*feed, num_points, num_bits, depth, config, with_neighbours);
  } catch (const ralhe::Error& e) {
    if (e.kind() == ralhe::ErrorKind::kInvalidArgument) throw std::invalid_argument(e.what());
    throw CorruptStream(e.what());
  }

  const int64_t m = int64_t(leaves.codes.size());
  py::array_t<int64_t> codes(m);
  std::copy(leaves.codes.begin(), leaves.codes.end(), codes.mutable_data());
  if (!with_neighbours) return py::make_tuple(codes, py::none());
  py::array_t<int64_t> rows({m, int64_t(kNeighbours)});
  std::copy(leaves.neighbours.begin(), leaves.neighbours.end(), rows.mutable_data());
  return py::make_tuple(codes, rows);
}

}  // namespace

PYBIND11_MODULE(_occupancy_cpu, m) {
  m.attr("API_VERSION") = 2;  // bumped whenever the Python side calls it differently (ralhe_me/native.py)
  m.doc() = "Native per-level loop of the octree occupancy decoder (contexts, adaptive tables, rANS reading).";
  py::register_exception<CorruptStream>(m, "CorruptStream", PyExc_ValueError);
  m.def("decode_levels", &decode_levels, py::arg("source"), py::arg("num_points"), py::arg("num_bits"),
        py::arg("depth"), py::arg("child_neighbours"), py::arg("decay_shift"), py::arg("num_contexts"),
        py::arg("with_neighbours"), py::arg("face"), py::arg("corner"), py::arg("outward"), py::arg("child_parent"),
        py::arg("child_octant"));
}
