"""Differentiable Gaussian-splatting renderer (INRIA conventions) that runs on the CPU.

``render`` = projection + SH shading in vectorized torch (autograd) + tile compositing in a
custom autograd function, either the compiled C++/OpenMP extension
(``ralhe_me.render._rasterize_cpu``, built by ``setup.py``) or the pure-PyTorch version. Both
share the projection, the depth order and the tile rectangles, so they produce the same
image up to floating-point rounding. CUDA tensors may go through gsplat when it is installed;
the CPU path never imports it.
"""
from __future__ import annotations

import importlib.util
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import composite_torch
from .cameras import Camera
from .extension import cpp_extension
from .projection import Projected, project_gaussians

BACKENDS = ("auto", "torch", "cpp", "gsplat")


class RenderError(ValueError):
    """Bad renderer input (shapes, dtypes, devices, backend name); the message says what is wrong."""


def available_backends() -> list:
    """Backends usable on this machine for CPU tensors (plus "gsplat" if importable with CUDA)."""
    out = ["torch"]
    if cpp_extension() is not None:
        out.append("cpp")
    if torch.cuda.is_available() and importlib.util.find_spec("gsplat") is not None:
        out.append("gsplat")
    return out


class _Composite(torch.autograd.Function):
    """Screen-space Gaussians -> (color [H, W, 3], final transmittance [H, W])."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, rects, width, height, use_cpp):
        ctx.width, ctx.height, ctx.use_cpp = width, height, use_cpp
        if use_cpp:
            order = cpp_extension().depth_order(depths)  # torch.sort(depths, stable=True).indices
            color, t_final, n_contrib, point_list, ranges = cpp_extension().rasterize_forward(
                means2d.contiguous(), conics.contiguous(), colors.contiguous(), opacities.contiguous(),
                order.contiguous(), rects.contiguous(), width, height)
            ctx.save_for_backward(means2d, conics, colors, opacities, point_list, ranges, n_contrib, t_final)
        else:
            color, t_final, point_list, ranges = composite_torch.composite_forward(
                means2d, conics, colors, opacities, depths, rects, width, height)
            ctx.save_for_backward(means2d, conics, colors, opacities, point_list, ranges, color, t_final)
        return color, t_final

    @staticmethod
    def backward(ctx, grad_color, grad_t):
        saved = ctx.saved_tensors
        if grad_color is None:
            grad_color = saved[0].new_zeros(ctx.height, ctx.width, 3)
        if grad_t is None:
            grad_t = saved[0].new_zeros(ctx.height, ctx.width)
        if ctx.use_cpp:
            means2d, conics, colors, opacities, point_list, ranges, n_contrib, t_final = saved
            grads = cpp_extension().rasterize_backward(
                means2d.contiguous(), conics.contiguous(), colors.contiguous(), opacities.contiguous(), point_list,
                ranges, n_contrib, t_final, grad_color.to(means2d.dtype).contiguous(),
                grad_t.to(means2d.dtype).contiguous(), ctx.width, ctx.height)
        else:
            means2d, conics, colors, opacities, point_list, ranges, color, t_final = saved
            grads = composite_torch.composite_backward(
                means2d, conics, colors, opacities, point_list, ranges, color, t_final, grad_color.to(means2d.dtype),
                grad_t.to(means2d.dtype), ctx.width, ctx.height)
        g_mean, g_con, g_col, g_op = grads
        return g_mean, g_con, g_col, g_op, None, None, None, None, None


def _as_tensor(x, dtype=None, device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def _check_inputs(means, quats, log_scales, opacity_logits, sh) -> None:
    n = means.shape[0] if means.ndim == 2 else -1
    expect = {"means": (means, (n, 3)), "quats": (quats, (n, 4)), "log_scales": (log_scales, (n, 3)),
              "opacity_logits": (opacity_logits, (n,))}
    if means.ndim != 2 or means.shape[1] != 3:
        raise RenderError(f"means must have shape [N, 3], got {tuple(means.shape)}")
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape:
            raise RenderError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if sh.ndim != 3 or sh.shape[0] != n or sh.shape[2] != 3 or sh.shape[1] not in (1, 4, 9, 16):
        raise RenderError(f"sh must have shape [N, K, 3] with K in (1, 4, 9, 16), got {tuple(sh.shape)}")
    for name, t in (("quats", quats), ("log_scales", log_scales), ("opacity_logits", opacity_logits), ("sh", sh)):
        if t.dtype != means.dtype or t.device != means.device:
            raise RenderError(f"{name} must have the dtype and device of means ({means.dtype}, {means.device}), "
                              f"got {t.dtype}, {t.device}")
    if means.dtype not in (torch.float32, torch.float64):
        raise RenderError(f"inputs must be float32 or float64, got {means.dtype}")


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise RenderError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and importlib.util.find_spec("gsplat") is not None:
            return "gsplat"
        return "cpp" if device.type == "cpu" and cpp_extension() is not None else "torch"
    if backend == "cpp":
        if cpp_extension() is None:
            raise RenderError("backend 'cpp' requested but ralhe_me.render._rasterize_cpu is not built "
                              "(run `python setup.py build_ext --inplace`)")
        if device.type != "cpu":
            raise RenderError(f"backend 'cpp' needs CPU tensors, got device {device}")
    if backend == "gsplat" and device.type != "cuda":
        raise RenderError("backend 'gsplat' needs CUDA tensors")
    return backend


def composite(proj: Projected, colors: torch.Tensor,  # [M, 3], one row per projected Gaussian
              camera: Camera, backend: str = "auto") -> tuple:  # -> (color [H, W, 3], transmittance [H, W])
    """Blend projected Gaussians with the given colors (no background); differentiable. Callers
    that need the image as a function of other colors than the shaded ones (e.g. probes of the
    blending weights) use this instead of :func:`render`."""
    which = _resolve_backend(backend, colors.device)
    if which == "gsplat":
        raise RenderError("composite() runs on the CPU backends only ('cpp' or 'torch')")
    return _Composite.apply(proj.means2d, proj.conics, colors, proj.opacities, proj.depths, proj.rects,
                            camera.width, camera.height, which == "cpp")


def render(means: torch.Tensor,  # [N, 3]
           quats: torch.Tensor,  # [N, 4] (w, x, y, z), any norm
           log_scales: torch.Tensor,  # [N, 3]
           opacity_logits: torch.Tensor,  # [N]
           sh: torch.Tensor,  # [N, K, 3]
           camera: Camera,
           background: Union[Sequence[float], torch.Tensor] = (1.0, 1.0, 1.0),
           backend: str = "auto") -> torch.Tensor:  # [H, W, 3]
    """Render one view; differentiable w.r.t. every tensor input (float32 or float64)."""
    _check_inputs(means, quats, log_scales, opacity_logits, sh)
    which = _resolve_backend(backend, means.device)
    bg = _as_tensor(background, means.dtype, means.device).to(dtype=means.dtype, device=means.device).reshape(3)
    if which == "gsplat":
        from .gsplat_backend import render_gsplat  # CUDA only: never reached from the CPU path

        return render_gsplat(means, quats, log_scales, opacity_logits, sh, camera, bg)
    proj = project_gaussians(means, quats, log_scales, opacity_logits, sh, camera)
    color, t_final = composite(proj, proj.colors, camera, which)
    return color + t_final[..., None] * bg


def model_tensors(model, dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None) -> tuple:
    """(means, quats, log_scales, opacity_logits, sh) of a GaussianModel as tensors."""
    return tuple(torch.as_tensor(np.asarray(a), dtype=dtype, device=device)
                 for a in (model.means, model.quats, model.log_scales, model.opacity_logits, model.sh))


@torch.no_grad()
def render_model(model, camera: Camera, background: Union[Sequence[float], torch.Tensor] = (1.0, 1.0, 1.0),
                 backend: str = "auto", device: Optional[torch.device] = None) -> torch.Tensor:  # [H, W, 3]
    """Render a ``GaussianModel`` (no gradients), float32."""
    return render(*model_tensors(model, torch.float32, device), camera, background=background, backend=backend)
