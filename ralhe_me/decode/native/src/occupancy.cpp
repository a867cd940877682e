// The octree occupancy decoder; see occupancy.h and ralhe_me/geometry/occupancy.py.
//
// Per level d (nodes: sorted Morton codes, one row each):
//   1. per (row, octant k): how many of the 3 face and 4 edge/vertex neighbours touching octant k
//      are occupied (from the row's 26 neighbour rows);
//   2. per parity group g (GROUP_ORDER) and bit k, one batch: the context of every row of g whose
//      bit k is coded (_LevelContexts.contexts), the KT frequency of each context
//      (AdaptiveModel.tables: weights 2 * count + 1, quantize_frequencies for alphabet 2 and the
//      full-row fix of frequencies_to_cdfs), the batch's symbols, then the count updates
//      (AdaptiveModel.update) and the occupancy bits;
//   3. the children (parent order, then octant: Morton order) and their 26 neighbour rows, each
//      a child of the parent's neighbour (child_neighbours);
// and the counts are shifted right by decay_shift before every level but the first.
//
// Layout (LevelLoop).  Rows and codes of a level sit at the end of buffers shared by all levels
// (children overwrite only parent rows already read); per position in parity-group order the
// context bases of the 8 octants as byte lanes of a uint64 (from the 26-bit present mask through
// three plane tables), the face neighbours the group reads, and the bits decoded so far.  The
// children pass writes all of these for the next level, gathering each parent's neighbours'
// (first child, occupancy) once per chunk of parents so that the cache misses overlap.
//
// Frequencies.  A binary table is [0, f0, 2**16, 2**16] (symbol 0, symbol 1, the never-coded
// escape): only f0 matters.  The native reader decodes symbol by symbol, each context's f0 taken
// at its first use in the batch; another source gets one f0 per distinct value per batch (the
// Python reader builds one table per context; the table each symbol is decoded with is the same).
#include "occupancy.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "octree.h"

