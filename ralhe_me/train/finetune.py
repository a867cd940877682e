"""Attribute finetuning with fixed positions: the codec's "lightweight retraining" after voxelization.

Voxelization moves and merges Gaussians; the paper (section 2.2, after GPCC-GS) recovers the
rendering quality by minimizing the 3DGS training loss over every parameter but the means,
which must stay on the voxel centers the geometry coder will send. Targets are either a
dataset's images or, when only the original model exists, its own renders (distillation from
a teacher) from random views around it.

The loss is INRIA's, (1 - w) L1 + w (1 - SSIM) with w = 0.2 and an 11x11 Gaussian window;
SSIM is computed with separable convolutions, cheap next to the rendering on the CPU.
This module is encoder-only (it imports the renderer and the optimizer).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..argtypes import non_negative_int, positive_int
from ..gaussians import GaussianModel
from ..threads import intra_op_threads
from .optimizer import cosine_factor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


class FinetuneError(ValueError):
    """Inconsistent finetuning request (targets, sizes, options); the message says what is wrong."""


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------
def _gaussian_window(dtype, device) -> torch.Tensor:  # [SSIM_WINDOW]
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-x * x / (2 * SSIM_SIGMA ** 2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim_torch(image: torch.Tensor,  # [H, W, 3]
               target: torch.Tensor) -> torch.Tensor:  # [H, W, 3] -> scalar
    """Differentiable mean SSIM (11x11 Gaussian window, sigma 1.5, zero padding as in INRIA's loss)."""
    if image.shape != target.shape or image.ndim != 3:
        raise FinetuneError(f"image and target must both be [H, W, C]; got {tuple(image.shape)} "
                            f"and {tuple(target.shape)}")
    c = image.shape[2]
    x = image.permute(2, 0, 1)[None]  # [1, C, H, W]
    y = target.permute(2, 0, 1)[None].to(x.dtype)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [1, 5C, H, W]
    g = _gaussian_window(x.dtype, x.device)
    groups = stack.shape[1]
    pad = SSIM_WINDOW // 2
    stack = F.conv2d(stack, g.view(1, 1, 1, -1).expand(groups, 1, 1, SSIM_WINDOW), padding=(0, pad), groups=groups)
    stack = F.conv2d(stack, g.view(1, 1, -1, 1).expand(groups, 1, SSIM_WINDOW, 1), padding=(pad, 0), groups=groups)
    mu_x, mu_y, xx, yy, xy = stack.split(c, dim=1)
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (num / den).mean()


def photometric_loss(image: torch.Tensor,  # [H, W, 3]
                     target: torch.Tensor,  # [H, W, 3]
                     ssim_weight: float = 0.2) -> torch.Tensor:
    """(1 - w) L1 + w (1 - SSIM), the 3DGS training loss."""
    l1 = (image - target).abs().mean()
    if ssim_weight == 0.0:
        return l1
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - ssim_torch(image, target))


def psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------
def sample_orbit_cameras(means: np.ndarray,  # [N, 3]
                         num_views: int, width: int, height: int, seed: int = 0, fov_deg: float = 50.0,
                         max_elevation_deg: float = 80.0, zoom_range: Tuple[float, float] = (0.85, 1.25),
                         up: Sequence[float] = (0.0, 0.0, 1.0), percentile: float = 98.0,
                         margin: float = 1.05) -> list:
    """Random cameras looking at the model's robust center, directions uniform over a sphere band.

    Distance and focal length are those of :func:`orbit_cameras` (which keeps small models
    beyond the near plane), the focal length times a factor drawn from ``zoom_range``, so
    training sees the model at a few scales without moving into the near plane; the fixed
    spiral of ``orbit_cameras`` used for evaluation is never drawn (probability zero).
    """
    from ..render import Camera, look_at_matrix, orbit_cameras, robust_bounds

    if num_views <= 0:
        raise FinetuneError(f"num_views must be positive, got {num_views}")
    if not 0.0 < max_elevation_deg < 90.0:
        raise FinetuneError(f"max_elevation_deg must be in (0, 90), got {max_elevation_deg}")
    lo, hi = zoom_range
    if not 0.0 < lo <= hi:
        raise FinetuneError(f"zoom_range must satisfy 0 < lo <= hi, got {zoom_range}")
    rng = np.random.default_rng(seed)
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    center, _ = robust_bounds(means, percentile)
    ref = orbit_cameras(means, 1, width, height, fov_deg=fov_deg, up=up, percentile=percentile, margin=margin)[0]
    distance = float(np.linalg.norm(ref.center - center))
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(up, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    s = math.sin(math.radians(max_elevation_deg))
    cams = []
    for i in range(num_views):
        azim = rng.uniform(0.0, 2.0 * math.pi)
        elev = math.asin(rng.uniform(-s, s))  # uniform in area over the band
        fx = ref.fx * rng.uniform(lo, hi)
        direction = math.cos(elev) * (math.cos(azim) * e1 + math.sin(azim) * e2) + math.sin(elev) * up
        w2c = look_at_matrix(center + distance * direction, center, up)
        cams.append(Camera(w2c, fx, fx, width / 2.0, height / 2.0, width, height, name=f"random_{i:03d}"))
    return cams


def check_views(cameras: Sequence, images: Sequence, what: str = "training") -> None:
    """Raise :class:`FinetuneError` unless cameras and [H, W, 3] images pair up one to one."""
    if len(cameras) != len(images):
        raise FinetuneError(f"{len(cameras)} {what} cameras but {len(images)} {what} images")
    if len(cameras) == 0:
        raise FinetuneError(f"no {what} views")
    for i, (cam, img) in enumerate(zip(cameras, images)):
        shape = tuple(np.shape(img))
        if shape != (cam.height, cam.width, 3):
            raise FinetuneError(f"{what} image {i} has shape {shape}, its camera is {cam.width}x{cam.height} "
                                f"(expected ({cam.height}, {cam.width}, 3))")


class ViewSampler:
    """Shuffled passes over the views (INRIA's stack of cameras), resumable from its state."""

    def __init__(self, num_views: int, seed: int):
        self.num_views = num_views
        self.rng = np.random.default_rng(seed)
        self.stack: List[int] = []

    def take(self, k: int) -> List[int]:
        out = []
        for _ in range(k):
            if not self.stack:
                self.stack = self.rng.permutation(self.num_views).tolist()
            out.append(self.stack.pop())
        return out

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "stack": list(self.stack), "num_views": self.num_views}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_views"]) != self.num_views:
            raise FinetuneError(f"view sampler state is for {state['num_views']} views, not {self.num_views}")
        self.rng.bit_generator.state = state["rng"]
        self.stack = [int(i) for i in state["stack"]]


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Temporarily use ``n`` intra-op threads (None: leave as is). On a busy shared CPU, 1 is often fastest."""
    if n is not None and n < 1:
        raise FinetuneError(f"num_threads must be >= 1, got {n}")
    with intra_op_threads(n):
        yield


def resolve_device(device: Optional[str]) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def mean_psnr(model: GaussianModel, cameras: Sequence, images: Sequence, background=(1.0, 1.0, 1.0),
              device: Optional[torch.device] = None) -> float:
    """Mean over views of the per-view PSNR of ``model``'s renders against ``images``.

    Renders are clamped to [0, 1] first, as INRIA's evaluation does (it scores saved 8-bit images).
    """
    from ..eval.metrics import psnr
    from ..render import render_model

    values = []
    for cam, img in zip(cameras, images):
        out = render_model(model, cam, background=background, device=device).clamp(0.0, 1.0).cpu()
        values.append(psnr(out, np.asarray(img)))
    return float(np.mean(values))


# ------------------------------------------------------------------------------------------------
# Finetuning
# ------------------------------------------------------------------------------------------------
_LEARNING_RATES = ("lr_sh_dc", "lr_sh_rest", "lr_opacity", "lr_scaling", "lr_rotation")


@dataclass
class FinetuneConfig:
    """Learning rates are INRIA's (per parameter group); the means are never optimized."""

    lr_sh_dc: float = 2.5e-3
    lr_sh_rest: float = 2.5e-3 / 20.0
    lr_opacity: float = 5e-2
    lr_scaling: float = 5e-3
    lr_rotation: float = 1e-3
    resolution: int = 256  # width of the training renders (teacher views: resolution x resolution)
    views_per_step: int = 1
    ssim_weight: float = 0.2  # 0: plain L1
    seed: int = 0
    teacher_views: int = 128  # random teacher views, rendered once and cached
    train_views: Optional[int] = None  # dataset target: keep only the first N train views (None: all)
    eval_views: int = 16  # held-out views for PSNR before/after (teacher orbit; first N of a test split)
    # the first N training views, scored before and after: the tuned attributes are kept only when
    # they render these better (0: always kept)
    check_views: int = 8
    # the learning rates fall (cosine) from their values to this fraction of them over the steps
    # (1: constant, INRIA's schedule for these attributes)
    final_lr_fraction: float = 1.0
    eval_resolution: Optional[int] = None  # None: ``resolution``
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    num_threads: Optional[int] = None
    device: Optional[str] = None  # None/"auto": CUDA when available

    def __post_init__(self) -> None:
        for name in ("resolution", "views_per_step", "teacher_views", "eval_views"):
            if int(getattr(self, name)) < 1:
                raise FinetuneError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.check_views) < 0:
            raise FinetuneError(f"check_views must be >= 0, got {self.check_views}")
        if self.train_views is not None and self.train_views < 1:
            raise FinetuneError(f"train_views must be >= 1, got {self.train_views}")
        if self.eval_resolution is not None and self.eval_resolution < 1:
            raise FinetuneError(f"eval_resolution must be >= 1, got {self.eval_resolution}")
        if not 0.0 < self.final_lr_fraction <= 1.0:
            raise FinetuneError(f"final_lr_fraction must be in (0, 1], got {self.final_lr_fraction}")
        if not 0.0 <= self.ssim_weight <= 1.0:
            raise FinetuneError(f"ssim_weight must be in [0, 1], got {self.ssim_weight}")
        for name in _LEARNING_RATES:
            if getattr(self, name) < 0:
                raise FinetuneError(f"{name} must be >= 0, got {getattr(self, name)}")

    def with_learning_rates_scaled(self, factor: float) -> "FinetuneConfig":
        """A copy with every learning rate times ``factor`` (> 0). Adam moves each attribute by
        about its learning rate per step whatever the gradient, so the attributes end jittering at
        that scale: finetuning finer geometry, whose errors are smaller, needs smaller steps."""
        if not (math.isfinite(factor) and factor > 0):
            raise FinetuneError(f"the learning-rate factor must be finite and > 0, got {factor}")
        return dataclasses.replace(self, **{name: getattr(self, name) * factor for name in _LEARNING_RATES})

    def learning_rates(self) -> dict:
        """Per parameter group (names of :class:`ralhe_me.train.densify.GaussianParams`); no entry for means."""
        return {"sh_dc": self.lr_sh_dc, "sh_rest": self.lr_sh_rest, "opacity_logits": self.lr_opacity,
                "log_scales": self.lr_scaling, "quats": self.lr_rotation}


