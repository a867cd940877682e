// The octree occupancy decoder (ralhe_me/geometry/occupancy.py decode_positions).
//
// Stream: mode byte (bit 7 and the high nibble 8: format 1; bit 3: child-level neighbour
// contexts; bits 0-2: decay shift), varints M (points) and S (coded bits), 16-bit check sum of
// all the rest, the rANS segments of the S adaptive binary symbols (categorical.h).  The depth
// is the container's.
//
// occupancy.py's numpy loop is the reference; this one runs the same batches in the same order
// with the same frequency per symbol, so the decoded points and neighbour rows are identical.
// ralhe_me/geometry/csrc/occupancy.cpp wraps it for Python (_occupancy_cpu).
#pragma once

#include <cstdint>
#include <vector>

#include "categorical.h"
#include "common.h"

namespace ralhe {

constexpr int kNeighbours = 26;  // a neighbour row's columns: occupancy.NEIGHBOUR_OFFSETS order

// The context switches of the mode byte (occupancy.OccupancyConfig).
struct OccupancyConfig {
  bool child_neighbours = true;  // contexts count known child-level face neighbours
  int decay_shift = 1;           // counts >>= decay_shift before every level but the first
  int64_t num_contexts() const { return 8 * 8 * 4 * 5 * (child_neighbours ? 4 : 1); }
  static OccupancyConfig from_byte(uint8_t byte);  // a CorruptDataError for an unknown mode
};

// The neighbourhood tables of occupancy.py, derived here from the 26 offsets (dx, dy, dz in
// -1..1, x slowest, (0, 0, 0) left out) and octant k = (x << 2 | y << 1 | z) of a child.
struct OccupancyTables {
  int offsets[kNeighbours][3];
  int face[8][3];    // per octant: its 3 face neighbours (columns, ascending)
  int corner[8][4];  // its 3 edge and 1 vertex neighbours
  int outward[8][3];  // per axis x, y, z: the face neighbour its bit points to
  int child_parent[8][kNeighbours];  // the parent's neighbour holding a child's neighbour (26: the parent)
  int child_octant[8][kNeighbours];  // that neighbour's octant there
};
const OccupancyTables& occupancy_tables();

// Where the level loop's bits come from: the native reader of the stream's rANS segments
// (decode_positions), or another reader of the same symbols (the Python wrapper's CompressAI path).
class OccupancyBitSource {
 public:
  virtual ~OccupancyBitSource() = default;
  // bits [n]: symbol i decoded with P(0) = f0s[index[i]] / 2**16 (index [n] into f0s [num_tables]);
  // a CorruptDataError if the stream holds fewer symbols.
  virtual void decode(const int32_t* index, int64_t n, const int64_t* f0s, int64_t num_tables, uint8_t* bits) = 0;
  // Symbols decoded so far.
  virtual int64_t consumed() const = 0;
  // The rANS reader behind a native source (the level loop then decodes symbol by symbol, without
  // the per-batch tables); nullptr for any other source.
  virtual SegmentedRansReader* native_reader() { return nullptr; }
};

// The native source: the stream's rANS segments read with ralhe::RansReader.
class SegmentBitSource : public OccupancyBitSource {
 public:
  explicit SegmentBitSource(SegmentedRansReader reader) : reader_(std::move(reader)) {}
  void decode(const int32_t* index, int64_t n, const int64_t* f0s, int64_t num_tables, uint8_t* bits) override;
  int64_t consumed() const override { return reader_.consumed(); }
  SegmentedRansReader* native_reader() override { return &reader_; }

 private:
  SegmentedRansReader reader_;
};

// The level loop: the Morton codes [M] of the leaves (sorted) and, with with_neighbours, the
// rows [M, 26] of their 26 neighbours (-1: empty).  Checks each level's node count against
// num_points and that exactly num_bits symbols are read.
struct OccupancyLeaves {
  ZeroedVector<int64_t> codes;       // [M]
  ZeroedVector<int32_t> neighbours;  // [M, 26] (empty without with_neighbours)
};
OccupancyLeaves decode_occupancy_levels(OccupancyBitSource& source, int64_t num_points, int64_t num_bits, int depth,
                                        const OccupancyConfig& config, bool with_neighbours);

struct DecodedPositions {
  int64_t num_points = 0;
  ZeroedVector<int64_t> codes;       // [M] Morton codes, ascending
  std::vector<int32_t> coords;       // [M, 3] voxel coordinates (x, y, z) in Morton order
  ZeroedVector<int32_t> neighbours;  // [M, 26] row of each neighbour, -1: empty
};

// decode_positions(section, depth, with_neighbours=True): header, check sum, counts and the
// levels; every failure a CorruptDataError.
DecodedPositions decode_positions(Bytes section, int depth);

}  // namespace ralhe
