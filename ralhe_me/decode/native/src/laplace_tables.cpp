// The Laplace table family, operation for operation as ralhe_me/entropy/laplace.py get_tables.
#include "laplace_tables.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>

#include "det_math.h"

namespace ralhe {

namespace {

constexpr int kPrecision = 16;
constexpr int64_t kTotalFreq = int64_t(1) << kPrecision;
constexpr double kLn2 = 0.6931471805599453;  // laplace.py _LN2

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

[[noreturn]] void bad_config(const std::string& what) { corrupt("invalid Laplace table config: " + what); }

// det_exp where its Cody-Waite reduction is exact enough and the exponent fits an int; beyond,
// the values Python's det_exp gives (0 below -2000, inf above 2000: checked up to 2**52).  Larger
// or NaN arguments come only from log-scales near -35 and below, where Python's float64 pmf is
// garbage: such configs are refused.
double table_exp(double x) {
  if (x >= -2000.0 && x <= 2000.0) return det_exp(x);
  constexpr double kHuge = 1125899906842624.0;  // 2**50
  if (x < 0 && x >= -kHuge) return 0.0;
  if (x > 0 && x <= kHuge) return HUGE_VAL;
  bad_config("its smallest log-scales give no finite Laplace pmf");
}

// laplace.py half_width: W = clip(ceil(b * tail_log2 * ln 2), 1, max_half_width).
int64_t half_width(const LaplaceTableConfig& c, int64_t scale_bin) {
  const double b = table_exp(c.table_log_scale(scale_bin));
  const double w = std::ceil(b * (double(c.tail_log2) * kLn2));
  if (!(w < double(c.max_half_width))) return c.max_half_width;  // also b = inf
  return std::max<int64_t>(int64_t(w), 1);
}

// The exponentials of one scale's pmfs.  Every argument laplace.py passes to det_exp is -x * inv_b
// with x a multiple of 1/q in [0, W + 1] (q = m, or 2 for m = 1: the residuals are integers and
// the mean fractions multiples of 1/m, so x is computed exactly), so each distinct value is
// computed once: exps[t] = table_exp(-(t / q) * inv_b), the same bits as laplace.py's per-entry
// call.  Half as many exponentials as entries.
struct ScaleExps {
  std::vector<double> exps;  // [(W + 1) q + 1]
  double q = 1.0;

  RALHE_WASM_NOINLINE void fill(double inv_b, int64_t w, int64_t m) {
    const int64_t qi = m % 2 ? 2 * m : m;
    q = double(qi);
    exps.resize(size_t((w + 1) * qi + 1));
    for (size_t t = 0; t < exps.size(); ++t) exps[t] = table_exp(-(double(t) / q) * inv_b);
  }
  // table_exp(-x * inv_b); x * q is exact (checked: a config outside the family is refused)
  double operator()(double x) const {
    const double t = x * q;
    if (!(t >= 0.0 && t < double(exps.size()) && t == std::floor(t))) bad_config("a pmf argument off its grid");
    return exps[size_t(t)];
  }
};

// laplace.py _table_pmfs for one mean bin: p [2W + 2], residuals -W..W then the escape.
RALHE_NOINLINE void table_pmf(const ScaleExps& e, double one_minus, double f, int64_t w, double* p) {
  for (int64_t i = 0; i <= 2 * w; ++i) {
    const double k = double(i - w);
    const double d = std::fabs(k - f);  // exact
    if (d >= 0.5) {
      // tail = 0.5 * det_exp(-(max(d, 0.5) - 0.5) * inv_b) * one_minus
      p[i] = 0.5 * e(d - 0.5) * one_minus;
    } else {
      // centre = 1 - 0.5 * (det_exp(-(0.5 - dc) * inv_b) + det_exp(-(0.5 + dc) * inv_b)), dc = d
      p[i] = 1.0 - 0.5 * (e(0.5 - d) + e(0.5 + d));
    }
  }
  const double wd = double(w);
  p[2 * w + 1] = 0.5 * e(wd + 0.5 - f) + 0.5 * e(wd + 0.5 + f);
}

// laplace.py _quantize_pmf for one row: frequencies >= 1 summing to 2**16 (1 each, then the floor
// of p * budget, then one more to the largest remainders, ties to the lower index, cycling if
// needed; a negative remainder takes from the first largest frequency, one at a time).  Returns
// whether no index tie decided anything: then the row of the mirrored pmf gets the mirrored
// frequencies.
RALHE_NOINLINE bool quantize_pmf(const double* p, int64_t n, int64_t* freq, std::vector<double>& frac,
                                 std::vector<int64_t>& order) {
  const double budget = double(kTotalFreq - n);
  frac.resize(size_t(n));
  int64_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double raw = p[i] * budget;
    if (!(raw >= 0.0 && raw <= budget * 2.0)) bad_config("its Laplace pmf is not a probability");
    const double fl = std::floor(raw);
    freq[i] = int64_t(fl) + 1;
    frac[i] = raw - fl;
    sum += freq[i];
  }
  int64_t rem = kTotalFreq - sum;
  if (rem > 0) {
    // Python takes order[j % n] for j < rem, order = a stable sort by decreasing remainder: every
    // index gets rem / n, and the first rem % n of that order one more.  That set is selected
    // in linear time (the order is total: ties broken by index).
    for (int64_t i = 0; i < n; ++i) freq[i] += rem / n;
    const int64_t extra = rem % n;
    if (extra > 0) {
      order.resize(size_t(n));
      std::iota(order.begin(), order.end(), int64_t(0));
      std::nth_element(order.begin(), order.begin() + (extra - 1), order.end(), [&](int64_t a, int64_t b) {
        return frac[a] > frac[b] || (frac[a] == frac[b] && a < b);
      });
      for (int64_t j = 0; j < extra; ++j) freq[order[j]] += 1;
      // the chosen are exactly the remainders >= the smallest chosen one: no tie was split
      const double threshold = frac[size_t(order[size_t(extra - 1)])];
      int64_t at_least = 0;
      for (int64_t i = 0; i < n; ++i) at_least += frac[size_t(i)] >= threshold;
      return at_least == extra;
    }
  }
  const bool untied = rem >= 0;
  for (; rem < 0; ++rem) *std::max_element(freq, freq + n) -= 1;  // max_element: the first largest
  return untied;
}

}  // namespace

