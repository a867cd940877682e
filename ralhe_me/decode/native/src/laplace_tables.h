// The discretized Laplace CDF tables the latents and the ARM parameters are coded with
// (ralhe_me/entropy/laplace.py: LaplaceTableConfig, get_tables).
//
// The family is rebuilt from its config alone, so it must come out identical to Python's on every
// machine: the pmf is computed with det_exp (IEEE basic operations only) in the same order of
// operations, then rounded to 16-bit frequencies with the same largest-remainder rule.  Tables are
// in CompressAI's CDF layout: table t has 2W + 3 entries (cdf[0] = 0 ... cdf[2W + 2] = 2**16),
// codes residuals -W..W directly (offset -W) and anything else as the escape (value 2W + 1).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common.h"
#include "rans_reader.h"

namespace ralhe {

// The table family's parameters (field for field laplace.py LaplaceTableConfig; the defaults too).
// Table index = scale_bin * 2**mean_bins_log2 + mean_bin; scale bin s has log-scale
// log_scale_min + s * 2**-log_scale_step_log2, mean bin j the mean fraction (j - M/2) / M.
struct LaplaceTableConfig {
  double log_scale_min = -4.0;
  int64_t log_scale_step_log2 = 3;
  int64_t num_scale_bins = 73;
  int64_t mean_bins_log2 = 3;
  int64_t tail_log2 = 12;
  int64_t max_half_width = 4096;

  // LaplaceTableConfig.__post_init__'s checks; throws CorruptDataError naming the bad field.
  void validate() const;
  int64_t num_mean_bins() const { return int64_t(1) << mean_bins_log2; }
  int64_t num_tables() const { return num_scale_bins * num_mean_bins(); }
  int64_t log_scale_min_units() const;  // log_scale_min in units of the step (an integer)
  double table_log_scale(int64_t scale_bin) const;  // exact (a dyadic rational)
  bool operator==(const LaplaceTableConfig& o) const;
};

// A read-only view of a CDF table family as flat arrays (LaplaceTables.flat in Python): table t
// is cdf[start[t] .. start[t] + length[t]) with value offset offset[t].  Also wraps numpy arrays
// (entropy/csrc/lockstep.cpp); check() validates a view built from outside data.
struct CdfTablesView {
  const int32_t* cdf = nullptr;     // [sum of lengths]
  const int64_t* start = nullptr;   // [count]
  const int32_t* length = nullptr;  // [count]
  const int32_t* offset = nullptr;  // [count]
  int64_t count = 0;

  // Every table inside `cdf_size` entries and at least 3 long (throws std::invalid_argument).
  void check(int64_t cdf_size) const;
  // One symbol of table t (t is trusted: callers compute it in range).
  int32_t decode(RansReader& reader, int64_t t) const {
    return reader.decode_near(cdf + start[t], length[t], offset[t], -offset[t]);  // the center: residual 0
  }
};

// A built family (what laplace.get_tables returns, as flat arrays).
struct LaplaceTables {
  LaplaceTableConfig config;
  std::vector<int32_t> cdf;     // all tables' CDFs, concatenated
  std::vector<int64_t> start;   // [T] first entry of each table in cdf
  std::vector<int32_t> length;  // [T] 2W + 3
  std::vector<int32_t> offset;  // [T] -W
  int32_t max_frequency = 0;    // the largest frequency of any symbol (bounds symbols per stream bit)

  int64_t num_tables() const { return int64_t(start.size()); }
  CdfTablesView view() const { return {cdf.data(), start.data(), length.data(), offset.data(), num_tables()}; }
};

// Builds the family of `config` (validated first).  Configs whose pmf is not finite in float64
// (log-scales far below any real use, where Python's float arithmetic gives NaN) and families of
// more than kMaxTableEntries CDF entries throw CorruptDataError.
LaplaceTables build_laplace_tables(const LaplaceTableConfig& config);
// laplace.py _quantize_pmf of one row p [n] -> freq [n] (throws CorruptDataError on a p that is no
// probability); returns whether no index tie decided the frequencies, i.e. whether the row of the
// mirrored pmf gets these frequencies mirrored (build_laplace_tables relies on it).
bool quantize_pmf_row(const double* p, int64_t n, int64_t* freq);
constexpr int64_t kMaxTableEntries = int64_t(1) << 26;

// The most symbols coded with `tables` that a rANS stream of `stream_bytes` bytes can yield before
// it runs out, whatever its content (each symbol shrinks the 64-bit state by a factor of at least
// (f_max + 2) / 2**16, f_max the largest frequency); a guard against headers announcing more
// symbols than the stream could hold.  INT64_MAX when no bound follows.
int64_t max_stream_symbols(const LaplaceTables& tables, size_t stream_bytes);

// The family of `config`, built once per config and shared (thread-safe; a few recent configs kept).
std::shared_ptr<const LaplaceTables> get_laplace_tables(const LaplaceTableConfig& config);

}  // namespace ralhe
