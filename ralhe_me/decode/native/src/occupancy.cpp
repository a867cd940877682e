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
// Layout.  Per level: nodes int64 [n] (sorted codes); neighbour rows int32 [n][26] (-1: empty);
// occupancy bytes uint8 [n + 1] (the last, always 0, read for an empty neighbour); `order`: the
// rows grouped by parity group, and per position there and octant the level's constant part of
// the context (faces * 5 + corners), uint8 [n][8], so a batch reads its group contiguously.
// The adaptive counts are int64 [C][2].
//
// Frequencies.  A binary table is [0, f0, 2**16, 2**16] (symbol 0, symbol 1, the never-coded
// escape): only f0 matters, so a batch hands its source one f0 per distinct value (the Python
// reader builds one table per context; the table each symbol is decoded with is the same).
#include "occupancy.h"

#include <algorithm>
#include <limits>
#include <string>

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

// The 26-neighbour rows of the children (Morton order) from the level's rows and occupancy;
// child_row [(n + 1) * 8]: a child's row by (parent row, octant), -1 if empty, row n all empty.
void child_neighbours(const OccupancyTables& geo, const std::vector<int32_t>& nb, const std::vector<uint8_t>& occ,
                      const std::vector<int32_t>& child_row, int64_t m, std::vector<int32_t>& out) {
  const int64_t n = int64_t(occ.size());
  out.resize(size_t(m) * kNeighbours);
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

OccupancyLeaves decode_occupancy_levels(OccupancyBitSource& source, int64_t num_points, int64_t num_bits, int depth,
                                        const OccupancyConfig& config, bool with_neighbours) {
  if (depth < 1 || depth > kMaxDepth || config.decay_shift < 0 || config.decay_shift > 7 || num_points < 1 ||
      num_bits < 0)
    fail(ErrorKind::kInvalidArgument, "decode_occupancy_levels: bad arguments");
  const OccupancyTables& geo = occupancy_tables();
  const bool use_child_neighbours = config.child_neighbours;
  const int decay_shift = config.decay_shift;
  const int64_t num_contexts = config.num_contexts();

  // neighbour sets as bit masks over the 26 columns; face_col[2 * axis + (k's bit on it)]: the
  // column of the outward face neighbour of octant k along that axis
  uint32_t face_mask[8] = {0}, corner_mask[8] = {0};
  int face_col[6];
  for (int k = 0; k < 8; ++k) {
    for (int j = 0; j < 3; ++j) face_mask[k] |= 1u << geo.face[k][j];
    for (int j = 0; j < 4; ++j) corner_mask[k] |= 1u << geo.corner[k][j];
    for (int a = 0; a < 3; ++a) face_col[2 * a + ((k & kAxisBits[a]) != 0)] = geo.outward[k][a];
  }

  std::vector<int64_t> counts(size_t(num_contexts) * 2, 0);
  std::vector<int32_t> ctx_slot(size_t(num_contexts), -1);  // per batch: context -> distinct context
  std::vector<int32_t> f0_slot(size_t(kTotalFreq), -1);     // per batch: f0 -> table index

  std::vector<int64_t> nodes{0};              // the root
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
    order.resize(size_t(n));
    // 1. per position i in `order`: per octant k the level's part of the context, faces * 5 +
    // corners (occupied face / edge-and-vertex neighbours touching octant k), and the rows of
    // the 6 face neighbours (n: empty), so that a batch reads its group's data contiguously.
    // Rows are read in their order (one pass over the large rows) and written to their position
    // (8 ascending streams).
    base.resize(size_t(n) * 8);
    face_rows.resize(size_t(n) * 6);
    int64_t fill[8];
    std::copy(start, start + 8, fill);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t i = fill[nodes[r] & 7]++;
      order[i] = int32_t(r);
      const int32_t* row = nb.data() + r * kNeighbours;
      uint32_t present = 0;
      for (int j = 0; j < kNeighbours; ++j) present |= uint32_t(row[j] >= 0) << j;
      for (int k = 0; k < 8; ++k)
        base[i * 8 + k] = uint8_t(popcount32(present & face_mask[k]) * 5 + popcount32(present & corner_mask[k]));
      for (int f = 0; f < 6; ++f) face_rows[i * 6 + f] = row[face_col[f]] < 0 ? int32_t(n) : row[face_col[f]];
    }

    // 2. the 64 batches of the level; occ[n] = 0 stands for an empty neighbour
    occ.assign(size_t(n) + 1, 0);
    sel.resize(size_t(n));
    ctx.resize(size_t(n));
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
        const uint32_t below = (1u << k) - 1;
        int64_t m = 0;
        for (int64_t i = start[g]; i < start[g + 1]; ++i) {
          const int32_t r = order[i];
          const uint32_t mine = occ[r];
          const int nprev = popcount32(mine & below);
          if (k == 7 && nprev == 0) continue;  // the last bit of a node empty so far is 1, not coded
          int32_t c = (k * 8 + nprev) * 20 + base[i * 8 + k];  // ((k * 8 + nprev) * 4 + faces) * 5 + corners
          if (use_child_neighbours) {
            int known = popcount32(mine & uint32_t(inward));
            for (int j = 0; j < num_out; ++j) known += occ[face_rows[i * 6 + out_face[j]]] >> out_bit[j] & 1;
            c = c * 4 + std::min(known, 3);
          }
          sel[m] = r;
          ctx[m++] = c;
        }
        if (m) {
          // tables from the counts before this batch: one per distinct context, then per f0
          uniq.clear();
          index.resize(size_t(m));
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

          bits.resize(size_t(m));
          source.decode(index.data(), m, f0s.data(), int64_t(f0s.size()), bits.data());
          for (int64_t i = 0; i < m; ++i) {
            ++counts[2 * int64_t(ctx[i]) + (bits[i] & 1)];
            occ[sel[i]] |= uint8_t((bits[i] & 1) << k);
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
    for (uint8_t o : occ) m += popcount32(o);
    if (m > num_points)
      corrupt("level " + std::to_string(d + 1) + " decodes " + std::to_string(m) + " nodes, more than the " +
              std::to_string(num_points) + " points");
    if (m > std::numeric_limits<int32_t>::max()) corrupt("more than 2**31 nodes in one level");
    next_nodes.resize(size_t(m));
    child_row.assign((size_t(n) + 1) * 8, -1);  // row n: the children of an empty neighbour
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
  if (source.consumed() != num_bits) corrupt(std::to_string(num_bits - source.consumed()) + " symbols left undecoded");

  OccupancyLeaves leaves;
  leaves.codes = std::move(nodes);
  if (with_neighbours) leaves.neighbours = std::move(nb);
  return leaves;
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
  for (size_t i = 0; i < leaves.codes.size(); ++i) morton_decode(leaves.codes[i], out.coords.data() + 3 * i);
  out.codes = std::move(leaves.codes);
  out.neighbours = std::move(leaves.neighbours);
  return out;
}

}  // namespace ralhe
