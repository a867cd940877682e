"""Encode a 3DGS model into a ``.ralhe`` file (encoder side: trains, may render).

Steps: voxelize at depth J (merging Gaussians that share a voxel), code the voxel positions
losslessly, vector-quantize the covariances, train the RALHE attribute model at ``lambda``,
quantize its networks (steps chosen by rate-distortion), entropy code the latents, and pack
everything with the header into one container.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..attributes import attribute_names, extract_signals
from ..baselines.attribute_codecs import weighted_attribute_mse
from ..config import CodecConfig
from ..decode.bitstream import Container, pack
from ..decode.decoder import DEFAULT_DECODE_THREADS
from ..decode.gain_map import encode_gain_map, gain_exponents, gain_voxels, point_gains
from ..decode.reconstruction import (SECTION_ARMS, SECTION_COVARIANCE, SECTION_DECODERS, SECTION_GAINS, SECTION_LATENTS,
                                     SECTION_POSITIONS,
                                     load_decoders, make_header, quantize_decoders, reconstruct_attributes)
from ..decode.synthesis import plane_sizes
from ..decode.weights import encode_int_tensors
from ..entropy.static_latents import LATENT_CODERS, coefficient_levels, encode_static_latents
from ..gaussians import GaussianModel, codable_model, drawn_mask
from ..entropy.exponents import exponent_gains
from ..geometry.covariance_code import CovarianceCode, ResidualSteps, decode_shapes, encode_shapes, quantize_shapes
from ..geometry.covariance_vq import fit_codebook
from ..geometry.occupancy import encode_positions
from ..geometry.octree import (MAX_DEPTH, MIN_AUTO_DEPTH, Contraction, OctreeLevels, VoxelGrid, VoxelizedModel,
                               choose_depth, far_field_contraction, voxelize, with_model)
from ..threads import intra_op_threads
from ..train.render_refine import RenderableAttributes, RenderTarget, calibrate, state_copy
from ..train.schedule import TrainingResult, check_rate_model, train_attributes
from .arm_step import arm_loses_clearly, choose_arm
from .branch_pruning import branch_slices, choose_pruned, combine, pruned_ints
from .errors import EncodeError
from .operating_point import MAX_EXTRA_LEVELS, geometry_tier
from .shape_sensitivity import ShapeSensitivityConfig, shape_step_exponents

#: decoder weight steps 2**-shift, tried from the coarsest: at small lambdas the latents' step,
#: which the first layer and the skip path carry in their weights, is small, and a search that
#: stopped at 2**-12 capped the guitar's tier-5 file at 59.9 dB (61.5 dB at 2**-16, 0.5% larger)
DECODER_SHIFTS = tuple(range(5, 25))
#: finer shifts tried past the cheapest before the search stops (its cost only rises past it)
DECODER_SHIFT_PATIENCE = 3
#: views on which a decoder weight step's rounding errors are rendered (with a teacher model)
SHIFT_VIEWS = 4
#: views on which pruning the decoder branches is rendered, at most (the render target's first): a
#: branch's errors are not small and depend on the view direction (SH bands). On kacytran
#: (quality preset, 4 lambdas) choices on 16 views gave BD-PSNR +0.40 dB against no pruning,
#: choices on the weight step's 4 views +0.17 dB (at 1e-4: 43.09 against 42.56 dB)
PRUNE_VIEWS = 16
#: ... but no fewer than the weight step's views, and no more than this many Gaussians rendered per
#: evaluation (up to 19 of them): a 256-px view of 1M Gaussians takes 0.57 s on 2 cores, so 16
#: views would add 173 s to a 1M encode of 2,205 s; this budget gives it 4 views (43 s)
PRUNE_RENDER_BUDGET = 4_000_000
class DepthWarning(UserWarning):
    """The automatic depth merges more Gaussians than ``max_merge_fraction`` even at its deepest
    (e.g. one far-out Gaussian sets the bounding cube); the message names the Gaussians that
    set the cube."""


@dataclass
class GainMap:
    """The importance gain map of a voxelization (see ``gain_map.py``)."""

    level: int
    exponents: np.ndarray  # [V] int64
    gains: np.ndarray  # [N] float64 per point
    data: bytes


def make_gain_map(vox: VoxelizedModel, importance: Optional[np.ndarray], config: CodecConfig) -> Optional[GainMap]:
    """The gain map at ``config.gain_level`` from per-voxel ``importance`` (None: no map)."""
    if importance is None or config.gain_level is None:
        return None
    level = int(config.gain_level)
    if not 0 <= level <= vox.depth:
        raise EncodeError(f"gain_level must be in [0, {vox.depth}] for depth {vox.depth}, got {level}")
    p2v, count = gain_voxels(vox.coords, level)
    exponents = gain_exponents(importance, p2v, count)
    return GainMap(level, exponents, point_gains(exponents, p2v), encode_gain_map(exponents))


@dataclass
class GeometryCode:
    """The coded positions, gain map and covariances of a voxelized model (shared by every rate)."""

    positions: bytes
    covariance: bytes
    codebook_size: int
    covariance_code: Optional[CovarianceCode] = None  # what ``covariance`` holds (for finetuning)
    gain_map: Optional[GainMap] = None
    importance: Optional[np.ndarray] = None  # [N] per-voxel distortion weights (mean 1) behind the map
    seconds: Dict[str, float] = field(default_factory=dict)

    def sections(self) -> Dict[str, bytes]:
        out = {SECTION_POSITIONS: self.positions}
        if self.gain_map is not None:
            out[SECTION_GAINS] = self.gain_map.data
        out[SECTION_COVARIANCE] = self.covariance
        return out

    @property
    def gain_level(self) -> Optional[int]:
        return None if self.gain_map is None else self.gain_map.level

    @property
    def gains(self) -> Optional[np.ndarray]:
        return None if self.gain_map is None else self.gain_map.gains


def covariance_gains(gain_map: Optional[GainMap], config: CodecConfig) -> Optional[np.ndarray]:
    """The per-point factors of the covariance residual steps: the gain map's gains when
    ``config.covariance_gain`` is set, else None (uniform steps). Off by default: a shape
    error is not a small perturbation (a hidden Gaussian grown 5x shows), and on the donut the
    PSNR rule then chose a finer base step: 215 kB at 40.6 dB against 173 kB at 41.8 dB."""
    if gain_map is None or not config.covariance_gain:
        return None
    return gain_map.gains


def code_covariance(target: GaussianModel, config: CodecConfig, gains: Optional[np.ndarray] = None,
                    progress: bool = False) -> CovarianceCode:
    """Quantize the shapes of ``target``: residual step by rendering quality (unless
    ``config.covariance_step`` fixes it), then the codebook size that minimizes the bytes at
    that step (unless ``config.covariance_codebook`` fixes it); ``gains`` [N] scale each
    point's steps (the gain map), or ``config.shape_sensitivity_views`` set them from each shape's
    rendering sensitivity (stored in the section)."""
    seed = config.training.seed
    exponents = None
    if (config.shape_sensitivity_views > 0 and len(target)
            and geometry_tier(config).index >= config.shape_sensitivity_min_tier):
        if gains is not None:
            raise EncodeError("covariance_gain and shape_sensitivity_views both set the covariance steps per "
                              "point: choose one")
        # the exponents do not depend on the base step (only on the two steps' ratio), so the step
        # rule below already quantizes with them
        sensitivity = ShapeSensitivityConfig(views=config.shape_sensitivity_views,
                                             resolution=config.shape_sensitivity_resolution)
        exponents = shape_step_exponents(target, ResidualSteps.from_ratio(1.0), sensitivity, progress)
    step = config.covariance_step
    min_psnr = geometry_tier(config).covariance_psnr
    if step is None:
        step = choose_covariance_step(target, min_psnr, seed=seed,
                                      gains=gains if exponents is None else exponent_gains(exponents))
    steps = ResidualSteps.from_ratio(step)
    if step == 0:
        exponents = None  # plain VQ: no residual to scale
    if config.covariance_codebook:
        sizes = [min(config.covariance_codebook, len(target))]
    elif step == 0:
        sizes = [choose_covariance_codebook(target, min_psnr, seed=seed)]
    else:
        sizes = sorted({min(s, len(target)) for s in RESIDUAL_CODEBOOK_CANDIDATES})
    best = None
    for size in sizes:
        book = fit_codebook(target.log_scales, target.quats, size, seed=seed)
        code = quantize_shapes(target.log_scales, target.quats, book, steps, point_scale=gains,
                               step_exponents=exponents)
        nbytes = len(encode_shapes(code))
        if best is None or nbytes < best[0]:
            best = (nbytes, code)
    return best[1]


def encode_geometry(vox: VoxelizedModel, config: CodecConfig, covariance: Optional[CovarianceCode] = None,
                    importance: Optional[np.ndarray] = None) -> GeometryCode:
    """Positions losslessly (octree occupancy); the gain map from ``importance`` [N] (computed per
    ``config`` if not given); covariances as ``covariance`` if given (e.g. after finetuning with
    it; its per-point scale must be the map's gains), else quantized by :func:`code_covariance`."""
    t0 = time.perf_counter()
    positions = encode_positions(vox.coords, vox.depth)
    t1 = time.perf_counter()
    if importance is None:
        importance = attribute_importance(vox.model, config)
    gain_map = make_gain_map(vox, importance, config)
    gains = covariance_gains(gain_map, config)
    t2 = time.perf_counter()
    code = covariance if covariance is not None else code_covariance(vox.model, config, gains)
    if len(code.indices) != len(vox.model):
        raise EncodeError(f"the covariance code holds {len(code.indices)} shapes, the model {len(vox.model)}")
    if code.step_exponents is not None:  # the section carries its own per-point steps
        same = gains is None
    else:
        same = (code.point_scale is None and gains is None) or (
            code.point_scale is not None and gains is not None
            and np.array_equal(np.asarray(code.point_scale, np.float32), gains.astype(np.float32)))
    if not same:
        raise EncodeError("the covariance code's per-point scale is not this geometry's gain map")
    data = encode_shapes(code)
    return GeometryCode(positions, data, code.codebook.size, code, gain_map, importance,
                        {"positions": t1 - t0, "importance": t2 - t1, "covariance": time.perf_counter() - t2})


def finetune_geometry(vox: VoxelizedModel, original: GaussianModel, config: CodecConfig, iters: Optional[int],
                      dataset: Optional[str] = None, progress: bool = False,
                      on_coded: Optional[Callable[[VoxelizedModel, CovarianceCode], None]] = None):
    """Code the covariances, then finetune the voxelized attributes with the coded shapes in the
    loop (indices and residuals fixed; codewords, opacities and SH learn) against renders of
    ``original`` (or the NeRF-synthetic ``dataset``), and code the geometry with the tuned section.
    Why: quantized shapes alone lose several dB that the other attributes can win back.
    ``iters`` None: ``config.finetune.iters``; its size, views and schedule are ``config.finetune``'s.
    ``on_coded(voxelization with coded shapes, code)`` runs before finetuning (``iters`` 0: none).
    Returns (voxelization to code the attributes of, GeometryCode, FinetuneReport or None)."""
    iters = config.finetune.iters if iters is None else iters
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise EncodeError(f"finetuning iterations must be a whole number >= 0, got {iters!r}")
    settings = None
    if iters > 0:
        from ..train.finetune import FinetuneConfig

        stage = config.finetune
        tier = geometry_tier(config).index
        try:
            settings = FinetuneConfig(resolution=stage.resolution, teacher_views=stage.views,
                                      final_lr_fraction=stage.final_lr_fraction,
                                      ).with_learning_rates_scaled(config.finetune_lr_per_tier ** tier)
        except (ValueError, TypeError) as err:  # FinetuneError is a ValueError
            raise EncodeError(f"finetune settings: {err}") from None
    original = codable_model(original)
    importance = attribute_importance(vox.model, config)
    gains = covariance_gains(make_gain_map(vox, importance, config), config)
    covariance = code_covariance(vox.model, config, gains, progress)
    log_scales, quats = covariance.shapes()
    coded = with_model(vox, dataclasses.replace(vox.model, log_scales=log_scales, quats=quats))
    if on_coded is not None:
        on_coded(coded, covariance)
    report = None
    if settings is not None:
        from ..train.finetune import finetune

        model, report = finetune(coded.model, teacher=None if dataset else original, dataset=dataset, iters=iters,
                                 covariance=covariance, config=settings, progress=progress)
        coded, covariance = with_model(coded, model), report.covariance
    return coded, encode_geometry(coded, config, covariance, importance), report


@dataclass
class EncodeResult:
    data: bytes
    header: dict
    section_bytes: Dict[str, int]
    voxelized: VoxelizedModel
    reconstruction: GaussianModel  # exactly what the decoder will output
    training: TrainingResult
    estimated_latent_bits: float
    seconds: Dict[str, float] = field(default_factory=dict)


def choose_grid(model: GaussianModel,  # already through codable_model
                config: CodecConfig) -> Tuple[VoxelGrid, bool]:
    """The voxel grid the encoder codes ``model`` on, and whether its depth is the merge rule's
    (False: set by ``config.depth`` or stopped early by the renders). The rules, in order: the far
    field is contracted when far Gaussians would set the cube (``far_field``); the depth is the
    shallowest merging at most ``max_merge_fraction`` (of the foreground's Gaussians, when
    contracted); it stops earlier at a depth whose voxelized renders are transparent
    (``depth_transparent_psnr``). Above geometry tier 0 (encode/operating_point.py) the depth then
    grows past that one until the voxelized renders reach the tier's target."""
    if config.far_field not in ("auto", "off"):
        raise EncodeError(f"far_field must be 'auto' or 'off', got {config.far_field!r}")
    contraction = far_field_contraction(model.means) if config.far_field == "auto" else None
    merge_rule = config.depth is None
    if config.depth is not None:
        depth = config.depth
    elif contraction is not None:
        # the depth follows the foreground; the far field is as coarse as the contraction makes it
        foreground = contraction.forward(model.means)
        foreground = model.means[np.abs(foreground).max(axis=1) <= 1.0]
        depth = choose_depth(foreground, config.max_merge_fraction, contraction=contraction)
    else:
        depth = choose_depth(model.means, config.max_merge_fraction)
    tier = geometry_tier(config)
    reference = _depth_rule_renders(model)  # made once, on first use, for both depth rules
    if config.depth is None and config.depth_transparent_psnr is not None:
        merge_depth = depth
        depth = transparent_depth(model, depth, config.depth_transparent_psnr, contraction,
                                  min_depth=max(MIN_AUTO_DEPTH, config.architecture.num_levels - 1),
                                  reference=reference)
        merge_rule = depth == merge_depth
    if config.depth is None and tier.extends_depth:
        depth = finer_depth(model, depth, tier.depth_psnr, contraction,
                            max_depth=min(MAX_DEPTH, depth + MAX_EXTRA_LEVELS), reference=reference)
        merge_rule = False
    return VoxelGrid.bounding(model.means, depth, contraction), merge_rule


def drawn_part(model: GaussianModel, config: CodecConfig) -> Tuple[GaussianModel, np.ndarray]:
    """``model`` through :func:`~ralhe_me.gaussians.codable_model` (the input gate), less the
    Gaussians no rasterizer draws unless ``config.keep_undrawn``, and which rows it kept
    (``drawn`` [N] bool); an :class:`EncodeError` when nothing is left."""
    if len(model) == 0:
        raise EncodeError("the model has no Gaussians")
    model = codable_model(model)
    drawn = np.ones(len(model), bool) if config.keep_undrawn else drawn_mask(model)
    if not drawn.any():
        raise EncodeError(f"all {len(model)} Gaussians have an opacity below 1/255, which no rasterizer draws: "
                          "the model renders empty (keep_undrawn / --keep-undrawn codes them anyway)")
    return (model if drawn.all() else model.subset(drawn)), drawn


def with_left_out(vox: VoxelizedModel, drawn: np.ndarray) -> VoxelizedModel:
    """``vox`` of the rows ``drawn`` [N] of a model, with ``source_index`` over all N rows (-1
    for those left out)."""
    if drawn.all():
        return vox
    source_index = np.full(len(drawn), -1, np.int64)
    source_index[drawn] = vox.source_index
    return dataclasses.replace(vox, source_index=source_index)


def left_out_note(vox: VoxelizedModel) -> str:
    """The end of a report line naming the Gaussians :func:`drawn_part` left out, or nothing."""
    n = vox.left_out
    return f"; {n} Gaussians left out (opacity below 1/255: no rasterizer draws them)" if n else ""


def voxelize_drawn(model: GaussianModel, config: CodecConfig) -> Tuple[VoxelizedModel, GaussianModel, bool]:
    """The voxels the encoder codes (:func:`drawn_part` of ``model`` on :func:`choose_grid`'s grid,
    ``source_index`` over every input row), the drawn model they were made from, and whether the
    merge rule chose the depth; ``ralhe voxelize`` shows them without :func:`prepare`'s checks."""
    drawn_model, drawn = drawn_part(model, config)
    grid, merge_rule = choose_grid(drawn_model, config)
    return with_left_out(voxelize(drawn_model, grid.depth, grid), drawn), drawn_model, merge_rule


def prepare(model: GaussianModel, config: CodecConfig) -> VoxelizedModel:
    """Voxelize ``model`` (through :func:`~ralhe_me.gaussians.codable_model`, the input gate) on
    :func:`choose_grid`'s grid, leaving out the Gaussians no rasterizer draws (opacity below 1/255;
    their ``source_index`` is -1) unless ``config.keep_undrawn``; a :class:`DepthWarning` when the
    merge rule's deepest depth still merges more than ``config.max_merge_fraction`` of the
    Gaussians."""
    vox, model, merge_rule = voxelize_drawn(model, config)
    depth, grid = vox.depth, vox.grid
    if depth < config.architecture.num_levels - 1:
        raise EncodeError(f"depth {depth} is too small for {config.architecture.num_levels} octree levels")
    merged = len(model) - len(vox.model)
    if merge_rule and grid.contraction is None and merged > config.max_merge_fraction * len(model):
        lo, hi = model.means.min(axis=0), model.means.max(axis=0)
        axis = int(np.argmax(hi.astype(np.float64) - lo))
        first, last = int(np.argmin(model.means[:, axis])), int(np.argmax(model.means[:, axis]))
        warnings.warn(f"means: depth {depth}, the deepest the automatic choice tries, merges {merged} of "
                      f"{len(model)} Gaussians into {len(vox.model)} voxels of side {vox.grid.voxel_size:.3g}; "
                      f"the bounding cube (side {vox.grid.extent:.3g}) is set by Gaussians {first} and {last} "
                      f"along {'xyz'[axis]}: far-out Gaussians coarsen every voxel, coincident ones merge at any "
                      "depth", DepthWarning, stacklevel=2)
    return vox


DEPTH_RULE_VIEWS, DEPTH_RULE_RESOLUTION = 6, 192  # the renders the depth rules score (as the covariance's)


def _first_depth_reaching(model: GaussianModel, depths, min_psnr: float, contraction: Optional[Contraction],
                          renders) -> Optional[int]:
    """The first of ``depths`` whose voxelized model renders within ``min_psnr`` dB of ``renders``
    (of ``model``), or None."""
    from ..eval.evaluation import score_views

    for depth in depths:
        vox = voxelize(model, depth, VoxelGrid.bounding(model.means, depth, contraction))
        if score_views(vox.model, renders, with_ssim=False).psnr >= min_psnr:
            return depth
    return None


def _depth_rule_renders(model: GaussianModel, views: int = DEPTH_RULE_VIEWS,
                        resolution: int = DEPTH_RULE_RESOLUTION) -> Callable[[], object]:
    """A function returning the orbit renders of ``model`` the depth rules score against, rendered
    on its first call only."""
    made = []

    def renders():
        if not made:
            from ..eval.evaluation import orbit_views

            made.append(orbit_views(model, views, (resolution, resolution)))
        return made[0]

    return renders


def transparent_depth(model: GaussianModel, merge_depth: int, min_psnr: float,
                      contraction: Optional[Contraction] = None, min_depth: int = MIN_AUTO_DEPTH,
                      views: int = DEPTH_RULE_VIEWS, resolution: int = DEPTH_RULE_RESOLUTION,
                      reference: Optional[Callable[[], object]] = None) -> int:
    """The first depth from ``min_depth`` up whose voxelized model renders within ``min_psnr`` dB of
    ``model`` (one against the other on ``views`` orbit views at ``resolution`` px), or
    ``merge_depth`` (the merge rule's) when none before it does. Why: the merge rule follows the
    closest pairs of Gaussians, so a sparse model (kacytran: depth 17, voxelized renders at 69 dB)
    pays ~3 bits per Gaussian per level for precision that no coded file keeps. ``reference``: a
    function returning those renders (:func:`_depth_rule_renders`), to share them with finer_depth."""
    if merge_depth <= min_depth:
        return merge_depth
    renders = (reference or _depth_rule_renders(model, views, resolution))()
    found = _first_depth_reaching(model, range(min_depth, merge_depth), min_psnr, contraction, renders)
    return merge_depth if found is None else found


def finer_depth(model: GaussianModel, depth: int, min_psnr: float, contraction: Optional[Contraction] = None,
                max_depth: int = 21, views: int = DEPTH_RULE_VIEWS, resolution: int = DEPTH_RULE_RESOLUTION,
                reference: Optional[Callable[[], object]] = None) -> int:
    """The first depth from ``depth`` up to ``max_depth`` whose voxelized model renders within
    ``min_psnr`` dB of ``model`` (``views`` orbit views at ``resolution`` px), else ``max_depth``:
    the depth of a geometry tier above 0, where the merge rule's would cap the quality.
    ``reference``: as for :func:`transparent_depth`."""
    if depth >= max_depth:
        return depth
    renders = (reference or _depth_rule_renders(model, views, resolution))()
    found = _first_depth_reaching(model, range(depth, max_depth), min_psnr, contraction, renders)
    return max_depth if found is None else found


COVARIANCE_CANDIDATES = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
RESIDUAL_CODEBOOK_CANDIDATES = (64, 256, 1024)  # with a residual the size only trades index for residual bits
# log-scale residual steps, coarse to fine (the finest ones serve the high geometry tiers)
COVARIANCE_STEPS = (0.8, 0.56, 0.4, 0.28, 0.2, 0.14, 0.1, 0.07, 0.05, 0.035, 0.025, 0.018, 0.0125)


def _coded_psnr(target: GaussianModel, shapes, reference) -> float:
    from dataclasses import replace

    from ..eval.evaluation import score_views

    log_scales, quats = shapes
    return score_views(replace(target, log_scales=log_scales, quats=quats), reference, with_ssim=False).psnr


def choose_covariance_step(target: GaussianModel, min_psnr: float, seed: int = 0, views: int = 6,
                           resolution: int = 192, codebook_size: int = 256,
                           gains: Optional[np.ndarray] = None) -> float:
    """The coarsest residual step whose quantized shapes keep the renders within ``min_psnr`` dB
    of the unquantized model's (one against the other, ``views`` orbit views at ``resolution``
    px). The error depends on the step only, so one codebook serves every candidate; the finest
    step is the fallback."""
    from ..eval.evaluation import orbit_views

    reference = orbit_views(target, views, (resolution, resolution))
    book = fit_codebook(target.log_scales, target.quats, min(codebook_size, len(target)), seed=seed)
    indices = book.assign(target.log_scales, target.quats)
    for step in COVARIANCE_STEPS:
        code = quantize_shapes(target.log_scales, target.quats, book, ResidualSteps.from_ratio(step), indices,
                               point_scale=gains)
        if _coded_psnr(target, code.shapes(), reference) >= min_psnr:
            return step
    return COVARIANCE_STEPS[-1]


def choose_covariance_codebook(target: GaussianModel, min_psnr: float, seed: int = 0,
                               views: int = 6, resolution: int = 192) -> int:
    """The smallest codebook size whose VQ alone keeps the renders within ``min_psnr`` dB of
    the unquantized model's (PSNR of one against the other on ``views`` orbit views at
    ``resolution`` px). At 42 dB the VQ error is a tenth of the error of a 32 dB codec, which
    it lowers by about 0.4 dB. Sizes above a quarter of the Gaussians are not tried (such a
    codebook costs about as much as the indices save); the largest tried is the fallback."""
    from ..eval.evaluation import orbit_views

    candidates = [c for c in COVARIANCE_CANDIDATES if c <= max(64, len(target) // 4)]
    reference = orbit_views(target, views, (resolution, resolution))
    for size in candidates:
        book = fit_codebook(target.log_scales, target.quats, size, seed=seed)
        idx = book.assign(target.log_scales, target.quats)
        if _coded_psnr(target, (book.log_scales[idx], book.quats[idx]), reference) >= min_psnr:
            return size
    return candidates[-1]


def attribute_importance(target: GaussianModel, config: CodecConfig) -> Optional[np.ndarray]:
    """Per-voxel distortion weights [N] (mean 1) from renders, or None when turned off."""
    from .importance import ImportanceConfig, rendering_importance

    return rendering_importance(target, ImportanceConfig(views=config.importance_views,
                                                         resolution=config.importance_resolution))


def _choose_decoder_weights(training: TrainingResult, signals, lmbda, n, opacity_weight, importance,
                            target: GaussianModel, render_target: Optional[RenderTarget] = None) -> tuple:
    """(shift, integer weights): the weight step 2**-shift minimizing the distortion its rounding
    adds + lambda * (weight bits) / N, then the 4-layer branches that do not pay for their bits
    pruned (:func:`_prune_branches`); the synthesis is left holding those weights.

    The added distortion is measured against the float decoders' output, not against the target:
    the target's difference has a cross term with the rounding errors, linear in them, that
    makes the cost of a coarse step drop or rise by chance (on the donut at lambda 1.5e-3 the
    search then took 2**-5 over 2**-8: 39.0 against 40.7 dB for 0.15% fewer bytes). With
    ``render_target``, the errors are measured between renders on its first views, times the
    image-domain refinement's calibration (or one made on those views): rounding the weights
    moves many Gaussians alike, and such errors add up in the image where independent coding
    errors average out, so the signals undercount them (the default scene at lambda 1.5e-3:
    2**-5 from the signals, 2**-6 from renders, 0.35 dB better for 0.4% more bytes)."""
    synthesis = training.synthesis
    float_state = state_copy(synthesis)
    sh_float, op_float = reconstruct_attributes(synthesis, training.latents, signals.mean, signals.std, signals.gain)
    calibration, views = _shift_views(training, signals, render_target)
    with torch.no_grad():
        float_renders = [render_target.render(torch.as_tensor(op_float), torch.as_tensor(sh_float), v)
                         for v in range(views)]
    candidates = {}

    def cost(shift: int) -> float:
        ints = quantize_decoders(synthesis, shift)
        load_decoders(synthesis, ints, shift)
        sh, op = reconstruct_attributes(synthesis, training.latents, signals.mean, signals.std, signals.gain)
        synthesis.load_state_dict(float_state)
        candidates[shift] = ints
        bits = 8 * len(encode_int_tensors(ints))
        if views:
            with torch.no_grad():
                added = float(np.mean([((render_target.render(torch.as_tensor(op), torch.as_tensor(sh), v)
                                         - float_renders[v]) ** 2).mean().item() for v in range(views)]))
            distortion = calibration * added
        else:
            distortion, _ = weighted_attribute_mse(sh_float, op_float, sh, op, opacity_weight, importance)
        return distortion + lmbda * bits / n

    shift = cheapest_shift(cost, DECODER_SHIFTS, DECODER_SHIFT_PATIENCE)
    ints = _prune_branches(training, candidates[shift], shift, target, signals, lmbda, n, opacity_weight, importance,
                           render_target, calibration, views)
    return shift, ints


def _shift_views(training: TrainingResult, signals, render_target: Optional[RenderTarget]
                 ) -> Tuple[Optional[float], int]:
    """(image-to-attribute distortion calibration, number of ``render_target``'s first views) on
    which the decoder weights' choices are rendered; (None, 0) without a render target."""
    if render_target is None:
        return None, 0
    calibration = _render_calibration(training)
    if calibration is None:  # no refinement ran: calibrate on the shift's views
        with torch.no_grad():
            calibration = calibrate(signals, training.synthesis.decode(training.latents), render_target,
                                    RenderableAttributes(signals), views=SHIFT_VIEWS)
    return calibration, (min(SHIFT_VIEWS, len(render_target.cameras)) if calibration is not None else 0)


def branch_decodes(training: TrainingResult, ints: List[np.ndarray], slices, shift: int, signals) -> list:
    """The decoded attributes (SH [N, K, 3], opacity logits [N]) with every branch kept, then with
    every branch pruned: branch_pruning.combine builds any other set from the two."""
    every = frozenset(range(training.synthesis.num_sh + 1))
    out = []
    for pruned in (frozenset(), every):
        load_decoders(training.synthesis, pruned_ints(ints, slices, pruned), shift)
        out.append(reconstruct_attributes(training.synthesis, training.latents, signals.mean, signals.std,
                                          signals.gain))
    return out


def _prune_branches(training: TrainingResult, ints: List[np.ndarray], shift: int, target: GaussianModel,
                    signals, lmbda: float, n: int, opacity_weight: float, importance,
                    render_target: Optional[RenderTarget], calibration: Optional[float],
                    views: int) -> List[np.ndarray]:
    """The decoder integers with the 4-layer branches that do not pay for their bits pruned
    (branch_pruning.py); the synthesis is left holding them. The distortion is taken against the
    target, renders of the input on up to :data:`PRUNE_VIEWS` of its views within
    :data:`PRUNE_RENDER_BUDGET` (when the weight step was rendered on ``views`` > 0 of them), or
    else the voxelized attributes: a pruned branch is no small perturbation of the trained
    decoder, as a weight step's rounding is."""
    synthesis = training.synthesis
    names = [name for name, _ in synthesis.decoder_parameters()]
    slices = branch_slices(names, synthesis.num_sh)
    every = frozenset(range(synthesis.num_sh + 1))
    decoded = branch_decodes(training, ints, slices, shift, signals)

    if views:
        views = min(max(views, min(PRUNE_VIEWS, PRUNE_RENDER_BUDGET // max(1, n))), len(render_target.cameras))

    def cost(pruned: frozenset) -> float:
        sh, opacity = combine(decoded[0], decoded[1], pruned)
        bits = 8 * len(encode_int_tensors(pruned_ints(ints, slices, pruned)))
        if views:
            with torch.no_grad():
                image = float(np.mean([render_target.image_mse(torch.as_tensor(opacity), torch.as_tensor(sh), v).item()
                                       for v in range(views)]))
            distortion = calibration * image
        else:
            distortion, _ = weighted_attribute_mse(target.sh, target.opacity_logits, sh, opacity, opacity_weight,
                                                   importance)
        return distortion + lmbda * bits / n

    chosen = choose_pruned(cost, len(every))
    final = pruned_ints(ints, slices, chosen)
    load_decoders(synthesis, final, shift)
    training.history.append({"step": "branch_pruning", "pruned": sorted(chosen)})
    return final


def _render_calibration(training: TrainingResult) -> Optional[float]:
    """The image-domain refinement's attribute distortion per unit of image MSE, if it ran."""
    for record in training.history:
        if record.get("step") == "render_refine" and record.get("calibration") is not None:
            return float(record["calibration"])
    return None


def cheapest_shift(cost: Callable[[int], float], shifts: Sequence[int], patience: int) -> int:
    """The shift of least ``cost`` among ``shifts`` (ascending), stopping once ``patience``
    shifts in a row past the cheapest so far were no cheaper: the distortion falls and the
    weight bits grow with the shift, so past the optimum the cost only rises (up to noise
    smaller than a step's bits)."""
    best_shift, best_cost, worse = None, math.inf, 0
    for shift in shifts:
        c = cost(shift)
        if best_shift is None or c < best_cost:
            best_shift, best_cost, worse = shift, c, 0
        else:
            worse += 1
            if worse >= patience:
                break
    if best_shift is None:
        raise EncodeError("no decoder weight step to try")
    return best_shift


def make_render_target(vox: VoxelizedModel, geometry: GeometryCode, teacher: GaussianModel, config: CodecConfig,
                       dataset: Optional[str] = None, views: Optional[int] = None) -> RenderTarget:
    """The views the image-domain refinement matches: renders of ``teacher`` (the uncoded input)
    from ``views`` orbit cameras (default: the preset's ``render_views``) or, with ``dataset``,
    its NeRF-synthetic train split; the geometry is the coded one."""
    log_scales, quats = decode_shapes(geometry.covariance, geometry.gains)
    coded = dataclasses.replace(vox.model, log_scales=log_scales, quats=quats)
    t = config.training
    if dataset is not None:
        return RenderTarget.from_dataset(coded, dataset, views, t.render_resolution)
    return RenderTarget.from_renders(coded, teacher, views or t.render_views, t.render_resolution, seed=t.seed + 11)


def attribute_views(vox: VoxelizedModel, geometry: GeometryCode, teacher: GaussianModel, config: CodecConfig,
                    dataset: Optional[str] = None) -> RenderTarget:
    """The views an attribute encode renders: the refinement's targets when the preset refines
    (``render_steps`` > 0), else ``SHIFT_VIEWS`` views on which the decoder weight step's
    rounding is measured. Whoever encodes one input several times (a sweep, rate control) builds
    them once here and hands them to every :func:`encode_model`."""
    views = None if config.training.render_steps > 0 else SHIFT_VIEWS
    return make_render_target(vox, geometry, teacher, config, dataset, views=views)


def encode_model(model: GaussianModel, config: CodecConfig, *, voxelized: Optional[VoxelizedModel] = None,
                 warm_start: Optional[TrainingResult] = None, geometry: Optional[GeometryCode] = None,
                 progress: Optional[Callable[[int, dict], None]] = None,
                 render_target: Optional[RenderTarget] = None) -> EncodeResult:
    """Encode ``model`` (or its ready ``voxelized`` version, e.g. finetuned) at ``config.lmbda``;
    ``geometry`` reuses the positions, gain map and covariances already coded for this
    voxelization (and the importance behind the map). With ``training.render_steps`` the
    attributes are refined against ``render_target``; without them its first views measure the
    decoder weight step (default for both: :func:`attribute_views` of ``model``)."""
    if config.training.threads:
        torch.set_num_threads(config.training.threads)
    if config.training.render_steps < 0:
        raise EncodeError(f"render_steps must be >= 0, got {config.training.render_steps}")
    if config.latent_coder not in LATENT_CODERS + ("auto",):
        raise EncodeError(f"latent_coder must be one of auto, {', '.join(LATENT_CODERS)}; got {config.latent_coder!r}")
    if config.latent_coder == "static" and config.architecture.transform != "raht":
        raise EncodeError("latent_coder 'static' needs the raht transform, the architecture has "
                          f"{config.architecture.transform!r}")
    try:
        check_rate_model(config.training, config.architecture)
    except ValueError as err:
        raise EncodeError(str(err)) from None
    if model is not None:  # the teacher of the render target, and what ``prepare`` voxelizes
        model = codable_model(model)
    times = {}
    t0 = time.perf_counter()
    vox = voxelized if voxelized is not None else prepare(model, config)
    target = vox.model
    arch = config.architecture
    levels = OctreeLevels.build(vox.coords, arch.num_levels, vox.depth)
    times["voxelize"] = time.perf_counter() - t0

    geometry = geometry or encode_geometry(vox, config)
    times.update(geometry.seconds)
    importance, gains = geometry.importance, geometry.gains

    t0 = time.perf_counter()
    if render_target is None and model is not None:
        render_target = attribute_views(vox, geometry, model, config)
    if render_target is None and config.training.render_steps > 0:
        raise EncodeError("image-domain refinement (render_steps > 0) needs the input model or a render target")
    signals = extract_signals(target, config.training.opacity_weight, importance, gains)
    training = train_attributes(signals, levels, arch, config.training, config.lmbda, init=warm_start,
                                progress=progress, render_target=render_target)
    times["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n = len(target)
    latents = [l.numpy().astype(np.int64) for l in training.latents]
    table_config = training.synthesis.arm.table_config
    decoder_shift, decoder_ints = _choose_decoder_weights(training, signals, config.lmbda, n,
                                                          config.training.opacity_weight, importance, target,
                                                          render_target)
    static = None
    if config.latent_coder != "arm" and arch.transform == "raht":
        static = encode_static_latents(latents, coefficient_levels(vox.coords, vox.depth))
        if static is None and config.latent_coder == "static":
            raise EncodeError("latent_coder 'static' codes int32 latents only, and a latent exceeds that range")
    if config.latent_coder == "static" or (  # no ARM to search (about 4 exact counts over the latents)
            config.latent_coder == "auto" and static is not None and
            arm_loses_clearly(training, latents, arch.segment_length, table_config, 8.0 * len(static))):
        latent_coder, arm_bytes, latent_bytes, estimated = "static", b"", static, 8.0 * len(static)
    else:
        arms, estimated, latent_bytes = choose_arm(training, latents, arch.segment_length, table_config)
        latent_coder, arm_bytes = "arm", arms.to_bytes()
        if static is not None and len(static) < len(arm_bytes) + len(latent_bytes):
            latent_coder, arm_bytes, latent_bytes, estimated = "static", b"", static, 8.0 * len(static)
    with intra_op_threads(DEFAULT_DECODE_THREADS):  # the decoder's float arithmetic, exactly
        sh, opacity_logits = reconstruct_attributes(training.synthesis, latents, signals.mean, signals.std, gains)
    times["quantize_and_code"] = time.perf_counter() - t0

    log_scales, quats = decode_shapes(geometry.covariance, gains)
    reconstruction = GaussianModel(means=target.means, log_scales=log_scales, quats=quats,
                                   opacity_logits=opacity_logits, sh=sh)
    header = make_header(num_points=n, grid=vox.grid, sh_degree=target.sh_degree,
                         names=attribute_names(target.sh_degree), arch=arch, table_config=table_config,
                         level_sizes=plane_sizes(levels.sizes, arch), mean=signals.mean, std=signals.std,
                         decoder_shift=decoder_shift, lmbda=config.lmbda, gain_level=geometry.gain_level,
                         latent_coder=latent_coder)
    sections = geometry.sections()
    sections.update({SECTION_DECODERS: encode_int_tensors(decoder_ints), SECTION_ARMS: arm_bytes,
                     SECTION_LATENTS: latent_bytes})
    container = Container(header=header, sections=sections)
    data = pack(container)
    return EncodeResult(data=data, header=header, section_bytes=dict(container.section_sizes()), voxelized=vox,
                        reconstruction=reconstruction, training=training, estimated_latent_bits=estimated,
                        seconds=times)


def write_atomically(path_out: str, data: bytes) -> None:
    """Write ``data`` through a ``.part`` file and a rename: an interrupted or failed write never
    leaves a truncated file under the final name."""
    tmp = path_out + ".part"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path_out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def encode_file(path_in: str, path_out: str, config: CodecConfig, progress=None, finetune_iters: int = 0,
                dataset: Optional[str] = None, finetune_progress: bool = False) -> EncodeResult:
    """Read an INRIA ``.ply``, encode it, write ``path_out`` atomically; with ``finetune_iters``
    the attributes are first finetuned with the coded shapes (:func:`finetune_geometry`)."""
    from ..gaussians import read_ply

    if finetune_iters < 0:
        raise EncodeError(f"finetune_iters must be >= 0, got {finetune_iters}")
    model = codable_model(read_ply(path_in))
    vox = geometry = None
    if finetune_iters > 0:
        vox, geometry, _ = finetune_geometry(prepare(model, config), model, config, finetune_iters, dataset,
                                             progress=finetune_progress)
    render_target = None
    if dataset is not None:  # its cameras (without it, encode_model makes orbit views)
        if vox is None:
            vox = prepare(model, config)
            geometry = encode_geometry(vox, config)
        render_target = attribute_views(vox, geometry, model, config, dataset)
    result = encode_model(model, config, voxelized=vox, geometry=geometry, progress=progress,
                          render_target=render_target)
    write_atomically(path_out, result.data)
    return result
