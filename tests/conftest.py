"""Shared fixtures: paths to the real data beside the project (skipped where missing)."""
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED = Path(os.environ.get("RALHE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
GAUSSIANS = {
    "donut": SHARED / "gaussians/real_float32/gshairlod_donut_mipsplat_fused.ply",
    "kacytran": SHARED / "gaussians/real_float32/kacytran_try_iter7000_point_cloud.ply",
    "guitar": SHARED / "gaussians/decoded_from_compressed/guitar_decoded_inria_order.ply",
    "playbot": SHARED / "gaussians/decoded_from_compressed/playbot_lod2_decoded_inria_order.ply",
}
MIC = SHARED / "nerf_synthetic/mic"


def shared_path(path: Path) -> Path:
    """``path`` if the shared data is present, else skip the test."""
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path
