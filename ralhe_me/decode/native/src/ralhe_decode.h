/* The C API of the native RALHE decoder: decode a .ralhe file held in memory into Gaussians.
 *
 * Usage (a viewer):
 *
 *     ralhe_gaussians g;
 *     int status = ralhe_decode(buffer, size, &g);
 *     if (status != RALHE_OK) { fprintf(stderr, "%s: %s\n", ralhe_status_name(status), ralhe_last_error()); ... }
 *     ... g.means[3 * i + 0..2], g.sh[(i * g.num_sh + k) * 3 + c], ...
 *     ralhe_free(&g);
 *
 * The arrays are float32, point-major, in the file's point order (Morton order of the voxels).
 * The decoded floats are identical bit for bit on every CPU and in WebAssembly.
 * Thread safety: independent calls may run concurrently; ralhe_last_error is per thread.
 */
#ifndef RALHE_DECODE_H
#define RALHE_DECODE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes; the names are the Python decoder's exception names (ralhe_me/decode/bitstream.py). */
enum {
  RALHE_OK = 0,
  RALHE_BAD_MAGIC = 1,           /* BadMagicError: not a .ralhe file */
  RALHE_UNSUPPORTED_VERSION = 2, /* UnsupportedVersionError */
  RALHE_TRUNCATED = 3,           /* TruncatedFileError */
  RALHE_CHECKSUM = 4,            /* ChecksumError */
  RALHE_CORRUPT = 5,             /* CorruptDataError: checksums pass, content inconsistent */
  RALHE_UNSUPPORTED = 6,         /* a valid file this decoder cannot decode (e.g. a baseline codec) */
  RALHE_IO = 7,                  /* a file could not be read or written */
  RALHE_INVALID_ARGUMENT = 8,    /* a null pointer or similar misuse */
  RALHE_OUT_OF_MEMORY = 9
};

typedef struct ralhe_gaussians {
  int64_t num_points;
  int32_t sh_degree;      /* 0..3 */
  int32_t num_sh;         /* (sh_degree + 1)^2 */
  float* means;           /* [num_points, 3] world positions (voxel centers) */
  float* log_scales;      /* [num_points, 3] natural log of the Gaussian's scales */
  float* quats;           /* [num_points, 4] rotation quaternion (w, x, y, z), not normalized */
  float* opacity_logits;  /* [num_points] logit of the opacity */
  float* sh;              /* [num_points, num_sh, 3] SH coefficients, RGB last */
} ralhe_gaussians;

/* Decode `size` bytes at `data` into `*out` (zeroed first; free with ralhe_free on success). */
int ralhe_decode(const uint8_t* data, size_t size, ralhe_gaussians* out);

/* Free the arrays of a decoded result and zero it; safe on a zeroed struct. */
void ralhe_free(ralhe_gaussians* g);

/* The binary little-endian INRIA .ply of `g`, byte for byte what `ralhe decode` writes; the
 * buffer is malloc'ed: release it with ralhe_free_buffer. */
int ralhe_to_ply(const ralhe_gaussians* g, uint8_t** data, size_t* size);
void ralhe_free_buffer(uint8_t* data);

/* The message of the last failed call on this thread ("" if none), and a status code's name. */
const char* ralhe_last_error(void);
const char* ralhe_status_name(int status);

#ifdef __cplusplus
}
#endif

#endif /* RALHE_DECODE_H */
