// The C API (ralhe_decode.h) over ralhe::decode: C++ exceptions stop here and become status codes,
// the message kept per thread for ralhe_last_error.
// The library is built with -fvisibility=hidden: only the C API is exported from the .so.
#pragma GCC visibility push(default)
#include "ralhe_decode.h"
#pragma GCC visibility pop

#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "decoder.h"
#include "ply.h"

static_assert(RALHE_CORRUPT == static_cast<int>(ralhe::ErrorKind::kCorrupt) &&
                  RALHE_BAD_MAGIC == static_cast<int>(ralhe::ErrorKind::kBadMagic) &&
                  RALHE_INVALID_ARGUMENT == static_cast<int>(ralhe::ErrorKind::kInvalidArgument),
              "status codes are the error kinds");

namespace {

// Per thread where there are threads; a WebAssembly build without them has one (and its linker
// refuses thread-local storage beside bulk-memory instructions).
#if defined(__EMSCRIPTEN__) && !defined(__EMSCRIPTEN_PTHREADS__)
std::string g_last_error;
#else
thread_local std::string g_last_error;
#endif

int set_error(int status, const char* message) {
  try {
    g_last_error = message;
  } catch (...) {  // no memory even for the message: keep the status
    g_last_error.clear();
  }
  return status;
}

// Runs `body` (returns a status), turning every exception into a status and message.
template <typename F>
int guarded(F&& body) {
  try {
    g_last_error.clear();
    return body();
  } catch (const ralhe::Error& e) {
    return set_error(static_cast<int>(e.kind()), e.what());
  } catch (const std::bad_alloc&) {
    return set_error(RALHE_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    // e.g. std::length_error from a size read from the file: the Python decoder's
    // "inconsistent file content" (a CorruptDataError) as well
    std::string m = std::string("inconsistent file content (") + e.what() + ")";
    return set_error(RALHE_CORRUPT, m.c_str());
  } catch (...) {
    return set_error(RALHE_CORRUPT, "inconsistent file content (unknown error)");
  }
}

// A malloc'ed copy of v (at least one byte, so that success never yields a null array).
template <typename Vec>
float* copy_out(const Vec& v) {
  size_t bytes = v.size() * sizeof(float);
  float* p = static_cast<float*>(std::malloc(bytes ? bytes : 1));
  if (!p) throw std::bad_alloc();
  if (bytes) std::memcpy(p, v.data(), bytes);
  return p;
}

}  // namespace

extern "C" {

int ralhe_decode(const uint8_t* data, size_t size, ralhe_gaussians* out) {
  if (!out) return set_error(RALHE_INVALID_ARGUMENT, "ralhe_decode: out is NULL");
  std::memset(out, 0, sizeof(*out));
  if (!data && size) return set_error(RALHE_INVALID_ARGUMENT, "ralhe_decode: data is NULL");
  int status = guarded([&] {
    static const uint8_t kEmpty = 0;
    ralhe::DecodedModel m = ralhe::decode(ralhe::Bytes(data ? data : &kEmpty, size));
    ralhe_gaussians g;
    std::memset(&g, 0, sizeof(g));
    try {
      // copy one array at a time, releasing each source: the peak stays near one model
      g.means = copy_out(m.means);
      decltype(m.means)().swap(m.means);
      g.log_scales = copy_out(m.log_scales);
      std::vector<float>().swap(m.log_scales);
      g.quats = copy_out(m.quats);
      std::vector<float>().swap(m.quats);
      g.opacity_logits = copy_out(m.opacity_logits);
      decltype(m.opacity_logits)().swap(m.opacity_logits);
      g.sh = copy_out(m.sh);
    } catch (...) {
      ralhe_free(&g);
      throw;
    }
    g.num_points = m.n;
    g.sh_degree = m.sh_degree;
    g.num_sh = m.num_sh;
    *out = g;
    return RALHE_OK;
  });
  return status;
}

void ralhe_free(ralhe_gaussians* g) {
  if (!g) return;
  std::free(g->means);
  std::free(g->log_scales);
  std::free(g->quats);
  std::free(g->opacity_logits);
  std::free(g->sh);
  std::memset(g, 0, sizeof(*g));
}

int ralhe_to_ply(const ralhe_gaussians* g, uint8_t** data, size_t* size) {
  if (data) *data = nullptr;
  if (size) *size = 0;
  if (!g || !data || !size) return set_error(RALHE_INVALID_ARGUMENT, "ralhe_to_ply: NULL argument");
  if (g->num_points < 0) return set_error(RALHE_INVALID_ARGUMENT, "ralhe_to_ply: negative num_points");
  if (g->num_sh != 1 && g->num_sh != 4 && g->num_sh != 9 && g->num_sh != 16)
    return set_error(RALHE_INVALID_ARGUMENT, "ralhe_to_ply: num_sh must be 1, 4, 9 or 16");
  if (g->num_points > 0 && (!g->means || !g->log_scales || !g->quats || !g->opacity_logits || !g->sh))
    return set_error(RALHE_INVALID_ARGUMENT, "ralhe_to_ply: NULL array");
  return guarded([&] {
    ralhe::PlyModel m;
    m.n = g->num_points;
    m.num_sh = g->num_sh;
    m.means = g->means;
    m.log_scales = g->log_scales;
    m.quats = g->quats;
    m.opacity_logits = g->opacity_logits;
    m.sh = g->sh;
    std::string header = ralhe::ply_header(m.n, m.num_sh);
    size_t row = ralhe::ply_row_bytes(m.num_sh);
    if (uint64_t(m.n) > (SIZE_MAX - header.size()) / row) throw std::bad_alloc();
    size_t total = header.size() + row * size_t(m.n);
    uint8_t* buf = static_cast<uint8_t*>(std::malloc(total));
    if (!buf) throw std::bad_alloc();
    std::memcpy(buf, header.data(), header.size());
    ralhe::ply_rows(m, 0, m.n, buf + header.size());
    *data = buf;
    *size = total;
    return RALHE_OK;
  });
}

void ralhe_free_buffer(uint8_t* data) { std::free(data); }

const char* ralhe_last_error(void) { return g_last_error.c_str(); }

const char* ralhe_status_name(int status) {
  switch (status) {
    case RALHE_OK: return "OK";
    case RALHE_OUT_OF_MEMORY: return "OutOfMemoryError";
    case RALHE_BAD_MAGIC:
    case RALHE_UNSUPPORTED_VERSION:
    case RALHE_TRUNCATED:
    case RALHE_CHECKSUM:
    case RALHE_CORRUPT:
    case RALHE_UNSUPPORTED:
    case RALHE_IO:
    case RALHE_INVALID_ARGUMENT:
      return ralhe::error_name(static_cast<ralhe::ErrorKind>(status));
  }
  return "UnknownStatus";
}

}  // extern "C"