int64_t LaplaceTableConfig::log_scale_min_units() const {
  return int64_t(log_scale_min * double(int64_t(1) << log_scale_step_log2));
}

double LaplaceTableConfig::table_log_scale(int64_t scale_bin) const {
  return log_scale_min + double(scale_bin) * std::ldexp(1.0, -int(log_scale_step_log2));
}

bool LaplaceTableConfig::operator==(const LaplaceTableConfig& o) const {
  return log_scale_min == o.log_scale_min && log_scale_step_log2 == o.log_scale_step_log2 &&
         num_scale_bins == o.num_scale_bins && mean_bins_log2 == o.mean_bins_log2 && tail_log2 == o.tail_log2 &&
         max_half_width == o.max_half_width;
}

void LaplaceTableConfig::validate() const {
  if (!(0 <= log_scale_step_log2 && log_scale_step_log2 <= 12))
    bad_config("log_scale_step_log2 must be in [0, 12], got " + std::to_string(log_scale_step_log2));
  const double units = log_scale_min * double(int64_t(1) << log_scale_step_log2);
  if (!std::isfinite(units) || units != std::floor(units) || std::fabs(units) > double(1 << 20))
    bad_config("log_scale_min=" + num(log_scale_min) + " must be a multiple of the step 2**-" +
               std::to_string(log_scale_step_log2));
  if (!(1 <= num_scale_bins && num_scale_bins <= 4096))
    bad_config("num_scale_bins must be in [1, 4096], got " + std::to_string(num_scale_bins));
  if (!(0 <= mean_bins_log2 && mean_bins_log2 <= 6))
    bad_config("mean_bins_log2 must be in [0, 6], got " + std::to_string(mean_bins_log2));
  if (!(2 <= tail_log2 && tail_log2 <= 15)) bad_config("tail_log2 must be in [2, 15], got " + std::to_string(tail_log2));
  if (!(1 <= max_half_width && max_half_width <= (1 << 14)))
    bad_config("max_half_width must be in [1, 16384], got " + std::to_string(max_half_width));
  const double log_scale_max = table_log_scale(num_scale_bins - 1);
  if (log_scale_max > 12.0) bad_config("largest log-scale " + num(log_scale_max) + " is beyond 12");
}

void CdfTablesView::check(int64_t cdf_size) const {
  for (int64_t t = 0; t < count; ++t)
    if (length[t] < 3 || start[t] < 0 || start[t] > cdf_size || length[t] > cdf_size - start[t])
      throw std::invalid_argument("flat table out of range");
}

namespace {

// freq [n] of the row mirrored from src [n] (entry i from entry 2w - i, the escape n - 1 kept).
RALHE_WASM_NOINLINE void mirror_freq(const int64_t* src, int64_t w, int64_t n, int64_t* freq) {
  for (int64_t i = 0; i <= 2 * w; ++i) freq[i] = src[2 * w - i];
  freq[n - 1] = src[n - 1];
}

// cdf [n + 1] = 0 and the running sums of freq [n]; returns the largest frequency.
RALHE_WASM_NOINLINE int32_t write_cdf(const int64_t* freq, int64_t n, int32_t* cdf) {
  int64_t c = 0;
  int32_t largest = 0;
  cdf[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (freq[i] < 1) bad_config("a symbol gets no probability");  // unreachable for finite pmfs
    c += freq[i];
    cdf[i + 1] = int32_t(c);
    largest = std::max(largest, int32_t(freq[i]));
  }
  if (c != kTotalFreq) bad_config("frequencies do not sum to 2**16");  // unreachable, kept as a guard
  return largest;
}

}  // namespace

