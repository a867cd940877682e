"""Whole-process decode time and peak memory of the native ``ralhe-decode`` command, beside
``ralhe decode`` (Python) and splat-transform's decode of the same model's SPZ file.

Every figure is one whole process, as a user or a viewer's build step would run it: start, read
the file, decode, write the ``.ply``, exit.  Wall time is the median of ``--repeat`` runs; peak
memory is the largest resident set of those runs (``wait4``'s ``ru_maxrss``).

    .venv/bin/python benchmarks/bench_native_decode.py FILE.ralhe [FILE.ralhe ...] \\
        [--spz-from MODEL.ply] [--repeat 5] [--python-repeat 3]

``--spz-from`` codes MODEL.ply to SPZ with splat-transform (cached beside the first file) and
times splat-transform's decode of it back to .ply (Node.js; skipped with one line when absent).
The issue's goals: the donut file decoded >= 4x faster than that and in under 0.1 s, under
100 MB peak; 500k Gaussians in under 1 s on one thread (the command is single-threaded).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_measured(cmd: Sequence[str], env: Optional[dict] = None) -> Tuple[float, float]:
    """(wall seconds, peak resident MiB) of one whole process; raises on a non-zero exit."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {err.strip()[-400:]}")
    return wall, usage.ru_maxrss / 1024.0  # Linux: KiB


def measure(cmd: Sequence[str], repeat: int, env: Optional[dict] = None) -> Tuple[float, float]:
    runs = [run_measured(cmd, env) for _ in range(repeat)]
    return statistics.median(w for w, _ in runs), max(m for _, m in runs)


def find_native() -> Optional[str]:
    for cand in (ROOT / ".venv" / "bin" / "ralhe-decode", ROOT / "ralhe_me" / "decode" / "native" / "build" / "ralhe-decode"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which("ralhe-decode")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help=".ralhe files to decode")
    p.add_argument("--repeat", type=int, default=5, help="runs per native figure (median; default 5)")
    p.add_argument("--python-repeat", type=int, default=3, help="runs per `ralhe decode` figure (0: skip)")
    p.add_argument("--spz-from", help="model .ply whose SPZ decode (splat-transform) is timed beside")
    p.add_argument("--native", help="the ralhe-decode command (default: the venv's, then the build's)")
    args = p.parse_args(argv)

    native = args.native or find_native()
    if native is None:
        print("ralhe-decode is not built: run `bash scripts/build_native.sh` (or scripts/setup.sh)")
        return 2
    env = dict(os.environ, OMP_NUM_THREADS="1")
    work = Path(tempfile.mkdtemp(prefix="bench_native_"))
    rows = []
    try:
        for f in args.files:
            n = _num_points(f)
            wall, mem = measure([native, f, str(work / "out.ply")], args.repeat, env)
            row = {"file": Path(f).name, "bytes": os.path.getsize(f), "points": n, "native_s": wall, "native_mib": mem}
            if args.python_repeat:
                ralhe = str(ROOT / ".venv" / "bin" / "ralhe")
                row["python_s"], row["python_mib"] = measure([ralhe, "decode", f, str(work / "py.ply")],
                                                             args.python_repeat, env)
            rows.append(row)
        spz = _spz_figures(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"native command: {native}")
    print(f"{'file':28s} {'bytes':>10s} {'points':>9s} {'native s':>9s} {'MiB':>7s} {'s/100k':>7s} "
          f"{'python s':>9s} {'MiB':>7s} {'speed-up':>8s}")
    for r in rows:
        py = f"{r['python_s']:9.3f} {r['python_mib']:7.1f} {r['python_s'] / r['native_s']:7.1f}x" \
            if "python_s" in r else f"{'-':>9s} {'-':>7s} {'-':>8s}"
        print(f"{r['file']:28s} {r['bytes']:10d} {r['points']:9d} {r['native_s']:9.3f} {r['native_mib']:7.1f} "
              f"{r['native_s'] / max(r['points'], 1) * 1e5:7.3f} {py}")
    for r in rows:
        if r["points"]:
            print(f"{r['file']}: {r['native_s'] / r['points'] * 5e5:.3f} s per 500k Gaussians (one thread)")
    if spz is not None:
        spz_bytes, spz_s, spz_mib = spz
        print(f"splat-transform SPZ decode of {Path(args.spz_from).name} ({spz_bytes} B): {spz_s:.3f} s, {spz_mib:.1f} MiB")
        first = rows[0]
        print(f"{first['file']}: native is {spz_s / first['native_s']:.1f}x faster than the SPZ decode "
              f"(goal >= 4x and < 0.1 s), peak {first['native_mib']:.1f} MiB (goal < 100 MB)")
    return 0


def _num_points(path: str) -> int:
    from ralhe_me.decode.bitstream import unpack

    with open(path, "rb") as fh:
        return int(unpack(fh.read()).header["num_points"])


def _spz_figures(args, work: Path):
    """(SPZ bytes, decode seconds, peak MiB) of splat-transform, or None with a line saying why."""
    if not args.spz_from:
        return None
    from ralhe_me.eval.peers import PeerError, find_splat_transform

    try:
        tool = find_splat_transform()
    except PeerError as exc:
        print(f"SPZ comparison skipped: {exc}")
        return None
    spz = Path(args.files[0]).with_suffix(".spz")
    if not spz.is_file():
        subprocess.run(tool.command("-g", "cpu", "-w", "-q", str(args.spz_from), str(spz)), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall, mem = measure(tool.command("-g", "cpu", "-w", "-q", str(spz), str(work / "spz.ply")), args.repeat)
    return os.path.getsize(spz), wall, mem


if __name__ == "__main__":
    sys.exit(main())
