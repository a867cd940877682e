"""Adaptive density control of 3DGS training: clone, split, prune and opacity reset.

The parameters live in a dict of leaf tensors, one per Adam param group (see
:class:`GaussianParams`); every change of the Gaussian count edits the tensors *and* Adam's
moments row by row, so an optimizer step after densification behaves as in the INRIA trainer
(new Gaussians start with zero moments, survivors keep theirs).

The INRIA trainer accumulates the norm of the gradient of the projected 2D means (in NDC
units). Our renderer returns only the image, so the 2D gradient is recovered from the 3D one:
with p the camera-space position, u = fx p_x / p_z + cx, so the part of dL/dp_x that flows
through u is dL/du fx / p_z, hence dL/du ~= (R dL/dmean)_x p_z / fx (the smaller paths through
the covariance and the SH direction are ignored), and dL/dndc_x = dL/du W / 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from ..gaussians import GaussianModel

PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
NEAR_PLANE = 0.2  # the renderer's


class DensifyError(ValueError):
    """Inconsistent densification input (sizes of statistics and parameters differ, bad config)."""


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1.0 - x))


@dataclass
class DensifyConfig:
    """Thresholds of the INRIA recipe; screen sizes are fractions of the image width."""

    grad_threshold: float = 2e-4  # mean view-space (NDC) gradient norm that triggers clone/split
    percent_dense: float = 0.01  # clone if max scale <= this * scene extent, else split
    split_count: int = 2  # children of a split Gaussian
    min_opacity: float = 0.005  # prune below
    # prune a screen radius above this * width; None = off, which is what the INRIA code does in
    # effect (its max_radii2D is zeroed by the clone/split just before the test; their issue #643)
    max_screen_fraction: Optional[float] = None
    max_world_fraction: float = 0.1  # prune max scale above this * scene extent
    opacity_reset_value: float = 0.01

    def __post_init__(self) -> None:
        if self.split_count < 2:
            raise DensifyError(f"split_count must be >= 2, got {self.split_count}")
        if not 0.0 < self.opacity_reset_value < 1.0:
            raise DensifyError(f"opacity_reset_value must be in (0, 1), got {self.opacity_reset_value}")


# ------------------------------------------------------------------------------------------------
# Parameters + optimizer
# ------------------------------------------------------------------------------------------------
class GaussianParams:
    """Trainable tensors of a Gaussian model and the Adam optimizer over them.

    Tensors (N Gaussians, K SH coefficients): means [N, 3], log_scales [N, 3], quats [N, 4],
    opacity_logits [N], sh_dc [N, 1, 3], sh_rest [N, K-1, 3]. ``lrs`` maps a name to its learning
    rate; a name without one (or with an empty tensor) is kept fixed and not optimized.
    """

    def __init__(self, tensors: Dict[str, torch.Tensor], lrs: Dict[str, float]):
        missing = [n for n in PARAM_NAMES if n not in tensors]
        if missing:
            raise DensifyError(f"missing parameter tensors {missing}")
        n = tensors["means"].shape[0]
        for name in PARAM_NAMES:
            if tensors[name].shape[0] != n:
                raise DensifyError(f"{name} has {tensors[name].shape[0]} rows, means has {n}")
        self.tensors: Dict[str, torch.Tensor] = {}
        groups = []
        for name in PARAM_NAMES:
            t = tensors[name].detach().clone()
            trainable = name in lrs and t.numel() > 0
            t.requires_grad_(trainable)
            self.tensors[name] = t
            if trainable:
                groups.append({"params": [t], "lr": float(lrs[name]), "name": name})
        if not groups:
            raise DensifyError("no parameter to optimize (every learning rate missing)")
        self.optimizer = torch.optim.Adam(groups, lr=0.0, eps=1e-15)

    # -- conversion ------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: GaussianModel, lrs: Dict[str, float], device=None) -> "GaussianParams":
        def t(a):
            return torch.as_tensor(np.array(a, dtype=np.float32, copy=True), device=device)

        return cls({"means": t(model.means), "log_scales": t(model.log_scales), "quats": t(model.quats),
                    "opacity_logits": t(model.opacity_logits), "sh_dc": t(model.sh[:, :1]),
                    "sh_rest": t(model.sh[:, 1:])}, lrs)

    def to_model(self) -> GaussianModel:
        g = {k: v.detach().cpu().numpy() for k, v in self.tensors.items()}
        return GaussianModel(means=g["means"], log_scales=g["log_scales"], quats=g["quats"],
                             opacity_logits=g["opacity_logits"],
                             sh=np.concatenate([g["sh_dc"], g["sh_rest"]], axis=1))

    def __len__(self) -> int:
        return int(self.tensors["means"].shape[0])

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def sh(self, degree: int) -> torch.Tensor:  # [N, (degree+1)^2, 3]
        k = (degree + 1) ** 2
        if k > 1 + self.tensors["sh_rest"].shape[1]:
            raise DensifyError(f"SH degree {degree} needs {k} coefficients, the model has "
                               f"{1 + self.tensors['sh_rest'].shape[1]}")
        return torch.cat([self.tensors["sh_dc"], self.tensors["sh_rest"][:, :k - 1]], dim=1)

    def group(self, name: str) -> Optional[dict]:
        for g in self.optimizer.param_groups:
            if g["name"] == name:
                return g
        return None

    def set_lr(self, name: str, lr: float) -> None:
        g = self.group(name)
        if g is not None:
            g["lr"] = lr

    # -- row edits that keep Adam's moments aligned ----------------------------------------------
    def _replace(self, name: str, value: torch.Tensor, moment_fn) -> None:
        """Install ``value`` as parameter ``name``; ``moment_fn`` maps an old moment tensor to the new one."""
        old = self.tensors[name]
        new = value.detach().clone().requires_grad_(old.requires_grad)
        g = self.group(name)
        if g is not None:
            state = self.optimizer.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key] = moment_fn(state[key])
                self.optimizer.state[new] = state
            g["params"][0] = new
        self.tensors[name] = new

    def keep(self, mask: torch.Tensor) -> None:
        """Keep the Gaussians where ``mask`` [N] is true (with their moments)."""
        for name in PARAM_NAMES:
            self._replace(name, self.tensors[name][mask], lambda m: m[mask])

    def append(self, new: Dict[str, torch.Tensor]) -> None:
        """Append Gaussians (one tensor per name, same row count); their moments start at zero."""
        counts = {new[n].shape[0] for n in PARAM_NAMES}
        if len(counts) != 1:
            raise DensifyError(f"appended tensors have different row counts {sorted(counts)}")
        for name in PARAM_NAMES:
            add = new[name].to(self.tensors[name])
            self._replace(name, torch.cat([self.tensors[name].detach(), add], 0),
                          lambda m, a=add: torch.cat([m, torch.zeros_like(a)], 0))

    def reset_opacity(self, value: float) -> None:
        """opacity <- min(opacity, value), with the opacity moments zeroed (INRIA's reset)."""
        with torch.no_grad():
            op = torch.sigmoid(self.tensors["opacity_logits"])
            logit = inverse_sigmoid(torch.clamp_max(op, value))
        self._replace("opacity_logits", logit, torch.zeros_like)

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"tensors": {k: v.detach().clone() for k, v in self.tensors.items()},
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore tensors (any count) and the optimizer (same groups as at construction)."""
        for name in PARAM_NAMES:
            self._replace(name, state["tensors"][name].to(self.tensors[name].device), lambda m: m)
        self.optimizer.state.clear()
        self.optimizer.load_state_dict(state["optimizer"])


# ------------------------------------------------------------------------------------------------
# Statistics of a training view
# ------------------------------------------------------------------------------------------------
def screen_footprint(means: torch.Tensor,  # [N, 3]
                     log_scales: torch.Tensor,  # [N, 3]
                     camera) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(visible [N] bool, radius [N] pixels, depth [N]) of each Gaussian in ``camera``.

    The radius is 3 sigma of the largest axis at the center's depth (the renderer's own radius
    uses the projected covariance; this isotropic bound is what the size pruning needs).
    """
    with torch.no_grad():
        w2c = torch.as_tensor(np.asarray(camera.world_to_cam), dtype=means.dtype, device=means.device)
        p = means @ w2c[:3, :3].T + w2c[:3, 3]
        z = p[:, 2]
        zs = torch.clamp_min(z, NEAR_PLANE)
        u = camera.fx * p[:, 0] / zs + camera.cx
        v = camera.fy * p[:, 1] / zs + camera.cy
        radius = 3.0 * torch.exp(log_scales.max(dim=1).values) * max(camera.fx, camera.fy) / zs
        r = radius + 1.0
        visible = (z > NEAR_PLANE) & (u > -r) & (u < camera.width + r) & (v > -r) & (v < camera.height + r)
    return visible, torch.where(visible, radius, torch.zeros_like(radius)), z


def view_space_grad_norm(means_grad: torch.Tensor,  # [N, 3] dL/dmeans of one view
                         depth: torch.Tensor,  # [N] camera-space z
                         camera) -> torch.Tensor:  # [N]
    """Norm of the NDC gradient of the projected means, estimated from the 3D gradient (see module doc)."""
    w2c = torch.as_tensor(np.asarray(camera.world_to_cam), dtype=means_grad.dtype, device=means_grad.device)
    g_cam = means_grad @ w2c[:3, :3].T
    z = torch.clamp_min(depth, NEAR_PLANE)
    g_ndc_x = g_cam[:, 0] * z / camera.fx * (0.5 * camera.width)
    g_ndc_y = g_cam[:, 1] * z / camera.fy * (0.5 * camera.height)
    return torch.sqrt(g_ndc_x * g_ndc_x + g_ndc_y * g_ndc_y)


class DensityStats:
    """Per Gaussian: summed view-space gradient norm, number of views seen, largest screen radius."""

    def __init__(self, n: int, device=None):
        self.grad_sum = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)
        self.max_radius = torch.zeros(n, device=device)  # as a fraction of the image width

    def __len__(self) -> int:
        return int(self.grad_sum.shape[0])

    def update(self, grad_norm: torch.Tensor, visible: torch.Tensor, radius_fraction: torch.Tensor) -> None:
        if not (len(grad_norm) == len(visible) == len(radius_fraction) == len(self)):
            raise DensifyError(f"statistics of {len(grad_norm)} Gaussians for a model of {len(self)}")
        vis = visible.to(self.grad_sum.dtype)
        self.grad_sum += grad_norm.to(self.grad_sum.dtype) * vis
        self.count += vis
        self.max_radius = torch.maximum(self.max_radius, radius_fraction.to(self.max_radius.dtype) * vis)

    def mean_grad(self) -> torch.Tensor:  # [N]
        return self.grad_sum / torch.clamp_min(self.count, 1.0)

    def state_dict(self) -> dict:
        return {"grad_sum": self.grad_sum.clone(), "count": self.count.clone(), "max_radius": self.max_radius.clone()}

    @classmethod
    def from_state(cls, state: dict) -> "DensityStats":
        s = cls(0)
        s.grad_sum, s.count, s.max_radius = (state[k].clone() for k in ("grad_sum", "count", "max_radius"))
        return s