@dataclass
class FinetuneReport:
    psnr_before: float  # mean PSNR (dB) on the held-out views
    psnr_after: float
    seconds: float  # whole call, target preparation and evaluation included
    train_seconds: float  # the optimization loop only
    iters: int
    num_gaussians: int
    eval_views: int
    eval_source: str  # "dataset test split", "teacher orbit", "given test views" or "training views"
    resolution: Tuple[int, int]  # (width, height) of the training renders
    loss_history: List[float] = field(default_factory=list)  # per step
    covariance: Optional[object] = None  # the tuned CovarianceCode when one was given
    # False: the tuned attributes rendered the check views worse than the input's, which was
    # returned instead (with the given covariance code)
    kept: bool = True
    check_psnr: Tuple[float, float] = (math.nan, math.nan)  # (before, after) on the check views


def _prepare_targets(dataset, cameras, images, teacher, test_cameras, test_images, cfg, device):
    """(train cameras, train images, eval cameras, eval images, eval source)."""
    from ..render import load_nerf_synthetic, orbit_cameras, render_model

    given = [name for name, v in (("dataset", dataset), ("cameras/images", cameras if cameras is not None
                                                                         else images), ("teacher", teacher))
             if v is not None]
    if len(given) != 1:
        raise FinetuneError("give exactly one target: a dataset folder, cameras with images, or a teacher "
                            f"model (got {', '.join(given) if given else 'none'})")
    eval_res = cfg.eval_resolution or cfg.resolution
    if dataset is not None:
        cams, imgs = load_nerf_synthetic(dataset, "train", resolution=cfg.resolution, limit=cfg.train_views)
        try:
            ecams, eimgs = load_nerf_synthetic(dataset, "test", resolution=eval_res, limit=cfg.eval_views)
            source = "dataset test split"
        except ValueError:
            ecams, eimgs = cams[:cfg.eval_views], imgs[:cfg.eval_views]
            source = "training views"
        return cams, imgs, ecams, eimgs, source
    if teacher is not None:
        if not isinstance(teacher, GaussianModel) or len(teacher) == 0:
            raise FinetuneError("the teacher must be a non-empty GaussianModel")
        teacher.check_finite()
        res = cfg.resolution
        cams = sample_orbit_cameras(teacher.means, cfg.teacher_views, res, res, seed=cfg.seed)
        imgs = [render_model(teacher, c, background=cfg.background, device=device).cpu().numpy() for c in cams]
        ecams = orbit_cameras(teacher.means, cfg.eval_views, eval_res, eval_res)
        eimgs = [render_model(teacher, c, background=cfg.background, device=device).cpu().numpy() for c in ecams]
        return cams, imgs, ecams, eimgs, "teacher orbit"
    if cameras is None or images is None:
        raise FinetuneError("cameras and images must be given together")
    check_views(cameras, images, "training")
    if (test_cameras is None) != (test_images is None):
        raise FinetuneError("test_cameras and test_images must be given together")
    if test_cameras is not None:
        check_views(test_cameras, test_images, "test")
        return list(cameras), list(images), list(test_cameras), list(test_images), "given test views"
    return list(cameras), list(images), list(cameras), list(images), "training views"