namespace ralhe {

namespace {

constexpr int kGroupOrder[8] = {0, 1, 2, 4, 3, 5, 6, 7};  // occupancy.GROUP_ORDER
constexpr int kAxisBits[3] = {4, 2, 1};                     // octant / parity bit of x, y, z

inline int popcount32(uint32_t v) {  // portable (no builtins): the same code everywhere
  v = v - ((v >> 1) & 0x55555555u);
  v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
  return int((((v + (v >> 4)) & 0x0F0F0F0Fu) * 0x01010101u) >> 24);
}

inline int bit_length(uint64_t v) {
  int n = 0;
  while (v) {
    v >>= 1;
    ++n;
  }
  return n;
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
  if (f0 == 0) f0 += 1;           // (symbol 1 full: 1 to symbol 0)
  return f0;
}

int neighbour_column(int dx, int dy, int dz) {  // -1 for (0, 0, 0)
  const int j = (dx + 1) * 9 + (dy + 1) * 3 + (dz + 1);
  return j == 13 ? -1 : (j > 13 ? j - 1 : j);
}

OccupancyTables make_tables() {
  OccupancyTables t{};
  int j = 0;
  for (int dx = -1; dx <= 1; ++dx)
    for (int dy = -1; dy <= 1; ++dy)
      for (int dz = -1; dz <= 1; ++dz)
        if (dx || dy || dz) {
          t.offsets[j][0] = dx;
          t.offsets[j][1] = dy;
          t.offsets[j][2] = dz;
          ++j;
        }
  for (int k = 0; k < 8; ++k) {
    int sign[3], nf = 0, nc = 0;
    for (int a = 0; a < 3; ++a) sign[a] = (k & kAxisBits[a]) ? 1 : -1;
    for (int c = 0; c < kNeighbours; ++c) {
      bool touching = true;
      int nonzero = 0;
      for (int a = 0; a < 3; ++a) {
        touching = touching && (t.offsets[c][a] == 0 || t.offsets[c][a] == sign[a]);
        nonzero += t.offsets[c][a] != 0;
      }
      if (!touching) continue;
      if (nonzero == 1)
        t.face[k][nf++] = c;
      else
        t.corner[k][nc++] = c;
    }
    for (int a = 0; a < 3; ++a) {
      int d[3] = {0, 0, 0};
      d[a] = sign[a];
      t.outward[k][a] = neighbour_column(d[0], d[1], d[2]);
    }
    // a child's neighbour: the child of floor(s / 2) (the parent's neighbour, or the parent) at
    // octant s mod 2, with s = the child's bit + the offset, per axis in -1..2
    for (int c = 0; c < kNeighbours; ++c) {
      int p[3], octant = 0;
      for (int a = 0; a < 3; ++a) {
        const int s = ((k & kAxisBits[a]) ? 1 : 0) + t.offsets[c][a];
        p[a] = s < 0 ? -1 : s / 2;
        if (s & 1) octant |= kAxisBits[a];
      }
      const int col = neighbour_column(p[0], p[1], p[2]);
      t.child_parent[k][c] = col < 0 ? kNeighbours : col;
      t.child_octant[k][c] = octant;
    }
  }
  return t;
}


}  // namespace

const OccupancyTables& occupancy_tables() {
  static const OccupancyTables tables = make_tables();
  return tables;
}

OccupancyConfig OccupancyConfig::from_byte(uint8_t byte) {
  if (byte >> 4 != 8) {
    static const char* hex = "0123456789abcdef";
    corrupt(std::string("unknown occupancy stream mode byte 0x") + hex[byte >> 4] + hex[byte & 15]);
  }
  OccupancyConfig config;
  config.child_neighbours = (byte >> 3) & 1;
  config.decay_shift = byte & 7;
  return config;
}

void SegmentBitSource::decode(const int32_t* index, int64_t n, const int64_t* f0s, int64_t /*num_tables*/,
                              uint8_t* bits) {
  reader_.claim(n);
  for (int64_t i = 0; i < n; ++i) bits[i] = uint8_t(reader_.decode_bit(uint32_t(f0s[index[i]])));
}

namespace {

// v.resize(size), growing without copying the old contents (dead between levels) and by steps of
// 4x at most up to `limit` elements, so that few fresh pages are touched.
template <class T>
void resize_scratch(std::vector<T>& v, size_t size, size_t limit) {
  if (size > v.capacity()) {
    v.clear();
    v.reserve(std::max(size, std::min(limit, 4 * size)));
  }
  v.resize(size);
}

// Tables of the level loop derived from OccupancyTables (built once).
struct LoopTables {
  // per octant k (byte lane k) faces * 5 + corners among the present neighbours of columns 0-8,
  // 9-16 and 17-25: the three sum to a node's context bases without carries (lanes <= 19)
  uint64_t plane_lo[512], plane_mid[256], plane_hi[512];
  uint64_t spread[3][256];  // per axis: lane k = bit (k ^ the axis bit) of an occupancy byte
  uint64_t upper[3];        // per axis: the lanes k with the axis bit set
  int8_t rank[256 * 8];     // (byte, octant): rank of the octant among the byte's set bits, -1 if unset
  uint8_t low_bit[256];     // the lowest set bit of a byte
  uint8_t popcount[256];
  uint32_t needed[256];  // the neighbour columns the children of an occupancy byte read
};

// make_tables' child_parent / child_octant as constants, so that the child rows unroll per octant
// o: for neighbour j (offset d) and axis a, s = o's bit + d_a in -1..2 names the parent-level
// holder floor(s / 2) and the octant bit s mod 2.
constexpr int offset_of(int j, int a) {
  const int c = j < 13 ? j : j + 1;  // the column skips (0, 0, 0)
  return (a == 0 ? c / 9 : a == 1 ? c / 3 % 3 : c % 3) - 1;
}
constexpr int column_of(int dx, int dy, int dz) {  // kNeighbours for (0, 0, 0): the node itself
  const int c = (dx + 1) * 9 + (dy + 1) * 3 + (dz + 1);
  return c == 13 ? kNeighbours : (c > 13 ? c - 1 : c);
}
constexpr int split_of(int o, int j, int a) { return ((o >> (2 - a)) & 1) + offset_of(j, a); }
constexpr int holder_of(int s) { return s < 0 ? -1 : s / 2; }
constexpr int holder_slot(int o, int j) {
  return column_of(holder_of(split_of(o, j, 0)), holder_of(split_of(o, j, 1)), holder_of(split_of(o, j, 2)));
}
constexpr int holder_octant(int o, int j) {
  return ((split_of(o, j, 0) + 2) & 1) << 2 | ((split_of(o, j, 1) + 2) & 1) << 1 | ((split_of(o, j, 2) + 2) & 1);
}
constexpr int face_column(int a, int sign) {  // the face neighbour along axis a, sign -1 or 1
  return column_of(a == 0 ? sign : 0, a == 1 ? sign : 0, a == 2 ? sign : 0);
}
constexpr int faces_kept(int g) { return 2 * (((g >> 2) & 1) + ((g >> 1) & 1) + (g & 1)); }  // 2 per odd coordinate

// Child neighbour j of an octant-O child: from the gathered value (first child << 8 | occupancy)
// of its holder, -1 if that octant is empty.  Returns the present bit.
template <int O, int J>
inline uint32_t child_entry(const uint64_t* value, const int8_t* rank, int32_t* out) {
  constexpr int kSlot = holder_slot(O, J), kOctant = holder_octant(O, J);
  const uint64_t v = value[kSlot];
  const int32_t t = rank[(v & 0xFF) * 8 + kOctant];
  out[J] = t < 0 ? -1 : int32_t(v >> 8) + t;
  return uint32_t(t >= 0) << J;
}
template <int O, size_t... J>
inline uint32_t child_row(const uint64_t* value, const int8_t* rank, int32_t* out, std::index_sequence<J...>) {
  return (child_entry<O, int(J)>(value, rank, out) | ...);
}

LoopTables make_loop_tables(const OccupancyTables& geo) {
  LoopTables t{};
  uint32_t face_mask[8] = {0}, corner_mask[8] = {0};
  for (int k = 0; k < 8; ++k) {
    for (int j = 0; j < 3; ++j) face_mask[k] |= 1u << geo.face[k][j];
    for (int j = 0; j < 4; ++j) corner_mask[k] |= 1u << geo.corner[k][j];
    for (int j = 0; j < kNeighbours; ++j)  // the constants above must be the tables
      if (holder_slot(k, j) != geo.child_parent[k][j] || holder_octant(k, j) != geo.child_octant[k][j])
        fail(ErrorKind::kInvalidArgument, "occupancy: child tables disagree");
    for (int a = 0; a < 3; ++a)
      if (geo.outward[k][a] != face_column(a, (k & kAxisBits[a]) ? 1 : -1))
        fail(ErrorKind::kInvalidArgument, "occupancy: face tables disagree");
  }
  auto plane = [&](uint64_t* table, int lo, int width) {
    for (uint32_t v = 0; v < (1u << width); ++v) {
      const uint32_t present = v << lo;
      uint64_t lanes = 0;
      for (int k = 0; k < 8; ++k)
        lanes |= uint64_t(popcount32(present & face_mask[k]) * 5 + popcount32(present & corner_mask[k])) << (8 * k);
      table[v] = lanes;
    }
  };
  plane(t.plane_lo, 0, 9);
  plane(t.plane_mid, 9, 8);
  plane(t.plane_hi, 17, 9);
  for (int a = 0; a < 3; ++a) {
    const int b = kAxisBits[a];
    for (int v = 0; v < 256; ++v)
      for (int k = 0; k < 8; ++k) t.spread[a][v] |= uint64_t((v >> (k ^ b)) & 1) << (8 * k);
    for (int k = 0; k < 8; ++k)
      if (k & b) t.upper[a] |= uint64_t(0xFF) << (8 * k);
  }
  for (int v = 0; v < 256; ++v) {
    for (int o = 0; o < 8; ++o)
      if (v >> o & 1)
        for (int j = 0; j < kNeighbours; ++j) t.needed[v] |= 1u << geo.child_parent[o][j];
    t.popcount[v] = uint8_t(popcount32(uint32_t(v)));
    t.low_bit[v] = 0;
    for (int o = 7; o >= 0; --o)
      if (v >> o & 1) t.low_bit[v] = uint8_t(o);
    for (int o = 0; o < 8; ++o)
      t.rank[v * 8 + o] = (v >> o & 1) ? int8_t(popcount32(uint32_t(v) & ((1u << o) - 1))) : int8_t(-1);
  }
  return t;
}

const LoopTables& loop_tables() {
  static const LoopTables tables = make_loop_tables(occupancy_tables());
  return tables;
}

// An adaptive context: its counts, and the f0 of the counts at the batch `stamp` names.
struct ContextState {
  int64_t count[2];
  uint32_t stamp, f0;
};

// The memory byte of a uint64's byte lane k (the batches read one lane as a byte).
int lane_byte(int k) {
  const uint16_t one = 1;
  uint8_t first;
  std::memcpy(&first, &one, 1);
  return first ? k : 7 - k;
}

// The batch over symbols [t, end) inside one rANS segment (see batch_native); returns end.
template <bool kList, bool kChild>
inline int64_t decode_run(RansReader& reader, int64_t t, const int64_t end, const int64_t s, const int32_t* list,
                          uint8_t* occp, const uint8_t* lane, const uint16_t* part, ContextState* contexts,
                          const uint32_t version, const uint32_t kbit) {
  for (; t < end; ++t) {
    const int64_t i = kList ? list[t] : s + t;
    const uint32_t mine = occp[i];
    const uint32_t l = lane[8 * i];
    const int32_t c = int32_t(part[mine * 4 + (l & 3)]) + (kChild ? int32_t(l & ~3u) : int32_t(l >> 2));
    ContextState& x = contexts[c];
    if (x.stamp != version) {
      x.stamp = version;
      x.f0 = uint32_t(freq0(x.count[0], x.count[1], 0));
    }
    const int bit = reader.decode_bit(x.f0);
    ++x.count[bit];
    occp[i] = uint8_t(mine | (kbit & (0u - uint32_t(bit))));
  }
  return t;
}

// No count reaches 2**39 before this many symbols (each adds 1 to one count), so no weight
// 2 * count + 1 reaches quantize_frequencies' 2**40 and no batch needs scaling.
constexpr int64_t kUnscaledSymbols = int64_t(1) << 39;

// The level loop (see the top of this file).  Per level, by Morton row: codes and rows [n][26],
// both at the end of buffers of cap_ rows (a child's slot cap - m + c is never past its parent's
// cap - n + r, as every node has a child, so the children overwrite only rows already read and
// the last level ends up at the front: no per-level buffers), occ [n + 1]; by position (rows grouped by parity, Morton order within a group): order (the row), lanes (per
// octant k, byte k: 4 * (faces * 5 + corners), plus the known outward child-level faces once the
// group starts), faces [6] (rows of the face neighbours, n: empty), occp (the bits decoded so far).
// Everything of a level but its rows and nodes is built by the previous level's children pass.
class LevelLoop {
 public:
  LevelLoop(OccupancyBitSource& source, int64_t num_points, int depth, const OccupancyConfig& config,
            bool with_neighbours);
  OccupancyLeaves run(int64_t num_bits);

