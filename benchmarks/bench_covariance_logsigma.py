"""Study: covariances coded as matrix logarithms with causal spatial prediction, against the
codec's covariance code, in bytes and rendering PSNR.

    .venv/bin/python benchmarks/bench_covariance_logsigma.py [--model donut] [--lambda 2e-6]
        [--codec-steps 0.05,0.025,0.0125] [--logsigma-steps 0.1,0.05,0.025]

Why: at the high geometry tiers the covariance section is the largest part of a file (the
donut's tier 4: 249 kB of 542 kB), and the peers' table shows that the geometry alone keeps
several cells above 0.5x. This measures one candidate for a smaller code before anyone builds it.

What is measured, on the voxelized model of the tier that ``--lambda`` picks (other attributes
exact; 8 orbit views at 400 px against renders of the input, as ``ralhe eval``):

- the codec's code (``code_covariance`` with uniform steps, the codebook size chosen by bytes):
  the section's real size;
- log(Sigma) = R diag(2 log s) R^T as 6 numbers isometric with the Frobenius norm (the 3
  diagonal entries and sqrt(2) times the 3 above it; canonical: no ambiguity between axis order
  and rotation), quantized at one uniform step in closed loop, in Morton order, each point
  predicted by the mean of the decoded values of up to ``--neighbours`` of its 32 nearest
  Gaussians that come earlier in that order; decoded back through a symmetric
  eigendecomposition. Its bytes are the empirical entropy of the symbols of each component
  (static, table not counted): an estimate, not a coded stream. The same symbols without
  prediction are printed beside it.

The prediction's decoder would need the same neighbour sets (here from a k-d tree on the
decoded positions) and a bit-exact eigendecomposition in every decoder; neither is built.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shared_data import model_path  # noqa: E402

SQRT2 = np.sqrt(2.0)


def rotation_matrices(quats: np.ndarray) -> np.ndarray:  # quats [N, 4] (w, x, y, z), any norm -> [N, 3, 3]
    """The renderer's rotations (``render.projection.quat_to_rotmat``), in float64."""
    import torch

    from ralhe_me.render.projection import quat_to_rotmat

    return quat_to_rotmat(torch.from_numpy(np.asarray(quats, np.float64))).numpy()


def quaternions(rot: np.ndarray) -> np.ndarray:  # rot [N, 3, 3] proper rotations -> [N, 4] (w, x, y, z)
    """Shepperd's method: divide by the largest of the four candidate components."""
    m = rot
    cand = np.stack([1 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                     1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], 1)
    pick = np.argmax(cand, axis=1)
    s = 2.0 * np.sqrt(np.maximum(cand[np.arange(len(m)), pick], 1e-300))  # 4 * the picked component
    a, b, c = m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]
    d, e, f = m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1]
    rows = {0: (s / 4, a / s, b / s, c / s), 1: (a / s, s / 4, d / s, e / s),
            2: (b / s, d / s, s / 4, f / s), 3: (c / s, e / s, f / s, s / 4)}
    out = np.empty((len(m), 4))
    for k, comps in rows.items():
        sel = pick == k
        out[sel] = np.stack([comp[sel] for comp in comps], 1)
    return out


def log_sigma_features(log_scales: np.ndarray, quats: np.ndarray) -> np.ndarray:  # -> [N, 6]
    rot = rotation_matrices(quats)
    mat = np.einsum("nij,nj,nkj->nik", rot, 2.0 * log_scales.astype(np.float64), rot)
    return np.stack([mat[:, 0, 0], mat[:, 1, 1], mat[:, 2, 2],
                     SQRT2 * mat[:, 0, 1], SQRT2 * mat[:, 0, 2], SQRT2 * mat[:, 1, 2]], 1)


def shapes_from_features(feat: np.ndarray):  # [N, 6] -> (log-scales [N, 3], quats [N, 4])
    mat = np.zeros((len(feat), 3, 3))
    mat[:, 0, 0], mat[:, 1, 1], mat[:, 2, 2] = feat[:, 0], feat[:, 1], feat[:, 2]
    mat[:, 0, 1] = mat[:, 1, 0] = feat[:, 3] / SQRT2
    mat[:, 0, 2] = mat[:, 2, 0] = feat[:, 4] / SQRT2
    mat[:, 1, 2] = mat[:, 2, 1] = feat[:, 5] / SQRT2
    eigenvalues, axes = np.linalg.eigh(mat)
    axes[np.linalg.det(axes) < 0, :, 2] *= -1.0  # a proper rotation
    return eigenvalues / 2.0, quaternions(axes)


