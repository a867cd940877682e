// Native per-level loop of the octree occupancy decoder (ralhe_me/geometry/occupancy.py).
//
// decode_positions in occupancy.py is the reference: this file runs the same batches in the same
// order and reads the same symbols with the same frequency per symbol, either with the native
// reader of CompressAI's rANS format (entropy/csrc/rans_decoder.h) or by handing CompressAI's
// RansDecoder.decode_stream (a Python callable) the batch, so the decoded bits, and with them
// the points and neighbour rows, are identical.  Tests compare the paths.
//
// Per level d (nodes: sorted Morton codes, one row each):
//   1. per (row, octant k): how many of the 3 face and 4 edge/vertex neighbours touching octant k
//      are occupied (from the row's 26 neighbour rows);
//   2. per parity group g (GROUP_ORDER) and bit k, one batch: the context of every row of g whose
//      bit k is coded (_LevelContexts.contexts), the KT frequency of each context
//      (AdaptiveModel.tables: weights 2 * count + 1, quantize_frequencies for alphabet 2 and the
//      full-row fix of frequencies_to_cdfs), one decode_stream call per rANS segment the batch
//      touches, then the count updates (AdaptiveModel.update) and the occupancy bits;
//   3. the children (parent order, then octant: Morton order) and their 26 neighbour rows, each
//      a child of the parent's neighbour (child_neighbours);
// and the counts are shifted right by decay_shift before every level but the first.
//
// Layout.  Per level: nodes int64 [n] (sorted codes); neighbour rows int32 [n][26] (-1: empty);
// occupancy bytes uint8 [n + 1] (the last, always 0, read for an empty neighbour); `order`: the
// rows grouped by parity group, and per position there and octant the level's constant part of
// the context (faces * 5 + corners), uint8 [n][8], so a batch reads its group contiguously.
// The adaptive counts are int64 [C][2].  Rows become int64 only in the returned arrays.
//
// Frequencies.  A binary table is [0, f0, 2**16, 2**16] (symbol 0, symbol 1, the never-coded
// escape): only f0 matters, so a batch sends one table per distinct f0 (the Python reader sends
// one per context; the tables each symbol is decoded with are the same).  The table lists are
// built once per f0 and kept; indexes are cached Python ints.
//
// Corrupt input: the checks that need the decoded data (nodes per level against the point count,
// symbols requested against the symbols in the stream, decode_stream's answer) raise
// CorruptStream, which occupancy.py turns into OccupancyStreamError.  The header, check sum and
// rANS segment layout are checked in Python before this runs.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "../../entropy/csrc/rans_decoder.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

struct CorruptStream : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr int kNeighbours = 26;  // column order: occupancy.NEIGHBOUR_OFFSETS
constexpr int64_t kTotalFreq = 1 << 16;  // CompressAI's precision
constexpr int kGroupOrder[8] = {0, 1, 2, 4, 3, 5, 6, 7};  // occupancy.GROUP_ORDER
constexpr int kAxisBits[3] = {4, 2, 1};  // octant / parity bit of x, y, z

// The neighbourhood tables of occupancy.py (passed in, so there is one definition).
struct Geometry {
  int face[8][3], corner[8][4], outward[8][3];  // indices into the 26 offsets, per octant
  int child_parent[8][kNeighbours];  // parent's neighbour holding a child's neighbour (26: parent)
  int child_octant[8][kNeighbours];  // that neighbour's octant there
};

using IntArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

template <int R, int C>
void copy_table(const IntArray& src, int (&dst)[R][C], int limit, const char* name) {
  if (src.ndim() != 2 || src.shape(0) != R || src.shape(1) != C)
    throw std::invalid_argument(std::string(name) + " has the wrong shape");
  const int64_t* p = src.data();
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      if (p[r * C + c] < 0 || p[r * C + c] > limit) throw std::invalid_argument(std::string(name) + " out of range");
      dst[r][c] = int(p[r * C + c]);
    }
}