 private:
  void decode_group(int g);
  void add_outward(int g, int64_t s, int64_t e);
  int64_t list_coded(int64_t s, int64_t e);
  template <bool kList, bool kChild>
  RALHE_NOINLINE void batch_native(int64_t s, int64_t m, int k);
  void batch_generic(int64_t s, int64_t m, int k, bool listed);
  void build_children(int d);
  void grow(int64_t m, int64_t n);
  void build_chunk(int64_t r0, int64_t r1, int64_t m, bool last, bool need_rows);
  template <int O>
  void emit_child(const uint64_t* value, int64_t c, int64_t m, bool last);

  // context of position i for bit k (occupancy.py's formula through ctx_part_ and the lanes)
  int32_t context(int64_t i, int k) const {
    const uint32_t lane = uint32_t(lanes_[size_t(i)] >> (8 * k)) & 0xFF;
    return int32_t(ctx_part_[size_t(k * 1024 + occp_[size_t(i)] * 4 + (lane & 3))]) + int32_t(lane >> 2) * base_mult_;
  }

  OccupancyBitSource& source_;
  SegmentedRansReader* reader_;
  const LoopTables& lt_;
  int64_t num_points_;
  int depth_;
  bool use_child_neighbours_, with_neighbours_;
  int decay_shift_, base_mult_;