def finetune(model: GaussianModel, *, dataset: Optional[str] = None, cameras: Optional[Sequence] = None,
             images: Optional[Sequence[np.ndarray]] = None, teacher: Optional[GaussianModel] = None,
             test_cameras: Optional[Sequence] = None, test_images: Optional[Sequence[np.ndarray]] = None,
             iters: int = 300, config: Optional[FinetuneConfig] = None,
             covariance=None, progress: bool = True) -> Tuple[GaussianModel, FinetuneReport]:
    """Optimize every attribute of ``model`` but the means against one kind of target.

    Targets: ``dataset`` (a NeRF-synthetic folder: train split at ``config.resolution``, PSNR on
    the first ``eval_views`` of the test split), ``cameras`` + ``images`` [H, W, 3] (PSNR on
    ``test_cameras`` + ``test_images`` if given, else on the training views), or ``teacher``
    (renders of the teacher from ``teacher_views`` random views; PSNR on a fixed orbit).
    The returned model has the input's means, bit for bit, and the same Gaussian count.

    With ``covariance`` (a :class:`~ralhe_me.geometry.covariance_code.CovarianceCode`), the shapes
    are the coded ones: codebook[indices] + fixed residuals. Indices and residuals stay fixed
    while the codewords, opacities and SH learn together to make up for the quantization. The
    tuned code (codewords rounded as stored) is in ``report.covariance`` and the returned model
    holds exactly its shapes.
    """
    from .densify import GaussianParams
    from ..render import render

    cfg = config or FinetuneConfig()
    if not isinstance(model, GaussianModel):
        raise FinetuneError(f"model must be a GaussianModel, got {type(model).__name__}")
    if len(model) == 0:
        raise FinetuneError("cannot finetune an empty model")
    if int(iters) < 0:
        raise FinetuneError(f"iters must be >= 0, got {iters}")
    model.check_finite()
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    with torch_threads(cfg.num_threads):
        cams, imgs, ecams, eimgs, source = _prepare_targets(dataset, cameras, images, teacher,
                                                            test_cameras, test_images, cfg, device)
        vq = _CodedShapes(model, covariance, cfg, device) if covariance is not None else None
        if vq is not None:
            model = vq.quantized(model)
        psnr_before = mean_psnr(model, ecams, eimgs, cfg.background, device)
        check = min(int(cfg.check_views), len(cams)) if int(iters) > 0 else 0
        check_before = mean_psnr(model, cams[:check], imgs[:check], cfg.background, device) if check else math.nan

        lrs = cfg.learning_rates()
        if vq is not None:
            lrs = {k: v for k, v in lrs.items() if k not in ("log_scales", "quats")}
        params = GaussianParams.from_model(model, lrs, device=device)
        if vq is not None:
            vq.attach(params.optimizer)
        targets = [torch.as_tensor(np.asarray(im, dtype=np.float32), device=device) for im in imgs]
        bg = torch.tensor(cfg.background, dtype=torch.float32, device=device)
        sampler = ViewSampler(len(cams), cfg.seed)
        degree = model.sh_degree
        history: List[float] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=int(iters), desc="finetune", dynamic_ncols=True)
        running = None
        t_train = time.perf_counter()
        base_lrs = [g["lr"] for g in params.optimizer.param_groups]
        for step in range(int(iters)):
            factor = cosine_factor(step / int(iters), cfg.final_lr_fraction)  # 1.0 exactly when constant
            for g, base in zip(params.optimizer.param_groups, base_lrs):
                g["lr"] = base * factor
            views = sampler.take(cfg.views_per_step)
            total, mse = 0.0, 0.0
            for v in views:
                quats, log_scales = vq.shapes() if vq is not None else (params["quats"], params["log_scales"])
                image = render(params["means"], quats, log_scales, params["opacity_logits"],
                               params.sh(degree), cams[v], background=bg)
                loss = photometric_loss(image, targets[v], cfg.ssim_weight) / len(views)
                loss.backward()
                total += loss.item()
                mse += float(((image.detach() - targets[v]) ** 2).mean()) / len(views)
            params.optimizer.step()
            params.optimizer.zero_grad(set_to_none=True)
            history.append(total)
            p = psnr_from_mse(mse)
            running = p if running is None else 0.9 * running + 0.1 * p
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}", psnr=f"{running:.2f}")
        if bar is not None:
            bar.close()
        train_seconds = time.perf_counter() - t_train

        tuned = params.to_model()
        tuned_code = None
        if vq is not None:
            tuned_code = vq.stored_code()
            tuned = vq.quantized(tuned, tuned_code)
        out = GaussianModel(means=model.means.copy(), log_scales=tuned.log_scales, quats=tuned.quats,
                            opacity_logits=tuned.opacity_logits, sh=tuned.sh,
                            normals=None if model.normals is None else model.normals.copy())
        check_after, kept = math.nan, True
        if check:
            check_after = mean_psnr(out, cams[:check], imgs[:check], cfg.background, device)
            kept = check_after >= check_before
        if not kept:  # the steps made it worse (too large for errors this small): the input stands
            out, tuned_code = model.copy(), covariance
        psnr_after = mean_psnr(out, ecams, eimgs, cfg.background, device)
    report = FinetuneReport(psnr_before=psnr_before, psnr_after=psnr_after, seconds=time.perf_counter() - start,
                            train_seconds=train_seconds, iters=int(iters), num_gaussians=len(out),
                            eval_views=len(ecams), eval_source=source,
                            resolution=(cams[0].width, cams[0].height), loss_history=history,
                            covariance=tuned_code, kept=kept, check_psnr=(check_before, check_after))
    return out, report


