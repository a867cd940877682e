// Decode .ralhe files with the WebAssembly build in Node.js and write their .ply (the check
// against the native decoder in tests/test_native_wasm.py, and the timing in
// benchmarks/bench_wasm.py).
//
//   node test_node.mjs [--repeat N] [--check-arrays] [--warm-up] [--idle MS] IN.ralhe OUT.ply [IN2 OUT2 ...]
//
// --warm-up creates the decoder with createDecoder({ warmUp: true }); --idle waits MS milliseconds
// after that (a viewer's download) before the first file, with the event loop free.
// OUT "-" writes nothing.  One JSON line per file on stdout: {input, status ("OK" or the error
// name, e.g. "CorruptDataError"), message, numPoints, shDegree, plyBytes, ms: [per repeat]}; a
// first line {instantiateMs} (the warm-up included).  --check-arrays also decodes to arrays and rebuilds the .ply from
// them (decode() + plyOf()), failing the file if the bytes differ.  Exit 0 unless an argument
// or the module is wrong (a file that fails to decode is a result, not an exit status).
import { readFileSync, writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { createDecoder } from "./ralhe_decode.js";

const args = process.argv.slice(2);
let repeat = 1;
let checkArrays = false;
let warmUp = false;
let idleMs = 0;
const files = [];
for (let i = 0; i < args.length; ++i) {
  if (args[i] === "--repeat") repeat = Math.max(1, parseInt(args[++i], 10));
  else if (args[i] === "--check-arrays") checkArrays = true;
  else if (args[i] === "--warm-up") warmUp = true;
  else if (args[i] === "--idle") {
    idleMs = Number(args[++i]);
    if (!(idleMs >= 0)) {
      console.error(`--idle needs a number of milliseconds >= 0, got ${args[i]}`);
      process.exit(2);
    }
  }
  else files.push(args[i]);
}
if (files.length === 0 || files.length % 2) {
  console.error("usage: node test_node.mjs [--repeat N] [--check-arrays] [--warm-up] [--idle MS] IN.ralhe OUT.ply [IN OUT ...]");
  process.exit(2);
}

function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; ++i) if (a[i] !== b[i]) return false;
  return true;
}

async function main() {
  const t0 = performance.now();
  const decoder = await createDecoder({ warmUp });
  console.log(JSON.stringify({ instantiateMs: performance.now() - t0 }));
  if (idleMs > 0) await new Promise((resolve) => setTimeout(resolve, idleMs));

  for (let f = 0; f < files.length; f += 2) {
    const [input, output] = [files[f], files[f + 1]];
    const bytes = new Uint8Array(readFileSync(input));
    const record = { input, status: "OK", message: "", ms: [] };
    try {
      let ply;
      for (let r = 0; r < repeat; ++r) {
        const t = performance.now();
        ply = decoder.decodeToPly(bytes);
        record.ms.push(performance.now() - t);
      }
      record.plyBytes = ply.length;
      if (checkArrays) {
        const g = decoder.decode(bytes);
        record.numPoints = g.numPoints;
        record.shDegree = g.shDegree;
        if (!equalBytes(g.ply(), ply)) {
          record.status = "ArrayMismatch";
          record.message = "decode() + ply() differs from decodeToPly()";
        }
      }
      if (output !== "-") writeFileSync(output, ply);
    } catch (e) {
      if (!e.status) throw e;  // not a decoder error: a bug here, let it fail loudly
      record.status = e.name;
      record.message = e.detail;
    }
    console.log(JSON.stringify(record));
  }
}

// A failure outside the decoder (a trap, a missing module): its stack, not the minified line Node.js
// would print for an uncaught error in the Emscripten module.
main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
