// The WebAssembly module's exports beyond the C API (src/ralhe_decode.h, exported as is): the
// decoded struct is opaque to JavaScript, so it is allocated and read through these accessors
// instead of through field offsets that would tie wasm/ralhe_decode.js to the struct's layout.
#include <cstdlib>
#include <cstring>

#include "../src/ralhe_decode.h"

#ifdef __EMSCRIPTEN__
#include <emscripten/emscripten.h>
#define RALHE_WASM_EXPORT EMSCRIPTEN_KEEPALIVE
#else
#define RALHE_WASM_EXPORT
#endif

extern "C" {

// A zeroed struct for ralhe_decode to fill; free with ralhe_wasm_delete.
RALHE_WASM_EXPORT ralhe_gaussians* ralhe_wasm_new(void) {
  return static_cast<ralhe_gaussians*>(std::calloc(1, sizeof(ralhe_gaussians)));
}

// Frees the arrays (ralhe_free) and the struct itself.
RALHE_WASM_EXPORT void ralhe_wasm_delete(ralhe_gaussians* g) {
  if (!g) return;
  ralhe_free(g);
  std::free(g);
}

// Counts as doubles: JavaScript numbers (an int64 return would need BigInt support).
RALHE_WASM_EXPORT double ralhe_wasm_num_points(const ralhe_gaussians* g) { return g ? double(g->num_points) : 0.0; }
RALHE_WASM_EXPORT int ralhe_wasm_sh_degree(const ralhe_gaussians* g) { return g ? g->sh_degree : 0; }
RALHE_WASM_EXPORT int ralhe_wasm_num_sh(const ralhe_gaussians* g) { return g ? g->num_sh : 0; }

// The arrays, by index: 0 means [n, 3], 1 log_scales [n, 3], 2 quats [n, 4],
// 3 opacity_logits [n], 4 sh [n, num_sh, 3]; null for another index.
RALHE_WASM_EXPORT float* ralhe_wasm_array(const ralhe_gaussians* g, int which) {
  if (!g) return nullptr;
  switch (which) {
    case 0: return g->means;
    case 1: return g->log_scales;
    case 2: return g->quats;
    case 3: return g->opacity_logits;
    case 4: return g->sh;
    default: return nullptr;
  }
}

// A struct whose arrays JavaScript fills (to write the .ply of arrays it holds), released with
// ralhe_wasm_free_alloc (not ralhe_free: these arrays are not the library's); null when out of
// memory or for a nonsensical size.
RALHE_WASM_EXPORT void ralhe_wasm_free_alloc(ralhe_gaussians* g);
RALHE_WASM_EXPORT ralhe_gaussians* ralhe_wasm_alloc(double num_points, int sh_degree) {
  if (!(num_points >= 0) || num_points > 1e9 || sh_degree < 0 || sh_degree > 3) return nullptr;
  ralhe_gaussians* g = ralhe_wasm_new();
  if (!g) return nullptr;
  const size_t n = size_t(num_points);
  g->num_points = int64_t(n);
  g->sh_degree = sh_degree;
  g->num_sh = (sh_degree + 1) * (sh_degree + 1);
  // at least one float each, so a zero-point cloud still has non-null arrays
  auto alloc = [](size_t count) { return static_cast<float*>(std::malloc((count ? count : 1) * sizeof(float))); };
  g->means = alloc(n * 3);
  g->log_scales = alloc(n * 3);
  g->quats = alloc(n * 4);
  g->opacity_logits = alloc(n);
  g->sh = alloc(n * size_t(g->num_sh) * 3);
  if (!g->means || !g->log_scales || !g->quats || !g->opacity_logits || !g->sh) {
    ralhe_wasm_free_alloc(g);
    return nullptr;
  }
  return g;
}

RALHE_WASM_EXPORT void ralhe_wasm_free_alloc(ralhe_gaussians* g) {
  if (!g) return;
  std::free(g->means);
  std::free(g->log_scales);
  std::free(g->quats);
  std::free(g->opacity_logits);
  std::free(g->sh);
  std::free(g);
}

// ralhe_to_ply with its two out-parameters kept in a static pair (JavaScript reads
// ralhe_wasm_ply_data / ralhe_wasm_ply_size after a RALHE_OK); the buffer is the caller's
// to release with ralhe_free_buffer.  The module is single-threaded.
static uint8_t* g_ply_data = nullptr;
static size_t g_ply_size = 0;

RALHE_WASM_EXPORT int ralhe_wasm_to_ply(const ralhe_gaussians* g) {
  g_ply_data = nullptr;
  g_ply_size = 0;
  return ralhe_to_ply(g, &g_ply_data, &g_ply_size);
}
RALHE_WASM_EXPORT uint8_t* ralhe_wasm_ply_data(void) { return g_ply_data; }
RALHE_WASM_EXPORT double ralhe_wasm_ply_size(void) { return double(g_ply_size); }

}  // extern "C"