class _CodedShapes:
    """Trainable codewords gathered by fixed indices, plus fixed residuals (the covariance
    quantization kept in the loop)."""

    def __init__(self, model: GaussianModel, code, cfg: FinetuneConfig, device):
        from ..geometry.covariance_code import CovarianceCode

        if not isinstance(code, CovarianceCode):
            raise FinetuneError(f"covariance must be a CovarianceCode, got {type(code).__name__}")
        if code.indices.shape != (len(model),):
            raise FinetuneError(f"the covariance code holds {len(code.indices)} shapes, the model {len(model)}")
        self.code = code
        self.index = torch.as_tensor(code.indices, device=device)
        ds, dq = code.offsets()
        self.offsets = (torch.as_tensor(ds, device=device), torch.as_tensor(dq, device=device))
        self.log_scales = torch.tensor(code.codebook.log_scales, dtype=torch.float32, device=device,
                                       requires_grad=True)
        self.quats = torch.tensor(code.codebook.quats, dtype=torch.float32, device=device, requires_grad=True)
        self.lrs = (cfg.lr_scaling, cfg.lr_rotation)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.add_param_group({"params": [self.log_scales], "lr": self.lrs[0], "name": "codebook_log_scales"})
        optimizer.add_param_group({"params": [self.quats], "lr": self.lrs[1], "name": "codebook_quats"})

    def shapes(self) -> Tuple[torch.Tensor, torch.Tensor]:  # quats [N, 4], log_scales [N, 3]
        from ..geometry.covariance_code import compose_rotation

        quats = self.quats[self.index]
        quats = compose_rotation(quats, self.offsets[1]) if self.code.rodrigues else quats + self.offsets[1]
        return quats, self.log_scales[self.index] + self.offsets[0]

    def stored_code(self):
        from dataclasses import replace

        book = replace(self.code.codebook, log_scales=self.log_scales.detach().cpu().numpy(),
                       quats=self.quats.detach().cpu().numpy())
        return replace(self.code, codebook=book)

    def quantized(self, model: GaussianModel, code=None) -> GaussianModel:
        from dataclasses import replace

        log_scales, quats = (code or self.code).shapes()
        return replace(model, log_scales=log_scales, quats=quats)


