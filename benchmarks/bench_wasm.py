"""Decode time of the WebAssembly build (Node.js) beside the native ``ralhe-decode`` command, and
a headless-Chromium screenshot of the web viewer (web/) showing a decoded file.

Per file: the native command's whole process (start, read, decode, write the .ply, exit), the
same through Node.js (``node wasm/test_node.mjs IN OUT.ply``: start, compile and instantiate the
module, decode, write: "cold"), and the decode alone in a warm Node.js process (file bytes to
.ply bytes in memory, after one warm-up decode: "warm"), and the first decode of a process whose
decoder was made with ``createDecoder({ warmUp: true })`` and then left idle ``--warm-up-idle`` ms,
as a viewer's is while its scene downloads ("warmed"); medians of ``--repeat`` runs, and the
ratios to native (the goal: WebAssembly within 2x of native).  Checks the .ply bytes are equal.

    .venv/bin/python benchmarks/bench_wasm.py FILE.ralhe [FILE.ralhe ...] [--repeat 5] \\
        [--screenshot outputs/web_view.png] [--screenshot-file FILE.ralhe] [--no-screenshot] \\
        [--node-flags=--v8-pool-size=1] [--warm-up-idle 300]

The screenshot serves web/ (web/serve.mjs), opens ``?src=`` the first file (or
``--screenshot-file``) in headless Chromium with software WebGL (web/screenshot.mjs,
playwright-core from web/node_modules) and prints whether the scene's canvas is non-blank (pixel
variance).  Needs the WebAssembly build (ralhe_me/decode/native/wasm/build.sh) and, for the
screenshot, ``npm install`` in web/ and Chromium (scripts/setup_wasm.sh installs all three);
what is missing is skipped with one line.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "ralhe_me" / "decode" / "native"
WASM_BUILD = NATIVE / "build" / "wasm"
DRIVER = NATIVE / "wasm" / "test_node.mjs"
WEB = ROOT / "web"
# Pixel standard deviation (0-255, over the viewer's area) above which the canvas counts as
# showing something: a blank clear colour is 0, a rendered scene tens.
NONBLANK_STD = 4.0


def run_timed(cmd: Sequence[str]) -> Tuple[float, subprocess.CompletedProcess]:
    """Seconds of one whole process and its output; raises with its stderr on a non-zero exit."""
    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return seconds, proc


def wall(cmd: Sequence[str]) -> float:
    """Seconds of one whole process."""
    return run_timed(cmd)[0]


def native_decode_seconds(timing: str) -> float:
    """The decode time `ralhe-decode --timing` reports (on stderr): its total less reading the
    file and writing the .ply (the .ply's bytes are made in the write stage)."""
    stages = {}
    for line in timing.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "s":
            stages[parts[0]] = float(parts[1])
    return stages["total"] - stages.get("read", 0.0) - stages.get("write", 0.0)


def first_decode_seconds(stdout: str) -> float:
    """The decode time test_node.mjs reports for its (only) file."""
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return next(r for r in records if "input" in r)["ms"][0] / 1000


def node_records(node: Sequence[str], args: Sequence[str]) -> List[dict]:
    """The JSON lines of one test_node.mjs run (``node``: the command and its flags)."""
    proc = subprocess.run([*node, str(DRIVER), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"test_node.mjs failed: {proc.stderr.strip()[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def find_native(explicit: Optional[str]) -> Optional[str]:
    if explicit:
        return explicit
    for candidate in (NATIVE / "build" / "ralhe-decode", Path(sys.prefix) / "bin" / "ralhe-decode"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("ralhe-decode")


def bench_file(path: Path, node: Sequence[str], native: Optional[str], repeat: int, tmp: Path,
               warm_up_idle_ms: float = 300.0) -> dict:
    row = {"file": path.name, "bytes": path.stat().st_size}
    wasm_ply, native_ply = tmp / "wasm.ply", tmp / "native.ply"
    # native and cold runs alternate: this machine's speed drifts by 20% over minutes, and the
    # ratio of two medians taken minutes apart would carry that drift
    # (with an empty Node.js process: its start alone, the part of "cold" no module can change)
    native_s: List[float] = []
    native_decode_s: List[float] = []
    cold_s: List[float] = []
    first_s: List[float] = []
    start_s: List[float] = []
    warmed_s: List[float] = []
    for _ in range(repeat):
        if native:
            seconds, proc = run_timed([native, "--timing", str(path), str(native_ply)])
            native_s.append(seconds)
            native_decode_s.append(native_decode_seconds(proc.stderr))
        seconds, proc = run_timed([*node, str(DRIVER), str(path), str(wasm_ply)])
        cold_s.append(seconds)
        first_s.append(first_decode_seconds(proc.stdout))
        start_s.append(wall([*node, "-e", ""]))
        _, proc = run_timed([*node, str(DRIVER), "--warm-up", "--idle", f"{warm_up_idle_ms:g}", str(path), "-"])
        warmed_s.append(first_decode_seconds(proc.stdout))
    if native:
        row["native"] = statistics.median(native_s)
        row["native_decode"] = statistics.median(native_decode_s)
    row["cold"] = statistics.median(cold_s)
    row["first"] = statistics.median(first_s)
    row["warmed"] = statistics.median(warmed_s)
    row["node_start"] = statistics.median(start_s)
    # the cold process less an empty Node.js process started right after it: what the module,
    # the driver and the decode add to Node.js's own start
    row["module"] = statistics.median(c - s for c, s in zip(cold_s, start_s))
    records = node_records(node, ["--repeat", str(repeat + 1), "--check-arrays", str(path), "-"])
    record = next(r for r in records if "input" in r)
    if record["status"] != "OK":
        raise RuntimeError(f"{path.name}: {record['status']}: {record['message']}")
    row["warm"] = statistics.median(record["ms"][1:]) / 1000
    row["points"] = record.get("numPoints")
    if native:
        row["identical"] = wasm_ply.read_bytes() == native_ply.read_bytes()
    return row


def pixel_std(png: Path, box: Optional[dict]) -> float:
    """Standard deviation of the grey levels inside ``box`` (CSS pixels) of a screenshot."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    if box:
        y0, x0 = int(box["y"]), int(box["x"])
        img = img[y0: y0 + int(box["height"]), x0: x0 + int(box["width"])]
    return float(img.std()) if img.size else 0.0


def screenshot(node: str, file: Path, out: Path, timeout: float) -> None:
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    missing = [what for what, ok in [
        ("web/node_modules (npm install in web/, or scripts/setup_wasm.sh)",
         (WEB / "node_modules" / "playwright-core").is_dir() and (WEB / "node_modules" / "three").is_dir()),
        ("chromium (apt-get install chromium)", chromium is not None)] if not ok]
    if missing:
        print(f"screenshot skipped: no {' and no '.join(missing)}")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([node, str(WEB / "serve.mjs"), "--port", "0", "--data", str(file.parent)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline().strip()  # "serving http://127.0.0.1:PORT/"
        if not line.startswith("serving "):
            print(f"screenshot skipped: the web server did not start ({line})")
            return
        url = f"{line.split(' ', 1)[1]}?src=/data/{file.name}"
        proc = subprocess.run([node, str(WEB / "screenshot.mjs"), "--url", url, "--out", str(out),
                               "--chromium", chromium, "--timeout", str(timeout)],
                              capture_output=True, text=True, timeout=timeout + 120)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if not lines:
            print(f"screenshot failed: {proc.stderr.strip()[-1500:]}")
            return
        result = json.loads(lines[-1])
        if result.get("state") != "shown":
            print(f"screenshot: the page did not show the scene: {result.get('state')} "
                  f"{result.get('error') or ''} {result.get('consoleErrors') or ''}")
        std = pixel_std(out, result.get("viewerBox")) if out.exists() else 0.0
        verdict = "non-blank" if std > NONBLANK_STD else "BLANK"
        decode = f"{result['decodeMs']:.0f} ms" if result.get("decodeMs") is not None else "n/a"
        print(f"screenshot {out}: canvas {verdict} (pixel std {std:.1f}); page: {result.get('status')}; "
              f"browser WebAssembly decode + .ply {decode}")
    finally:
        server.terminate()
        server.wait(timeout=10)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help=".ralhe files to decode")
    p.add_argument("--repeat", type=int, default=5, help="runs per figure (median; default 5)")
    p.add_argument("--native", help="the ralhe-decode command (default: the build's, then the venv's, then PATH)")
    p.add_argument("--screenshot", default=str(ROOT / "outputs" / "web_view.png"), help="where to save it")
    p.add_argument("--screenshot-file", help="the file the viewer shows (default: the first)")
    p.add_argument("--no-screenshot", action="store_true")
    p.add_argument("--timeout", type=float, default=120, help="seconds the page may take to show the scene")
    p.add_argument("--warm-up-idle", type=float, default=300.0,
                   help="ms the warmed decoder waits before its first file (default 300: a download)")
    p.add_argument("--node-flags", default="",
                   help="flags for every Node.js process timed, e.g. '--v8-pool-size=1' (one V8 worker "
                        "thread: on 2 cores the default 4 compile optimized code beside the decode)")
    args = p.parse_args(argv)
    if args.repeat < 1 or not args.warm_up_idle >= 0:
        p.error(f"--repeat must be >= 1 and --warm-up-idle >= 0, got {args.repeat} and {args.warm_up_idle:g}")

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        print("skipped: Node.js is not installed (scripts/setup_wasm.sh)")
        return 0
    if not (WASM_BUILD / "ralhe_decode.wasm").is_file():
        print("skipped: no WebAssembly build (bash ralhe_me/decode/native/wasm/build.sh)")
        return 0
    files = [Path(f).resolve() for f in args.files]
    native = find_native(args.native)
    eh = (WASM_BUILD / "exceptions").read_text().strip() if (WASM_BUILD / "exceptions").is_file() else "?"
    print(f"WebAssembly: {WASM_BUILD / 'ralhe_decode.wasm'} ({(WASM_BUILD / 'ralhe_decode.wasm').stat().st_size:,} bytes, "
          f"{eh} exceptions), Node.js {subprocess.run([node, '--version'], capture_output=True, text=True).stdout.strip()}"
          f"{' ' + args.node_flags if args.node_flags else ''}")
    print(f"native: {native or 'not found (make -C ralhe_me/decode/native): WebAssembly times only'}")
    print(f"median of {args.repeat}; native = a whole `ralhe-decode IN OUT.ply` process (decode: its decode "
          "alone); cold = a whole `node test_node.mjs IN OUT.ply` process; first = its decode alone (the "
          "module's first, file bytes to .ply bytes; x: to native decode); node = an empty `node -e ''` "
          "process; cold-node = cold less node, run by run (what the module adds to Node.js's start; x: to "
          "native); warm = one decode to .ply bytes in a warm process; warmed = the first decode after "
          f"createDecoder({{ warmUp: true }}) and {args.warm_up_idle:g} ms idle (x: to native decode)")
    print(f"{'file':<28} {'points':>9} {'native s':>9} {'decode s':>9} {'cold s':>7} {'x':>5} {'first s':>8} "
          f"{'x':>5} {'node s':>7} {'cold-node s':>11} {'x':>5} {'warm s':>7} {'x':>5} {'warmed s':>8} {'x':>5}  same .ply")
    worst = {"cold": 0.0, "first": 0.0, "module": 0.0, "warm": 0.0, "warmed": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            row = bench_file(path, [node, *shlex.split(args.node_flags)], native, args.repeat, Path(tmp),
                             args.warm_up_idle)
            # first against the native decode alone (its .ply bytes made in its write stage, not
            # counted: the comparison leans against WebAssembly), the others against the process
            ratio = {k: row[k] / row["native_decode" if k in ("first", "warmed") else "native"] if "native" in row else None
                     for k in worst}
            for k, r in ratio.items():
                if r is not None:
                    worst[k] = max(worst[k], r)
            fmt = lambda r: f"{r:5.2f}" if r is not None else f"{'-':>5}"  # noqa: E731
            print(f"{row['file']:<28} {row['points'] or '?':>9} {row.get('native', float('nan')):9.3f} "
                  f"{row.get('native_decode', float('nan')):9.3f} {row['cold']:7.3f} {fmt(ratio['cold'])} {row['first']:8.3f} {fmt(ratio['first'])} "
                  f"{row['node_start']:7.3f} {row['module']:11.3f} {fmt(ratio['module'])} {row['warm']:7.3f} "
                  f"{fmt(ratio['warm'])} {row['warmed']:8.3f} {fmt(ratio['warmed'])}  "
                  f"{ {True: 'yes', False: 'NO', None: '-'}[row.get('identical')] }")
    if native:
        print("worst ratio to native (goal <= 2x): " + ", ".join(
            f"{'cold-node' if k == 'module' else k} {v:.2f}x ({'met' if v <= 2 else 'not met'})"
            for k, v in worst.items()))
    if not args.no_screenshot:
        shown = Path(args.screenshot_file).resolve() if args.screenshot_file else files[0]
        screenshot(node, shown, Path(args.screenshot), args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
