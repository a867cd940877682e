"""The overfitting loop: latents, decoders and ARMs of all attributes trained jointly.

loss = sum_k w_k MSE_k + lambda * (bits of all latents) / N

(MSE_k weighted per voxel by its rendering importance when the signals carry one.)

Latents are real-valued parameters made quantization-aware by additive uniform noise, then,
for the last ``hard_rounding_fraction`` of the steps, rounded with a straight-through
gradient, so the decoder and ARMs finish on the integer latents the file will hold. With a
render target, the schedule ends with image-domain steps (render_refine.py).
This module is encoder-only: it imports the optimizer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import torch

from ..attributes import AttributeSignals, SignalDistortion
from ..config import ArchitectureConfig, TrainingConfig
from ..decode.synthesis import AttributeSynthesis, sample_rows
from ..entropy.static_latents import coefficient_levels
from ..geometry.octree import OctreeLevels
from .arm_rate import positions_rate_bits, rate_bits
from .level_rate import LevelRate, rate_parameters, training_rate
from .optimizer import adam, cosine_factor
from .quantization import noisy, ste_round
from .render_refine import RenderTarget, refine_latents


@dataclass
class TrainingResult:
    synthesis: AttributeSynthesis
    latents: List[torch.Tensor]  # per level [A, n_l] float, integer-valued after training
    history: List[dict]
    seconds: float


def pyramid_latents(values: np.ndarray, levels: OctreeLevels,
                    weights: Optional[np.ndarray] = None) -> List[np.ndarray]:
    """A Haar-like pyramid of ``values`` [A, N] on the octree: level L-1 holds voxel means
    (weighted by ``weights`` [N] if given), each finer level the difference between its voxel
    mean and its parent's, so that summing a point's latents over all levels gives back its
    value exactly."""
    a, n = values.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64) + 1e-9
    means = []
    for p2v, size in zip(levels.point_to_voxel, levels.sizes):
        total = np.zeros((a, size))
        for i in range(a):
            total[i] = np.bincount(p2v, weights=values[i] * w, minlength=size)
        means.append(total / np.bincount(p2v, weights=w, minlength=size)[None, :])
    out = [None] * len(means)
    out[-1] = means[-1]
    for level in range(len(means) - 2, -1, -1):
        out[level] = means[level] - means[level + 1][:, levels.parent_index(level)]
    return out


def initial_state(synthesis: AttributeSynthesis, signals: AttributeSignals, levels: OctreeLevels,
                  lmbda: float) -> List[torch.Tensor]:
    """Start from the classical solution: per attribute, its channels rotated to their
    principal axes, each a pyramid of latent planes scaled by the high-rate optimal quantizer
    step for ``lmbda``; the skip path sums the pyramid back and rotates it to RGB, and the
    4-layer branch starts at zero output (its last kernel zero) to learn what this misses.

    For entropy-coded uniform quantization with step s, D + lambda R is minimal at
    s^2 = 6 lambda / (w ln 2) (w: distortion weight per unit of the signal), so each
    attribute gets its own step; with one latent channel only the principal axis is kept.
    """
    arch = synthesis.arch
    c_lat = arch.latent_channels
    num_sh = synthesis.num_sh
    a = num_sh + 1
    # rotations [A, 3, 3]: rows are the principal axes (opacity: identity on channel 0)
    rot = np.zeros((a, 3, 3))
    for k, x in enumerate(signals.sh):
        x = x.astype(np.float64)
        if len(x) < 3:  # fewer points than channels: zero rows complete the basis, the axes stay
            x = np.concatenate([x, np.zeros((3 - len(x), 3))])
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        rot[k] = vt
    rot[-1] = np.eye(3)
    values = np.zeros((a, 3, signals.sh.shape[1]))
    values[:num_sh] = np.einsum("knc,kjc->kjn", signals.sh.astype(np.float64), rot[:num_sh])
    values[-1, 0] = signals.opacity[0, :, 0]
    step = np.clip(np.sqrt(6.0 * lmbda / (np.maximum(signals.weight, 1e-12) * np.log(2.0))), 1e-3, 10.0)
    # A latent of level l is shared by the ~N/n_l voxels below it, so its error counts that many
    # times: the RD-optimal step shrinks by the square root of that count (as in an orthonormal
    # Haar transform, where the coefficient of a merged block carries sqrt(count) of its mean).
    share = np.array([levels.sizes[0] / n for n in levels.sizes], dtype=np.float64)
    level_step = step[:, None] / np.sqrt(share)[None, :]  # [A, L]
    planes = []
    if arch.transform == "raht":
        # orthonormal coefficients: one step per attribute is the optimum everywhere
        from ..baselines.raht import build_plan, raht_forward_plan

        plan = build_plan(levels.coords[0], levels.depth)
        level_step = step[:, None]  # [A, 1]
        for c in range(c_lat):
            coeffs = raht_forward_plan(plan, values[:, c].T).T  # [A, N]
            # row-major [A, N], as every kernel reads the planes (a transposed view would be copied
            # by each of them at every step, and Adam would update strided memory)
            planes.append(torch.as_tensor(np.ascontiguousarray(coeffs / step[:, None], dtype=np.float32)))
    else:
        for c in range(c_lat):
            pyramid = pyramid_latents(values[:, c], levels, signals.point_weight)
            planes += [torch.as_tensor(p / level_step[:, l, None], dtype=torch.float32)
                       for l, p in enumerate(pyramid)]
    with torch.no_grad():  # the ARMs start at the latents' typical magnitude
        spread = torch.stack([torch.cat([p[i] for p in planes]).abs().mean() for i in range(a)])
        tc = synthesis.arm.table_config
        synthesis.arm.biases[-1][:, 1] = torch.log(spread.clamp(min=0.05)).clamp(tc.log_scale_min, tc.log_scale_max)
    if arch.skip:
        L = level_step.shape[1]  # planes per channel
        with torch.no_grad():
            for skip, sl, d in ((synthesis.sh_skip, slice(0, num_sh), 3), (synthesis.opacity_skip, slice(num_sh, a), 1)):
                w = np.zeros(skip.shape)
                for c in range(c_lat):
                    # output channel j gets level_step * rot[c, j] from each plane of channel c
                    w[:, c * L:(c + 1) * L, :] = level_step[sl, :, None] * rot[sl, c, None, :d]
                skip.copy_(torch.as_tensor(w, dtype=torch.float32))
            for dec in (synthesis.sh_decoder, synthesis.opacity_decoder):
                dec.conv1_kernel.zero_()
                dec.conv1_bias.zero_()
    return planes


def refit_arm(synthesis: AttributeSynthesis, latents: List[torch.Tensor], training: TrainingConfig,
              generator: torch.Generator, history: List[dict]) -> None:
    """Fit the ARMs alone to the final integer latents. During training they saw latents
    with uniform noise, a rate sample per step and only a few straight-through steps, at the
    latents' learning rate, so they predict scales too wide for what is coded: planes of
    nearly all zeros (the finest RAHT levels, the higher SH bands at low rates) cost several
    times their empirical entropy. Minimizing the exact rate of the fixed integers, with its
    own steps, rate and sample (``arm_refit_*``), fixes that at no distortion cost."""
    steps = int(training.arm_refit_steps)
    if steps <= 0:
        return
    lr = float(training.arm_refit_learning_rate)
    opt = adam(synthesis.arm.parameters(), lr=lr)
    n_points = latents[0].shape[1] if latents else 1
    values = torch.cat(latents, dim=1)  # [A, T], fixed: concatenated once
    total = values.shape[1]
    # a sample of at most arm_refit_max_samples positions per step, drawn with replacement: a few
    # thousand parameters need no more, and no step costs O(T), so the refit's time stops
    # growing with the scene
    keep = max(1, min(int(total * float(training.arm_refit_subsample)), int(training.arm_refit_max_samples)))
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * cosine_factor(step / steps)
        positions = torch.randint(0, total, (keep,), generator=generator)
        bits = positions_rate_bits(synthesis, values, positions) * (total / keep)
        opt.zero_grad(set_to_none=True)
        bits.backward()
        opt.step()
    with torch.no_grad():
        bits = rate_bits(synthesis, latents, subsample=training.rate_subsample, generator=generator)
    history.append({"step": "arm_refit", "bits_per_point": bits.item() / max(1, n_points)})


RATE_MODELS = ("arm", "levels")


def check_rate_model(training: TrainingConfig, arch: ArchitectureConfig) -> None:
    """ValueError unless ``training.rate_model`` is one of RATE_MODELS and fits ``arch``."""
    if training.rate_model not in RATE_MODELS:
        raise ValueError(f"rate_model must be one of {', '.join(RATE_MODELS)}; got {training.rate_model!r}")
    if training.rate_model == "levels" and arch.transform != "raht":
        raise ValueError(f"rate_model 'levels' needs the raht transform, the architecture has {arch.transform!r}")


def level_rate_model(training: TrainingConfig, arch: ArchitectureConfig, levels: OctreeLevels,
                     latents: List[torch.Tensor]) -> Optional[LevelRate]:
    """The per-level rate model when ``training.rate_model`` asks for it (None: the ARM's rate)."""
    check_rate_model(training, arch)
    if training.rate_model == "arm":
        return None
    return LevelRate(coefficient_levels(levels.coords[0], levels.depth), latents)


def train_attributes(signals: AttributeSignals, levels: OctreeLevels, arch: ArchitectureConfig,
                     training: TrainingConfig, lmbda: float,
                     init: Optional[TrainingResult] = None,
                     progress: Optional[Callable[[int, dict], None]] = None,
                     render_target: Optional[RenderTarget] = None) -> TrainingResult:
    """Fit latents + networks to ``signals`` on ``levels``; warm-start from ``init`` if given.
    With a ``render_target`` and ``training.render_steps``, the schedule ends with that many
    image-domain steps (render_refine.py)."""
    torch.manual_seed(training.seed)
    gen = torch.Generator().manual_seed(training.seed)
    start = time.perf_counter()
    if init is not None:
        synthesis = init.synthesis
        latents = [torch.nn.Parameter(l.detach().clone()) for l in init.latents]
    else:
        synthesis = AttributeSynthesis(signals.sh.shape[0], arch)
        synthesis.bind(levels)
        latents = [torch.nn.Parameter(l) for l in initial_state(synthesis, signals, levels, lmbda)]
    synthesis.bind(levels)
    distortion_of = SignalDistortion(signals)
    n_points = levels.sizes[0]
    level_rate = level_rate_model(training, arch, levels, latents)

    params = [{"params": latents, "lr": training.learning_rate, "base": training.learning_rate},
              {"params": rate_parameters(synthesis, level_rate), "lr": training.learning_rate,
               "base": training.learning_rate},
              {"params": [p for _, p in synthesis.decoder_parameters()], "lr": training.network_learning_rate,
               "base": training.network_learning_rate}]
    opt = adam(params)
    steps = training.steps
    hard_from = int(round(steps * (1.0 - training.hard_rounding_fraction)))
    history = []
    for step in range(steps):
        factor = cosine_factor(step / max(1, steps - 1), training.final_learning_rate / training.learning_rate)
        for g in opt.param_groups:
            g["lr"] = g["base"] * factor
        if step < hard_from:
            q = [noisy(l, gen) for l in latents]
        else:
            q = [ste_round(l) for l in latents]
        rows = sample_rows(n_points, training.distortion_subsample, training.subsample_chunk, gen)
        pred_sh, pred_op = synthesis.decode(q, rows)
        distortion = distortion_of(pred_sh, pred_op, rows)
        bits = training_rate(synthesis, level_rate, q, subsample=training.rate_subsample, generator=gen)
        loss = distortion + lmbda * bits / n_points
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            record = {"step": step, "loss": loss.item(), "distortion": distortion.item(),
                      "bits_per_point": bits.item() / n_points, "hard": step >= hard_from}
            history.append(record)
            if progress is not None:
                progress(step, record)
    with torch.no_grad():
        final = [torch.round(l.detach()) for l in latents]
    if render_target is not None and training.render_steps > 0:
        final, record = refine_latents(synthesis, final, signals, levels, training, lmbda, render_target,
                                       progress, step_offset=steps, level_rate=level_rate)
        history.append(record)
    refit_arm(synthesis, final, training, gen, history)
    return TrainingResult(synthesis=synthesis, latents=final, history=history,
                          seconds=time.perf_counter() - start)

