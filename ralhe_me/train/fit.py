"""Train a 3DGS model from a NeRF-synthetic dataset: the INRIA recipe on our renderer.

Random initialization in a cube (INRIA: 100k points in [-1.3, 1.3]^3 for synthetic scenes),
SH degree raised every ``sh_increase_every`` steps, adaptive density control (clone / split on
the view-space gradient, prune by opacity and size, opacity reset; see :mod:`ralhe_me.train.densify`),
exponential decay of the position learning rate, and checkpoints that resume bit for bit.
Runs on the CPU, or on CUDA when present (same render API).
This module is encoder-side tooling: it imports the renderer and the optimizer.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..argtypes import non_negative_int, positive_int
from .densify import DensifyConfig, DensityStats, GaussianParams, densify_and_prune, screen_footprint, \
    view_space_grad_norm
from ..gaussians import SH_COEFFS_FOR_DEGREE, GaussianModel
from .finetune import (ViewSampler, mean_psnr, photometric_loss, psnr_from_mse,
                       resolve_device, torch_threads)

SH_C0 = 0.28209479177387814
CHECKPOINT_FORMAT = "ralhe-fit-checkpoint-1"


class FitError(ValueError):
    """Bad fitting request (dataset, schedule, checkpoint); the message says what is wrong."""


@dataclass
class FitConfig:
    """INRIA's 30k-step recipe by default; :meth:`for_iterations` scales its time constants."""

    sh_degree: int = 3
    sh_increase_every: int = 1000
    init_points: int = 100_000
    init_half_extent: float = 1.3  # random points in [-h, h]^3
    init_opacity: float = 0.1
    lr_position_init: float = 1.6e-4  # times the scene extent
    lr_position_final: float = 1.6e-6
    lr_sh_dc: float = 2.5e-3
    lr_sh_rest: float = 2.5e-3 / 20.0
    lr_opacity: float = 5e-2
    lr_scaling: float = 5e-3
    lr_rotation: float = 1e-3
    ssim_weight: float = 0.2
    views_per_step: int = 1
    densify_from: int = 500
    densify_until: int = 15_000
    densify_every: int = 100
    opacity_reset_every: int = 3000
    max_gaussians: Optional[int] = None  # stop cloning/splitting above this count (CPU budget)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    checkpoint_every: int = 1000
    eval_views: Optional[int] = None  # test views scored at the end (None: all, 0: none)
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    seed: int = 0
    num_threads: Optional[int] = None
    device: Optional[str] = None  # None/"auto": CUDA when available

    def __post_init__(self) -> None:
        if isinstance(self.densify, dict):
            self.densify = DensifyConfig(**self.densify)
        if self.sh_degree not in SH_COEFFS_FOR_DEGREE:
            raise FitError(f"sh_degree must be 0..3, got {self.sh_degree}")
        for name in ("sh_increase_every", "init_points", "views_per_step", "densify_every", "opacity_reset_every",
                     "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise FitError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.init_opacity < 1.0:
            raise FitError(f"init_opacity must be in (0, 1), got {self.init_opacity}")
        if not (self.lr_position_init > 0 and self.lr_position_final > 0):
            raise FitError("position learning rates must be positive")
        self.background = tuple(float(v) for v in self.background)

    @classmethod
    def for_iterations(cls, iters: int, **overrides) -> "FitConfig":
        """The recipe with its schedule scaled from 30k steps to ``iters`` (densify over the first half)."""
        if iters < 1:
            raise FitError(f"iters must be >= 1, got {iters}")
        every = min(100, max(1, iters // 50))
        sched = dict(sh_increase_every=max(1, iters // 30), densify_from=min(500, iters // 10),
                     densify_until=iters // 2, densify_every=every,
                     opacity_reset_every=max(every, iters // 10), checkpoint_every=max(1, min(1000, iters // 10)))
        sched.update(overrides)
        return cls(**sched)


@dataclass
class FitResult:
    model: GaussianModel
    iteration: int  # steps done
    finished: bool  # False when stopped early by ``stop_after``
    psnr: Optional[float]  # mean PSNR on the test views (None: not evaluated)
    eval_views: int
    num_gaussians: int
    resolution: Tuple[int, int]
    seconds: float  # this call
    train_seconds: float  # the optimization loop of this call
    events: List[dict] = field(default_factory=list)  # density-control steps


def scene_extent(cameras) -> float:
    """INRIA's ``cameras_extent``: 1.1 x the largest distance of a camera center from their mean."""
    centers = np.stack([c.center for c in cameras])
    return float(1.1 * np.linalg.norm(centers - centers.mean(axis=0), axis=1).max())


def random_init(num_points: int, half_extent: float, sh_degree: int, opacity: float, seed: int) -> GaussianModel:
    """Uniform points in a cube, random colors, isotropic scales from the 3 nearest neighbours."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    means = rng.uniform(-half_extent, half_extent, size=(num_points, 3)).astype(np.float32)
    colors = rng.uniform(0.0, 1.0, size=(num_points, 3))
    sh = np.zeros((num_points, SH_COEFFS_FOR_DEGREE[sh_degree], 3), np.float32)
    sh[:, 0] = (colors - 0.5) / SH_C0
    k = min(4, num_points)
    if k > 1:
        dist, _ = cKDTree(means).query(means, k=k)
        dist2 = np.maximum((dist[:, 1:] ** 2).mean(axis=1), 1e-7)
    else:
        dist2 = np.full(num_points, (half_extent * 0.1) ** 2)
    log_scales = np.repeat(np.log(np.sqrt(dist2))[:, None], 3, axis=1)
    quats = np.zeros((num_points, 4), np.float32)
    quats[:, 0] = 1.0
    logit = math.log(opacity / (1.0 - opacity))
    return GaussianModel(means=means, log_scales=log_scales, quats=quats,
                         opacity_logits=np.full(num_points, logit, np.float32), sh=sh)


def position_lr(step: int, iters: int, init: float, final: float) -> float:
    """Log-linear decay from ``init`` at step 0 to ``final`` at ``iters``."""
    t = min(max(step / max(iters, 1), 0.0), 1.0)
    return math.exp((1.0 - t) * math.log(init) + t * math.log(final))


def _learning_rates(cfg: FitConfig, extent: float) -> dict:
    return {"means": cfg.lr_position_init * extent, "sh_dc": cfg.lr_sh_dc, "sh_rest": cfg.lr_sh_rest,
            "opacity_logits": cfg.lr_opacity, "log_scales": cfg.lr_scaling, "quats": cfg.lr_rotation}


RUNTIME_ONLY = ("num_threads", "device", "eval_views", "checkpoint_every")  # may change on resume


def _config_dict(cfg: FitConfig) -> dict:
    """The settings that shape the result (those a resumed run must share)."""
    d = dataclasses.asdict(cfg)
    d["background"] = list(d["background"])
    for key in RUNTIME_ONLY:
        d.pop(key)
    return d


def _save_checkpoint(path: str, state: dict) -> None:
    tmp = f"{path}.part"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FitError(f"no checkpoint to resume from at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # plain data only: no code runs
    except Exception as exc:  # a truncated or foreign file
        raise FitError(f"{path} is not a readable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise FitError(f"{path} is not a ralhe fit checkpoint")
    return state


def _check_identity(state: dict, identity: dict, checkpoint: str) -> None:
    """Raise :class:`FitError` if the checkpoint was made by a run with other settings."""
    for key, value in identity.items():
        if key == "config":
            diff = sorted(k for k in value if state["identity"]["config"].get(k) != value[k])
            if diff:
                raise FitError(f"checkpoint {checkpoint} was made with other settings: {', '.join(diff)}")
        elif state["identity"].get(key) != value:
            raise FitError(f"checkpoint {checkpoint} has {key}={state['identity'].get(key)}, this run {value}")


def fit(dataset_dir: str, out_path: Optional[str], *, resolution: int = 200, iters: int = 3000,
        config: Optional[FitConfig] = None, checkpoint: Optional[str] = None, resume: bool = False,
        stop_after: Optional[int] = None, train_limit: Optional[int] = None, progress: bool = True) -> FitResult:
    """Fit a model to the train split of ``dataset_dir`` at ``resolution`` px wide; write ``out_path``.

    ``config`` defaults to ``FitConfig.for_iterations(iters)``. ``checkpoint`` is written every
    ``checkpoint_every`` steps and at the end; ``resume`` continues from it (same dataset size,
    resolution, iters and config, else :class:`FitError`). ``stop_after`` ends the call after
    that step (checkpoint written, nothing evaluated or saved): a long fit can run in slices.
    ``train_limit`` keeps only the first train views (tests). The test split, if any, is scored
    at the end on ``config.eval_views`` views.
    """
    from ..render import load_nerf_synthetic, render

    cfg = config or FitConfig.for_iterations(iters)
    if iters < 1:
        raise FitError(f"iters must be >= 1, got {iters}")
    if resolution < 8:
        raise FitError(f"resolution must be >= 8 pixels, got {resolution}")
    if resume and not checkpoint:
        raise FitError("resume needs a checkpoint path")
    if stop_after is not None and stop_after < 1:
        raise FitError(f"stop_after must be >= 1, got {stop_after}")
    start_time = time.perf_counter()
    device = resolve_device(cfg.device)

    identity = {"resolution": resolution, "iters": iters, "config": _config_dict(cfg)}
    state = None
    if resume:  # refuse a mismatched checkpoint before loading any image
        state = load_checkpoint(checkpoint)
        _check_identity(state, identity, checkpoint)

    with torch_threads(cfg.num_threads):
        cams, imgs = load_nerf_synthetic(dataset_dir, "train", resolution=resolution, limit=train_limit)
        if not cams:
            raise FitError(f"{dataset_dir}: the train split has no views")
        extent = scene_extent(cams) if len(cams) > 1 else max(1.1 * float(np.linalg.norm(cams[0].center)), 1e-6)
        targets = [torch.as_tensor(im, device=device) for im in imgs]
        bg = torch.tensor(cfg.background, dtype=torch.float32, device=device)
        lrs = _learning_rates(cfg, extent)

        identity["num_views"] = len(cams)
        generator = torch.Generator()
        generator.manual_seed(cfg.seed)
        sampler = ViewSampler(len(cams), cfg.seed)
        events: List[dict] = []
        if resume:
            _check_identity(state, identity, checkpoint)
            params = GaussianParams.from_model(random_init(1, 1.0, cfg.sh_degree, 0.5, 0), lrs, device=device)
            params.load_state_dict(state["params"])
            stats = DensityStats.from_state({k: v.to(device) for k, v in state["stats"].items()})
            generator.set_state(state["generator"])
            sampler.load_state_dict(state["sampler"])
            events = list(state["events"])
            step0 = int(state["iteration"])
        else:
            init = random_init(cfg.init_points, cfg.init_half_extent, cfg.sh_degree, cfg.init_opacity, cfg.seed)
            params = GaussianParams.from_model(init, lrs, device=device)
            stats = DensityStats(len(params), device=device)
            step0 = 0

        def save(step: int) -> None:
            if checkpoint:
                _save_checkpoint(checkpoint, {
                    "format": CHECKPOINT_FORMAT, "identity": identity, "iteration": step,
                    "params": params.state_dict(), "stats": {k: v.cpu() for k, v in stats.state_dict().items()},
                    "generator": generator.get_state(), "sampler": sampler.state_dict(), "events": events})

        last = iters if stop_after is None else min(iters, stop_after)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=iters, initial=step0, desc="fit", dynamic_ncols=True)
        running = None
        t_train = time.perf_counter()
        white = all(v == 1.0 for v in cfg.background)
        for step in range(step0 + 1, last + 1):  # 1-based, as INRIA counts
            params.set_lr("means", position_lr(step, iters, lrs["means"], cfg.lr_position_final * extent))
            degree = min(cfg.sh_degree, step // cfg.sh_increase_every)
            densifying = step < cfg.densify_until
            views = sampler.take(cfg.views_per_step)
            mse = 0.0
            for v in views:
                prev = None if params["means"].grad is None else params["means"].grad.clone()
                image = render(params["means"], params["quats"], params["log_scales"], params["opacity_logits"],
                               params.sh(degree), cams[v], background=bg)
                loss = photometric_loss(image, targets[v], cfg.ssim_weight) / len(views)
                loss.backward()
                mse += float(((image.detach() - targets[v]) ** 2).mean()) / len(views)
                if densifying:
                    g = params["means"].grad if prev is None else params["means"].grad - prev
                    vis, radius, depth = screen_footprint(params["means"].detach(), params["log_scales"].detach(),
                                                          cams[v])
                    stats.update(view_space_grad_norm(g * len(views), depth, cams[v]), vis, radius / cams[v].width)
            params.optimizer.step()
            params.optimizer.zero_grad(set_to_none=True)

            if densifying:
                if step > cfg.densify_from and step % cfg.densify_every == 0:
                    dcfg = cfg.densify
                    if cfg.max_gaussians is not None and len(params) >= cfg.max_gaussians:
                        dcfg = dataclasses.replace(dcfg, grad_threshold=float("inf"))
                    res = densify_and_prune(params, stats, dcfg, extent, prune_large=step > cfg.opacity_reset_every,
                                            generator=generator)
                    events.append({"step": step, **dataclasses.asdict(res)})
                    stats = DensityStats(len(params), device=device)
                if step % cfg.opacity_reset_every == 0 or (white and step == cfg.densify_from):
                    params.reset_opacity(cfg.densify.opacity_reset_value)

            p = psnr_from_mse(mse)
            running = p if running is None else 0.95 * running + 0.05 * p
            if bar is not None:
                bar.update(1)
                bar.set_postfix(psnr=f"{running:.2f}", n=str(len(params)), sh=str(degree))
            if step % cfg.checkpoint_every == 0 or step == last:
                save(step)
        if bar is not None:
            bar.close()
        train_seconds = time.perf_counter() - t_train
        done = max(last, step0)
        model = params.to_model()
        finished = done >= iters
        psnr, n_eval = None, 0
        if finished:
            if out_path:
                from ..gaussians import write_ply

                Path(out_path).parent.mkdir(parents=True, exist_ok=True)
                write_ply(model, out_path)
            if cfg.eval_views != 0 and (Path(dataset_dir) / "transforms_test.json").is_file():
                ecams, eimgs = load_nerf_synthetic(dataset_dir, "test", resolution=resolution, limit=cfg.eval_views)
                if ecams:
                    psnr, n_eval = mean_psnr(model, ecams, eimgs, cfg.background, device), len(ecams)
    return FitResult(model=model, iteration=done, finished=finished, psnr=psnr, eval_views=n_eval,
                     num_gaussians=len(model), resolution=(cams[0].width, cams[0].height),
                     seconds=time.perf_counter() - start_time, train_seconds=train_seconds, events=events)


# ------------------------------------------------------------------------------------------------
# Command line (wired into ``ralhe`` by ralhe_me/cli.py)
# ------------------------------------------------------------------------------------------------
def add_fit_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``ralhe fit NERF_DIR OUT.ply``."""
    p.add_argument("dataset", help="NeRF-synthetic folder (transforms_train.json, images; test split scored)")
    p.add_argument("output", help="trained INRIA .ply to write")
    p.add_argument("--resolution", type=positive_int, default=200, help="training image width in pixels (default 200)")
    p.add_argument("--iters", type=positive_int, default=3000,
                   help="optimizer steps (default 3000); the INRIA schedule is scaled to this length")
    p.add_argument("--checkpoint", default=None, help="checkpoint file, written periodically and at the end")
    p.add_argument("--checkpoint-every", type=positive_int, default=None,
                   help="steps between checkpoints (default: iters/10, at most 1000)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--init-points", type=positive_int, default=100_000,
                   help="random initial Gaussians in [-1.3, 1.3]^3 (default 100000)")
    p.add_argument("--max-gaussians", type=positive_int, default=None,
                   help="stop densifying above this many Gaussians (default: no limit)")
    p.add_argument("--sh-degree", type=int, choices=(0, 1, 2, 3), default=3, help="SH degree (default 3)")
    p.add_argument("--train-views", type=positive_int, default=None,
                   help="use only the first N training views (default: all)")
    p.add_argument("--eval-views", type=non_negative_int, default=None,
                   help="test views scored at the end (default all; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_fit_command(args) -> int:
    overrides = dict(init_points=args.init_points, max_gaussians=args.max_gaussians, sh_degree=args.sh_degree,
                     eval_views=args.eval_views, seed=args.seed, num_threads=args.threads)
    if args.checkpoint_every is not None:
        overrides["checkpoint_every"] = args.checkpoint_every
    cfg = FitConfig.for_iterations(args.iters, **overrides)
    res = fit(args.dataset, args.output, resolution=args.resolution, iters=args.iters, config=cfg,
              checkpoint=args.checkpoint, resume=args.resume, train_limit=args.train_views,
              progress=not args.quiet)
    w, h = res.resolution
    score = f"test PSNR {res.psnr:.3f} dB over {res.eval_views} views" if res.psnr is not None else "not scored"
    print(f"{res.num_gaussians} Gaussians after {res.iteration} steps at {w}x{h}; {score}; "
          f"{res.seconds:.1f} s; wrote {args.output}")
    return 0
