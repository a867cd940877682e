// Under Node.js, read the .wasm beside this module from disk: Emscripten 3.1.6 would fetch() it
// (Node.js >= 18 has fetch, but not for file: URLs).  _scriptDir is the factory's import.meta.url
// in 3.1.6; where a newer Emscripten lacks it or require, it loads the .wasm itself.
if (typeof process == "object" && process.versions && process.versions.node &&
    typeof _scriptDir == "string" && typeof require == "function" &&
    !Module["wasmBinary"] && !Module["instantiateWasm"]) {
  Module["wasmBinary"] = require("fs").readFileSync(require("url").fileURLToPath(new URL("ralhe_decode.wasm", _scriptDir)));
}
