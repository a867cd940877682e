"""Rate control: code a model at a requested file size or rendering quality instead of a lambda.

Why a search: the size and the PSNR of a RALHE file depend on lambda through training, with no
closed form, so the only exact measure is an encode. Cheap proxies decide what is worth an
encode: the positions and covariances (coded once, shared by every try) bound the smallest file,
the finetuned model with the coded shapes bounds the PSNR, and between tries the next lambda
comes from interpolating log(attribute bytes) or PSNR against log(lambda) over the two closest
tries that bracket the target (a bisection when the curve misbehaves). The geometry follows lambda
(encode/operating_point.py): a try whose lambda falls in another geometry tier codes that tier's
positions and covariances, prepared the first time a try needs them, so the search runs over the
whole operating-point space. Every try is a real encode,
so what is reported is what the file holds; PSNR is scored on the encoder's reconstruction, which
is bit for bit what the decoder outputs.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from ..config import CodecConfig
from ..eval.evaluation import ViewSet, dataset_views, orbit_views, score_views
from ..gaussians import GaussianModel, codable_model, read_ply
from ..geometry.octree import VoxelizedModel
from .encoder import (EncodeError, EncodeResult, attribute_views, encode_geometry, encode_model, finetune_geometry,
                      prepare, write_atomically)
from .operating_point import MAX_TIER, geometry_follows_lambda, geometry_tier, tier_lambda

SIZE = "size"
PSNR = "psnr"
#: Lambdas the search may try (larger = smaller file): down to 1e-8, past the start of the last
#: geometry tier (2.5e-7), where the guitar's best files lie (1.5e-7: 69.04 dB, the top of its curve)
LAMBDA_RANGE = (1e-8, 1.0)
#: A size target is met within this fraction of it; a PSNR target at or above it, by at most this.
SIZE_TOLERANCE = 0.05
PSNR_TOLERANCE_DB = 0.3
#: First guesses of the slopes, before two tries measure them: d log(attribute bytes) / d log
#: lambda and d PSNR / d log lambda (dB), as measured on the default scene and the donut.
SIZE_SLOPE_GUESS = -0.5
PSNR_SLOPE_GUESS = -1.0
#: A PSNR target this far above the finetuned reference (uncoded attributes with the coded
#: shapes) is refused without an encode: image-domain refinement wins back a fraction of a dB.
PSNR_CEILING_MARGIN_DB = 1.0

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "kib": 1024, "mib": 1024 ** 2,
          "gib": 1024 ** 3, "k": 1000, "m": 1000 ** 2}


class RateControlError(ValueError):
    """A target that cannot be parsed or searched for (bad value, bad settings)."""


class UnreachableTargetError(RateControlError):
    """The target lies outside what these settings can reach; the message gives the range."""


@dataclass(frozen=True)
class RateTarget:
    """What the user asked for: a file size in bytes or a rendering PSNR in dB."""

    kind: str  # SIZE or PSNR
    value: float  # bytes or dB
    max_tries: int = 8

    def __post_init__(self) -> None:
        if self.kind not in (SIZE, PSNR):
            raise RateControlError(f"a target is a {SIZE} or a {PSNR}, got {self.kind!r}")
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value) and self.value > 0):
            raise RateControlError(f"the target {self.kind} must be a positive number, got {self.value!r}")
        if self.max_tries < 1:
            raise RateControlError(f"max_tries must be >= 1, got {self.max_tries}")

    def describe(self) -> str:
        return f"{int(self.value):,} bytes" if self.kind == SIZE else f"{self.value:.2f} dB"


@dataclass
class Trial:
    """One encode of the search."""

    lmbda: float
    size_bytes: int
    psnr: Optional[float]  # only for a PSNR target
    seconds: float
    result: EncodeResult = field(repr=False)
    geometry_bytes: int = 0  # positions and covariances of the try's geometry tier
    tier: int = 0

    def describe(self) -> str:
        psnr = "" if self.psnr is None else f", {self.psnr:.2f} dB"
        return (f"lambda {self.lmbda:.4g} (geometry tier {self.tier}): {self.size_bytes:,} bytes{psnr} "
                f"({self.seconds:.1f} s)")


@dataclass
class RateControlResult:
    target: RateTarget
    chosen: Trial  # the file to keep
    trials: List[Trial]  # in the order they ran
    met: bool  # False: max_tries ran out; ``chosen`` is the closest try

    def summary(self) -> str:
        c = self.chosen
        if self.target.kind == SIZE:
            off = 100.0 * (c.size_bytes - self.target.value) / self.target.value
            how = f"{c.size_bytes:,} bytes ({off:+.1f}% of the target {self.target.describe()})"
        else:
            how = f"{c.psnr:.2f} dB (target {self.target.describe()}) at {c.size_bytes:,} bytes"
        state = "target met" if self.met else f"target NOT met in {len(self.trials)} tries; closest kept"
        return f"{state}: {how}, lambda {c.lmbda:.4g}, {len(self.trials)} encodes"


def parse_size(text: str) -> int:
    """Bytes of a size such as ``600KB``, ``1.5 MB``, ``600 KiB`` or ``600000`` (KB = 1000 bytes,
    KiB = 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise RateControlError(f"cannot read {text!r} as a size: use a number of bytes with an optional unit "
                               f"(B, KB, MB, GB, KiB, MiB, GiB), e.g. 600KB")
    size = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not size >= 1:
        raise RateControlError(f"a target size must be at least 1 byte, got {text!r}")
    return int(round(size))


@dataclass
class PreparedInput:
    """What every try shares: the voxelization with its coded geometry and the scoring views."""

    model: GaussianModel
    voxelized: VoxelizedModel
    geometry: object  # encoder.GeometryCode
    render_target: object  # render_refine.RenderTarget: encoder.attribute_views
    views: Optional[ViewSet]  # the scoring views (PSNR targets)
    reference_psnr: Optional[float]  # PSNR of the voxelized, finetuned model with the coded shapes
    tier: int = 0  # geometry tier (encode/operating_point.py)
    # the same input prepared at another geometry tier (None: the search keeps this one)
    prepare_tier: Optional[Callable[[int], "PreparedInput"]] = field(default=None, repr=False, compare=False)

    @property
    def geometry_bytes(self) -> int:
        return sum(len(data) for data in self.geometry.sections().values())


def prepare_input(model: GaussianModel, config: CodecConfig, target: RateTarget, *, finetune_iters: int = 0,
                  dataset: Optional[str] = None, views: int = 8, resolution: Tuple[int, int] = (400, 400),
                  progress: bool = False) -> PreparedInput:
    """Voxelize, code (and finetune) the geometry at the geometry tier of ``config``; render the
    scoring views of a PSNR target (the input's orbit renders, or ``dataset``'s test split). The
    result prepares the other tiers on demand, with the same views."""
    model = codable_model(model)
    tier = geometry_tier(config).index
    scoring = None
    if target.kind == PSNR:
        scoring = dataset_views(dataset, "test", views, resolution) if dataset else \
            orbit_views(model, views, resolution)
    return _prepare_tier(model, dataclasses.replace(config, geometry_tier=tier), scoring, finetune_iters, dataset,
                         progress)


def _prepare_tier(model: GaussianModel, config: CodecConfig, scoring: Optional[ViewSet], finetune_iters: int,
                  dataset: Optional[str], progress: bool) -> PreparedInput:
    vox = prepare(model, config)
    if finetune_iters > 0:
        vox, geometry, _ = finetune_geometry(vox, model, config, finetune_iters, dataset, progress=progress)
    else:
        geometry = encode_geometry(vox, config)
    render_target = attribute_views(vox, geometry, model, config, dataset)  # once for all the tries
    reference = None if scoring is None else score_views(vox.model, scoring, with_ssim=False).psnr

    def other(tier: int) -> PreparedInput:
        return _prepare_tier(model, dataclasses.replace(config, geometry_tier=tier), scoring, finetune_iters,
                             dataset, progress)

    return PreparedInput(model, vox, geometry, render_target, scoring, reference, config.geometry_tier, other)


def encode_to_target(prepared: PreparedInput, config: CodecConfig, target: RateTarget,
                     log: Callable[[str], None] = print,
                     progress: Optional[Callable[[int, dict], None]] = None) -> RateControlResult:
    """Search lambda until the file meets ``target``; every try is a full encode, on the geometry
    tier of its lambda when the geometry follows lambda (prepared from ``prepared`` on first use).
    Raises :class:`UnreachableTargetError` (with the reachable range) when no lambda can meet it."""
    inputs = {prepared.tier: prepared}
    follows = geometry_follows_lambda(config) and prepared.prepare_tier is not None

    def input_at(tier: int) -> PreparedInput:
        if tier not in inputs:
            log(f"preparing geometry tier {tier} (finer positions and covariances)")
            inputs[tier] = prepared.prepare_tier(tier)
        return inputs[tier]

    def tier_of(lmbda: float) -> int:
        if not follows:
            return prepared.tier
        return geometry_tier(dataclasses.replace(config, lmbda=lmbda, geometry_tier=None)).index

    lmbda = min(max(config.lmbda, LAMBDA_RANGE[0]), LAMBDA_RANGE[1])
    start = input_at(tier_of(lmbda))
    if target.kind == SIZE and target.value <= start.geometry_bytes * (1 + SIZE_TOLERANCE):
        raise UnreachableTargetError(
            f"a file of {target.describe()} is out of reach: the positions and covariances alone take "
            f"{start.geometry_bytes:,} bytes (a smaller file needs a coarser --depth or a smaller --codebook)")
    if target.kind == PSNR:
        # climb the geometry tiers until the coded geometry allows the target
        while target.value > start.reference_psnr + PSNR_CEILING_MARGIN_DB and follows and start.tier < MAX_TIER:
            lmbda = tier_lambda(start.tier + 1, config.geometry_tier_db)
            start = input_at(tier_of(lmbda))
        if target.value > start.reference_psnr + PSNR_CEILING_MARGIN_DB:
            raise UnreachableTargetError(
                f"{target.describe()} is out of reach: the model with its coded positions and covariances "
                f"(geometry tier {start.tier}) and uncoded colours gives {start.reference_psnr:.2f} dB on these "
                f"views (a higher PSNR needs a deeper --depth or a finer --covariance-step)")

    trials: List[Trial] = []

    def run(lmbda: float) -> Trial:
        t0 = time.perf_counter()
        current = input_at(tier_of(lmbda))
        cfg = dataclasses.replace(config, lmbda=lmbda)
        result = encode_model(current.model, cfg, voxelized=current.voxelized, geometry=current.geometry,
                              render_target=current.render_target, progress=progress)
        psnr = None
        if target.kind == PSNR:
            psnr = score_views(result.reconstruction, current.views, with_ssim=False).psnr
        trial = Trial(lmbda, len(result.data), psnr, time.perf_counter() - t0, result, current.geometry_bytes,
                      current.tier)
        trials.append(trial)
        log(f"try {len(trials)}/{target.max_tries}: {trial.describe()}")
        return trial

    for _ in range(target.max_tries):
        trial = run(lmbda)
        if _meets(trial, target):
            return RateControlResult(target, _best(trials, target), trials, True)
        nxt = _next_lambda(trials, target)
        if nxt is None:  # the target lies beyond a lambda bound already tried
            raise UnreachableTargetError(_unreachable(trials, target))
        lmbda = nxt
    met = any(_meets(t, target) for t in trials)
    return RateControlResult(target, _best(trials, target), trials, met)


def _error(trial: Trial, target: RateTarget) -> float:
    """Signed distance to the target on the scale the interpolation is nearly linear on (the
    attribute bytes of a size: the try's geometry bytes left out); it decreases as lambda grows (a
    larger lambda gives a smaller file of lower PSNR)."""
    if target.kind == SIZE:
        if target.value <= trial.geometry_bytes:  # this tier's geometry alone is too big
            return math.log(trial.size_bytes) - math.log(target.value)
        return math.log(max(trial.size_bytes - trial.geometry_bytes, 1)) - math.log(target.value - trial.geometry_bytes)
    return trial.psnr - target.value


def _meets(trial: Trial, target: RateTarget) -> bool:
    if target.kind == SIZE:
        return abs(trial.size_bytes - target.value) <= SIZE_TOLERANCE * target.value
    return target.value <= trial.psnr <= target.value + PSNR_TOLERANCE_DB


def _best(trials: List[Trial], target: RateTarget) -> Trial:
    """The try to keep: for a size, the closest to it (among those within the tolerance, the
    largest at or under it); for a PSNR, the smallest file at or above it, else the closest."""
    if target.kind == SIZE:
        ok = [t for t in trials if _meets(t, target)]
        under = [t for t in ok if t.size_bytes <= target.value]
        if under:
            return max(under, key=lambda t: t.size_bytes)
        return min(ok or trials, key=lambda t: abs(t.size_bytes - target.value))
    above = [t for t in trials if t.psnr >= target.value]
    if above:
        return min(above, key=lambda t: t.size_bytes)
    return max(trials, key=lambda t: t.psnr)


def _next_lambda(trials: List[Trial], target: RateTarget) -> Optional[float]:
    """The next lambda to try, or None when the target is beyond a bound already tried."""
    lo_bound, hi_bound = (math.log(v) for v in LAMBDA_RANGE)
    points = sorted((math.log(t.lmbda), _error(t, target)) for t in trials)
    # too good (error > 0): lambda must grow; not good enough (error < 0): lambda must shrink
    below = [p for p in points if p[1] > 0]  # lambdas to the left of the target
    above = [p for p in points if p[1] < 0]
    left = max(below, key=lambda p: p[0]) if below else None
    right = min(above, key=lambda p: p[0]) if above else None
    if left and right and left[0] < right[0]:  # bracketed: interpolate, kept inside the bracket
        x = left[0] + (right[0] - left[0]) * left[1] / (left[1] - right[1])
        margin = 0.1 * (right[0] - left[0])
        if not left[0] + margin <= x <= right[0] - margin:
            x = 0.5 * (left[0] + right[0])
        return math.exp(x)
    last = math.log(trials[-1].lmbda)
    err = _error(trials[-1], target)
    slope = SIZE_SLOPE_GUESS if target.kind == SIZE else PSNR_SLOPE_GUESS
    if len(points) >= 2:  # the measured slope over the two tries nearest the target, if sane
        (x0, e0), (x1, e1) = sorted(points, key=lambda p: abs(p[1]))[:2]
        if x1 != x0 and (e1 - e0) / (x1 - x0) < 0:
            slope = (e1 - e0) / (x1 - x0)
    step = -err / slope
    step = max(-4.0, min(4.0, step))  # at most a factor e^4 (about 55) per try
    if (err > 0 and last >= hi_bound) or (err < 0 and last <= lo_bound):
        return None
    return math.exp(max(lo_bound, min(hi_bound, last + step)))


def _unreachable(trials: List[Trial], target: RateTarget) -> str:
    sizes = sorted(t.size_bytes for t in trials)
    if target.kind == SIZE:
        return (f"a file of {target.describe()} is out of reach with these settings: lambda from "
                f"{LAMBDA_RANGE[0]:g} to {LAMBDA_RANGE[1]:g} gives files from about {sizes[0]:,} to "
                f"{sizes[-1]:,} bytes as far as tried (change --depth, --codebook or --covariance-step)")
    psnrs = sorted(t.psnr for t in trials)
    return (f"{target.describe()} is out of reach with these settings: the tries reached {psnrs[0]:.2f} to "
            f"{psnrs[-1]:.2f} dB ({sizes[0]:,} to {sizes[-1]:,} bytes) with lambda down to "
            f"{min(t.lmbda for t in trials):g} (a higher PSNR needs a deeper --depth or a finer "
            f"--covariance-step)")


def encode_file_to_target(path_in: str, path_out: str, config: CodecConfig, target: RateTarget, *,
                          finetune_iters: int = 0, dataset: Optional[str] = None, views: int = 8,
                          resolution: Tuple[int, int] = (400, 400), log: Callable[[str], None] = print,
                          progress: Optional[Callable[[int, dict], None]] = None,
                          finetune_progress: bool = False) -> RateControlResult:
    """``ralhe encode --target-size / --target-psnr``: search, then write the chosen try atomically."""
    if finetune_iters < 0:
        raise EncodeError(f"finetune_iters must be >= 0, got {finetune_iters}")
    model = read_ply(path_in)
    prepared = prepare_input(model, config, target, finetune_iters=finetune_iters, dataset=dataset, views=views,
                             resolution=resolution, progress=finetune_progress)
    if prepared.reference_psnr is not None:
        log(f"scoring on {len(prepared.views.cameras)} views; the finetuned model with the coded shapes gives "
            f"{prepared.reference_psnr:.2f} dB; positions and covariances take {prepared.geometry_bytes:,} bytes "
            f"(geometry tier {prepared.tier})")
    else:
        log(f"positions and covariances take {prepared.geometry_bytes:,} bytes (geometry tier {prepared.tier})")
    outcome = encode_to_target(prepared, config, target, log=log, progress=progress)
    write_atomically(path_out, outcome.chosen.result.data)
    return outcome