  std::vector<ContextState> contexts_;   // [C]
  uint32_t version_ = 0;                  // the batch number
  std::vector<uint16_t> ctx_part_;        // [k][occp * 4 + outward known]: the context but for the base

  int64_t n_ = 0;
  int64_t start_[9] = {0};
  int64_t fill_[8] = {0};
  int64_t face_start_[8] = {0}, face_fill_[8] = {0};  // group g's faces: faces_kept(g) per position
  int64_t cap_ = 0;              // rows the two end-aligned buffers hold
  ZeroedVector<int64_t> codes_;   // [cap_]
  ZeroedVector<int32_t> rows_;    // [cap_][26]
  static constexpr int64_t kChunk = 128;  // parents per build_chunk: their gathered values stay in L1
  uint64_t gathered_[kChunk * (kNeighbours + 1)];
  std::vector<int32_t> order_, faces_, list_;
  std::vector<uint64_t> lanes_, holder_;  // holder_ [n + 1]: first child << 8 | occupancy
  std::vector<uint8_t> occ_, occp_;

  // the generic batch (any bit source): tables per distinct f0 as occupancy.py builds them
  std::vector<int32_t> ctx_slot_, f0_slot_, ctx_, index_, uniq_, uniq_table_;
  std::vector<int64_t> f0s_;
  std::vector<uint8_t> bits_;
};

LevelLoop::LevelLoop(OccupancyBitSource& source, int64_t num_points, int depth, const OccupancyConfig& config,
                     bool with_neighbours)
    : source_(source),
      reader_(source.native_reader()),
      lt_(loop_tables()),
      num_points_(num_points),
      depth_(depth),
      use_child_neighbours_(config.child_neighbours),
      with_neighbours_(with_neighbours),
      decay_shift_(config.decay_shift),
      base_mult_(config.child_neighbours ? 4 : 1) {
  const int64_t num_contexts = config.num_contexts();
  contexts_.assign(size_t(num_contexts), ContextState{{0, 0}, 0, 0});
  ctx_part_.resize(8 * 1024);
  for (int k = 0; k < 8; ++k) {
    int inward = 0;  // the siblings k ^ b coded before bit k
    for (int a = 0; a < 3; ++a)
      if (k & kAxisBits[a]) inward |= 1 << (k ^ kAxisBits[a]);
    for (uint32_t mine = 0; mine < 256; ++mine)
      for (int out = 0; out < 4; ++out) {
        const int nprev = popcount32(mine & ((1u << k) - 1));
        int c = (k * 8 + nprev) * 20;  // ((k * 8 + nprev) * 4 + faces) * 5 + corners, the base added later
        if (use_child_neighbours_) c = c * 4 + std::min(popcount32(mine & uint32_t(inward)) + out, 3);
        ctx_part_[size_t(k * 1024 + mine * 4 + out)] = uint16_t(c);
      }
  }
}

OccupancyLeaves LevelLoop::run(int64_t num_bits) {
  // the root: no neighbours, parity group 0
  n_ = 1;
  cap_ = std::min<int64_t>(num_points_, 64);
  codes_.assign(size_t(cap_), 0);
  rows_.assign(size_t(cap_) * kNeighbours, -1);
  order_.assign(1, 0);
  lanes_.assign(1, 0);
  faces_.clear();  // group 0 keeps none
  for (int g = 1; g <= 8; ++g) start_[g] = 1;
  for (int d = 0; d < depth_; ++d) {
    if (d) {
      ContextState* contexts = contexts_.data();
      const int shift = decay_shift_;
      for_chunks(int64_t(contexts_.size()), 4096, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          contexts[i].count[0] >>= shift;
          contexts[i].count[1] >>= shift;
        }
      });
    }
    resize_scratch(occ_, size_t(n_) + 1, size_t(num_points_) + 1);
    std::fill(occ_.begin(), occ_.end(), 0);  // occ[n] = 0 stands for an empty neighbour
    resize_scratch(occp_, size_t(n_), size_t(num_points_));
    std::fill(occp_.begin(), occp_.end(), 0);
    for (int g : kGroupOrder) decode_group(g);
    build_children(d);
  }
  if (source_.consumed() != num_bits) corrupt(std::to_string(num_bits - source_.consumed()) + " symbols left undecoded");
  OccupancyLeaves leaves;
  if (cap_ > n_) {  // fewer leaves than points (the caller reports it): move them to the front
    std::copy(codes_.end() - n_, codes_.end(), codes_.begin());
    codes_.resize(size_t(n_));
    std::copy(rows_.end() - n_ * kNeighbours, rows_.end(), rows_.begin());
    rows_.resize(size_t(n_) * kNeighbours);
  }
  leaves.codes = std::move(codes_);
  if (with_neighbours_) leaves.neighbours = std::move(rows_);
  return leaves;
}

