// The build's self-check (wasm/build.sh): the module loads, and a bad file comes back as an error
// status with a message rather than a trap (C++ exceptions work in this build).  Exit 0 if so.
import { createDecoder, RalheDecodeError } from "./ralhe_decode.js";

const decoder = await createDecoder();
for (const bytes of [new TextEncoder().encode("not a .ralhe file"), new Uint8Array(0)]) {
  try {
    decoder.decodeToPly(bytes);
    console.error(`smoke test: ${bytes.length} bad bytes decoded without an error`);
    process.exit(1);
  } catch (e) {
    if (!(e instanceof RalheDecodeError)) {
      console.error(`smoke test: a bad file raised ${e} instead of a decoder error`);
      process.exit(1);
    }
  }
}
