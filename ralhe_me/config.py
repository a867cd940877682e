"""Codec configuration as dataclasses, and the YAML presets under ``models/``."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

PRESET_DIR = Path(__file__).resolve().parent.parent / "models"


class ConfigError(ValueError):
    """A preset or option is invalid; the message names the key."""


@dataclass
class ArchitectureConfig:
    """What the decoder must know to rebuild the networks (all of it goes in the header)."""

    transform: str = "raht"  # latents: "raht" coefficients (one per point per channel) or the paper's "pyramid"
    num_levels: int = 7  # L octree levels of latents (pyramid), finest (0) to coarsest (L-1)
    latent_channels: int = 3  # latents per voxel per level per attribute (the paper: 1)
    skip: bool = True  # add a point-wise linear path from latents to output (the paper: no)
    decoder_linear: Tuple[int, int] = (12, 4)  # widths of the two point-wise layers
    decoder_conv: int = 2  # width of the first 3x3x3 sparse convolution
    arm_context: int = 16  # K latents before, in Morton order
    arm_hidden: int = 8  # the paper: 16; 8 keeps 3 latent channels as cheap to decode as its 1
    segment_length: int = 512  # contexts restart every this many latents (lockstep decoding)


@dataclass
class TrainingConfig:
    """The overfitting schedule: noise phase, then straight-through rounding."""

    steps: int = 1500
    hard_rounding_fraction: float = 0.2  # final fraction of the steps with STE rounding
    learning_rate: float = 1e-2  # latents and ARMs
    network_learning_rate: float = 1e-3  # decoders (small weights near the initial solution: Adam steps are ~lr)
    final_learning_rate: float = 1e-4
    opacity_weight: float = 0.25  # distortion weight of opacity (see attributes.py)
    # ARM-only steps on the final integer latents (their exact rate; see schedule.refit_arm): 40
    # steps at the training rate left the 50k default scene's latents 12-16% above what 300 steps
    # at 0.05 reach (lambda 6e-3 and 3e-4), and a 5% sample per step costs 6 s there
    arm_refit_steps: int = 300
    arm_refit_learning_rate: float = 0.05
    arm_refit_subsample: float = 0.05  # fraction of latents whose rate is evaluated per such step
    # at most this many latent positions per such step (about 5% of the 50k scene's): 44 ms per
    # step at 483k voxels, against 128 ms with 32768 and 273 ms with no cap
    arm_refit_max_samples: int = 8192
    rate_subsample: float = 1.0  # fraction of latents whose rate is evaluated per step
    # the rate the schedule minimizes: "arm" (the autoregressive model's) or "levels" (a two-Laplace
    # mixture per plane, attribute and RAHT level: the static latent coder's model; train/level_rate.py)
    rate_model: str = "arm"
    distortion_subsample: float = 1.0  # fraction of voxels decoded per step (Morton runs)
    subsample_chunk: int = 512  # length of those runs
    render_steps: int = 0  # image-domain refinement steps after the schedule (see render_refine.py; 0: off)
    render_learning_rate: float = 0.03  # latents and ARMs during those steps
    render_network_learning_rate: float = 1e-3  # decoders during those steps
    render_rate_subsample: float = 1.0  # fraction of latents whose rate is evaluated per such step
    render_views: int = 64  # random orbit views rendered from the uncoded model as targets
    render_resolution: int = 256  # their width and height in pixels
    seed: int = 0
    threads: Optional[int] = None


@dataclass
class FinetuneStageConfig:
    """The finetuning of the voxelized attributes with the coded shapes in the loop, before the
    latents are trained (``encode.encoder.finetune_geometry``). Its result is what the latents
    code, so it bounds what every rate renders: on playbot at lambda 6e-6, 60 steps at 256 px
    gave 54.50 dB and 600 steps at 400 px against 256 views with the decay 54.95 dB (README)."""

    iters: int = 60  # steps when the caller gives none (``ralhe encode --finetune-iters``; 0: none)
    resolution: int = 256  # width and height of the target renders, in pixels
    views: int = 128  # random orbit views of the uncoded model rendered once as targets
    final_lr_fraction: float = 1.0  # the learning rates fall (cosine) to this fraction of theirs (1: constant)


@dataclass
class CodecConfig:
    lmbda: float = 1e-3  # rate weight: loss = D + lmbda * bits per Gaussian
    depth: Optional[int] = None  # octree depth J; None: choose automatically
    max_merge_fraction: float = 0.05  # rule of the automatic depth choice
    # "auto": contract the far field (octree.Contraction) when far Gaussians would set a bounding
    # cube 4x the foreground's or more; "off": one plain cube around every Gaussian
    far_field: str = "auto"
    # code the Gaussians whose opacity is below 1/255 too (no rasterizer draws them: by default
    # they are left out, which changes no render)
    keep_undrawn: bool = False
    # the automatic depth stops before the merge rule's at the first depth whose voxelized renders
    # are this close to the input's (PSNR, dB): deeper octrees cost ~3 bits per sparse Gaussian per
    # level for precision no coded file keeps (None: the merge rule alone)
    depth_transparent_psnr: Optional[float] = 50.0
    covariance_codebook: Optional[int] = None  # VQ codebook size; None: chosen (fewest bytes, or by PSNR at step 0)
    covariance_step: Optional[float] = None  # residual log-scale step (0: plain VQ); None: chosen by PSNR
    covariance_min_psnr: float = 42.0  # automatic choice: renders of the quantized model vs unquantized, dB
    # the geometry's precision follows lambda (encode/operating_point.py): tier t (None: lmbda's) adds
    # t * geometry_tier_db to covariance_min_psnr and t * depth_tier_db to depth_transparent_psnr, and lets
    # the depth pass the merge rule's (the steps: measured on the donut, see operating_point.py)
    geometry_tier: Optional[int] = None
    geometry_tier_db: float = 6.0
    depth_tier_db: float = 3.0
    # the attribute finetuning's learning rates are multiplied by this once per geometry tier: finer
    # geometry leaves smaller errors to correct, and Adam's steps are about the learning rate (60
    # steps, 8 orbit views: the guitar's tier 5 went from 63.45 dB coded to 61.39 at the tier-0 rates
    # and 64.38 at a quarter of them, the donut's tier 3 from 57.59 to 56.89 and 58.44; a quarter
    # cost the guitar's tier 0 1.6 dB)
    finetune_lr_per_tier: float = 0.7
    importance_views: int = 0  # random orbit views weighting each voxel's SH errors (0: off; measured neutral)
    importance_resolution: int = 256  # their size in pixels
    gain_level: Optional[int] = 4  # octree level of the transmitted gain map (None: no map; needs importance)
    covariance_gain: bool = False  # scale the covariance residual steps by the gain map too (see README)
    # random orbit views measuring each shape's rendering sensitivity, which sets its own covariance
    # steps (encode/shape_sensitivity.py; 0: uniform steps), from geometry tier shape_sensitivity_min_tier
    # up (measured in the README: smaller files at equal PSNR at tiers 4-5, larger on the donut at tier 1);
    # excludes covariance_gain
    shape_sensitivity_views: int = 0
    shape_sensitivity_resolution: int = 400
    shape_sensitivity_min_tier: int = 0
    # how the latents are entropy coded: "arm" (the trained autoregressive model, sent in the file),
    # "static" (per-level histograms, entropy/static_latents.py; "raht" transform only) or "auto":
    # both, the shorter kept
    latent_coder: str = "auto"
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    finetune: FinetuneStageConfig = field(default_factory=FinetuneStageConfig)


def _merge(obj, values: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} must be a mapping")
            _merge(current, value, f"{where}.{key}")
        else:
            if isinstance(current, tuple):
                value = tuple(value)
            setattr(obj, key, value)
    return obj


def list_presets():
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> CodecConfig:
    """A :class:`CodecConfig` from ``models/<name>.yaml`` or a YAML path."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset '{name_or_path}' (available: {', '.join(list_presets())})")
    with open(path) as fh:
        values = yaml.safe_load(fh) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a preset must be a YAML mapping")
    values.pop("description", None)
    return _merge(CodecConfig(), values, os.fspath(path.name))