RALHE_NOINLINE void LevelLoop::decode_group(int g) {
  const int64_t s = start_[g], e = start_[g + 1];
  if (s == e) return;
  if (use_child_neighbours_ && g) add_outward(g, s, e);
  for (int k = 0; k < 8; ++k) {
    // the last bit of a node empty so far is 1 and not coded: the batch lists the others
    const bool listed = k == 7;
    const int64_t m = listed ? list_coded(s, e) : e - s;
    if (m == 0) continue;
    if (reader_ && reader_->consumed() < kUnscaledSymbols - m) {
      if (use_child_neighbours_)
        listed ? batch_native<true, true>(s, m, k) : batch_native<false, true>(s, m, k);
      else
        listed ? batch_native<true, false>(s, m, k) : batch_native<false, false>(s, m, k);
    } else {
      batch_generic(s, m, k, listed);
    }
  }
  for (int64_t i = s; i < e; ++i) occ_[size_t(order_[size_t(i)])] = occp_[size_t(i)];  // complete: visible to later groups
}

// The known outward child-level faces, per octant lane: for each odd coordinate of g the bit
// k ^ b of the face neighbour on k's side (an earlier group, complete).
RALHE_NOINLINE void LevelLoop::add_outward(int g, int64_t s, int64_t e) {
  const uint8_t* occ = occ_.data();
  const int kept = faces_kept(g);
  const int32_t* faces = faces_.data() + face_start_[g];
  uint64_t* lanes = lanes_.data() + s;
  for (int a = 0, x = 0; a < 3; ++a) {
    if (!(g & kAxisBits[a])) continue;
    const uint64_t* spread = lt_.spread[a];
    const uint64_t up = lt_.upper[a];
    for (int64_t i = 0; i < e - s; ++i) {
      const int32_t* f = faces + i * kept + x;  // the minus, then the plus neighbour
      lanes[i] += (spread[occ[f[1]]] & up) | (spread[occ[f[0]]] & ~up);
    }
    x += 2;
  }
}