// Frequency of symbol 0 for counts (c0, c1) after the batch-wide scaling `shift`: the KT weights
// 2 * count + 1 through quantize_frequencies (alphabet 2: both weights positive, each symbol gets 1
// plus its share of 2**16 - 2, the one unit left over to the larger remainder, ties to symbol 0)
// and frequencies_to_cdfs' fix of a row holding all 2**16 (it cannot happen here: both get >= 1).
inline int64_t freq0(int64_t c0, int64_t c1, int shift) {
  int64_t w0 = 2 * c0 + 1, w1 = 2 * c1 + 1;
  if (shift) {  // quantize_frequencies keeps weight * 2**16 inside int64
    w0 = std::max<int64_t>(w0 >> shift, 1);
    w1 = std::max<int64_t>(w1 >> shift, 1);
  }
  const int64_t total = w0 + w1, spare = kTotalFreq - 2;
  const int64_t s0 = w0 * spare, s1 = w1 * spare;
  int64_t f0 = s0 / total + 1;
  const int64_t left = spare - s0 / total - s1 / total;  // 0 or 1
  if (left > 0 && s0 % total >= s1 % total) f0 += 1;
  if (f0 == kTotalFreq) f0 -= 1;  // the full-row fix (symbol 0 full: 1 to symbol 1)
  if (f0 == 0) f0 += 1;  // (symbol 1 full: 1 to symbol 0)
  return f0;
}

inline int bit_length(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 0; }

// The source of a batch's bits: CompressAI's decode_stream (RansFeed) or the native reader of the
// same format (NativeFeed); both decode the same bits from the same segments.
class Feed {
 public:
  virtual ~Feed() = default;
  int64_t consumed() const { return consumed_; }
  // bits[i] of symbol i, decoded with the table f0s[index[i]].
  virtual void decode(const std::vector<int32_t>& index, const std::vector<int64_t>& f0s,
                      std::vector<uint8_t>& bits) = 0;

 protected:
  int64_t consumed_ = 0;
};

// Reads the segments with ralhe::RansReader.  A read past a segment's end gives zero words, as
// CompressAI's decoder does on the zero padding RansStreamReader appends, so even a corrupt
// stream decodes to what the other paths decode (the level checks then reject it).
class NativeFeed : public Feed {
 public:
  NativeFeed(py::list segments, std::vector<int64_t> counts, int64_t num_symbols)
      : segments_(std::move(segments)), counts_(std::move(counts)), total_(num_symbols) {
    if (int64_t(py::len(segments_)) != int64_t(counts_.size()))
      throw std::invalid_argument("one symbol count per segment is needed");
  }

  void decode(const std::vector<int32_t>& index, const std::vector<int64_t>& f0s,
              std::vector<uint8_t>& bits) override {
    const int64_t n = int64_t(index.size());
    if (consumed_ + n > total_) throw CorruptStream("more symbols requested than the stream holds");
    bits.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      if (left_in_segment_ == 0) open_segment();
      bits[i] = uint8_t(reader_.decode_bit(uint32_t(f0s[index[i]])));
      --left_in_segment_;
    }
    consumed_ += n;
  }

 private:
  void open_segment() {
    if (next_ >= int64_t(counts_.size())) throw CorruptStream("more symbols requested than the stream holds");
    py::handle seg = segments_[size_t(next_)];
    char* buffer = nullptr;
    Py_ssize_t size = 0;
    if (PyBytes_AsStringAndSize(seg.ptr(), &buffer, &size) != 0) throw py::error_already_set();
    reader_.reset(reinterpret_cast<const uint8_t*>(buffer), size_t(size));
    left_in_segment_ = counts_[size_t(next_)];
    ++next_;
    if (left_in_segment_ <= 0) throw CorruptStream("rANS segment holds no symbols");
  }

  py::list segments_;  // bytes objects, kept alive here while the reader points into them
  std::vector<int64_t> counts_;
  int64_t total_, next_ = 0, left_in_segment_ = 0;
  ralhe::RansReader reader_;
};

// Hands batches of (table index per symbol, f0 per table) to CompressAI's decode_stream, one call
// per rANS segment a batch touches, as RansStreamReader.read does.
class RansFeed : public Feed {
 public:
  RansFeed(py::object next_segment, int64_t num_symbols)
      : next_segment_(std::move(next_segment)), total_(num_symbols), cdf_cache_(kTotalFreq) {
    zero_ = small_int(0);  // decode_stream's answers are these (CPython caches small ints)
    one_ = small_int(1);
    Py_DECREF(zero_);  // ints_ holds them
    Py_DECREF(one_);
  }

