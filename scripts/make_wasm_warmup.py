"""Write the WebAssembly module's warm-up file (ralhe_me/decode/native/wasm/warmup.ralhe).

``createDecoder({ warmUp: true })`` decodes this small file three times before it resolves, so that the
engine has compiled the decoder's functions (its baseline code, and optimized code for the hot
loops once the engine's background compiler catches up) before the first real file arrives; see
the README's WebAssembly section for the figures. The file is the default scene's generator at
1,000 Gaussians (SH degree 3), coded with the fast preset: every stage of the decoder runs
(positions, covariances, latents, synthesis, the .ply writer), in about 5 ms natively.

    .venv/bin/python scripts/make_wasm_warmup.py [--out PATH]

Re-run it when the format changes; tests/test_native_wasm.py checks that the committed file still
decodes, to the same floats in the Python and native decoders.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "ralhe_me" / "decode" / "native" / "wasm" / "warmup.ralhe"
NUM_GAUSSIANS = 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"where to write it (default {DEFAULT_OUT})")
    args = p.parse_args(argv)

    from ralhe_me.config import load_preset
    from ralhe_me.default_scene import make_default_scene
    from ralhe_me.encode.encoder import encode_file
    from ralhe_me.gaussians import write_ply

    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.ply"
        write_ply(make_default_scene(NUM_GAUSSIANS, seed=0), str(scene))
        result = encode_file(str(scene), args.out, load_preset("fast"))
    print(f"wrote {args.out}: {len(result.data)} bytes, {len(result.reconstruction)} Gaussians")
    return 0


if __name__ == "__main__":
    sys.exit(main())