// Bit 7: the positions whose bits 0-6 hold a 1 (coded) into list_; the others get their 1.
RALHE_NOINLINE int64_t LevelLoop::list_coded(int64_t s, int64_t e) {
  list_.resize(size_t(e - s));
  int32_t* list = list_.data();
  uint8_t* occp = occp_.data();
  int64_t m = 0;
  for (int64_t i = s; i < e; ++i) {
    const bool coded = (occp[i] & 0x7F) != 0;
    list[m] = int32_t(i);
    m += coded;
    if (!coded) occp[i] = 0x80;
  }
  return m;
}

// One batch read straight from the rANS reader: each context's f0 is taken from the counts at
// its first use in the batch (stamped), so later updates within the batch do not change it.
template <bool kList, bool kChild>
RALHE_NOINLINE void LevelLoop::batch_native(int64_t s, int64_t m, int k) {
  reader_->claim(m);
  const uint32_t version = ++version_;
  const uint8_t* lane = reinterpret_cast<const uint8_t*>(lanes_.data()) + lane_byte(k);
  const uint16_t* part = ctx_part_.data() + k * 1024;
  int64_t t = 0;
  reader_->decode_runs(m, [&](int64_t take, RansReader& reader) {
    t = decode_run<kList, kChild>(reader, t, t + take, s, list_.data(), occp_.data(), lane, part, contexts_.data(),
                                  version, 1u << k);
  });
}

// One batch through OccupancyBitSource::decode: the tables from the counts before the batch, one
// per distinct f0, then the symbols, then the count updates.
RALHE_NOINLINE void LevelLoop::batch_generic(int64_t s, int64_t m, int k, bool listed) {
  if (ctx_slot_.empty()) {
    ctx_slot_.assign(contexts_.size(), -1);
    f0_slot_.assign(size_t(kTotalFreq), -1);
  }
  ctx_.resize(size_t(m));
  index_.resize(size_t(m));
  uniq_.clear();
  for (int64_t t = 0; t < m; ++t) {
    const int32_t c = context(listed ? list_[size_t(t)] : s + t, k);
    ctx_[size_t(t)] = c;
    int32_t& slot = ctx_slot_[size_t(c)];
    if (slot < 0) {
      slot = int32_t(uniq_.size());
      uniq_.push_back(c);
    }
    index_[size_t(t)] = slot;
  }
  int64_t wmax = 0;  // quantize_frequencies scales the whole batch if a weight reaches 2**40
  for (int32_t c : uniq_) {
    const ContextState& x = contexts_[size_t(c)];
    wmax = std::max({wmax, 2 * x.count[0] + 1, 2 * x.count[1] + 1});
  }
  const int shift = wmax >= (int64_t(1) << 40) ? bit_length(uint64_t(wmax)) - 40 : 0;
  f0s_.clear();
  uniq_table_.resize(uniq_.size());
  for (size_t u = 0; u < uniq_.size(); ++u) {
    const ContextState& x = contexts_[size_t(uniq_[u])];
    const int64_t f0 = freq0(x.count[0], x.count[1], shift);
    int32_t& slot = f0_slot_[size_t(f0)];
    if (slot < 0) {
      slot = int32_t(f0s_.size());
      f0s_.push_back(f0);
    }
    uniq_table_[u] = slot;
  }
  for (int32_t c : uniq_) ctx_slot_[size_t(c)] = -1;
  for (int64_t f0 : f0s_) f0_slot_[size_t(f0)] = -1;
  for (int32_t& x : index_) x = uniq_table_[size_t(x)];
  bits_.resize(size_t(m));
  source_.decode(index_.data(), m, f0s_.data(), int64_t(f0s_.size()), bits_.data());
  for (int64_t t = 0; t < m; ++t) {
    const int bit = bits_[size_t(t)] & 1;
    ++contexts_[size_t(ctx_[size_t(t)])].count[bit];
    occp_[size_t(listed ? list_[size_t(t)] : s + t)] |= uint8_t(bit << k);
  }
}