  ~RansFeed() {
    for (PyObject* o : cdf_cache_) Py_XDECREF(o);
    for (PyObject* o : ints_) Py_XDECREF(o);
  }

  void decode(const std::vector<int32_t>& index, const std::vector<int64_t>& f0s,
              std::vector<uint8_t>& bits) override {
    const int64_t n = int64_t(index.size());
    if (consumed_ + n > total_) throw CorruptStream("more symbols requested than the stream holds");
    const int64_t nt = int64_t(f0s.size());
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
    bits.resize(n);
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
      read_bits(out, take, bits.data() + done);
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
  int64_t total_, left_in_segment_ = 0;
  std::vector<PyObject*> cdf_cache_;  // by f0 (owned references)
  std::vector<PyObject*> ints_;  // 0, 1, 2, ... (owned references)
  PyObject* zero_ = nullptr;  // borrowed from ints_
  PyObject* one_ = nullptr;
};

// The 26-neighbour rows of the children (Morton order) from the level's rows and occupancy;
// child_row [(n + 1) * 8]: a child's row by (parent row, octant), -1 if empty, row n all empty.
void child_neighbours(const Geometry& geo, const std::vector<int32_t>& nb, const std::vector<uint8_t>& occ,
                      const std::vector<int32_t>& child_row, int64_t m, std::vector<int32_t>& out) {
  const int64_t n = int64_t(occ.size());
  out.resize(m * kNeighbours);
  int64_t c = 0;
  int32_t holder[kNeighbours + 1];  // the parent's neighbours (n: empty), then the parent
  for (int64_t p = 0; p < n; ++p) {
    if (!occ[p]) continue;
    const int32_t* prow = nb.data() + p * kNeighbours;
    for (int j = 0; j < kNeighbours; ++j) holder[j] = prow[j] < 0 ? int32_t(n) : prow[j];
    holder[kNeighbours] = int32_t(p);
    for (int o = 0; o < 8; ++o) {
      if (!(occ[p] >> o & 1)) continue;
      int32_t* crow = out.data() + c * kNeighbours;
      for (int j = 0; j < kNeighbours; ++j)
        crow[j] = child_row[int64_t(holder[geo.child_parent[o][j]]) * 8 + geo.child_octant[o][j]];
      ++c;
    }
  }
}

// Returns (node codes int64 [M], neighbour rows int64 [M, 26] or None).  `source`: a list of
// (segment bytes, symbol count) pairs for the native reader, or RansStreamReader.next_segment
// (CompressAI's decode_stream of each segment).
py::tuple decode_levels(py::object source, int64_t num_points, int64_t num_bits, int depth,
                        bool use_child_neighbours, int decay_shift, int64_t num_contexts, bool with_neighbours,
                        IntArray face, IntArray corner, IntArray outward, IntArray child_parent,
                        IntArray child_octant) {
  Geometry geo;
  copy_table(face, geo.face, kNeighbours - 1, "face");
  copy_table(corner, geo.corner, kNeighbours - 1, "corner");
  copy_table(outward, geo.outward, kNeighbours - 1, "outward");
  copy_table(child_parent, geo.child_parent, kNeighbours, "child_parent");
  copy_table(child_octant, geo.child_octant, 7, "child_octant");
  if (depth < 1 || depth > 21 || decay_shift < 0 || decay_shift > 7 || num_points < 1 || num_bits < 0)
    throw std::invalid_argument("decode_levels: bad arguments");
  if (num_contexts < 8 * 8 * 4 * 5 * (use_child_neighbours ? 4 : 1))
    throw std::invalid_argument("decode_levels: too few contexts for the config");

  // neighbour sets as bit masks over the 26 columns; face_col[2 * axis + (k's bit on it)]: the
  // column of the outward face neighbour of octant k along that axis
  uint32_t face_mask[8] = {0}, corner_mask[8] = {0};
  int face_col[6];
  for (int k = 0; k < 8; ++k) {
    for (int j = 0; j < 3; ++j) face_mask[k] |= 1u << geo.face[k][j];
    for (int j = 0; j < 4; ++j) corner_mask[k] |= 1u << geo.corner[k][j];
    for (int a = 0; a < 3; ++a) face_col[2 * a + ((k & kAxisBits[a]) != 0)] = geo.outward[k][a];
  }

  std::unique_ptr<Feed> feed_owner;
  if (py::isinstance<py::list>(source)) {
    py::list segments;
    std::vector<int64_t> counts;
    for (py::handle item : source) {
      py::tuple pair = py::reinterpret_borrow<py::tuple>(item);
      if (pair.size() != 2 || !py::isinstance<py::bytes>(pair[0]))
        throw std::invalid_argument("segments must be (bytes, count) pairs");
      segments.append(pair[0]);
      counts.push_back(pair[1].cast<int64_t>());
    }
    feed_owner = std::make_unique<NativeFeed>(segments, counts, num_bits);
  } else {
    feed_owner = std::make_unique<RansFeed>(source, num_bits);
  }
  Feed& feed = *feed_owner;
  std::vector<int64_t> counts(size_t(num_contexts) * 2, 0);
  std::vector<int32_t> ctx_slot(size_t(num_contexts), -1);  // per batch: context -> distinct context
  std::vector<int32_t> f0_slot(size_t(kTotalFreq), -1);  // per batch: f0 -> table index

  std::vector<int64_t> nodes{0};  // the root
  std::vector<int32_t> nb(kNeighbours, -1);  // which has no neighbours
  std::vector<uint8_t> occ, base, bits;
  std::vector<int32_t> order, face_rows, sel, ctx, index, uniq, uniq_table, child_row, next_nb;
  std::vector<int64_t> f0s, next_nodes;

  for (int d = 0; d < depth; ++d) {
    if (d)
      for (int64_t& c : counts) c >>= decay_shift;
    const int64_t n = int64_t(nodes.size());

    // rows by parity group (Morton's lowest 3 bits), ascending within a group
    int64_t start[9] = {0};
    for (int64_t r = 0; r < n; ++r) ++start[(nodes[r] & 7) + 1];
    for (int g = 0; g < 8; ++g) start[g + 1] += start[g];
    order.resize(n);
    {
      int64_t fill[8];
      std::copy(start, start + 8, fill);
      for (int64_t r = 0; r < n; ++r) order[fill[nodes[r] & 7]++] = int32_t(r);
    }
    // 1. per position i in `order`: per octant k the level's part of the context, faces * 5 +
    // corners (occupied face / edge-and-vertex neighbours touching octant k), and the rows of
    // the 6 face neighbours (n: empty), so that a batch reads its group's data contiguously
    base.resize(n * 8);
    face_rows.resize(n * 6);
    for (int64_t i = 0; i < n; ++i) {
      const int32_t* row = nb.data() + int64_t(order[i]) * kNeighbours;
      uint32_t present = 0;
      for (int j = 0; j < kNeighbours; ++j) present |= uint32_t(row[j] >= 0) << j;
      for (int k = 0; k < 8; ++k)
        base[i * 8 + k] = uint8_t(__builtin_popcount(present & face_mask[k]) * 5 +
                                  __builtin_popcount(present & corner_mask[k]));
      for (int f = 0; f < 6; ++f) face_rows[i * 6 + f] = row[face_col[f]] < 0 ? int32_t(n) : row[face_col[f]];
    }

    // 2. the 64 batches of the level; occ[n] = 0 stands for an empty neighbour
    occ.assign(n + 1, 0);
    sel.resize(n);
    ctx.resize(n);
    for (int g : kGroupOrder) {
      for (int k = 0; k < 8; ++k) {
        // known child-level face neighbours: inward siblings k ^ b (coded earlier in this node),
        // and for each odd coordinate of g the outward neighbour node (an earlier group: complete)
        int inward = 0, num_out = 0, out_face[3], out_bit[3];
        for (int a = 0; a < 3; ++a) {
          const int b = kAxisBits[a];
          if (k & b) inward |= 1 << (k ^ b);
          if (g & b) {
            out_face[num_out] = 2 * a + ((k & b) != 0);  // geo.outward[k][a]
            out_bit[num_out++] = k ^ b;
          }
        }
        const int below = (1 << k) - 1;
        int64_t m = 0;
        for (int64_t i = start[g]; i < start[g + 1]; ++i) {
          const int32_t r = order[i];
          const int mine = occ[r];
          const int nprev = __builtin_popcount(mine & below);
          if (k == 7 && nprev == 0) continue;  // the last bit of a node empty so far is 1, not coded
          int32_t c = (k * 8 + nprev) * 20 + base[i * 8 + k];  // ((k * 8 + nprev) * 4 + faces) * 5 + corners
          if (use_child_neighbours) {
            int known = __builtin_popcount(mine & inward);
            for (int j = 0; j < num_out; ++j) known += occ[face_rows[i * 6 + out_face[j]]] >> out_bit[j] & 1;
            c = c * 4 + std::min(known, 3);
          }
          sel[m] = r;
          ctx[m++] = c;
        }
        if (m) {
          // tables from the counts before this batch: one per distinct context, then per f0
          uniq.clear();
          index.resize(m);
          for (int64_t i = 0; i < m; ++i) {
            int32_t& s = ctx_slot[ctx[i]];
            if (s < 0) {
              s = int32_t(uniq.size());
              uniq.push_back(ctx[i]);
            }
            index[i] = s;
          }
          int64_t wmax = 0;  // quantize_frequencies scales the whole batch if a weight reaches 2**40
          for (int32_t c : uniq) wmax = std::max({wmax, 2 * counts[2 * c] + 1, 2 * counts[2 * c + 1] + 1});
          const int shift = wmax >= (int64_t(1) << 40) ? bit_length(uint64_t(wmax)) - 40 : 0;
          f0s.clear();
          uniq_table.resize(uniq.size());
          for (size_t u = 0; u < uniq.size(); ++u) {
            const int64_t f0 = freq0(counts[2 * uniq[u]], counts[2 * uniq[u] + 1], shift);
            int32_t& t = f0_slot[f0];
            if (t < 0) {
              t = int32_t(f0s.size());
              f0s.push_back(f0);
            }
            uniq_table[u] = t;
          }
          for (int32_t c : uniq) ctx_slot[c] = -1;
          for (int64_t f0 : f0s) f0_slot[f0] = -1;
          for (int64_t i = 0; i < m; ++i) index[i] = uniq_table[index[i]];

          feed.decode(index, f0s, bits);
          for (int64_t i = 0; i < m; ++i) {
            ++counts[2 * int64_t(ctx[i]) + bits[i]];
            occ[sel[i]] |= uint8_t(bits[i] << k);
          }
        }
        if (k == 7)  // the uncoded bits
          for (int64_t i = start[g]; i < start[g + 1]; ++i)
            if (!(occ[order[i]] & 0x7F)) occ[order[i]] = 0x80;
      }
    }
    occ.pop_back();

    // 3. the children, in Morton order
    int64_t m = 0;
    for (uint8_t o : occ) m += __builtin_popcount(o);
    if (m > num_points)
      throw CorruptStream("level " + std::to_string(d + 1) + " decodes " + std::to_string(m) +
                          " nodes, more than the " + std::to_string(num_points) + " points");
    if (m > INT32_MAX) throw CorruptStream("more than 2**31 nodes in one level");
    next_nodes.resize(m);
    child_row.assign((n + 1) * 8, -1);  // row n: the children of an empty neighbour
    int64_t c = 0;
    for (int64_t p = 0; p < n; ++p)
      for (int o = 0; o < 8; ++o)
        if (occ[p] >> o & 1) {
          child_row[p * 8 + o] = int32_t(c);
          next_nodes[c++] = nodes[p] << 3 | o;
        }
    if (d + 1 < depth || with_neighbours) {
      child_neighbours(geo, nb, occ, child_row, m, next_nb);
      nb.swap(next_nb);
    }
    nodes.swap(next_nodes);
  }
  if (feed.consumed() != num_bits)
    throw CorruptStream(std::to_string(num_bits - feed.consumed()) + " symbols left undecoded");

  const int64_t m = int64_t(nodes.size());
  py::array_t<int64_t> codes(m);
  std::copy(nodes.begin(), nodes.end(), codes.mutable_data());
  if (!with_neighbours) return py::make_tuple(codes, py::none());
  py::array_t<int64_t> rows({m, int64_t(kNeighbours)});
  std::copy(nb.begin(), nb.end(), rows.mutable_data());
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
