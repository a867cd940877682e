"""Cameras and a differentiable CPU Gaussian-splatting renderer with the INRIA conventions."""
from .cameras import (Camera, CameraError, load_nerf_synthetic, look_at_matrix, orbit_cameras,
                      robust_bounds)
from .projection import Projected, covariance_3d, project_gaussians
from .rasterizer import (RenderError, available_backends, cpp_extension, model_tensors, render,
                         render_model)
from .sh import SHError, eval_sh, sh_to_rgb

__all__ = [
    "Camera", "CameraError", "load_nerf_synthetic", "look_at_matrix", "orbit_cameras", "robust_bounds",
    "Projected", "covariance_3d", "project_gaussians", "RenderError", "available_backends", "cpp_extension", "model_tensors", "render", "render_model",
    "SHError", "eval_sh", "sh_to_rgb",
]
