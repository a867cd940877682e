"""Shared fixtures: paths to the real data beside the project (skipped where missing)."""
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

from benchmarks.shared_data import GAUSSIANS, MIC, SHARED  # noqa: E402,F401  (one table of the data)


def voxel_blob(n: int, depth: int, seed: int, spread: float = 12.0):
    """Unique Morton-sorted voxels [M, 3] int64 of a Gaussian blob (standard deviation
    2^depth / spread, so many voxels have neighbours)."""
    import numpy as np

    from ralhe_me.geometry.octree import morton_encode

    rng = np.random.default_rng(seed)
    side = 1 << depth
    pts = np.clip(rng.normal(side / 2, side / spread, (n, 3)).round(), 0, side - 1).astype(np.int64)
    pts = np.unique(pts, axis=0)
    return pts[np.argsort(morton_encode(pts))]


def shared_path(path: Path) -> Path:
    """``path`` if the shared data is present, else skip the test."""
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


def small_codec_config():
    """The fast preset cut to a few training steps, a small covariance codebook and a mid rate:
    what the whole-codec tests encode their small scenes with."""
    from ralhe_me.config import load_preset

    config = load_preset("fast")
    config.training.steps = 15
    config.covariance_codebook = 64
    config.lmbda = 2e-3
    return config
