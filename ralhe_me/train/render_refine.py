"""Rate-distortion refinement of the trained latents against rendered images.

The attribute-domain loss charges every voxel's error alike, but a viewer sees images: errors
on Gaussians hidden behind others or nearly transparent cost nothing, errors that the
(coded) covariances already make visible cost more, and some attribute errors make up for
the coded shapes. After the attribute-domain schedule, this stage keeps the latents on the
integer grid (straight-through rounding) and minimizes

    c * image MSE(render of the decoded attributes, target image) + lambda * bits / N

over latents, decoders and ARMs, one training view per step. ``c`` converts image MSE to the
units of the attribute-domain distortion (so that ``lambda`` keeps its meaning): it is the
ratio of the trained solution's weighted attribute MSE to the image MSE its errors make.

The image term sees the rounded latents (straight-through); the rate term sees them plus
uniform noise. With rounded latents alone, a latent at zero has no rate gradient (the
Laplace bin is symmetric about it), so the image gradient walks zeros off to +-1 unopposed:
on kacytran at lambda 6e-3 the latents grew from 1.9 to 37 bits per point in 75 steps (82 KB
instead of 47 KB, and larger files at larger lambdas). The noisy rate keeps a pull towards
the predicted mode. As a last guard, the refined state is kept only if its cost (image MSE
on the calibration views, rate of the rounded latents) is below the starting one.

Targets are renders of the uncoded model from random orbit views (never the evaluation
orbit) or the training images of a NeRF-synthetic dataset. Encoder only: it imports the
renderer and an optimizer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..attributes import OPACITY_EPS, AttributeSignals, SignalDistortion
from ..config import TrainingConfig
from ..gaussians import GaussianModel
from ..geometry.octree import OctreeLevels
from .level_rate import LevelRate, rate_parameters, training_rate
from .optimizer import adam, cosine_factor
from .quantization import ste_round

CALIBRATION_VIEWS = 16
LR_FLOOR = 0.02  # the learning rates decay (cosine) to this fraction


class RenderRefineError(ValueError):
    """The render target is inconsistent (no views, wrong image sizes, wrong Gaussian count)."""


@dataclass
class RenderTarget:
    """The fixed geometry the attributes are rendered with, and the views to match."""

    means: Tensor  # [N, 3] voxel (Morton) order, float32
    quats: Tensor  # [N, 4] the coded shapes
    log_scales: Tensor  # [N, 3]
    cameras: list
    images: List[Tensor]  # each [H, W, 3] in [0, 1]
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        if n == 0:
            raise RenderRefineError("the render target has no Gaussians")
        if self.quats.shape != (n, 4) or self.log_scales.shape != (n, 3) or self.means.shape != (n, 3):
            raise RenderRefineError(f"shapes disagree: means {tuple(self.means.shape)}, quats "
                                    f"{tuple(self.quats.shape)}, log_scales {tuple(self.log_scales.shape)}")
        if len(self.cameras) == 0 or len(self.cameras) != len(self.images):
            raise RenderRefineError(f"need as many images as cameras (> 0), got {len(self.cameras)} cameras "
                                    f"and {len(self.images)} images")
        for i, (cam, img) in enumerate(zip(self.cameras, self.images)):
            if tuple(img.shape) != (cam.height, cam.width, 3):
                raise RenderRefineError(f"image {i} has shape {tuple(img.shape)}, its camera is "
                                        f"{cam.width}x{cam.height}")

    @property
    def num_points(self) -> int:
        return int(self.means.shape[0])

    @classmethod
    def from_renders(cls, coded: GaussianModel, teacher: GaussianModel, views: int, resolution: int,
                     seed: int = 11) -> "RenderTarget":
        """Renders of ``teacher`` (the uncoded model) from ``views`` random orbit cameras; the
        geometry is ``coded``'s (voxel order, coded shapes)."""
        from ..render import render_model
        from .finetune import sample_orbit_cameras

        if views < 1 or resolution < 8:
            raise RenderRefineError(f"need views >= 1 and resolution >= 8, got {views} and {resolution}")
        cams = sample_orbit_cameras(teacher.means, views, resolution, resolution, seed=seed)
        images = [render_model(teacher, c) for c in cams]
        return cls.with_geometry(coded, cams, images)

    @classmethod
    def from_dataset(cls, coded: GaussianModel, root: str, views: Optional[int], resolution: int) -> "RenderTarget":
        """The train split of a NeRF-synthetic folder (first ``views`` images, all if None)."""
        from ..render import load_nerf_synthetic

        cams, images = load_nerf_synthetic(root, "train", resolution=resolution, limit=views)
        return cls.with_geometry(coded, cams, [torch.as_tensor(np.asarray(i, dtype=np.float32)) for i in images])

    @classmethod
    def with_geometry(cls, coded: GaussianModel, cameras: Sequence, images: Sequence) -> "RenderTarget":
        return cls(means=torch.as_tensor(coded.means, dtype=torch.float32),
                   quats=torch.as_tensor(coded.quats, dtype=torch.float32),
                   log_scales=torch.as_tensor(coded.log_scales, dtype=torch.float32),
                   cameras=list(cameras), images=[torch.as_tensor(i, dtype=torch.float32) for i in images])

    def render(self, opacity_logits: Tensor,  # [N]
               sh: Tensor,  # [N, K, 3]
               view: int) -> Tensor:  # [H, W, 3]
        from ..render import render

        return render(self.means, self.quats, self.log_scales, opacity_logits, sh, self.cameras[view],
                      background=self.background)

    def image_mse(self, opacity_logits: Tensor, sh: Tensor, view: int) -> Tensor:  # scalar
        return self.render_mse(self.render(opacity_logits, sh, view), view)

    def render_mse(self, image: Tensor,  # [H, W, 3] a render from camera ``view``
                   view: int) -> Tensor:  # scalar
        return ((image - self.images[view]) ** 2).mean()


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose gradient is made contiguous: the renderer's SH gradient comes back
    point-major ([N, K, 3] memory seen as [K, N, 3]), and the decoders' batched products over
    attributes took 66 ms each on that layout, 25 ms after the copy (483k voxels)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


