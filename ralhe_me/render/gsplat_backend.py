"""Optional CUDA path through gsplat (imported only for CUDA tensors; never on the CPU path).

gsplat follows the same conventions (0.3 low-pass, near plane, 16x16 tiles, SH + 0.5 clamped at
0) but computes radii and the alpha cut-offs slightly differently, so images agree with the CPU
backends only approximately.
"""
from __future__ import annotations

import numpy as np
import torch

from .cameras import Camera
from .projection import LOW_PASS, NEAR_PLANE


def render_gsplat(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor,
                  opacity_logits: torch.Tensor, sh: torch.Tensor, camera: Camera,
                  background: torch.Tensor) -> torch.Tensor:  # [H, W, 3]
    import gsplat

    dtype, device = means.dtype, means.device
    viewmat = torch.as_tensor(np.asarray(camera.world_to_cam), dtype=torch.float32, device=device)[None]
    K = torch.as_tensor(camera.intrinsics, dtype=torch.float32, device=device)[None]
    degree = {1: 0, 4: 1, 9: 2, 16: 3}[sh.shape[1]]
    colors, _, _ = gsplat.rasterization(
        means.float(), quats.float(), torch.exp(log_scales.float()), torch.sigmoid(opacity_logits.float()),
        sh.float(), viewmat, K, camera.width, camera.height, near_plane=NEAR_PLANE, eps2d=LOW_PASS,
        sh_degree=degree, packed=False, tile_size=16, backgrounds=background.float().reshape(1, 3),
        rasterize_mode="classic")
    return colors[0].to(dtype)
