// The static categorical decoder; see categorical.h and ralhe_me/entropy/categorical.py.
#include "categorical.h"

#include <algorithm>
#include <limits>
#include <string>

#include "bits.h"

namespace ralhe {

namespace {

// Order-0 exp-Golomb codes, MSB first (categorical.py exp_golomb_decode), read a byte at a time
// (bits.h): the tables hold thousands of codes, and a loop per bit is what a cold WebAssembly
// decode spent its time on.
class ExpGolombReader {
 public:
  explicit ExpGolombReader(Bytes b) : data_(b.data), num_bits_(uint64_t(b.size) * 8) {}

  int64_t next() {
    const uint64_t one = first_one_bit(data_, pos_, num_bits_);
    const uint64_t zeros = one - pos_;
    // the bit loop's order of checks: 63 zeros is oversized even where the table would end after them
    if (zeros > 62) corrupt("exp-Golomb table ends early or holds an oversized value");
    if (one >= num_bits_) corrupt("exp-Golomb table ends early");
    pos_ = one;
    if (zeros + 1 > num_bits_ - pos_) corrupt("exp-Golomb table ends early or holds an oversized value");
    return int64_t(read_bits(data_, pos_, zeros + 1)) - 1;
  }
  // Whole bytes consumed.
  size_t bytes_used() const { return size_t((pos_ + 7) / 8); }