# ------------------------------------------------------------------------------------------------
# Command line (wired into ``ralhe`` by ralhe_me/cli.py)
# ------------------------------------------------------------------------------------------------
def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``ralhe finetune VOXELIZED.ply OUT.ply (--dataset DIR | --teacher PLY)``."""
    p.add_argument("input", help="voxelized INRIA .ply (its positions are kept)")
    p.add_argument("output", help="finetuned .ply to write")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="NeRF-synthetic folder: train on its train split, PSNR on its test split")
    src.add_argument("--teacher", help="the original (unvoxelized) .ply: train on its renders from random views")
    p.add_argument("--iters", type=non_negative_int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--resolution", type=positive_int, default=256,
                   help="width of the training renders in pixels (default 256)")
    p.add_argument("--views-per-step", type=positive_int, default=1, help="views per optimizer step (default 1)")
    p.add_argument("--eval-views", type=positive_int, default=16, help="held-out views for the PSNR (default 16)")
    p.add_argument("--teacher-views", type=positive_int, default=128,
                   help="random teacher views rendered for training (default 128)")
    p.add_argument("--ssim-weight", type=float, default=0.2, help="D-SSIM weight of the loss (default 0.2; 0: L1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_finetune_command(args) -> int:
    from ..gaussians import read_ply, write_ply

    cfg = FinetuneConfig(resolution=args.resolution, views_per_step=args.views_per_step, eval_views=args.eval_views,
                         teacher_views=args.teacher_views, ssim_weight=args.ssim_weight, seed=args.seed,
                         num_threads=args.threads)
    model = read_ply(args.input)
    teacher = read_ply(args.teacher) if args.teacher else None
    out, rep = finetune(model, dataset=args.dataset, teacher=teacher, iters=args.iters, config=cfg,
                        progress=not args.quiet)
    write_ply(out, args.output)
    w, h = rep.resolution
    print(f"PSNR before {rep.psnr_before:.3f} dB, after {rep.psnr_after:.3f} dB "
          f"({rep.eval_views} views, {rep.eval_source}); {rep.iters} steps at {w}x{h}, "
          f"{rep.num_gaussians} Gaussians, {rep.seconds:.1f} s; wrote {args.output}")
    return 0
