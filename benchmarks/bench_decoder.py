"""Speed of the grouped attribute decoder against a loop of MinkowskiEngine decoders.

17 attributes as the codec has them: 16 SH triplets (A = 16, d = 3) and the opacity
(A = 1, d = 1), default DecoderConfig (639 / 529 parameters). Clouds:

* playbot-dJ: the playbot LOD2 model (125k Gaussians) voxelized at depth J (real geometry:
  few occupied neighbours per voxel, as voxelized 3DGS models have);
* surface-N: N voxels of a closed bumpy surface (synthetic; dense 3x3 patches, ~14
  occupied neighbours per voxel, the costly case for the convolutions);
* sparse-N: N voxels of the same surface sampled about once per voxel (~3-4 neighbours).

For each cloud it prints the one-off set-up (neighbour map; first forward, which builds and
caches the pair plans), the grouped
forward (no autograd; also with the ``_decode_cpu`` extension hidden, i.e. its torch
reference), the inverse RAHT of the codec's 17 x 3 latent planes (native and torch),
forward+backward (sum of squares loss), and the same for 17
SparseAttributeDecoder modules looped (skipped above --me-max-points, where it takes
minutes). Wall time and process CPU time (all threads) are both printed: on a shared
machine the wall time depends on the other load.

    .venv/bin/python benchmarks/bench_decoder.py [--threads 2] [--clouds playbot-d10 surface-100000 ...]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ralhe_me.nn.grouped_decoder import GroupedSparseDecoder  # noqa: E402
from ralhe_me.nn.neighbors import NeighborMap  # noqa: E402
from ralhe_me.nn.sparse_decoder import DecoderConfig  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PLAYBOT = DATA / "gaussians" / "decoded_from_compressed" / "playbot_lod2_decoded_inria_order.ply"
SH, OPACITY = DecoderConfig(out_channels=3), DecoderConfig(out_channels=1)


def surface_cloud(n: int, samples_per_voxel: float, seed: int = 0) -> np.ndarray:
    """About n Morton-sorted voxels of a bumpy sphere, each hit by ~samples_per_voxel samples."""
    from ralhe_me.geometry.octree import morton_decode, morton_encode

    rng = np.random.default_rng(seed)
    u = rng.normal(size=(int(n * samples_per_voxel), 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    pts = 0.5 + 0.35 * u * (1.0 + 0.1 * np.sin(5.0 * u[:, :1]) * np.cos(3.0 * u[:, 1:2]))
    res = np.sqrt(n / (4.0 * np.pi * 0.35 ** 2))
    for _ in range(8):  # adjust the grid until about n voxels are occupied
        codes = np.unique(morton_encode(np.clip((pts * res).astype(np.int64), 0, (1 << 20) - 1)))
        res *= np.sqrt(n / len(codes))
    return morton_decode(codes)


def load_cloud(name: str) -> np.ndarray:
    kind, _, arg = name.partition("-")
    if kind == "playbot":
        from ralhe_me.gaussians import read_ply
        from ralhe_me.geometry.octree import voxelize

        return voxelize(read_ply(str(PLAYBOT)), int(arg.lstrip("d"))).coords
    if kind == "surface":
        return surface_cloud(int(arg), 20.0)
    if kind == "sparse":
        return surface_cloud(int(arg), 1.3)
    raise SystemExit(f"unknown cloud {name!r}")


def timed(fn, repeats: int):
    """Best wall and CPU seconds over ``repeats`` runs, after one warm-up run."""
    fn()
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - w), min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu


def bench_grouped(coords: np.ndarray, repeats: int):
    t0 = time.perf_counter()
    nm = NeighborMap.from_coords(coords)
    t_map = time.perf_counter() - t0
    torch.manual_seed(0)
    sh, op = GroupedSparseDecoder(16, SH), GroupedSparseDecoder(1, OPACITY)
    n = nm.num_points
    lat_sh = torch.randn(16, n, 7, requires_grad=True)
    lat_op = torch.randn(1, n, 7, requires_grad=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        sh(lat_sh, nm), op(lat_op, nm)  # builds and caches the pair plans
    t_plan = time.perf_counter() - t0

    def forward():
        with torch.no_grad():
            sh(lat_sh, nm), op(lat_op, nm)

    def forward_backward():
        loss = sh(lat_sh, nm).square().sum() + op(lat_op, nm).square().sum()
        loss.backward()

    pairs = nm.conv_map().num_pairs / n
    fwd = timed(forward, repeats)
    with torch_only():
        fwd_torch = timed(forward, repeats)
    return (nm, (sh, op, lat_sh, lat_op), t_map, t_plan, pairs, fwd, fwd_torch,
            timed(forward_backward, repeats))


@contextlib.contextmanager
def torch_only():
    """The decode path with the ``_decode_cpu`` extension hidden (its torch reference)."""
    import ralhe_me.nn.grouped_decoder as grouped_module
    import ralhe_me.nn.inverse_raht as inverse_module
    import ralhe_me.nn.neighbors as neighbors_module

    modules = (grouped_module, inverse_module, neighbors_module)
    saved = [m._native_module for m in modules]
    for m in modules:
        m._native_module = lambda: None
    try:
        yield
    finally:
        for m, f in zip(modules, saved):
            m._native_module = f


def bench_inverse_raht(coords: np.ndarray, repeats: int):
    """Inverse RAHT of the codec's 17 x 3 latent planes: (native, torch) best (wall, cpu)."""
    from ralhe_me.nn.inverse_raht import InverseRaht, native_available

    depth = int(np.max(coords)).bit_length()
    inv = InverseRaht.from_coords(coords - coords.min(axis=0), max(depth, 1))
    planes = [torch.randn(17, len(coords)).round() for _ in range(3)]
    native = timed(lambda: inv.columns(planes), repeats) if native_available() else (float("nan"),) * 2
    return native, timed(lambda: inv.columns(planes, native=False), repeats)