class RenderableAttributes:
    """Normalized decoder outputs -> (opacity logits [N], SH [N, K, 3]), differentiably: the
    torch twin of ``denormalize_sh`` / ``denormalize_opacity_logits``."""

    def __init__(self, signals: AttributeSignals):
        k = signals.sh.shape[0]
        self.k = k
        self.mean_sh = torch.as_tensor(signals.mean[:k], dtype=torch.float32)[:, None, :]  # [K, 1, 3]
        scale = torch.as_tensor(signals.std[:k], dtype=torch.float32)[:, None, None]  # [K, 1, 1]
        if signals.gain is not None:
            scale = scale * torch.as_tensor(signals.gain, dtype=torch.float32)[None, :, None]  # [K, N, 1]
        self.scale_sh = scale
        self.mean_op = float(signals.mean[k, 0])
        self.std_op = float(signals.std[k])

    def __call__(self, sh_norm: Tensor,  # [K, N, 3]
                 op_norm: Tensor  # [1, N, 1]
                 ) -> Tuple[Tensor, Tensor]:
        sh = (_ContiguousGrad.apply(sh_norm) * self.scale_sh + self.mean_sh).permute(1, 0, 2)
        alpha = (op_norm.reshape(-1) * self.std_op + self.mean_op).clamp(OPACITY_EPS, 1 - OPACITY_EPS)
        return torch.log(alpha) - torch.log1p(-alpha), sh


def view_renders(target: RenderTarget, attributes: Tuple[Tensor, Tensor],
                 views: int = CALIBRATION_VIEWS) -> List[Tensor]:  # each [H, W, 3]
    """Renders of ``attributes`` (opacity logits, SH) on the first ``views`` views of ``target``."""
    return [target.render(*attributes, v) for v in range(min(views, len(target.cameras)))]


@torch.no_grad()
def calibrate(signals: AttributeSignals, decoded: Tuple[Tensor, Tensor], target: RenderTarget,
              to_render: RenderableAttributes, views: int = CALIBRATION_VIEWS,
              decoded_renders: Optional[List[Tensor]] = None) -> Optional[float]:
    """Attribute-domain distortion per unit of image MSE: the decoded errors' weighted MSE over
    the mean squared difference they make between renders (first ``views`` views) of the
    decoded and of the uncoded attributes. Comparing the two renders, not each with the
    target, leaves out the target's own residual (coded shapes), whose cross term with the
    errors is linear in them. None when the errors change no pixel. ``decoded_renders``: the
    decoded attributes' :func:`view_renders`, when already made."""
    if decoded_renders is None:
        decoded_renders = view_renders(target, to_render(*decoded), views)
    ref = to_render(torch.as_tensor(signals.sh), torch.as_tensor(signals.opacity))
    added = float(np.mean([((img - target.render(*ref, v)) ** 2).mean().item()
                           for v, img in enumerate(decoded_renders)]))
    if not added > 0:
        return None
    return float(SignalDistortion(signals)(*decoded)) / added