// The children (parent order, then octant: Morton order) become the next level.
RALHE_NOINLINE void LevelLoop::build_children(int d) {
  const int64_t n = n_;
  resize_scratch(holder_, size_t(n) + 1, size_t(num_points_) + 1);
  const uint8_t* occ = occ_.data();
  int64_t m = 0, per_octant[8] = {0};
  uint64_t lanes = 0;  // per-octant child counts, byte lanes, flushed before they can overflow
  for (int64_t r = 0; r < n; ++r) {
    holder_[size_t(r)] = uint64_t(m) << 8 | occ[r];
    m += lt_.popcount[occ[r]];
    lanes += lt_.spread[0][occ[r]];  // lane k = bit k ^ 4
    if ((r & 127) == 127 || r + 1 == n) {
      for (int k = 0; k < 8; ++k) per_octant[k ^ 4] += int64_t(lanes >> (8 * k) & 0xFF);
      lanes = 0;
    }
  }
  holder_[size_t(n)] = 0;  // an empty neighbour
  if (m > num_points_)
    corrupt("level " + std::to_string(d + 1) + " decodes " + std::to_string(m) + " nodes, more than the " +
            std::to_string(num_points_) + " points");
  if (m > std::numeric_limits<int32_t>::max()) corrupt("more than 2**31 nodes in one level");

  const bool last = d + 1 == depth_, need_rows = !last || with_neighbours_;
  if (m > cap_) grow(m, n);
  if (!last) {
    const size_t limit = size_t(num_points_);
    resize_scratch(order_, size_t(m), limit);
    resize_scratch(lanes_, size_t(m), limit);
    start_[0] = 0;
    int64_t num_faces = 0;
    for (int o = 0; o < 8; ++o) {
      start_[o + 1] = start_[o] + per_octant[o];
      fill_[o] = start_[o];
      face_start_[o] = face_fill_[o] = num_faces;
      num_faces += per_octant[o] * faces_kept(o);
    }
    resize_scratch(faces_, size_t(num_faces), limit * 6);
  }
  for (int64_t r0 = 0; r0 < n; r0 += kChunk) build_chunk(r0, std::min(n, r0 + kChunk), m, last, need_rows);
  n_ = m;
}

// Larger end-aligned buffers (4x steps up to num_points), the current level moved to their end.
RALHE_NOINLINE void LevelLoop::grow(int64_t m, int64_t n) {
  const int64_t cap = std::min(num_points_, 4 * m);
  ZeroedVector<int64_t> codes(static_cast<size_t>(cap));
  std::copy(codes_.end() - n, codes_.end(), codes.end() - n);
  codes_.swap(codes);
  ZeroedVector<int32_t> rows(static_cast<size_t>(cap) * kNeighbours);
  std::copy(rows_.end() - n * kNeighbours, rows_.end(), rows.end() - n * kNeighbours);
  rows_.swap(rows);
  cap_ = cap;
}

// Parents [r0, r1): a child's neighbour j is the child (holder_octant) of the parent's neighbour
// or the parent (holder).  First the parent-level values of those for the whole chunk (loads
// only, so the cache misses overlap), then the children.
RALHE_NOINLINE void LevelLoop::build_chunk(int64_t r0, int64_t r1, int64_t m, bool last, bool need_rows) {
  const int64_t n = n_;
  const LoopTables& lt = lt_;
  const uint64_t* holder = holder_.data();
  const int32_t* rows = rows_.data() + (cap_ - n) * kNeighbours;
  const int64_t* codes = codes_.data() + (cap_ - n);
  int64_t* next_codes = codes_.data() + (cap_ - m);
  uint64_t* gathered = gathered_;
  if (need_rows)
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t* prow = rows + r * kNeighbours;
      uint64_t* value = gathered + (r - r0) * (kNeighbours + 1);
      const uint32_t needed = lt.needed[holder[r] & 0xFF];
      for (int j = 0; j < kNeighbours; ++j) {  // holder[n]: empty, and a cached load for a column not needed
        const int32_t h = prow[j];
        value[j] = holder[(((needed >> j & 1) != 0) & (h >= 0)) ? h : n];
      }
      value[kNeighbours] = holder[r];
    }
  for (int64_t r = r0; r < r1; ++r) {
    const uint64_t* value = gathered + (r - r0) * (kNeighbours + 1);
    int64_t c = int64_t(holder[r] >> 8);
    const int64_t code = codes[r] << 3;
    for (uint32_t rest = uint32_t(holder[r] & 0xFF); rest; rest &= rest - 1) {
      const int o = lt.low_bit[rest];
      next_codes[c] = code | o;
      if (need_rows) {
        switch (o) {
          case 0: emit_child<0>(value, c, m, last); break;
          case 1: emit_child<1>(value, c, m, last); break;
          case 2: emit_child<2>(value, c, m, last); break;
          case 3: emit_child<3>(value, c, m, last); break;
          case 4: emit_child<4>(value, c, m, last); break;
          case 5: emit_child<5>(value, c, m, last); break;
          case 6: emit_child<6>(value, c, m, last); break;
          default: emit_child<7>(value, c, m, last); break;
        }
      }
      ++c;
    }
  }
}

