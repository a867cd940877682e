// Shared vocabulary of the native decoder: byte views, the error type and small readers.
//
// Every failure on a bad file throws ralhe::Error with a kind that names it the way the Python
// decoder does (ralhe_me/decode/bitstream.py): BadMagicError, UnsupportedVersionError,
// TruncatedFileError, ChecksumError, CorruptDataError.  Nothing in the library prints or exits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if defined(__linux__) && !defined(__EMSCRIPTEN__)
#include <sys/mman.h>
#define RALHE_POPULATE_PAGES 1
#else
#define RALHE_POPULATE_PAGES 0
#endif

// A loop that does most of a stage's work lives in a function called many times (per step, per
// chunk of points, per table), kept out of line: WebAssembly engines first run a function from
// a quickly compiled baseline, and only calls made after its optimized code is ready use it.
#if defined(__GNUC__) || defined(__clang__)
#define RALHE_NOINLINE __attribute__((noinline))
#define RALHE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define RALHE_NOINLINE
#define RALHE_ALWAYS_INLINE inline
#endif
// Out of line in the WebAssembly build only (a function the engine compiles and tiers up on its
// own), inlined elsewhere (the native build keeps its register allocation across the call).
#if defined(__EMSCRIPTEN__)
#define RALHE_WASM_NOINLINE __attribute__((noinline))
#else
#define RALHE_WASM_NOINLINE RALHE_ALWAYS_INLINE
#endif
#if defined(__GNUC__) || defined(__clang__)
#define RALHE_INLINE_LAMBDA __attribute__((always_inline))
#else
#define RALHE_INLINE_LAMBDA
#endif

// f(begin, end) over [0, n) in chunks of `chunk` items, each chunk one call of an out-of-line
// function (one per call site).  For a per-item loop in a function that runs once per decode: a
// WebAssembly engine counts the loop's work against the function and, past its budget, compiles
// the function again optimized, work that a function called once never uses (no on-stack
// replacement) and that competes for the cores; the chunk function's own optimized code serves
// its later calls.  Chunks run in order, so results are those of the plain loop (which is what
// the native build compiles: there the chunk function is inlined).
template <typename F>
RALHE_WASM_NOINLINE void run_chunk(F& f, int64_t begin, int64_t end) {
  f(begin, end);
}
template <typename F>
void for_chunks(int64_t n, int64_t chunk, F&& f) {
  for (int64_t b = 0; b < n; b += chunk) run_chunk(f, b, n - b < chunk ? n : b + chunk);
}

// Kernels compiled for several x86 instruction sets and picked at load time (target attributes
// and __builtin_cpu_supports): GCC on x86-64 Linux.  Other builds use the portable kernels.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define RALHE_X86_DISPATCH 1
#else
#define RALHE_X86_DISPATCH 0
#endif

namespace ralhe {

// Blocks of at least kPopulateBytes, on Linux, come from mmap with MAP_POPULATE: the kernel
// maps all their pages in one call instead of one page fault per 4 KiB page on first write
// (a fault costs about as much again as mapping the page: 0.14 s against 0.10 s for 400 MB
// here).  Only for buffers the decoder writes in full; elsewhere, and in WebAssembly, malloc.
constexpr size_t kPopulateBytes = size_t(1) << 21;

inline void* allocate_block(size_t bytes) {
#if RALHE_POPULATE_PAGES
  if (bytes >= kPopulateBytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return p;
  }
#endif
  void* p = std::malloc(bytes ? bytes : 1);
  if (!p) throw std::bad_alloc();
  return p;
}

// The same, all bytes zero (fresh pages are; a malloc'ed block is cleared).
inline void* allocate_zeroed_block(size_t bytes) {
#if RALHE_POPULATE_PAGES
  if (bytes >= kPopulateBytes) return allocate_block(bytes);
#endif
#if defined(__wasm_bulk_memory__)
  // WebAssembly: the C library's calloc clears with its own memset, a loop that runs in the
  // engine's baseline code on a cold start; clearing here is one memory.fill instruction.
  void* p = std::malloc(bytes ? bytes : 1);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, bytes);
#else
  void* p = std::calloc(bytes ? bytes : 1, 1);
  if (!p) throw std::bad_alloc();
#endif
  return p;
}

inline void free_block(void* p, size_t bytes) noexcept {
  if (!p) return;
#if RALHE_POPULATE_PAGES
  if (bytes >= kPopulateBytes) {
    munmap(p, bytes);
    return;
  }
#endif
  (void)bytes;
  std::free(p);
}