def state_copy(module: torch.nn.Module) -> dict:
    """A detached copy of ``module``'s state, to restore with ``load_state_dict``."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def refine_latents(synthesis, latents: List[Tensor], signals: AttributeSignals, levels: OctreeLevels,
                   training: TrainingConfig, lmbda: float, target: RenderTarget,
                   progress: Optional[Callable[[int, dict], None]] = None,
                   step_offset: int = 0, level_rate: Optional[LevelRate] = None) -> Tuple[List[Tensor], dict]:
    """``training.render_steps`` image-domain steps from the integer ``latents`` (per plane
    [A, n]); returns the new integer latents and a history record. ``synthesis`` (decoders and
    ARMs) is updated in place; so is ``level_rate`` (train/level_rate.py), the rate model used
    instead of the ARMs' when given."""
    start = time.perf_counter()
    n = levels.sizes[0]
    if target.num_points != n:
        raise RenderRefineError(f"the render target has {target.num_points} Gaussians, the levels {n} voxels")
    to_render = RenderableAttributes(signals)
    with torch.no_grad():
        decoded = synthesis.decode(latents)
        decoded_renders = view_renders(target, to_render(*decoded))
    c = calibrate(signals, decoded, target, to_render, decoded_renders=decoded_renders)
    record = {"step": "render_refine", "calibration": c, "steps": 0}
    if c is None:  # the attribute errors do not show in the images: nothing to refine against
        return latents, record
    start_state = state_copy(synthesis)
    start_level_state = None if level_rate is None else state_copy(level_rate)
    start_cost = rd_cost(synthesis, latents, target, decoded_renders, c, lmbda, level_rate)
    params = [torch.nn.Parameter(l.detach().clone()) for l in latents]
    lr, net_lr = training.render_learning_rate, training.render_network_learning_rate
    groups = [{"params": params, "lr": lr, "base": lr},
              {"params": rate_parameters(synthesis, level_rate), "lr": lr, "base": lr},
              {"params": [p for _, p in synthesis.decoder_parameters()], "lr": net_lr, "base": net_lr}]
    opt = adam(groups)
    gen = torch.Generator().manual_seed(training.seed + 1)
    order = torch.randperm(len(target.cameras), generator=gen).tolist()
    steps = int(training.render_steps)
    for step in range(steps):
        factor = cosine_factor(step / steps, LR_FLOOR)
        for g in opt.param_groups:
            g["lr"] = g["base"] * factor
        q = [ste_round(p) for p in params]
        opacity_logits, sh = to_render(*synthesis.decode(q))
        image_mse = target.image_mse(opacity_logits, sh, order[step % len(order)])
        bits = training_rate(synthesis, level_rate, params, subsample=training.render_rate_subsample,
                             generator=gen, noise=True)
        loss = c * image_mse + lmbda * bits / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None and (step % 25 == 0 or step == steps - 1):
            progress(step_offset + step, {"step": step_offset + step, "loss": loss.item(),
                                          "distortion": c * image_mse.item(),
                                          "bits_per_point": bits.item() / n, "hard": True})
    with torch.no_grad():
        final = [torch.round(p.detach()) for p in params]
    with torch.no_grad():
        end_cost = rd_cost(synthesis, final, target, view_renders(target, to_render(*synthesis.decode(final))),
                           c, lmbda, level_rate)
    kept = end_cost["cost"] < start_cost["cost"]
    if not kept:
        synthesis.load_state_dict(start_state)
        if level_rate is not None:
            level_rate.load_state_dict(start_level_state)
        final = latents
    record.update(steps=steps, seconds=time.perf_counter() - start, kept=kept, start=start_cost, end=end_cost)
    return final, record


@torch.no_grad()
def rd_cost(synthesis, latents: List[Tensor], target: RenderTarget, renders: List[Tensor], c: float,
            lmbda: float, level_rate: Optional[LevelRate] = None) -> dict:
    """The refinement's objective for integer ``latents`` (per plane [A, n]) whose decoded
    attributes render as ``renders`` (:func:`view_renders`): ``c`` times their image MSE against
    the target's views plus ``lmbda`` times the bits per point under the float ARM (or
    ``level_rate``), with its two parts."""
    image_mse = float(np.mean([target.render_mse(img, v).item() for v, img in enumerate(renders)]))
    bits_per_point = float(training_rate(synthesis, level_rate, latents)) / target.num_points
    return {"cost": c * image_mse + lmbda * bits_per_point, "image_mse": image_mse, "bits_per_point": bits_per_point}
