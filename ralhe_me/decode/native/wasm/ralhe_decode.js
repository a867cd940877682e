// The JavaScript API of the RALHE decoder built to WebAssembly (wasm/build.sh), for Node.js and
// browsers (an ES module; the build's ralhe_decode.mjs + .wasm sit in ../build/wasm/).
//
//   import { createDecoder } from "./ralhe_decode.js";
//   const decoder = await createDecoder();
//   const g = decoder.decode(new Uint8Array(fileBytes));   // throws RalheDecodeError
//   g.numPoints, g.shDegree, g.means /* Float32Array [n*3] */, ...;  const ply = g.ply();
//
// The arrays are copies (they stay valid whatever the module does next); the floats are bit for
// bit those of the native decoder.

const STATUS_NAMES = [
  "OK", "BadMagicError", "UnsupportedVersionError", "TruncatedFileError", "ChecksumError",
  "CorruptDataError", "UnsupportedFileError", "IOError", "InvalidArgumentError", "OutOfMemoryError",
];

// A failed decode: `name` is the status name (the Python decoder's exception name, e.g.
// "CorruptDataError"), `status` the C API's code, `message` the decoder's message.
export class RalheDecodeError extends Error {
  constructor(status, name, message) {
    super(message ? `${name}: ${message}` : name);
    this.name = name;
    this.status = status;
    this.detail = message;
  }
}

// Field order of ralhe_wasm_array (wasm/exports.cpp) and the floats per point of each.
const ARRAYS = [
  ["means", () => 3],
  ["logScales", () => 3],
  ["quats", () => 4],
  ["opacityLogits", () => 1],
  ["sh", (numSh) => 3 * numSh],
];

class Decoder {
  constructor(module) {
    this.module = module;
  }

  _error(status) {
    const M = this.module;
    const name = M.UTF8ToString(M._ralhe_status_name(status)) || STATUS_NAMES[status] || `status ${status}`;
    return new RalheDecodeError(status, name, M.UTF8ToString(M._ralhe_last_error()));
  }

  // Copies `bytes` into the module's memory, runs fn(gaussiansPtr) on the decoded result and
  // frees everything, whatever fn does.
  _withDecoded(bytes, fn) {
    const M = this.module;
    if (!(bytes instanceof Uint8Array)) bytes = new Uint8Array(bytes);
    const input = M._malloc(Math.max(bytes.length, 1));
    if (!input) throw new RalheDecodeError(9, "OutOfMemoryError", `cannot copy ${bytes.length} bytes into WebAssembly memory`);
    const g = M._ralhe_wasm_new();
    try {
      if (!g) throw new RalheDecodeError(9, "OutOfMemoryError", "cannot allocate the result");
      M.HEAPU8.set(bytes, input);
      const status = M._ralhe_decode(input, bytes.length, g);
      if (status !== 0) throw this._error(status);
      return fn(g);
    } finally {
      M._ralhe_wasm_delete(g);
      M._free(input);
    }
  }

  // The .ply bytes of the struct at `g` (a copy).
  _ply(g) {
    const M = this.module;
    const status = M._ralhe_wasm_to_ply(g);
    if (status !== 0) throw this._error(status);
    const data = M._ralhe_wasm_ply_data();
    const size = M._ralhe_wasm_ply_size();
    try {
      return M.HEAPU8.slice(data, data + size);  // HEAPU8 read after the call: memory may have grown
    } finally {
      M._ralhe_free_buffer(data);
    }
  }

  // Decode a whole .ralhe file: {numPoints, shDegree, numSh, means [n*3], logScales [n*3],
  // quats [n*4] (w, x, y, z), opacityLogits [n], sh [n*numSh*3], ply() -> Uint8Array}.
  decode(bytes) {
    return this._withDecoded(bytes, (g) => {
      const M = this.module;
      const numPoints = M._ralhe_wasm_num_points(g);
      const shDegree = M._ralhe_wasm_sh_degree(g);
      const numSh = M._ralhe_wasm_num_sh(g);
      const result = { numPoints, shDegree, numSh };
      ARRAYS.forEach(([key, perPoint], which) => {
        const ptr = M._ralhe_wasm_array(g, which);
        const count = numPoints * perPoint(numSh);
        result[key] = count ? M.HEAPF32.slice(ptr >>> 2, (ptr >>> 2) + count) : new Float32Array(0);
      });
      result.ply = () => this.plyOf(result);
      return result;
    });
  }

  // Decode straight to the INRIA .ply bytes (what `ralhe-decode IN OUT.ply` writes), without
  // copying the arrays out.
  decodeToPly(bytes) {
    return this._withDecoded(bytes, (g) => this._ply(g));
  }

  // The .ply bytes of arrays shaped as decode() returns them.
  plyOf(gaussians) {
    const M = this.module;
    const { numPoints, shDegree } = gaussians;
    const g = M._ralhe_wasm_alloc(numPoints, shDegree);
    if (!g) throw new RalheDecodeError(9, "OutOfMemoryError", `cannot allocate ${numPoints} points`);
    try {
      const numSh = M._ralhe_wasm_num_sh(g);
      ARRAYS.forEach(([key, perPoint], which) => {
        const count = numPoints * perPoint(numSh);
        const array = gaussians[key];
        if (!array || array.length !== count) throw new RangeError(`${key} must hold ${count} floats`);
        if (count) M.HEAPF32.set(array, M._ralhe_wasm_array(g, which) >>> 2);
      });
      return this._ply(g);
    } finally {
      M._ralhe_wasm_free_alloc(g);
    }
  }
}

// Decodes of the warm-up file: an engine optimizes a function once it has run long enough, and
// one decode of the small file leaves most of them at the baseline tier (kacytran's first decode
// after it: 58 ms, after 3: 34 ms, after 6: 39 ms; medians of 7 in Node.js on 2 cores).
const WARM_UP_DECODES = 3;

// Instantiate the WebAssembly module (once per decoder; reuse the decoder).  options:
//   moduleUrl: where ralhe_decode.mjs is (default ../build/wasm/ralhe_decode.mjs beside this file)
//   warmUp: decode a small built-in file (warmup.mjs beside the module, 11 kB) 3 times before
//     resolving.
//     Why: engines compile a function when it first runs and optimize it later, in the
//     background, so a fresh module's first decode runs unoptimized code and shares the CPU with
//     the compiler.  A viewer that creates its decoder while its scene downloads gets that over
//     with first (README: kacytran's first decode 108 -> 36 ms in Node.js on 2 cores).
//   any other key is passed to the Emscripten factory (e.g. wasmBinary, locateFile).
export async function createDecoder(options = {}) {
  const { moduleUrl, warmUp = false, ...moduleOptions } = options;
  const url = moduleUrl ? new URL(moduleUrl, import.meta.url).href : new URL("../build/wasm/ralhe_decode.mjs", import.meta.url).href;
  const { default: factory } = await import(url);
  const decoder = new Decoder(await factory(moduleOptions));
  if (warmUp) {
    // only a speed-up: a build without warmup.mjs (older than the option) still decodes, with a warning
    let bytes = null;
    try {
      const { default: base64 } = await import(new URL("warmup.mjs", url).href);
      bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    } catch (e) {
      console.warn(`RALHE decoder: warm-up skipped (no warmup.mjs beside ${url}: rebuild with wasm/build.sh): ${e}`);
    }
    for (let i = 0; bytes && i < WARM_UP_DECODES; ++i) {
      decoder.decodeToPly(bytes);
      await new Promise((resolve) => setTimeout(resolve, 0));  // the page stays responsive
    }
  }
  return decoder;
}
