"""EWA projection of 3D Gaussians to screen-space ellipses, in vectorized (differentiable) torch.

Only the compositing needs hand-written gradients; everything here is plain autograd, so the
gradients of means, rotations, scales and SH come for free and match the forward exactly.
Geometry that needs no gradient (the encoder's fixed voxels, every render without autograd) is
projected and shaded by the compiled renderer instead (``project.cpp``: the same formulas, with the
gradients of SH and opacities).
Conventions are those of the INRIA rasterizer: near plane 0.2, the Jacobian evaluated at
x/z and y/z clamped to 1.3 tan(fov/2), a 0.3 pixel^2 low-pass on the 2D covariance, a
3-sigma radius from the larger eigenvalue, and 16x16 tiles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .cameras import Camera
from .extension import cpp_extension
from .sh import SHError, sh_degree_of, sh_to_rgb

TILE = 16
NEAR_PLANE = 0.2
LOW_PASS = 0.3
FOV_CLAMP = 1.3


@dataclass
class Projected:
    """The Gaussians that survive culling, ready for compositing (M of them)."""

    index: torch.Tensor  # [M] int64, positions in the input arrays
    means2d: torch.Tensor  # [M, 2] pixel coordinates, pixel (i, j) centered at (i, j)
    conics: torch.Tensor  # [M, 3] inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
    colors: torch.Tensor  # [M, 3]
    opacities: torch.Tensor  # [M] in (0, 1)
    depths: torch.Tensor  # [M] camera-space z (no gradient)
    radii: torch.Tensor  # [M] int64, 3-sigma radius in pixels
    rects: torch.Tensor  # [M, 4] int32: tile x0, y0, x1, y1 (x1, y1 exclusive)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:  # [N, 4] (w, x, y, z), any norm -> [N, 3, 3]
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


def covariance_3d(quats: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:  # -> [N, 3, 3]
    """Sigma = R S S^T R^T from normalized quaternions and exp(log_scales)."""
    m = quat_to_rotmat(quats) * torch.exp(log_scales)[:, None, :]  # R S
    return m @ m.transpose(1, 2)


def tile_grid(camera: Camera) -> tuple:
    return (camera.width + TILE - 1) // TILE, (camera.height + TILE - 1) // TILE


def camera_tensors(camera: Camera, dtype: torch.dtype, device) -> tuple:
    """Rotation [3, 3], translation [3] and center [3] of the camera as tensors."""
    # a copy: the camera may sit in read-only memory (e.g. Ray's object store), and it is 4x4
    w2c = torch.tensor(np.array(camera.world_to_cam), dtype=dtype, device=device)
    rot, trans = w2c[:3, :3], w2c[:3, 3]
    return rot, trans, -(rot.T @ trans)


def _take(x: torch.Tensor, index) -> torch.Tensor:
    return x if index is None else x[index]


class ProjectionError(ValueError):
    """A projection that cannot run as asked (the compiled one without its extension, or on
    geometry that needs gradients); the message says why."""


def geometry_needs_grad(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (means.requires_grad or quats.requires_grad or log_scales.requires_grad)


class _NativeShade(torch.autograd.Function):
    """sh.shade(basis, sh[index]) in one pass each way (bits of the gradient equal to torch's:
    one product per entry), reading ``sh`` through its strides and writing its gradient in its
    layout: the refinement's SH is a permuted view of the decoders' [K, N, 3] output."""

    @staticmethod
    def forward(ctx, basis, sh, index):  # basis [M, K], sh [N, K, 3], index [M] increasing or None
        colors = cpp_extension().shade_forward(basis, sh, index)
        ctx.save_for_backward(basis, colors, index)
        ctx.sh_layout = torch.empty_like(sh, device="meta")  # its strides when dense, else contiguous
        return colors

    @staticmethod
    def backward(ctx, grad):  # [M, 3]
        if not ctx.needs_input_grad[1]:
            return None, None, None
        basis, colors, index = ctx.saved_tensors
        layout = ctx.sh_layout
        out = torch.empty_strided(layout.shape, layout.stride(), dtype=basis.dtype)
        grad_sh = cpp_extension().shade_backward(basis, colors, grad.to(basis.dtype).contiguous(), index, out)
        return None, grad_sh, None


def _project_native(means, quats, log_scales, opacity_logits, sh, camera: Camera) -> Projected:
    """project_gaussians with the geometry (culling, 2D means and conics, tiles, SH basis) from
    the compiled renderer; SH and opacities keep their autograd."""
    ext = cpp_extension()
    if ext is None:
        raise ProjectionError("the compiled projection is not built (ralhe_me.render._rasterize_cpu); "
                              "run `python setup.py build_ext --inplace`")
    if geometry_needs_grad(means, quats, log_scales):
        raise ProjectionError("the compiled projection has no gradients for means, quats or log_scales; "
                              "use the torch projection (native=False)")
    if sh.ndim != 3 or sh.shape[2] != 3:
        raise SHError(f"sh must have shape [N, K, 3], got {tuple(sh.shape)}")
    rot, trans, center = camera_tensors(camera, means.dtype, means.device)
    index, means2d, conics, depths, radii, rects = ext.project_geometry(
        means.detach(), quats.detach(), log_scales.detach(), rot, trans, camera.fx, camera.fy, camera.cx, camera.cy,
        FOV_CLAMP * camera.tan_half_fov_x, FOV_CLAMP * camera.tan_half_fov_y, camera.width, camera.height)
    take = None if len(index) == len(means) else index
    basis = ext.view_sh_basis(means.detach(), take, center, sh_degree_of(sh.shape[1]))
    return Projected(index=index, means2d=means2d, conics=conics, colors=_NativeShade.apply(basis, sh, take),
                     opacities=torch.sigmoid(_take(opacity_logits, take)), depths=depths, radii=radii,
                     rects=rects)


def project_gaussians(means: torch.Tensor,  # [N, 3]
                      quats: torch.Tensor,  # [N, 4] (w, x, y, z), any norm
                      log_scales: torch.Tensor,  # [N, 3]
                      opacity_logits: torch.Tensor,  # [N]
                      sh: torch.Tensor,  # [N, K, 3]
                      camera: Camera, native: Optional[bool] = None) -> Projected:
    """Cull, project and shade Gaussians for one camera (all inputs differentiable).

    ``native``: the compiled projection (True), the torch one (False), or the compiled one when
    it is built, the tensors are float32 or float64 on the CPU and the geometry needs no
    gradient (None). The
    torch one is written with per-entry elementwise ops (no batched 3x3 matmuls), which is
    several times faster on the CPU than matmuls for hundreds of thousands of Gaussians.
    """
    if native is None:
        native = (cpp_extension() is not None and means.device.type == "cpu"
                  and means.dtype in (torch.float32, torch.float64) and sh.dtype == means.dtype
                  and not geometry_needs_grad(means, quats, log_scales))
    if native:
        return _project_native(means, quats, log_scales, opacity_logits, sh, camera)
    dtype, device = means.dtype, means.device
    rot, trans, center = camera_tensors(camera, dtype, device)
    p = means @ rot.T + trans
    x, y, z = p.unbind(-1)
    in_front = z > NEAR_PLANE
    z = torch.where(in_front, z, torch.ones_like(z))  # culled ones get harmless values (no NaN gradients)

    # 3D covariance Sigma = M M^T with M = R S (quaternion w, x, y, z)
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, qx, qy, qz = q.unbind(-1)
    sx, sy, sz = torch.exp(log_scales).unbind(-1)
    m = [[(1 - 2 * (qy * qy + qz * qz)) * sx, 2 * (qx * qy - w * qz) * sy, 2 * (qx * qz + w * qy) * sz],
         [2 * (qx * qy + w * qz) * sx, (1 - 2 * (qx * qx + qz * qz)) * sy, 2 * (qy * qz - w * qx) * sz],
         [2 * (qx * qz - w * qy) * sx, 2 * (qy * qz + w * qx) * sy, (1 - 2 * (qx * qx + qy * qy)) * sz]]

    def sig(i, j):
        return m[i][0] * m[j][0] + m[i][1] * m[j][1] + m[i][2] * m[j][2]

    s00, s01, s02, s11, s12, s22 = sig(0, 0), sig(0, 1), sig(0, 2), sig(1, 1), sig(1, 2), sig(2, 2)

    # rows of J W (EWA Jacobian at the clamped x/z, y/z, times the view rotation)
    fx, fy = camera.fx, camera.fy
    limx = FOV_CLAMP * camera.tan_half_fov_x
    limy = FOV_CLAMP * camera.tan_half_fov_y
    inv_z = 1.0 / z
    jx = -fx * torch.clamp(x * inv_z, -limx, limx) * inv_z
    jy = -fy * torch.clamp(y * inv_z, -limy, limy) * inv_z
    r0, r1, r2 = rot[0], rot[1], rot[2]
    ta = [fx * inv_z * r0[k] + jx * r2[k] for k in range(3)]
    tb = [fy * inv_z * r1[k] + jy * r2[k] for k in range(3)]

    def sig_times(t):  # Sigma t
        return (s00 * t[0] + s01 * t[1] + s02 * t[2], s01 * t[0] + s11 * t[1] + s12 * t[2],
                s02 * t[0] + s12 * t[1] + s22 * t[2])

    sa, sb = sig_times(ta), sig_times(tb)
    a = ta[0] * sa[0] + ta[1] * sa[1] + ta[2] * sa[2] + LOW_PASS
    b = ta[0] * sb[0] + ta[1] * sb[1] + ta[2] * sb[2]
    c = tb[0] * sb[0] + tb[1] * sb[1] + tb[2] * sb[2] + LOW_PASS
    det = a * c - b * b

    u = fx * x * inv_z + camera.cx - 0.5  # pixel (i, j) is centered at (i, j) from here on
    v = fy * y * inv_z + camera.cy - 0.5

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt(torch.clamp_min(mid * mid - det, 0.1))
        radii = torch.ceil(3.0 * torch.sqrt(lam)).to(torch.int64)
        gx, gy = tile_grid(camera)
        x0 = torch.clamp(torch.floor((u - radii) / TILE), 0, gx)
        x1 = torch.clamp(torch.floor((u + radii + TILE - 1) / TILE), 0, gx)
        y0 = torch.clamp(torch.floor((v - radii) / TILE), 0, gy)
        y1 = torch.clamp(torch.floor((v + radii + TILE - 1) / TILE), 0, gy)
        keep = in_front & (det > 0) & ((x1 - x0) * (y1 - y0) > 0)
        index = None if bool(keep.all()) else torch.nonzero(keep).squeeze(1)
        rects = _take(torch.stack([x0, y0, x1, y1], dim=-1).to(torch.int32), index).contiguous()
        radii = _take(radii, index)

    a, b, c, det = (_take(t, index) for t in (a, b, c, det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    colors = sh_to_rgb(_take(sh, index), _take(means, index), center)
    return Projected(
        index=torch.arange(len(means), device=device) if index is None else index,
        means2d=torch.stack([_take(u, index), _take(v, index)], dim=-1),
        conics=conics,
        colors=colors,
        opacities=torch.sigmoid(_take(opacity_logits, index)),
        depths=_take(z.detach(), index),
        radii=radii,
        rects=rects,
    )
