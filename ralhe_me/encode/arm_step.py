"""The entropy model's weight step: the integer ARM's quantization step, searched by exact bits,
and whether the ARM is worth that search at all beside the static latent coder.

Why a module: each step's exact bits run the integer ARM over every latent (about 16 s at 1M
voxels), so the encoder spends about a minute of a 1M encode here. Under ``latent_coder auto``
the ARM is first priced on a random eighth of its segments (a segment's contexts stay inside it,
so the sample's bits are exactly what those segments cost in the file): where even its cheapest
step is clearly dearer than the static coder's bytes, the exact search is skipped.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from ..entropy.integer_arm import ArmQuantizationError, QuantizedArm
from ..entropy.latent_coder import encode_prediction, predict_latents, prediction_bits
from .errors import EncodeError

#: ARM weight steps 2**-shift, and where their search starts (:func:`choose_arm`): on the 5k default
#: scene (fast preset, lambdas 8e-3 to 1e-5) every lambda's cheapest is 6, the ARM's bytes growing
#: by about 490 per step while the latents' bits hardly move
ARM_SHIFTS = tuple(range(6, 14))
ARM_START_SHIFT = 8
#: the share of each plane's whole segments the ARM is priced on first (:func:`arm_loses_clearly`) ...
ARM_SAMPLE_FRACTION = 0.125
#: ... when the sample holds at least this many segments (smaller scenes go to the exact search) ...
ARM_SAMPLE_MIN_SEGMENTS = 256
#: ... and the static coder is kept without the exact search when the ARM's estimate exceeds its
#: bits by this share (on the 1M default scene the two differed by 23%; an estimate from 712 of
#: 5,700 segments varies by about 1%)
ARM_SAMPLE_MARGIN = 0.05


def downhill(cost: Callable[[int], float], values: Sequence[int], start: int) -> int:
    """The value of least ``cost`` reached from ``start`` (or the value nearest it) by moving to
    the cheaper neighbour in ``values`` while one is cheaper (each value's cost computed once);
    where every cost seen is infinite, the other values are tried in order. On a cost with one
    minimum (bits against a weight step: a finer step costs more weights and fewer latent bits)
    it is the minimum after at most 3 + (distance from ``start``) evaluations instead of
    ``len(values)``."""
    if not values:
        raise EncodeError("no value to try")
    costs: Dict[int, float] = {}

    def at(i: int) -> float:
        if i not in costs:
            costs[i] = cost(values[i])
        return costs[i]

    i = min(range(len(values)), key=lambda j: (abs(values[j] - start), j))  # ``start`` or the nearest
    while True:
        best = min((j for j in (i - 1, i, i + 1) if 0 <= j < len(values)), key=lambda j: (at(j), j != i))
        if best == i:
            break
        i = best
    if math.isinf(at(i)):
        for j in range(len(values)):
            if at(j) < at(i):
                i = j
    return values[i]


def choose_arm(training, latents: List[np.ndarray], segment_length: int,
               table_config) -> Tuple[QuantizedArm, float, bytes]:
    """The ARM weight step minimizing (ARM bytes + latent bits), searched :func:`downhill` from
    :data:`ARM_START_SHIFT` -> (ARMs, their latent bits, the latents coded with them); the latents
    are coded from the chosen step's prediction instead of predicting again. ``training``: the
    :class:`~ralhe_me.train.schedule.TrainingResult` (its history records the step)."""
    cheapest: list = []  # bits, shift, ARMs, latent bits, prediction of the cheapest step so far

    def cost(shift: int) -> float:
        try:
            arms = QuantizedArm.from_float(training.synthesis.arm, shift)
        except ArmQuantizationError:
            return math.inf
        predicted = predict_latents(latents, arms, segment_length, table_config)
        latent_bits = float(prediction_bits(predicted, arms.num_attributes, table_config))
        bits = 8 * len(arms.to_bytes()) + latent_bits
        if not cheapest or bits < cheapest[0]:  # only it keeps its prediction (hundreds of MB at 1M)
            cheapest[:] = [bits, shift, arms, latent_bits, predicted]
        return bits

    downhill(cost, ARM_SHIFTS, ARM_START_SHIFT)  # it ends on the cheapest step it evaluated
    if not cheapest:
        raise EncodeError("the trained entropy model cannot be quantized (weights too large)")
    _, shift, arms, latent_bits, predicted = cheapest
    training.history.append({"step": "arm_shift", "shift": shift})
    return arms, latent_bits, encode_prediction(predicted, table_config)


def sample_segments(num_latents: Sequence[int], segment_length: int, fraction: float,
                    seed: int = 0) -> List[np.ndarray]:
    """Per plane of ``num_latents[p]`` latents, a sorted random ``fraction`` of its whole segments
    (indices; at least one where the plane has one)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in num_latents:
        whole = int(n) // segment_length
        k = min(whole, max(1, int(round(whole * fraction)))) if whole else 0
        out.append(np.sort(rng.choice(whole, size=k, replace=False)) if k else np.zeros(0, np.int64))
    return out


def gather_segments(latents: Sequence[np.ndarray], segments: Sequence[np.ndarray],
                    segment_length: int) -> List[np.ndarray]:
    """Each plane's chosen ``segments`` side by side ([A, len(segments[p]) * segment_length]): the
    segment layout of the result is theirs, so its exact bits are the sum of theirs."""
    out = []
    for x, chosen in zip(latents, segments):
        cols = (np.asarray(chosen, np.int64)[:, None] * segment_length + np.arange(segment_length)).reshape(-1)
        out.append(np.ascontiguousarray(np.asarray(x)[:, cols]))
    return out


def arm_loses_clearly(training, latents: List[np.ndarray], segment_length: int, table_config,
                      static_bits: float, seed: int = 0) -> bool:
    """Whether the ARM's cheapest step, priced on a :data:`ARM_SAMPLE_FRACTION` sample of the
    segments (its ARM bytes in full, the sample's latent bits scaled to all latents), costs over
    :data:`ARM_SAMPLE_MARGIN` more than ``static_bits``. False (search exactly) when the sample
    would hold fewer than :data:`ARM_SAMPLE_MIN_SEGMENTS` segments. The history records the
    estimate."""
    segments = sample_segments([x.shape[1] for x in latents], segment_length, ARM_SAMPLE_FRACTION, seed)
    sampled = sum(len(s) for s in segments)
    if sampled < ARM_SAMPLE_MIN_SEGMENTS:
        return False
    sample = gather_segments(latents, segments, segment_length)
    scale = sum(x.shape[1] for x in latents) / (sampled * segment_length)
    costs: Dict[int, float] = {}

    def cost(shift: int) -> float:
        try:
            arms = QuantizedArm.from_float(training.synthesis.arm, shift)
        except ArmQuantizationError:
            return math.inf
        predicted = predict_latents(sample, arms, segment_length, table_config)
        costs[shift] = 8 * len(arms.to_bytes()) + scale * float(
            prediction_bits(predicted, arms.num_attributes, table_config))
        return costs[shift]

    shift = downhill(cost, ARM_SHIFTS, ARM_START_SHIFT)
    estimate = costs.get(shift, math.inf)
    loses = estimate > static_bits * (1.0 + ARM_SAMPLE_MARGIN)
    training.history.append({"step": "arm_estimate", "shift": shift, "bits": estimate, "static_bits": static_bits,
                             "segments": sampled, "skipped_search": loses})
    return loses