// An uninitialized block from allocate_block, freed with it.
class Block {
 public:
  Block() = default;
  explicit Block(size_t bytes) : data_(allocate_block(bytes)), bytes_(bytes) {}
  ~Block() { free_block(data_, bytes_); }
  Block(Block&& other) noexcept : data_(other.data_), bytes_(other.bytes_) { other.data_ = nullptr; }
  Block& operator=(Block&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// An allocator whose resize() leaves new elements default-initialized (uninitialized for
// numbers): for the decoder's outputs, which are written in full right after they are sized, so
// their pages are not zero-filled by a memset before the kernel's own zero page is overwritten.
// With Zeroed, its blocks come zeroed (allocate_zeroed_block), so a vector's sized constructor
// gives zeros for the cost of mapping the pages; only that constructor does: resize() within
// the capacity leaves what the elements held.
template <typename T, bool Zeroed = false>
struct DefaultInitAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U, Zeroed>;
  };
  DefaultInitAllocator() = default;
  template <typename U>
  DefaultInitAllocator(const DefaultInitAllocator<U, Zeroed>&) noexcept {}
  T* allocate(size_t n) {
    if (n > size_t(-1) / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(Zeroed ? allocate_zeroed_block(n * sizeof(T)) : allocate_block(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) noexcept { free_block(p, n * sizeof(T)); }
  template <typename U>
  void construct(U* p) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
template <typename T>
using OutputVector = std::vector<T, DefaultInitAllocator<T>>;
template <typename T>
using ZeroedVector = std::vector<T, DefaultInitAllocator<T, true>>;

enum class ErrorKind : int {
  kBadMagic = 1,            // BadMagicError
  kUnsupportedVersion = 2,  // UnsupportedVersionError
  kTruncated = 3,           // TruncatedFileError
  kChecksum = 4,            // ChecksumError
  kCorrupt = 5,             // CorruptDataError: checksums pass, content inconsistent
  kUnsupported = 6,         // a valid file this decoder cannot decode (e.g. a baseline codec)
  kIO = 7,                  // reading or writing a file failed
  kInvalidArgument = 8,     // API misuse (null pointers, ...)
};

inline const char* error_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kBadMagic: return "BadMagicError";
    case ErrorKind::kUnsupportedVersion: return "UnsupportedVersionError";
    case ErrorKind::kTruncated: return "TruncatedFileError";
    case ErrorKind::kChecksum: return "ChecksumError";
    case ErrorKind::kCorrupt: return "CorruptDataError";
    case ErrorKind::kUnsupported: return "UnsupportedFileError";
    case ErrorKind::kIO: return "IOError";
    case ErrorKind::kInvalidArgument: return "InvalidArgumentError";
  }
  return "Error";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void fail(ErrorKind kind, const std::string& message) { throw Error(kind, message); }
// Checksums passed but the content is inconsistent: the Python decoder's CorruptDataError.
[[noreturn]] inline void corrupt(const std::string& message) { throw Error(ErrorKind::kCorrupt, message); }

// A read-only view of bytes owned elsewhere (the file buffer outlives every decode step).
struct Bytes {
  const uint8_t* data = nullptr;
  size_t size = 0;

  Bytes() = default;
  Bytes(const uint8_t* d, size_t n) : data(d), size(n) {}
  explicit Bytes(const std::vector<uint8_t>& v) : data(v.data()), size(v.size()) {}

  uint8_t operator[](size_t i) const { return data[i]; }
  // [offset, offset + length), or a CorruptDataError naming `what` if it runs past the end.
  Bytes sub(size_t offset, size_t length, const char* what) const {
    if (offset > size || length > size - offset) corrupt(std::string(what) + " is truncated");
    return Bytes(data + offset, length);
  }
  Bytes from(size_t offset, const char* what) const {
    if (offset > size) corrupt(std::string(what) + " is truncated");
    return Bytes(data + offset, size - offset);
  }
};

// LEB128 unsigned varint as ralhe_me/entropy/categorical.py read_varint (7 bits per byte, low
// first, high bit = more); advances pos.  At most 10 bytes (Python refuses longer).
inline uint64_t read_varint(Bytes b, size_t& pos, const char* what) {
  uint64_t value = 0;
  for (int shift = 0; shift <= 63; shift += 7) {
    if (pos >= b.size) corrupt(std::string(what) + ": varint runs past the end");
    uint8_t byte = b[pos++];
    value |= uint64_t(byte & 0x7F) << shift;
    if (!(byte & 0x80)) return value;
  }
  corrupt(std::string(what) + ": varint too long");
}

inline uint32_t load_u32le(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
inline uint16_t load_u16le(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
inline float load_f32le(const uint8_t* p) {
  uint32_t u = load_u32le(p);
  float f;
  static_assert(sizeof(f) == 4, "float32");
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// zlib's CRC-32 (the polynomial 0xEDB88320, reflected), as Python's zlib.crc32 (crc32.cpp).
uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc = 0);
inline uint32_t crc32(Bytes b) { return crc32(b.data, b.size); }

}  // namespace ralhe