 private:
  const uint8_t* data_;
  uint64_t num_bits_, pos_ = 0;
};

// Scratch of quantize_row, reused across the rows of a table (no allocation per row).
struct RowScratch {
  std::vector<int64_t> rem;
  std::vector<int32_t> order;
};

// categorical.py quantize_frequencies of one row of weights w [a] (each 0 .. 2**15): a weight of
// 0 gets 0, a positive one 1 plus its share of the rest, the units left over going to the largest
// remainders (ties to the lower symbol); rows sum to 2**16.
void quantize_row(const int64_t* w, int a, int64_t* freq, RowScratch& scratch) {
  int64_t npos = 0, total = 0;
  for (int s = 0; s < a; ++s) {
    npos += w[s] > 0;
    total += w[s];
  }
  const int64_t spare = npos > 0 ? kTotalFreq - npos : 0;
  const int64_t denom = std::max<int64_t>(total, 1);
  int64_t given = 0;
  std::vector<int64_t>& rem = scratch.rem;
  rem.resize(static_cast<size_t>(a));
  for (int s = 0; s < a; ++s) {
    const int64_t scaled = w[s] * spare;
    freq[s] = scaled / denom + (w[s] > 0);
    given += scaled / denom;
    rem[s] = w[s] > 0 ? scaled % denom : -1;
  }
  const int64_t left = spare - given;  // in [0, npos)
  if (left <= 0) return;
  if (a == 2) {
    freq[rem[0] >= rem[1] ? 0 : 1] += 1;
    return;
  }
  // the `left` largest remainders, ties to the lower symbol: the order a stable sort by -rem
  // gives, which is the one order by (-rem, symbol)
  std::vector<int32_t>& order = scratch.order;
  order.resize(static_cast<size_t>(a));
  for (int s = 0; s < a; ++s) order[s] = s;
  std::partial_sort(order.begin(), order.begin() + left, order.end(),
                    [&](int32_t x, int32_t y) { return rem[x] > rem[y] || (rem[x] == rem[y] && x < y); });
  for (int64_t r = 0; r < left; ++r) freq[order[r]] += 1;
}

// categorical.py frequencies_to_cdfs of one row of frequencies f [a] into cdf [max(a, 2) + 2]:
// alphabet 1 widened to 2 (a zero appended), a symbol holding all 2**16 gives 1 to the next
// (cyclically), escape of zero width.
void frequencies_to_cdf(const int64_t* freq, int a, int32_t* cdf) {
  const int a2 = std::max(a, 2);
  int top = 0;  // the first largest, as np.argmax (an appended zero is never above freq[0] >= 0)
  for (int s = 1; s < a; ++s)
    if (freq[s] > freq[top]) top = s;
  const bool full = a > 0 && freq[top] == kTotalFreq;
  int64_t sum = 0;
  cdf[0] = 0;
  for (int s = 0; s < a2; ++s) {
    sum += (s < a ? freq[s] : 0) - int64_t(full && s == top) + int64_t(full && s == (top + 1) % a2);
    cdf[s + 1] = int32_t(sum);
  }
  cdf[a2 + 1] = int32_t(kTotalFreq);
}

// decode_static_integers' two loops over the symbols, a chunk of them per call (RALHE_NOINLINE in
// common.h): symbols [begin, end) into out, returning the raw bits they need ...
constexpr int64_t kIntegerChunk = 4096;

RALHE_NOINLINE uint64_t decode_integer_symbols(SegmentedRansReader& reader, const int32_t* cdfs, const int64_t* freq,
                                               const int32_t* ranks, int64_t num_contexts, int64_t begin, int64_t end,
                                               int32_t* out) {
  constexpr int A = kIntegerAlphabet;
  uint64_t raw_bits = 0;
  for (int64_t i = begin; i < end; ++i) {
    const int32_t c = ranks[i];
    if (c < 0 || c >= num_contexts) fail(ErrorKind::kInvalidArgument, "decode_static_integers: context rank out of range");
    const int32_t s = reader.decode_from_zero(cdfs + size_t(c) * (A + 2), A + 2);
    if (s < 0 || s >= A || freq[size_t(c) * A + s] == 0) corrupt("decoded a symbol outside its table");
    out[i] = s;  // the symbol, until the raw bits are read
    if (s >= (1 << kIntegerDirectLog2)) raw_bits += uint64_t((s - (1 << kIntegerDirectLog2)) / 2 + kIntegerDirectLog2 - 1);
  }
  return raw_bits;
}

// ... then symbols [begin, end) of out into their integers, the large ones completed by the raw bits
// from bit `bit` on (returns the next bit).
RALHE_NOINLINE uint64_t integers_from_symbols(Bytes raw, uint64_t bit, int64_t begin, int64_t end, int32_t* out) {
  for (int64_t i = begin; i < end; ++i) {
    const int32_t s = out[i];
    uint64_t u = uint64_t(s);
    if (s >= (1 << kIntegerDirectLog2)) {
      const int k = s - (1 << kIntegerDirectLog2), nb = k / 2 + kIntegerDirectLog2 - 1;
      u = (uint64_t(2 | (k & 1)) << nb) | read_bits(raw.data, bit, uint64_t(nb));
    }
    if (u >> 32) corrupt("an integer stream holds a value outside int32");
    const int64_t v = int64_t(u >> 1) ^ -int64_t(u & 1);  // unzigzag
    out[i] = int32_t(v);
  }
  return bit;
}

}  // namespace

void decode_static_integers(Bytes data, const int32_t* ranks, int64_t num_contexts, int64_t n, int32_t* out) {
  constexpr int A = kIntegerAlphabet;
  size_t pos = 0;
  const uint64_t table_bits = read_varint(data, pos, "integer stream header");
  const uint64_t length = read_varint(data, pos, "integer stream header");
  if (table_bits > uint64_t(kMaxTableBits) || length > data.size - pos)
    corrupt("integer stream header is invalid or truncated");
  if (n == 0) {
    if (length != 0 || data.size - pos != 1 || data[pos] != 0) corrupt("an empty integer stream holds data");
    return;
  }
  // the tables (_read_table): last symbol per context, then the histograms up to it
  const Bytes tables(data.data + pos, size_t(length));
  ExpGolombReader lasts(tables);
  std::vector<int64_t> last(static_cast<size_t>(num_contexts));
  uint64_t values = 0;
  for (int64_t c = 0; c < num_contexts; ++c) {
    last[c] = lasts.next();
    if (last[c] >= A) corrupt("frequency table names a symbol outside the alphabet");
    values += uint64_t(last[c]) + 1;
  }
  size_t used = lasts.bytes_used();
  std::vector<int64_t> freq(size_t(num_contexts) * A, 0), weights(A);
  std::vector<int32_t> cdfs(size_t(num_contexts) * (A + 2));
  RowScratch scratch;
  if (table_bits == 0) {
    for (int64_t c = 0; c < num_contexts; ++c) {
      for (int s = 0; s < A; ++s) weights[s] = s <= last[c];
      quantize_row(weights.data(), A, freq.data() + c * A, scratch);
    }
  } else {
    if (values > 8 * uint64_t(tables.size - used)) corrupt("exp-Golomb table ends early");
    ExpGolombReader hist(tables.from(used, "frequency table"));
    for (int64_t c = 0; c < num_contexts; ++c) {
      int64_t sum = 0;
      for (int s = 0; s < A; ++s) {
        weights[s] = s <= last[c] ? hist.next() : 0;
        if (weights[s] > (int64_t(1) << table_bits)) corrupt("frequency table value exceeds its precision");
        sum += weights[s];
      }
      if (sum == 0) corrupt("a used context has an empty frequency table");
      quantize_row(weights.data(), A, freq.data() + c * A, scratch);
    }
    used += hist.bytes_used();
  }
  if (used != tables.size) corrupt("frequency tables have trailing bytes");
  for (int64_t c = 0; c < num_contexts; ++c) frequencies_to_cdf(freq.data() + c * A, A, cdfs.data() + c * (A + 2));
  pos += size_t(length);
  const uint64_t stream = read_varint(data, pos, "integer stream");
  if (stream > data.size - pos) corrupt("integer stream is truncated");
  SegmentedRansReader reader(Bytes(data.data + pos, size_t(stream)), n);
  pos += size_t(stream);
  reader.claim(n);
  uint64_t raw_bits = 0;
  for (int64_t i = 0; i < n; i += kIntegerChunk)
    raw_bits += decode_integer_symbols(reader, cdfs.data(), freq.data(), ranks, num_contexts, i,
                                       std::min(n, i + kIntegerChunk), out);
  // from_symbols: the raw bits of the large values, in symbol order, fill the rest exactly
  const Bytes raw(data.data + pos, data.size - pos);
  if ((raw_bits + 7) / 8 != raw.size)
    corrupt("raw bit section holds " + std::to_string(raw.size) + " bytes, the symbols need " +
            std::to_string((raw_bits + 7) / 8));
  uint64_t bit = 0;
  for (int64_t i = 0; i < n; i += kIntegerChunk) bit = integers_from_symbols(raw, bit, i, std::min(n, i + kIntegerChunk), out);
  if (first_one_bit(raw.data, bit, 8 * uint64_t(raw.size)) < 8 * uint64_t(raw.size))
    corrupt("raw bit section has nonzero padding");
}

uint16_t check16(Bytes head, Bytes body) {
  return uint16_t(crc32(body.data, body.size, crc32(head.data, head.size)) & 0xFFFF);
}

std::vector<RansSegment> split_rans_segments(Bytes data, int64_t num_symbols) {
  if (num_symbols < 0) corrupt("negative rANS symbol count");
  const int64_t num_segments = num_symbols / kSegmentSymbols + (num_symbols % kSegmentSymbols != 0);
  if (uint64_t(num_segments) * 8 > data.size)  // every segment holds at least the 8-byte rANS flush
    corrupt(std::to_string(data.size) + " bytes cannot hold " + std::to_string(num_symbols) + " symbols");
  std::vector<RansSegment> segments;
  if (num_segments == 0) return segments;
  size_t pos = 0;
  std::vector<uint64_t> lengths;
  for (int64_t i = 0; i + 1 < num_segments; ++i) lengths.push_back(read_varint(data, pos, "rANS segment lengths"));
  for (int64_t i = 0; i < num_segments; ++i) {
    const int64_t count = std::min(kSegmentSymbols, num_symbols - i * kSegmentSymbols);
    Bytes seg;
    if (i + 1 < num_segments) {
      if (lengths[i] > data.size - pos) corrupt("rANS stream is truncated");
      seg = Bytes(data.data + pos, size_t(lengths[i]));
      pos += size_t(lengths[i]);
    } else {
      seg = data.from(pos, "rANS stream");
    }
    if (seg.size < 8 || seg.size % 4)
      corrupt("rANS segment of " + std::to_string(seg.size) + " bytes cannot be valid");
    segments.push_back({seg, count});
  }
  return segments;
}

void SegmentedRansReader::open_next() {
  // claim() bounds the symbols read by the segments' counts, so a next segment exists; the check
  // keeps a caller that forgot to claim from reading outside them
  if (next_ >= segments_.size()) corrupt("more symbols requested than the stream holds");
  const RansSegment& seg = segments_[next_++];
  if (seg.count <= 0) corrupt("rANS segment holds no symbols");
  reader_.reset(seg.bytes.data, seg.bytes.size);
  left_ = seg.count;
}

StaticCategoricalDecoder::StaticCategoricalDecoder(Bytes data, int alphabet_size) : alphabet_(alphabet_size) {
  if (alphabet_size < 1 || alphabet_size > kMaxAlphabet)
    fail(ErrorKind::kInvalidArgument, "alphabet_size must be in [1, 32768], got " + std::to_string(alphabet_size));
  size_t pos = 0;
  const uint64_t n = read_varint(data, pos, "categorical stream header");
  const uint64_t stored_a = read_varint(data, pos, "categorical stream header");
  const uint64_t num_contexts = read_varint(data, pos, "categorical stream header");
  const uint64_t table_bits = read_varint(data, pos, "categorical stream header");
  if (stored_a != uint64_t(alphabet_size))
    corrupt("stream was coded with alphabet " + std::to_string(stored_a) + ", decoder given " +
            std::to_string(alphabet_size));
  if (table_bits > uint64_t(kMaxTableBits) || (n == 0) != (num_contexts == 0) || num_contexts > std::max<uint64_t>(n, 1))
    corrupt("invalid categorical stream header");
  if (n > uint64_t(std::numeric_limits<int64_t>::max()))
    corrupt(std::to_string(data.size) + " bytes cannot hold " + std::to_string(n) + " symbols");
  if (n == 0) {
    if (pos != data.size) corrupt("trailing bytes after an empty categorical stream");
    return;
  }
  if (data.size < pos + 2) corrupt("categorical stream is truncated");
  const Bytes body = data.from(pos + 2, "categorical stream");
  if (check16(Bytes(data.data, pos), body) != load_u16le(data.data + pos))
    corrupt("categorical stream fails its check sum (corrupt or truncated)");

  // the histogram tables (_read_tables)
  if (num_contexts > uint64_t(body.size) * 8) corrupt("histogram table is truncated");  // a bit per flag at least
  num_contexts_ = int64_t(num_contexts);
  const int a = alphabet_size;
  cdf_length_ = std::max(a, 2) + 2;
  slot_.assign(size_t(num_contexts_), -1);
  ExpGolombReader flags(body);
  int64_t k = 0;
  for (int64_t c = 0; c < num_contexts_; ++c) {
    const int64_t used = flags.next();
    if (used > 1) corrupt("histogram table has an invalid context flag");
    if (used) slot_[c] = int32_t(table_bits ? k : 0);
    k += used;
  }
  size_t used_bytes = flags.bytes_used();
  std::vector<int64_t> weights(static_cast<size_t>(a)), freq(static_cast<size_t>(a));
  RowScratch scratch;
  if (table_bits == 0) {
    // uniform tables: every used context has the same row, held once
    std::fill(weights.begin(), weights.end(), 1);
    quantize_row(weights.data(), a, freq.data(), scratch);
    cdfs_.resize(size_t(cdf_length_));
    frequencies_to_cdf(freq.data(), a, cdfs_.data());
  } else {
    if (uint64_t(k) * uint64_t(a) > 8 * uint64_t(body.size - used_bytes)) corrupt("histogram table is truncated");
    ExpGolombReader values(body.from(used_bytes, "histogram table"));
    cdfs_.resize(size_t(k) * size_t(cdf_length_));
    for (int64_t row = 0; row < k; ++row) {
      int64_t sum = 0;
      for (int s = 0; s < a; ++s) {
        weights[s] = values.next();
        if (weights[s] > (int64_t(1) << table_bits)) corrupt("histogram value exceeds its precision");
        sum += weights[s];
      }
      if (sum == 0) corrupt("a used context has an empty histogram");
      quantize_row(weights.data(), a, freq.data(), scratch);
      frequencies_to_cdf(freq.data(), a, cdfs_.data() + size_t(row) * size_t(cdf_length_));
    }
    used_bytes += values.bytes_used();
  }
  reader_ = SegmentedRansReader(body.from(used_bytes, "categorical stream"), int64_t(n));
}

const int32_t* StaticCategoricalDecoder::cdf_of(int64_t context) const {
  if (context < 0 || context >= num_contexts_)
    corrupt("context outside the stream's " + std::to_string(num_contexts_) + " contexts");
  const int32_t s = slot_[size_t(context)];
  if (s < 0) corrupt("a context has no table in the stream (corrupt stream or wrong contexts)");
  return cdfs_.data() + size_t(s) * size_t(cdf_length_);
}

void StaticCategoricalDecoder::check_symbols(const int32_t* out, int64_t n) const {
  if (alphabet_ > 1) return;
  for (int64_t i = 0; i < n; ++i)  // alphabet 1 is coded as 2: garbage may decode the second
    if (out[i] != 0) corrupt("decoded a symbol outside the alphabet");
}

void StaticCategoricalDecoder::decode(const int64_t* contexts, int64_t n, int32_t* out) {
  if (!contexts) return decode_same(0, n, out);
  if (n <= 0) return;
  reader_.claim(n);
  for (int64_t i = 0; i < n; ++i) out[i] = reader_.decode(cdf_of(contexts[i]), cdf_length_);
  check_symbols(out, n);
}

void StaticCategoricalDecoder::decode_same(int64_t context, int64_t n, int32_t* out) {
  if (n <= 0) return;
  reader_.claim(n);
  const int32_t* cdf = cdf_of(context);
  constexpr int kShift = 4;  // buckets of 16 cumulative frequencies
  constexpr int64_t kBuckets = kTotalFreq >> kShift;
  if (n < kBuckets || cdf_length_ <= 8) {  // the bucket table would cost more than it saves
    for (int64_t i = 0; i < n; ++i) out[i] = reader_.decode(cdf, cdf_length_);
  } else {
    // first[b]: the symbol holding cumulative frequency b << kShift (the last s with cdf[s] <=
    // it, at most length - 2, as decode's search finds it); a symbol in bucket b is at least that
    std::vector<int32_t> first(static_cast<size_t>(kBuckets));
    int s = 0;
    for (size_t b = 0; b < first.size(); ++b) {
      const int32_t c = int32_t(b << kShift);
      while (s + 1 < cdf_length_ - 1 && cdf[s + 1] <= c) ++s;
      first[b] = s;
    }
    for (int64_t i = 0; i < n; ++i) out[i] = reader_.decode_bucketed(cdf, cdf_length_, first.data(), kShift);
  }
  check_symbols(out, n);
}

void StaticCategoricalDecoder::finish() const {
  if (remaining()) corrupt(std::to_string(remaining()) + " symbols left undecoded");
}

std::vector<int32_t> decode_categorical(Bytes data, int alphabet_size, const int64_t* contexts, int64_t n) {
  StaticCategoricalDecoder dec(data, alphabet_size);
  if (contexts == nullptr && n < 0) n = dec.num_symbols();
  if (n != dec.num_symbols())
    corrupt("stream holds " + std::to_string(dec.num_symbols()) + " symbols, " + std::to_string(n) + " contexts given");
  std::vector<int32_t> out(static_cast<size_t>(n));
  dec.decode(contexts, n, out.data());
  dec.finish();
  return out;
}

}  // namespace ralhe