LaplaceTables build_laplace_tables(const LaplaceTableConfig& config) {
  config.validate();
  const int64_t m = config.num_mean_bins();
  LaplaceTables out;
  out.config = config;
  std::vector<int64_t> widths(size_t(config.num_scale_bins));
  int64_t entries = 0;
  for (int64_t s = 0; s < config.num_scale_bins; ++s) {
    widths[s] = half_width(config, s);
    entries += m * (2 * widths[s] + 3);
  }
  if (entries > kMaxTableEntries)
    corrupt("Laplace table config needs " + std::to_string(entries) + " CDF entries, more than the decoder allows (" +
            std::to_string(kMaxTableEntries) + ")");
  out.cdf.resize(size_t(entries));
  out.start.reserve(size_t(config.num_tables()));
  out.length.reserve(size_t(config.num_tables()));
  out.offset.reserve(size_t(config.num_tables()));
  std::vector<double> p, frac;
  std::vector<int64_t> freq, order;
  ScaleExps exps;
  // Mean bins j and m - j (1 <= j < m / 2) have mirrored pmfs, bit for bit: entry i of one is entry
  // 2W - i of the other (the same |k - f|), the escapes equal (their two terms swapped).  So rows
  // j > m / 2 take the mirrored frequencies of row m - j where no tie decided those.
  std::vector<std::vector<int64_t>> source_freq(static_cast<size_t>(m));
  std::vector<char> mirrored(static_cast<size_t>(m));
  int64_t pos = 0;
  for (int64_t s = 0; s < config.num_scale_bins; ++s) {
    const int64_t w = widths[s], n = 2 * w + 2;
    const double inv_b = table_exp(-config.table_log_scale(s));
    const double one_minus = 1.0 - table_exp(-inv_b);
    exps.fill(inv_b, w, m);
    p.resize(size_t(n));
    freq.resize(size_t(n));
    for (int64_t j = 0; j < m; ++j) {
      const double f = double(j - m / 2) / double(m);  // exact
      if (2 * j > m && mirrored[size_t(m - j)]) {
        mirror_freq(source_freq[size_t(m - j)].data(), w, n, freq.data());
      } else {
        table_pmf(exps, one_minus, f, w, p.data());
        const bool untied = quantize_pmf(p.data(), n, freq.data(), frac, order);
        if (j >= 1 && 2 * j < m) {
          mirrored[size_t(j)] = untied;
          source_freq[size_t(j)].assign(freq.begin(), freq.end());
        }
      }
      out.start.push_back(pos);
      out.length.push_back(int32_t(n + 1));
      out.offset.push_back(int32_t(-w));
      out.max_frequency = std::max(out.max_frequency, write_cdf(freq.data(), n, out.cdf.data() + pos));
      pos += n + 1;
    }
  }
  return out;
}

bool quantize_pmf_row(const double* p, int64_t n, int64_t* freq) {
  std::vector<double> frac;
  std::vector<int64_t> order;
  return quantize_pmf(p, n, freq, frac, order);
}

int64_t max_stream_symbols(const LaplaceTables& tables, size_t stream_bytes) {
  const int64_t slack = kTotalFreq - 2 - tables.max_frequency;
  if (slack <= 0) return INT64_MAX;
  // log2 of the state falls by at least slack / 2**16 per symbol while the state is >= 2**31; it
  // starts below 64 and each word read adds at most 33; a symbol decoded below 2**31 reads a word.
  const double words = double(stream_bytes / 4);
  const double bound = (128.0 + 33.0 * words) * double(kTotalFreq) / double(slack) + words + 16.0;
  return bound >= 9.0e18 ? INT64_MAX : int64_t(bound);
}

std::shared_ptr<const LaplaceTables> get_laplace_tables(const LaplaceTableConfig& config) {
  static std::mutex mutex;
  static std::vector<std::shared_ptr<const LaplaceTables>> cache;  // most recent last
  constexpr size_t kKeep = 4;
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t i = 0; i < cache.size(); ++i)
      if (cache[i]->config == config) {
        auto hit = cache[i];
        cache.erase(cache.begin() + i);
        cache.push_back(hit);
        return hit;
      }
  }
  // Built outside the lock (tens of milliseconds); two threads may build the same family once each.
  auto built = std::make_shared<const LaplaceTables>(build_laplace_tables(config));
  std::lock_guard<std::mutex> lock(mutex);
  cache.push_back(built);
  if (cache.size() > kKeep) cache.erase(cache.begin());
  return built;
}

}  // namespace ralhe
