"""The entropy model's weight step: the integer ARM's quantization step, searched by exact bits,
and whether the ARM is worth that search at all beside the static latent coder.

Why a module: each step's exact bits run the integer ARM over every latent (about 16 s at 1M
voxels), so the encoder spent about a minute of a 1M encode here. Under ``latent_coder auto``
the ARM is first priced on about a quarter of its segments (a segment's contexts stay inside it,
so their bits are exactly what those segments cost in the file): where even its cheapest step
is clearly dearer than the static coder's bytes, the exact search is skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
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
#: The ARM is priced first (:func:`arm_loses_clearly`) on the first share of each plane's whole
#: segments, exactly (the coarse coefficients: on a 100k default scene a plane's first segment cost
#: 36 times its median one, and a plain random eighth of the segments missed the exact bits by up
#: to 73%, by 3.3% on average (standard deviation) with this head) ...
ARM_HEAD_FRACTION = 0.125
#: ... plus this share of the other whole segments at random (and the partial ones exactly) ...
ARM_SAMPLE_FRACTION = 0.125
#: ... when the random share holds at least this many segments (about 400k voxels; smaller scenes
#: go to the exact search) ...
ARM_SAMPLE_MIN_SEGMENTS = 256
#: ... and the static coder is kept without the exact search when the ARM's estimate exceeds its
#: bits by this share (at 1M voxels the random share is 630 of 5,757 segments: the estimate's
#: deviation, 3.3% with 63 at 100k, scales to about 1%)
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


@dataclass
class SegmentSample:
    """Which whole segments of each plane price the ARM: ``head`` exactly, ``sampled`` (a random
    share of the others) times ``scale``, the ratio of all the others' latents to theirs."""

    head: List[np.ndarray]  # per plane, sorted segment indices
    sampled: List[np.ndarray]  # per plane, sorted, none in head
    scale: float


def sample_segments(num_latents: Sequence[int], segment_length: int, head_fraction: float, fraction: float,
                    seed: int = 0) -> SegmentSample:
    """Per plane of ``num_latents[p]`` latents: its first ``head_fraction`` of whole segments, and
    a sorted random ``fraction`` of the other whole segments (at least one where there is one)."""
    rng = np.random.default_rng(seed)
    head, sampled, others, drawn = [], [], 0, 0
    for n in num_latents:
        whole = int(n) // segment_length
        h = min(whole, int(math.ceil(whole * head_fraction)))
        rest = whole - h
        k = min(rest, max(1, int(round(rest * fraction)))) if rest else 0
        head.append(np.arange(h, dtype=np.int64))
        sampled.append(h + np.sort(rng.choice(rest, size=k, replace=False)) if k else np.zeros(0, np.int64))
        others += rest
        drawn += k
    return SegmentSample(head, sampled, others / drawn if drawn else 0.0)


def gather_segments(latents: Sequence[np.ndarray], segments: Sequence[np.ndarray],
                    segment_length: int) -> List[np.ndarray]:
    """Each plane's chosen ``segments`` side by side ([A, len(segments[p]) * segment_length]): the
    segment layout of the result is theirs, so its exact bits are the sum of theirs."""
    out = []
    for x, chosen in zip(latents, segments):
        cols = (np.asarray(chosen, np.int64)[:, None] * segment_length + np.arange(segment_length)).reshape(-1)
        out.append(np.ascontiguousarray(np.asarray(x)[:, cols]))
    return out


def partial_segments(latents: Sequence[np.ndarray], segment_length: int) -> List[np.ndarray]:
    """Each plane's last, partial segment (empty where the plane ends on a whole one)."""
    return [np.ascontiguousarray(np.asarray(x)[:, (x.shape[1] // segment_length) * segment_length:])
            for x in latents]


def arm_loses_clearly(training, latents: List[np.ndarray], segment_length: int, table_config,
                      static_bits: float, seed: int = 0) -> bool:
    """Whether the ARM's cheapest step, priced on a :func:`sample_segments` sample (its ARM bytes in
    full; the head and partial segments' bits exactly, the random share's scaled to the other
    segments), costs over :data:`ARM_SAMPLE_MARGIN` more than ``static_bits``. False (search
    exactly) when the random share would hold fewer than :data:`ARM_SAMPLE_MIN_SEGMENTS`
    segments. The history records the estimate."""
    plan = sample_segments([x.shape[1] for x in latents], segment_length, ARM_HEAD_FRACTION, ARM_SAMPLE_FRACTION,
                           seed)
    drawn = sum(len(s) for s in plan.sampled)
    if drawn < ARM_SAMPLE_MIN_SEGMENTS:
        return False
    exact = gather_segments(latents, plan.head, segment_length) + partial_segments(latents, segment_length)
    sample = gather_segments(latents, plan.sampled, segment_length)
    costs: Dict[int, float] = {}

    def cost(shift: int) -> float:
        try:
            arms = QuantizedArm.from_float(training.synthesis.arm, shift)
        except ArmQuantizationError:
            return math.inf
        bits = [float(prediction_bits(predict_latents(part, arms, segment_length, table_config),
                                      arms.num_attributes, table_config)) for part in (exact, sample)]
        costs[shift] = 8 * len(arms.to_bytes()) + bits[0] + plan.scale * bits[1]
        return costs[shift]

    shift = downhill(cost, ARM_SHIFTS, ARM_START_SHIFT)
    estimate = costs.get(shift, math.inf)
    loses = estimate > static_bits * (1.0 + ARM_SAMPLE_MARGIN)
    training.history.append({"step": "arm_estimate", "shift": shift, "bits": estimate, "static_bits": static_bits,
                             "segments": drawn + sum(len(h) for h in plan.head), "skipped_search": loses})
    return loses
