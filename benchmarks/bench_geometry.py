"""Geometry coding figures: octree occupancy coder vs Draco, and covariance VQ sizes and errors.

    .venv/bin/python benchmarks/bench_geometry.py [--vq-sizes 256 1024 4096] [--study]

Positions: the four INRIA models voxelized at ``choose_depth`` and the two COLMAP point clouds
voxelized at depths 10..12.  Draco (``pip install DracoPy``, benchmark only) codes the integer
grid with quantization bits = depth, range 2^depth - 1 and origin 0, so that quantization is the
identity; its decode is checked to give the same voxel set.  Draco is run at level 10 (its
"max compression") and at every level 0..10, reporting the smallest.

Covariance: per model and codebook size, stream bytes (codebook + indices), bits per Gaussian,
fit/encode/decode times, and the parameter-space error of the decoded shapes: log-scale RMSE,
median angle between the original and decoded longest axes (elongated Gaussians), and the mean
relative Frobenius error of the covariance matrix.

``--study`` adds the measurements behind the design choices: occupancy context variants, and
the VQ clustering-space weights.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ralhe_me.gaussians import read_ply  # noqa: E402
from ralhe_me.geometry.covariance_vq import (  # noqa: E402
                                             VQConfig,
                                             decode_covariance,
                                             encode_covariance,
                                             fit_codebook,
                                             )
from ralhe_me.geometry.occupancy import OccupancyConfig, decode_positions, encode_positions  # noqa: E402
from ralhe_me.geometry.octree import VoxelGrid, choose_depth, morton_encode, voxelize  # noqa: E402

from benchmarks.shared_data import GAUSSIANS as MODELS, SHARED  # noqa: E402  (model paths are absolute)
CLOUDS = {"garden": "pointclouds_colmap/garden_colmap_input.ply", "truck": "pointclouds_colmap/truck_colmap_input.ply"}


def position_sets():
    """(name, coords [M, 3] int64 unique, depth) for every benchmark geometry."""
    from plyfile import PlyData

    for name, rel in MODELS.items():
        model = read_ply(SHARED / rel)
        depth = choose_depth(model.means)
        yield name, voxelize(model, depth).coords, depth
    for name, rel in CLOUDS.items():
        v = PlyData.read(str(SHARED / rel))["vertex"]
        xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
        for depth in (10, 11, 12):
            grid = VoxelGrid.bounding(xyz, depth)
            yield f"{name}@{depth}", np.unique(grid.quantize(xyz), axis=0), depth


def draco(coords: np.ndarray, depth: int, level: int):
    """(bytes, encode s, decode s, lossless?) of Draco's point-cloud coding on the integer grid."""
    import DracoPy

    t = time.perf_counter()
    data = DracoPy.encode(coords.astype(np.float32), quantization_bits=depth, compression_level=level,
                          quantization_range=float((1 << depth) - 1), quantization_origin=[0.0, 0.0, 0.0])
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    points = np.asarray(DracoPy.decode(data).points, dtype=np.float64)
    t_dec = time.perf_counter() - t
    r = np.rint(points).astype(np.int64)
    lossless = (len(r) == len(coords) and np.abs(points - r).max(initial=0) < 1e-3
                and np.array_equal(np.sort(morton_encode(r)), np.sort(morton_encode(coords))))
    return len(data), t_enc, t_dec, lossless


def bench_positions(study: bool) -> None:
    try:
        import DracoPy  # noqa: F401
        have_draco = True
    except ImportError:
        have_draco = False
        print("DracoPy not installed: pip install DracoPy for the comparison")
    encode_positions(np.array([[1, 2, 3]]), 4)  # warm up (imports CompressAI) before timing
    print("\n== positions: octree occupancy coder vs Draco (bits per point) ==")
    head = f"{'set':<12}{'depth':>6}{'points':>9}{'ours':>8}{'enc s':>7}{'dec s':>7}"
    head += f"{'draco10':>9}{'best':>8}{'@lvl':>5}{'enc s':>7}{'dec s':>7}{'lossless':>9}{'ours/best':>10}"
    print(head)
    for name, coords, depth in position_sets():
        m = len(coords)
        t = time.perf_counter()
        data = encode_positions(coords, depth)
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        back = decode_positions(data, depth)
        t_dec = time.perf_counter() - t
        assert np.array_equal(back, coords[np.argsort(morton_encode(coords))]), f"{name}: not lossless"
        ours = 8 * len(data) / m
        line = f"{name:<12}{depth:>6}{m:>9}{ours:>8.3f}{t_enc:>7.2f}{t_dec:>7.2f}"
        if have_draco:
            runs = {lvl: draco(coords, depth, lvl) for lvl in range(11)}
            best = min(runs, key=lambda lvl: runs[lvl][0])
            d10 = runs[10]
            line += f"{8 * d10[0] / m:>9.3f}{8 * runs[best][0] / m:>8.3f}{best:>5}{d10[1]:>7.2f}{d10[2]:>7.2f}"
            line += f"{str(all(r[3] for r in runs.values())):>9}{len(data) / runs[best][0]:>10.3f}"
        print(line, flush=True)
        if study:
            variants = {
                "no child-level neighbours": OccupancyConfig(child_neighbours=False),
                "no decay": OccupancyConfig(decay_shift=0),
                "decay 1/4": OccupancyConfig(decay_shift=2),
            }
            for label, cfg in variants.items():
                print(f"    {label:<28}{8 * len(encode_positions(coords, depth, cfg)) / m:>8.3f} bpp")