# ------------------------------------------------------------------------------------------------
# The density control step
# ------------------------------------------------------------------------------------------------
@dataclass
class DensifyResult:
    cloned: int
    split: int  # parents replaced by ``split_count`` children each
    pruned: int
    before: int
    after: int


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:  # [N, 4] (w, x, y, z), any norm -> [N, 3, 3]
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def densify_and_prune(params: GaussianParams, stats: DensityStats, config: DensifyConfig, extent: float,
                      prune_large: bool, generator: Optional[torch.Generator] = None) -> DensifyResult:
    """One INRIA density-control step; returns the counts. ``stats`` must be reset by the caller.

    1. clone: mean gradient >= threshold and max scale <= percent_dense * extent -> an exact copy
       is appended (INRIA: the copy and the original then drift apart under the optimizer);
    2. split: mean gradient >= threshold and max scale > percent_dense * extent -> ``split_count``
       children at positions drawn from the parent's Gaussian, scales divided by 0.8 * count,
       other attributes copied; the parent is removed;
    3. prune: opacity < min_opacity, and if ``prune_large``, max scale > max_world_fraction *
       extent or (when set) largest screen radius > max_screen_fraction of the width.
    """
    n0 = len(params)
    if len(stats) != n0:
        raise DensifyError(f"statistics are for {len(stats)} Gaussians, the model has {n0}")
    if not extent > 0:
        raise DensifyError(f"scene extent must be positive, got {extent}")
    t = params.tensors
    with torch.no_grad():
        grad = stats.mean_grad()
        hot = grad >= config.grad_threshold
        max_scale = torch.exp(t["log_scales"].max(dim=1).values)
        clone = hot & (max_scale <= config.percent_dense * extent)
        split = hot & (max_scale > config.percent_dense * extent)

        radius = stats.max_radius.clone()  # follows the rows through the edits (0 for new ones)

        # clone (appended rows are never split in this step)
        if clone.any():
            params.append({name: t[name][clone] for name in PARAM_NAMES})
            t = params.tensors
        n_new = len(params) - n0
        split = torch.cat([split, torch.zeros(n_new, dtype=torch.bool, device=split.device)])
        radius = torch.cat([radius, radius.new_zeros(n_new)])

        # split
        n_split = int(split.sum())
        if n_split:
            k = config.split_count
            scales = torch.exp(t["log_scales"][split]).repeat(k, 1)  # [k*S, 3]
            noise = torch.randn(scales.shape, generator=generator, dtype=scales.dtype, device="cpu")
            rot = quat_to_rotmat(t["quats"][split]).repeat(k, 1, 1)  # [k*S, 3, 3]
            children = {name: t[name][split].repeat((k,) + (1,) * (t[name].dim() - 1)) for name in PARAM_NAMES}
            children["means"] = children["means"] + (rot @ (noise.to(scales.device) * scales)[..., None])[..., 0]
            children["log_scales"] = torch.log(scales / (0.8 * k))
            params.append(children)
            keep = torch.cat([~split, torch.ones(k * n_split, dtype=torch.bool, device=split.device)])
            params.keep(keep)
            radius = torch.cat([radius, radius.new_zeros(k * n_split)])[keep]
            t = params.tensors

        # prune
        prune = torch.sigmoid(t["opacity_logits"]) < config.min_opacity
        if prune_large:
            prune |= torch.exp(t["log_scales"].max(dim=1).values) > config.max_world_fraction * extent
            if config.max_screen_fraction is not None:
                prune |= radius.to(prune.device) > config.max_screen_fraction
        n_pruned = int(prune.sum())
        if n_pruned:
            params.keep(~prune)
    return DensifyResult(cloned=int(clone.sum()), split=n_split, pruned=n_pruned, before=n0, after=len(params))