// Child c (octant O) of the parent whose gathered values are `value`: its row, and unless it is
// in the last level, its data at its position.
template <int O>
void LevelLoop::emit_child(const uint64_t* value, int64_t c, int64_t m, bool last) {
  int32_t* out = rows_.data() + (cap_ - m + c) * kNeighbours;
  const uint32_t present = child_row<O>(value, lt_.rank, out, std::make_index_sequence<kNeighbours>());
  if (last) return;
  const int64_t pos = fill_[O]++;
  order_[size_t(pos)] = int32_t(c);
  lanes_[size_t(pos)] = (lt_.plane_lo[present & 511] + lt_.plane_mid[present >> 9 & 255] + lt_.plane_hi[present >> 17]) << 2;
  int32_t* f = faces_.data() + face_fill_[O];
  face_fill_[O] += faces_kept(O);
  for (int a = 0, x = 0; a < 3; ++a) {
    if (!(O & kAxisBits[a])) continue;
    const int32_t minus = out[face_column(a, -1)], plus = out[face_column(a, 1)];
    f[x++] = minus < 0 ? int32_t(m) : minus;
    f[x++] = plus < 0 ? int32_t(m) : plus;
  }
}

}  // namespace

OccupancyLeaves decode_occupancy_levels(OccupancyBitSource& source, int64_t num_points, int64_t num_bits, int depth,
                                        const OccupancyConfig& config, bool with_neighbours) {
  if (depth < 1 || depth > kMaxDepth || config.decay_shift < 0 || config.decay_shift > 7 || num_points < 1 ||
      num_bits < 0)
    fail(ErrorKind::kInvalidArgument, "decode_occupancy_levels: bad arguments");
  LevelLoop loop(source, num_points, depth, config, with_neighbours);
  return loop.run(num_bits);
}

DecodedPositions decode_positions(Bytes section, int depth) {
  if (depth < 0 || depth > kMaxDepth) corrupt("depth must be in [0, 21], got " + std::to_string(depth));
  if (section.size == 0) corrupt("empty occupancy stream");
  const OccupancyConfig config = OccupancyConfig::from_byte(section[0]);
  size_t pos = 1;
  const uint64_t num_points = read_varint(section, pos, "occupancy header");
  const uint64_t num_bits = read_varint(section, pos, "occupancy header");
  // num_bits > 8 * num_points * max(depth, 1), without overflowing
  const uint64_t per_point = 8 * uint64_t(std::max(depth, 1));
  const bool too_many_bits = num_points <= UINT64_MAX / per_point ? num_bits > num_points * per_point : false;
  if (num_points > (uint64_t(1) << (3 * depth)) || too_many_bits)
    corrupt("header counts (" + std::to_string(num_points) + " points, " + std::to_string(num_bits) +
            " bits) impossible at depth " + std::to_string(depth));
  if (section.size < pos + 2) corrupt("occupancy stream is truncated");
  const Bytes payload = section.from(pos + 2, "occupancy stream");
  if (check16(Bytes(section.data, pos), payload) != load_u16le(section.data + pos))
    corrupt("occupancy stream fails its check sum (corrupt or truncated)");

  DecodedPositions out;
  if (num_points == 0 || depth == 0) {
    if (num_bits || payload.size || num_points > 1)
      corrupt("occupancy stream has data an empty or depth-0 cloud cannot have");
    out.num_points = int64_t(num_points);
    out.codes.assign(size_t(num_points), 0);
    out.coords.assign(size_t(num_points) * 3, 0);
    out.neighbours.assign(size_t(num_points) * kNeighbours, -1);
    return out;
  }
  if (num_points > uint64_t(std::numeric_limits<int32_t>::max()))
    corrupt("occupancy header: " + std::to_string(num_points) + " points, more than 2**31");
  if (num_bits > uint64_t(payload.size) * uint64_t(kSegmentSymbols))  // 8 bytes per segment at least
    corrupt("occupancy payload: " + std::to_string(payload.size) + " bytes cannot hold " + std::to_string(num_bits) +
            " symbols");
  OccupancyLeaves leaves;
  try {
    SegmentBitSource source{SegmentedRansReader(payload, int64_t(num_bits))};
    leaves = decode_occupancy_levels(source, int64_t(num_points), int64_t(num_bits), depth, config, true);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kCorrupt) throw;
    corrupt(std::string("occupancy payload: ") + e.what());
  }
  if (leaves.codes.size() != num_points)
    corrupt("decoded " + std::to_string(leaves.codes.size()) + " points, the header says " + std::to_string(num_points));
  out.num_points = int64_t(num_points);
  out.coords.resize(size_t(num_points) * 3);
  const int64_t* codes = leaves.codes.data();
  int32_t* coords = out.coords.data();
  for_chunks(int64_t(leaves.codes.size()), 8192, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) morton_decode(codes[i], coords + 3 * i);
  });
  out.codes = std::move(leaves.codes);
  out.neighbours = std::move(leaves.neighbours);
  return out;
}

}  // namespace ralhe