def bench_minkowski(coords: np.ndarray, grouped):
    """17 SparseAttributeDecoders with the grouped weights, looped: (forward wall, cpu),
    (forward+backward wall, cpu), forward outputs."""
    from ralhe_me.compat import import_minkowski

    me = import_minkowski()
    sh, op, lat_sh, lat_op = grouped
    decoders = sh.to_decoders() + op.to_decoders()
    latents = [lat_sh[i].detach() for i in range(16)] + [lat_op[0].detach()]
    bc = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32),
                    torch.as_tensor(coords, dtype=torch.int32)], dim=1)
    # A new coordinate manager sets the OpenMP thread count (os.cpu_count() by default).
    threads = torch.get_num_threads()
    manager = me.CoordinateManager(D=3, num_threads=threads)
    outs = []

    def run(backward: bool):
        for dec, lat in zip(decoders, latents):
            x = me.SparseTensor(lat.clone().requires_grad_(backward), coordinates=bc,
                                coordinate_manager=manager)
            if backward:
                dec(x).F.square().sum().backward()
            else:
                with torch.no_grad():
                    outs.append(dec(x).F)

    run(False)  # warm-up: the first pass builds and caches the kernel map
    outs.clear()
    times = []
    for backward in (False, True):
        torch.set_num_threads(threads)
        w, c = time.perf_counter(), time.process_time()
        run(backward)
        times.append((time.perf_counter() - w, time.process_time() - c))
    return times[0], times[1], outs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clouds", nargs="+",
                    default=["playbot-d10", "playbot-d9", "sparse-100000", "surface-100000",
                             "sparse-380000", "surface-380000"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--me-max-points", type=int, default=130000,
                    help="loop 17 MinkowskiEngine decoders only on clouds up to this size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}; A = 16 (d=3) + 1 (d=1); "
          f"params/decoder {SH.num_parameters()} / {OPACITY.num_parameters()}; times: best of "
          f"{args.repeats}, wall s (cpu s)")
    for name in args.clouds:
        torch.set_num_threads(args.threads)  # MinkowskiEngine resets it (see bench_minkowski)
        coords = load_cloud(name)
        nm, grouped, t_map, t_plan, pairs, fwd, fwd_torch, fb = bench_grouped(coords, args.repeats)
        raht_native, raht_torch = bench_inverse_raht(np.asarray(coords, dtype=np.int64), args.repeats)
        print(f"\n{name}: {nm.num_points} voxels, {pairs:.2f} occupied neighbours per voxel "
              f"(of 27, itself included)")
        print(f"  set-up: neighbour map {t_map:.2f} s, first forward with pair plans {t_plan:.2f} s (once per cloud)")
        print(f"  grouped  forward {fwd[0]:7.3f} ({fwd[1]:.3f})   forward+backward {fb[0]:7.3f} ({fb[1]:.3f})")
        print(f"  grouped  forward, extension hidden {fwd_torch[0]:7.3f} ({fwd_torch[1]:.3f})")
        print(f"  inverse RAHT of 17 x 3 planes: native {raht_native[0]:.3f} ({raht_native[1]:.3f}), "
              f"torch {raht_torch[0]:.3f} ({raht_torch[1]:.3f})")
        if nm.num_points <= args.me_max_points:
            (w, c), (wb, cb), outs = bench_minkowski(coords, grouped)
            torch.set_num_threads(args.threads)
            sh, op, lat_sh, lat_op = grouped
            with torch.no_grad():
                diff = max(float((outs[i] - sh(lat_sh, nm)[i]).abs().max()) for i in range(16))
                diff = max(diff, float((outs[16] - op(lat_op, nm)[0]).abs().max()))
            print(f"  17 x ME  forward {w:7.3f} ({c:.3f})   forward+backward {wb:7.3f} ({cb:.3f})"
                  f"   max |grouped - ME| = {diff:.1e}")
            print(f"  speed-up forward x{w / fwd[0]:.0f}, forward+backward x{wb / fb[0]:.0f} (wall)")


if __name__ == "__main__":
    main()
