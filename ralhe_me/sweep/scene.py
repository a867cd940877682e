"""A scene's shared preparation: done once, then handed to every (codec, rate) job of the scene.

Voxelizing, coding the covariances, finetuning with the coded shapes, rendering the evaluation
views and the image-domain targets cost as much as several jobs, and every job of a scene at one
geometry tier (encode/operating_point.py: the depth and covariance precision that its lambda
calls for) codes the same result, so a sweep computes it once per scene and tier and passes it
on (on Ray, through the object store).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


from ..config import CodecConfig, load_preset
from ..encode.encoder import GeometryCode, attribute_views, finetune_geometry, left_out_note, prepare
from ..encode.operating_point import geometry_tier
from ..eval.evaluation import ViewSet, dataset_views, orbit_views, score_views
from ..gaussians import GaussianModel, read_ply
from ..geometry.octree import VoxelizedModel
from ..threads import intra_op_threads
from ..train.render_refine import RenderTarget
from .spec import RALHE, SceneSettings



@dataclass
class PreparedScene:
    """Everything the jobs of one scene share (picklable: it travels to Ray workers)."""

    settings: SceneSettings
    tier: int  # geometry tier
    key: str  # SceneSettings.preparation_key(tier)
    num_gaussians: int
    config: CodecConfig  # the preset with the scene's overrides and the tier (lambda set per job)
    views: ViewSet  # the evaluation views every decoded file is scored on
    voxelized: VoxelizedModel  # with the coded shapes, finetuned: what every codec codes
    geometry: GeometryCode  # positions and covariances, shared by every file
    render_target: Optional[RenderTarget]  # image-domain refinement targets, or the weight step's views (RALHE jobs)
    summary: dict  # PSNRs of the preparation stages, seconds, sizes (scene.json)


def scene_config(settings: SceneSettings, tier: int = 0) -> CodecConfig:
    """The preset with the scene's overrides, at geometry tier ``tier``."""
    config = load_preset(settings.preset)
    config.geometry_tier = tier
    config.depth = settings.depth
    config.covariance_codebook = settings.codebook
    config.covariance_step = settings.covariance_step
    config.keep_undrawn = settings.keep_undrawn
    if settings.importance_views is not None:
        config.importance_views = settings.importance_views
    if settings.shape_sensitivity_views is not None:  # asked for: at every tier
        config.shape_sensitivity_views = settings.shape_sensitivity_views
        config.shape_sensitivity_min_tier = 0
    if settings.steps:
        config.training.steps = settings.steps
    if settings.render_steps is not None:
        config.training.render_steps = settings.render_steps
    if settings.finetune_iters is not None:
        config.finetune.iters = settings.finetune_iters
    config.training.threads = settings.threads
    return config


def load_scene(settings: SceneSettings) -> GaussianModel:
    if settings.scene:
        return read_ply(settings.scene)
    from ..default_scene import make_default_scene

    return make_default_scene(settings.num_gaussians, settings.seed)


def prepare_scene(settings: SceneSettings, tier: int = 0, log: Callable[[str], None] = print,
                  progress: bool = False) -> PreparedScene:
    """Load (or generate), voxelize, code the covariances, finetune, render the views, at geometry
    tier ``tier``. Writes nothing (it may run on another machine): see :func:`preparation_record`."""
    with intra_op_threads(settings.threads):
        return _prepare(settings, tier, log, progress)


def _prepare(settings: SceneSettings, tier: int, log, progress: bool) -> PreparedScene:
    t_start = time.perf_counter()
    original = load_scene(settings)
    config = scene_config(settings, tier)
    log(f"scene {settings.name}: {len(original)} Gaussians, SH degree {original.sh_degree}, "
        f"{geometry_tier(config).describe()}")
    size = (settings.resolution, settings.resolution)
    if settings.dataset:
        views = dataset_views(settings.dataset, "test", settings.views, size)
    else:
        views = orbit_views(original, settings.views, size, progress=progress)

    vox = prepare(original, config)
    vox_psnr = score_views(vox.model, views).psnr
    log(f"{settings.name}: voxelized at depth {vox.depth}: {len(vox.model)} voxels, PSNR {vox_psnr:.2f} dB"
        f"{left_out_note(vox)}")
    coded_psnr = None

    def on_coded(coded, covariance):
        nonlocal coded_psnr
        coded_psnr = score_views(coded.model, views).psnr
        log(f"{settings.name}: covariance coded (codebook {covariance.codebook.size}, residual step "
            f"{covariance.steps.log_scale:g}): PSNR {coded_psnr:.2f} dB")

    vox, geometry, ft_report = finetune_geometry(vox, original, config, config.finetune.iters, settings.dataset,
                                                 progress=progress, on_coded=on_coded)
    reference_psnr = coded_psnr if ft_report is None else score_views(vox.model, views).psnr
    if ft_report is not None:
        log(f"{settings.name}: finetuned: PSNR {reference_psnr:.2f} dB")
    log(f"{settings.name}: geometry: positions {len(geometry.positions)} bytes, covariance "
        f"{len(geometry.covariance)} bytes (codebook {geometry.codebook_size})")
    render_target = None
    if settings.codecs.get(RALHE):
        render_target = attribute_views(vox, geometry, original, config, settings.dataset)
    key = settings.preparation_key(tier)
    summary = {"scene": settings.name, "key": key, "geometry_tier": tier, "num_gaussians": len(original),
               "num_voxels": len(vox.model), "depth": vox.depth, "sh_degree": original.sh_degree,
               "voxelized_psnr": vox_psnr,
               "covariance_coded_psnr": coded_psnr, "finetuned_psnr": reference_psnr,
               "positions_bytes": len(geometry.positions), "covariance_bytes": len(geometry.covariance),
               "preprocess_seconds": time.perf_counter() - t_start}
    return PreparedScene(settings, tier, key, len(original), config, views, vox, geometry, render_target,
                         summary)



@dataclass
class PreparationRecord:
    """The small part of a preparation that the sweep's process writes to the scene's folder:
    ``scene.json`` (PSNR of each stage, sizes, seconds) and the voxel coordinates that the latent
    figure draws."""

    summary: dict
    coords: np.ndarray  # [N, 3] int64, Morton order
    depth: int
    reference_view: np.ndarray  # [H, W, 3] uint8: the first evaluation view's target
    tier: int = 0  # geometry tier of the preparation


def preparation_record(prepared: PreparedScene) -> PreparationRecord:
    vox = prepared.voxelized
    reference = (np.clip(prepared.views.images[0], 0, 1) * 255 + 0.5).astype(np.uint8)
    return PreparationRecord(prepared.summary, vox.coords, vox.depth, reference, prepared.tier)
