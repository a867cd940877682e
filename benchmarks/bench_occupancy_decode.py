"""Occupancy decoding time: the numpy reference loop vs the native loop (geometry/csrc/occupancy.cpp).

    .venv/bin/python benchmarks/bench_occupancy_decode.py [--models donut guitar] [--repeats 7]

Clouds: the named INRIA models voxelized at ``choose_depth`` (skipped where the shared data is
missing) and the generated default scene (50k Gaussians).  Per cloud: points, depth, coded bits,
stream bytes, and the median (and min) seconds of ``decode_positions(..., with_neighbours=True)``
over the repeats, on one thread, each path checked to give the same points and neighbour rows.
The machine is shared: the load average is printed beside the figures.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ralhe_me.default_scene import make_default_scene  # noqa: E402
from ralhe_me.entropy.categorical import read_varint  # noqa: E402
from ralhe_me.gaussians import read_ply  # noqa: E402
from ralhe_me.geometry.occupancy import decode_positions, encode_positions, native_available  # noqa: E402
from ralhe_me.geometry.octree import choose_depth, voxelize  # noqa: E402

from benchmarks.shared_data import GAUSSIANS  # noqa: E402


def clouds(names):
    """(name, coords [M, 3] int64, depth) per benchmark cloud."""
    for name in names:
        if not GAUSSIANS[name].is_file():
            print(f"{name}: shared data missing, skipped")
            continue
        model = read_ply(GAUSSIANS[name])
        depth = choose_depth(model.means)
        yield name, voxelize(model, depth).coords, depth
    model = make_default_scene(50_000)
    depth = choose_depth(model.means)
    yield "default_scene", voxelize(model, depth).coords, depth


def timed(data: bytes, depth: int, native: bool, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = decode_positions(data, depth, with_neighbours=True, native=native)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times)), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["donut"], choices=sorted(GAUSSIANS))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    if not native_available():
        raise SystemExit("the native decoder is not built: .venv/bin/python setup.py build_ext --inplace")
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 shared cores)")
    print(f"{'cloud':>14} {'points':>7} {'depth':>5} {'bits':>8} {'bytes':>7} "
          f"{'python s (min)':>16} {'native s (min)':>16} {'speed-up':>8}")
    for name, coords, depth in clouds(args.models):
        data = encode_positions(coords, depth)
        _, pos = read_varint(data, 1)
        num_bits, _ = read_varint(data, pos)
        decode_positions(data, depth, native=True)  # warm up (loads CompressAI's extension)
        py_med, py_min, ref = timed(data, depth, False, args.repeats)
        nat_med, nat_min, out = timed(data, depth, True, args.repeats)
        for a, b in zip(out, ref):
            np.testing.assert_array_equal(a, b)
        print(f"{name:>14} {len(coords):>7} {depth:>5} {num_bits:>8} {len(data):>7} "
              f"{py_med:>8.4f} ({py_min:.4f}) {nat_med:>8.4f} ({nat_min:.4f}) {py_med / nat_med:>7.1f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
