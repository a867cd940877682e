// The static categorical decoder (ralhe_me/entropy/categorical.py): rANS segments as
// RansStreamWriter lays them out, and the two-pass static coder's streams (covariance codebook,
// indices and residuals, gain map).  Only what decoding needs.
//
// Segments (RansStreamReader): a stream of N symbols holds ceil(N / 2**20) CompressAI rANS
// segments of 2**20 symbols (the last one: the rest); the byte lengths of all but the last come
// first as varints.  Every segment has at least the 8-byte rANS flush and a multiple of 4 bytes.
//
// Static stream (encode_categorical_batches): varints N, A (alphabet), C (contexts), table
// precision; then, if N > 0, a 16-bit check sum of everything else, the histogram tables
// (exp-Golomb: a used flag per context, then the A values of each used context unless the
// precision is 0: uniform tables) and the segments.  Frequencies come from the histograms by
// quantize_frequencies' integer rule, so they are the encoder's exactly.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common.h"
#include "rans_reader.h"

namespace ralhe {

constexpr int64_t kSegmentSymbols = int64_t(1) << 20;  // categorical.SEGMENT_SYMBOLS
constexpr int kMaxAlphabet = 1 << 15;                   // categorical.MAX_ALPHABET
constexpr int kMaxTableBits = 15;                       // categorical.MAX_TABLE_BITS
constexpr int64_t kTotalFreq = int64_t(1) << 16;        // CompressAI's precision

// categorical.py _check16 of head + body: the low 16 bits of their CRC-32, as stored (little endian).
uint16_t check16(Bytes head, Bytes body);

struct RansSegment {
  Bytes bytes;
  int64_t count;  // symbols in it
};

// The segments of a stream of `num_symbols` symbols (RansStreamReader's checks).
std::vector<RansSegment> split_rans_segments(Bytes data, int64_t num_symbols);

// Reads consecutive symbols across the segments with one ralhe::RansReader.  A read past a
// segment's end gives zero words, exactly what CompressAI's decoder reads from the zero padding
// the Python reader appends, so even a corrupt stream decodes to the Python decoder's symbols.
class SegmentedRansReader {
 public:
  SegmentedRansReader() = default;
  SegmentedRansReader(Bytes data, int64_t num_symbols)
      : segments_(split_rans_segments(data, num_symbols)), total_(num_symbols) {}
  // Segments split elsewhere (the Python wrapper of the occupancy loop).
  SegmentedRansReader(std::vector<RansSegment> segments, int64_t num_symbols)
      : segments_(std::move(segments)), total_(num_symbols) {}

  int64_t num_symbols() const { return total_; }
  int64_t consumed() const { return consumed_; }
  int64_t remaining() const { return total_ - consumed_; }

  // Claims the next n symbols before they are read; a CorruptDataError if the stream holds fewer.
  void claim(int64_t n) {
    if (n < 0 || n > total_ - consumed_) corrupt("more symbols requested than the stream holds");
    consumed_ += n;
  }
  // One claimed symbol under CDF `cdf` [length] (RansReader::decode, offset 0).
  int32_t decode(const int32_t* cdf, int length) {
    if (left_ == 0) open_next();
    --left_;
    return reader_.decode(cdf, length, 0);
  }
  // decode() by walking up from symbol 0: the same symbol, cheaper where small symbols are the
  // likely ones (zigzag integers: 0, -1, 1, ...).
  int32_t decode_from_zero(const int32_t* cdf, int length) {
    if (left_ == 0) open_next();
    --left_;
    return reader_.decode_from(cdf, length, 0, 0);
  }
  // decode() with a bucket table of the CDF (see StaticCategoricalDecoder::decode_same).
  int32_t decode_bucketed(const int32_t* cdf, int length, const int32_t* first, int shift) {
    if (left_ == 0) open_next();
    --left_;
    return reader_.decode_from(cdf, length, 0, first[reader_.peek() >> shift]);
  }
  // One claimed binary symbol with P(0) = f0 / 2**16.
  int decode_bit(uint32_t f0) {
    if (left_ == 0) open_next();
    --left_;
    return reader_.decode_bit(f0);
  }
  // Decodes n claimed symbols as runs inside one segment: step(count, reader) decodes exactly
  // `count` symbols with reader.decode_bit.  The reader is a local copy so that its state can stay
  // in registers through the run.
  template <class Step>
  void decode_runs(int64_t n, Step&& step) {
    while (n > 0) {
      if (left_ == 0) open_next();
      const int64_t take = n < left_ ? n : left_;
      RansReader local = reader_;
      step(take, local);
      reader_ = local;
      left_ -= take;
      n -= take;
    }
  }

 private:
  void open_next();

  std::vector<RansSegment> segments_;
  int64_t total_ = 0, consumed_ = 0, left_ = 0;
  size_t next_ = 0;
  RansReader reader_;
};

// A stream of encode_categorical / encode_categorical_batches, decoded batch by batch
// (categorical.py StaticBatchDecoder).  The constructor checks the header, the check sum, the
// tables and the segment layout; no symbol is decoded before `decode`.
class StaticCategoricalDecoder {
 public:
  StaticCategoricalDecoder(Bytes data, int alphabet_size);

  int64_t num_symbols() const { return reader_.num_symbols(); }
  int64_t num_contexts() const { return num_contexts_; }
  int64_t remaining() const { return reader_.remaining(); }

  // The next n symbols into out [n], symbol i under context contexts[i] (nullptr: context 0).
  void decode(const int64_t* contexts, int64_t n, int32_t* out);
  // The next n symbols, all under `context`.
  void decode_same(int64_t context, int64_t n, int32_t* out);
  // A CorruptDataError unless every symbol of the stream was decoded.
  void finish() const;

 private:
  int alphabet_ = 0, cdf_length_ = 0;
  int64_t num_contexts_ = 0;
  std::vector<int32_t> slot_;  // [C] row of a context in cdfs_, -1: no table
  std::vector<int32_t> cdfs_;  // [rows][cdf_length_]
  const int32_t* cdf_of(int64_t context) const;
  void check_symbols(const int32_t* out, int64_t n) const;
  SegmentedRansReader reader_;
};

// baselines/scalar.py decode_integers (the RAHT baseline's static per-context integers, also the
// static latents): n integers whose contexts are ranks [n] among the num_contexts contexts that
// occur (dense_unique), into out [n].  Layout: varints table precision and table length, the
// tables (exp-Golomb: each context's last symbol, then its histogram up to it unless the
// precision is 0), a varint rANS length, the segments of n symbols of kIntegerAlphabet, then the
// raw low bits of the large values, MSB first, zero-padded to the end of `data`.  A value outside
// int32 is a CorruptDataError (the latents are int32).
constexpr int kIntegerDirectLog2 = 4;  // scalar.DIRECT_LOG2
constexpr int kIntegerAlphabet = (1 << kIntegerDirectLog2) + 2 * (40 - kIntegerDirectLog2);  // scalar.ALPHABET
void decode_static_integers(Bytes data, const int32_t* ranks, int64_t num_contexts, int64_t n, int32_t* out);

// categorical.py decode_categorical: the n symbols of a stream whose contexts [n] are given, or
// with contexts == nullptr all under context 0 (n < 0: as many as the stream holds; n >= 0: the
// stream must hold exactly n, checked before decoding).
std::vector<int32_t> decode_categorical(Bytes data, int alphabet_size, const int64_t* contexts, int64_t n);

}  // namespace ralhe