def _rotation(q: np.ndarray) -> np.ndarray:  # [M, 4] unit (w, x, y, z) -> [M, 3, 3]
    w, x, y, z = q.astype(np.float64).T
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], 1).reshape(-1, 3, 3)


def shape_errors(s: np.ndarray, q: np.ndarray, s2: np.ndarray, q2: np.ndarray) -> dict:
    """Parameter-space errors of decoded shapes (s2, q2) against the originals (s, q)."""
    r1 = _rotation(q / np.linalg.norm(q, axis=1, keepdims=True))
    r2 = _rotation(q2 / np.linalg.norm(q2, axis=1, keepdims=True))
    c1 = np.einsum("nij,nj,nkj->nik", r1, np.exp(2 * s.astype(np.float64)), r1)
    c2 = np.einsum("nij,nj,nkj->nik", r2, np.exp(2 * s2.astype(np.float64)), r2)
    frob = np.linalg.norm(c1 - c2, axis=(1, 2)) / np.linalg.norm(c1, axis=(1, 2))
    n = np.arange(len(s))
    a1, a2 = r1[n, :, np.argmax(s, 1)], r2[n, :, np.argmax(s2, 1)]
    angle = np.degrees(np.arccos(np.clip(np.abs((a1 * a2).sum(1)), 0, 1)))
    elongated = np.exp(s.max(1) - np.sort(s, 1)[:, 1]) > 2
    return {
        "logscale_rmse": float(np.sqrt(((s - s2) ** 2).mean())),
        "axis_deg_median": float(np.median(angle[elongated])) if elongated.any() else 0.0,
        "cov_rel_frob_mean": float(frob.mean()),
    }


def bench_covariance(sizes, study: bool) -> None:
    print("\n== covariance VQ: codebook + indices ==")
    print(f"{'model':<10}{'M':>8}{'K':>6}{'bytes':>9}{'cb bytes':>9}{'bits/G':>8}{'fit s':>7}{'enc s':>7}{'dec s':>7}"
          f"{'ls rmse':>9}{'axis deg':>9}{'cov err':>9}")
    for name, rel in MODELS.items():
        model = read_ply(SHARED / rel)
        vox = voxelize(model, choose_depth(model.means)).model
        s, q = vox.log_scales, vox.quats
        for k in sizes:
            t = time.perf_counter()
            cb = fit_codebook(s, q, k)
            t_fit = time.perf_counter() - t
            t = time.perf_counter()
            data = encode_covariance(s, q, cb)
            t_enc = time.perf_counter() - t
            t = time.perf_counter()
            s2, q2 = decode_covariance(data)
            t_dec = time.perf_counter() - t
            cb_bytes = len(cb.to_bytes())
            e = shape_errors(s, q, s2, q2)
            print(f"{name:<10}{len(s):>8}{cb.size:>6}{len(data):>9}{cb_bytes:>9}{8 * len(data) / len(s):>8.2f}"
                  f"{t_fit:>7.2f}{t_enc:>7.2f}{t_dec:>7.2f}{e['logscale_rmse']:>9.4f}{e['axis_deg_median']:>9.2f}"
                  f"{e['cov_rel_frob_mean']:>9.4f}", flush=True)
        if study:
            for label, cfg in {"rotation_weight 1, no floor": VQConfig(1.0, 0.0),
                               "rotation_weight 2, no floor": VQConfig(2.0, 0.0),
                               "rotation_weight 1, floor .02": VQConfig(1.0, 0.02),
                               "rotation_weight 2, floor .02 (default)": VQConfig(2.0, 0.02),
                               "rotation_weight 4, floor .02": VQConfig(4.0, 0.02),
                               "rotation_weight 2, floor .05": VQConfig(2.0, 0.05)}.items():
                cb = fit_codebook(s, q, 1024, config=cfg)
                e = shape_errors(s, q, *decode_covariance(encode_covariance(s, q, cb)))
                print(f"    K=1024 {label:<40}" + "  ".join(f"{k} {v:.4f}" for k, v in e.items()))
    # scale test: a synthetic 400k set from the largest model (copies with noise)
    model = read_ply(SHARED / MODELS["playbot"])
    vox = voxelize(model, choose_depth(model.means)).model
    rng = np.random.default_rng(0)
    reps = -(-400_000 // len(vox))
    s = np.concatenate([vox.log_scales] * reps)[:400_000]
    s = s + rng.normal(0, 0.02, s.shape).astype(np.float32)
    q = np.concatenate([vox.quats] * reps)[:400_000]
    for k in (4096, 8192):
        t = time.perf_counter()
        cb = fit_codebook(s, q, k)
        print(f"400k synthetic shapes, K={k}: fit {time.perf_counter() - t:.1f} s, "
              f"{8 * len(encode_covariance(s, q, cb)) / len(s):.2f} bits/Gaussian", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vq-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--study", action="store_true", help="also print the design-choice measurements")
    parser.add_argument("--skip-positions", action="store_true")
    parser.add_argument("--skip-covariance", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    if not args.skip_positions:
        bench_positions(args.study)
    if not args.skip_covariance:
        bench_covariance(args.vq_sizes, args.study)


if __name__ == "__main__":
    main()
