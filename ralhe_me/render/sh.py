"""Real spherical harmonics up to degree 3, in the INRIA 3DGS basis order and signs.

Colors must match what the INRIA trainer optimized, so the constants, the term order and the
``+ 0.5`` offset with clamping at zero follow that renderer exactly.
"""
from __future__ import annotations

import torch

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

_DEGREE_FOR_COEFFS = {1: 0, 4: 1, 9: 2, 16: 3}


class SHError(ValueError):
    """SH coefficients with an unsupported shape or degree."""


def sh_degree_of(num_coeffs: int) -> int:
    if num_coeffs not in _DEGREE_FOR_COEFFS:
        raise SHError(f"SH must have 1, 4, 9 or 16 coefficients per channel, got {num_coeffs}")
    return _DEGREE_FOR_COEFFS[num_coeffs]


def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:  # dirs [N, 3] unit -> [N, (degree+1)^2]
    """The basis functions in INRIA order (the signs of the degree-1 terms included)."""
    if degree not in (0, 1, 2, 3):
        raise SHError(f"SH degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    terms = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        terms += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        terms += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2.0 * zz - xx - yy), SH_C2[3] * xz,
                  SH_C2[4] * (xx - yy)]
    if degree >= 3:
        terms += [SH_C3[0] * y * (3.0 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4.0 * zz - xx - yy),
                  SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy), SH_C3[4] * x * (4.0 * zz - xx - yy),
                  SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3.0 * yy)]
    return torch.stack(terms, dim=-1)


def eval_sh(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:  # sh [N, K, 3], dirs [N, 3] unit -> [N, 3]
    """Raw SH value (no offset, no clamp); ``dirs`` must be unit vectors."""
    if sh.ndim != 3 or sh.shape[2] != 3:
        raise SHError(f"sh must have shape [N, K, 3], got {tuple(sh.shape)}")
    return torch.einsum("nk,nkc->nc", sh_basis(dirs, sh_degree_of(sh.shape[1])), sh)


def shade(basis: torch.Tensor,  # [N, K] sh_basis of the view directions
          sh: torch.Tensor  # [N, K, 3]
          ) -> torch.Tensor:  # [N, 3]
    """Color from the SH basis of the view direction: SH + 0.5, clamped at 0 from below."""
    return torch.clamp_min(torch.einsum("nk,nkc->nc", basis, sh) + 0.5, 0.0)


def sh_to_rgb(sh: torch.Tensor, means: torch.Tensor, camera_center: torch.Tensor) -> torch.Tensor:
    """View-dependent color [N, 3] of Gaussians at ``means`` [N, 3] seen from ``camera_center`` [3].

    The direction is normalized (mean - camera center); color = SH + 0.5, clamped at 0 from below.
    """
    dirs = means - camera_center
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    if sh.ndim != 3 or sh.shape[2] != 3:
        raise SHError(f"sh must have shape [N, K, 3], got {tuple(sh.shape)}")
    return shade(sh_basis(dirs, sh_degree_of(sh.shape[1])), sh)
