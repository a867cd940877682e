"""The real models and datasets beside the project (``../shared/data``; see its PROVENANCE.md),
named once for the benchmarks and the tests. ``RALHE_SHARED_DATA`` points elsewhere."""
from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(os.environ.get("RALHE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
GAUSSIANS = {
    "donut": SHARED / "gaussians/real_float32/gshairlod_donut_mipsplat_fused.ply",  # 45k, SH0
    "kacytran": SHARED / "gaussians/real_float32/kacytran_try_iter7000_point_cloud.ply",  # 9k, SH3
    "guitar": SHARED / "gaussians/decoded_from_compressed/guitar_decoded_inria_order.ply",  # 90k, SH0
    "playbot": SHARED / "gaussians/decoded_from_compressed/playbot_lod2_decoded_inria_order.ply",  # 125k, SH2
}
MIC = SHARED / "nerf_synthetic/mic"


def model_path(name_or_path: str) -> Path:
    """A model's path from its short name, or the path itself; a clear error when missing."""
    path = GAUSSIANS.get(name_or_path, Path(name_or_path))
    if not path.is_file():
        known = ", ".join(GAUSSIANS)
        raise SystemExit(f"model {name_or_path!r} not found at {path} (known names: {known})")
    return path
