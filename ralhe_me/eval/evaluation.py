"""Rendering quality of a model: PSNR/SSIM on dataset views or against a reference model."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..gaussians import GaussianModel, read_ply

DEFAULT_ORBIT_VIEWS = 16
DEFAULT_ORBIT_RESOLUTION = (800, 800)


class EvaluationError(ValueError):
    """The evaluation request is inconsistent (e.g. no reference, bad resolution)."""


@dataclass
class EvaluationResult:
    psnr: float  # mean over views of the per-view PSNR (dB)
    ssim: float
    per_view_psnr: List[float]
    num_views: int
    width: int
    height: int
    seconds: float


@dataclass
class ViewSet:
    """Cameras with their target images [H, W, 3] in [0, 1]."""

    cameras: list
    images: List[np.ndarray]


def _as_model(model) -> GaussianModel:
    return read_ply(model) if isinstance(model, (str, os.PathLike)) else model


def orbit_views(reference: GaussianModel, num_views: int = DEFAULT_ORBIT_VIEWS,
                resolution: Tuple[int, int] = DEFAULT_ORBIT_RESOLUTION, progress: bool = False) -> ViewSet:
    """The renders of ``reference`` from a fixed orbit of cameras, used as ground truth."""
    from ..render import orbit_cameras, render_model

    cams = orbit_cameras(reference.means, num_views, resolution[0], resolution[1])
    images = [render_model(reference, cam).numpy() for cam in _progress(cams, progress, "reference views")]
    return ViewSet(cams, images)


def dataset_views(root: str, split: str = "test", num_views: Optional[int] = None,
                  resolution: Optional[Tuple[int, int]] = None) -> ViewSet:
    """The images of a NeRF-synthetic split (composited on white) and their cameras."""
    from ..render import load_nerf_synthetic

    side = None
    if resolution is not None:
        if resolution[0] != resolution[1]:
            raise EvaluationError(f"NeRF-synthetic views are square; got resolution {resolution[0]}x{resolution[1]}")
        side = resolution[0]
    cams, images = load_nerf_synthetic(root, split=split, resolution=side, limit=num_views)
    return ViewSet(cams, images)


def score_views(model: GaussianModel, views: ViewSet, progress: bool = False, with_ssim: bool = True) -> EvaluationResult:
    """Mean PSNR (and SSIM, unless ``with_ssim`` is off: then NaN) of ``model``'s renders of ``views``."""
    from .metrics import psnr, ssim
    from ..render import render_model

    start = time.perf_counter()
    psnrs, ssims = [], []
    for cam, target in zip(_progress(views.cameras, progress, "rendering"), views.images):
        with torch.no_grad():
            image = render_model(model, cam).numpy()
        psnrs.append(float(psnr(image, target)))
        ssims.append(float(ssim(image, target)) if with_ssim else float("nan"))
    h, w = views.images[0].shape[:2]
    return EvaluationResult(psnr=float(np.mean(psnrs)), ssim=float(np.mean(ssims)), per_view_psnr=psnrs,
                            num_views=len(psnrs), width=w, height=h, seconds=time.perf_counter() - start)


def evaluate_model(model, reference=None, dataset: Optional[str] = None, num_views: Optional[int] = None,
                   resolution: Optional[Tuple[int, int]] = None, split: str = "test",
                   progress: bool = False) -> EvaluationResult:
    """Mean PSNR/SSIM of ``model`` (a path or a model) against ``reference`` or ``dataset``."""
    if (reference is None) == (dataset is None):
        raise EvaluationError("give exactly one of a reference model or a dataset folder")
    model = _as_model(model)
    if dataset is not None:
        views = dataset_views(dataset, split, num_views, resolution)
    else:
        views = orbit_views(_as_model(reference), num_views or DEFAULT_ORBIT_VIEWS,
                            resolution or DEFAULT_ORBIT_RESOLUTION, progress)
    return score_views(model, views, progress)


def _progress(items: Sequence, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False)