def entropy_bytes(symbols: np.ndarray) -> float:  # [N, K] int -> bytes, one static histogram per column
    total = 0.0
    for column in symbols.T:
        _, counts = np.unique(column, return_counts=True)
        total -= float((counts * np.log2(counts / counts.sum())).sum())
    return total / 8.0


def causal_neighbours(means: np.ndarray, rank: np.ndarray, k: int, search: int = 32):
    """Per point, up to ``k`` of its ``search`` nearest points that come earlier in ``rank``."""
    from scipy.spatial import cKDTree

    _, near = cKDTree(means).query(means, min(search + 1, len(means)))
    near = near.reshape(len(means), -1)[:, 1:]
    earlier = rank[near] < rank[:, None]
    return [row[ok][:k] for row, ok in zip(near, earlier)]


def predictive_code(feat: np.ndarray, order: np.ndarray, neighbours, step: float):
    """Closed loop: (decoded features [N, 6], symbols [N, 6] int)."""
    decoded = np.zeros_like(feat)
    symbols = np.zeros(feat.shape, np.int64)
    for n in order:
        near = neighbours[n]
        prediction = decoded[near].mean(axis=0) if len(near) else 0.0
        k = np.round((feat[n] - prediction) / step)
        symbols[n] = k
        decoded[n] = prediction + k * step
    return decoded, symbols


def floats(text: str):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (v > 0 and np.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"steps must be finite and > 0, got {text!r}")
    return values


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="donut", help="donut, kacytran, guitar, playbot or a .ply path (default donut)")
    ap.add_argument("--lambda", dest="lmbda", type=float, default=2e-6,
                    help="picks the geometry tier, hence the depth (default 2e-6: tier 4)")
    ap.add_argument("--codec-steps", type=floats, default=[0.05, 0.025, 0.0125],
                    help="the codec's uniform residual log-scale steps (default 0.05,0.025,0.0125)")
    ap.add_argument("--logsigma-steps", type=floats, default=[0.1, 0.05, 0.025],
                    help="log(Sigma) steps (default 0.1,0.05,0.025)")
    ap.add_argument("--neighbours", type=int, default=8, help="earlier neighbours averaged (default 8)")
    args = ap.parse_args(argv)
    if args.neighbours < 1:
        ap.error(f"--neighbours must be >= 1, got {args.neighbours}")

    import torch

    from ralhe_me.config import load_preset
    from ralhe_me.encode.encoder import code_covariance, prepare
    from ralhe_me.encode.operating_point import geometry_tier
    from ralhe_me.eval.evaluation import orbit_views, score_views
    from ralhe_me.gaussians import read_ply
    from ralhe_me.geometry.covariance_code import encode_shapes
    from ralhe_me.geometry.octree import morton_encode

    torch.set_num_threads(2)
    original = read_ply(model_path(args.model))
    config = load_preset("quality")
    config.lmbda = args.lmbda
    t0 = time.perf_counter()
    vox = prepare(original, config)
    model = vox.model
    views = orbit_views(original, 8, (400, 400))

    def psnr(log_scales, quats) -> float:
        shaped = dataclasses.replace(model, log_scales=np.asarray(log_scales, np.float32),
                                     quats=np.asarray(quats, np.float32))
        return score_views(shaped, views).psnr

    print(f"{args.model}: {len(model)} voxels at depth {vox.depth} ({geometry_tier(config).describe()}), "
          f"exact shapes {score_views(model, views).psnr:.2f} dB ({time.perf_counter() - t0:.0f} s)", flush=True)
    for step in args.codec_steps:
        code = code_covariance(model, dataclasses.replace(config, shape_sensitivity_views=0, covariance_step=step))
        print(f"codec, step {step:g} (codebook {code.codebook.size}): {len(encode_shapes(code)):,} B, "
              f"{psnr(*code.shapes()):.2f} dB", flush=True)

    feat = log_sigma_features(model.log_scales, model.quats)
    print(f"log(Sigma) round trip, unquantized: {psnr(*shapes_from_features(feat)):.2f} dB", flush=True)
    order = np.argsort(morton_encode(vox.coords), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    neighbours = causal_neighbours(model.means, rank, args.neighbours)
    for step in args.logsigma_steps:
        decoded, symbols = predictive_code(feat, order, neighbours, step)
        plain = entropy_bytes(np.round(feat / step).astype(np.int64))
        print(f"log(Sigma), step {step:g}: predicted {entropy_bytes(symbols):,.0f} B (not predicted "
              f"{plain:,.0f} B), {psnr(*shapes_from_features(decoded)):.2f} dB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
