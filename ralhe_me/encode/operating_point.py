"""One quality dial for the whole file: lambda sets the attributes' trade-off, and the geometry's
precision (octree depth, covariance residual step) follows it in tiers.

Why: the depth and the covariance step used to be chosen by fixed rules (at most 5% of the
Gaussians merged; covariance renders within 42 dB of unquantized), so however small lambda was,
the voxelization and the covariance code capped the quality (the donut: about 42 dB at the
automatic settings, against 55 dB reachable by hand). At high rate the attribute error falls
about as lambda (D ~ lambda / (2 ln 2) for a high-rate scalar quantizer), i.e. 10 dB per
decade, so geometry targets that rise 10 dB per decade of lambda keep the geometry's share of
the error constant. They rise in tiers of ``config.geometry_tier_db`` (a factor 4 in lambda) so
that a sweep over many lambdas voxelizes and codes the shapes once per tier, not once per lambda.

Tier 0 (lambda at or above ``REFERENCE_LAMBDA``) is the historic rule set, unchanged. Tier t > 0
adds ``t * geometry_tier_db`` to the covariance step's render target and ``t * depth_tier_db`` to
the depth's, and lets the depth go past the merge rule's until the voxelized renders reach it.

The two steps were measured: on the donut (fast preset) a grid of depths 10-13, covariance steps
0.14-0.035 and lambdas 1e-4 and 2e-5 put the best files (largest PSNR per byte) at depth 11-12
with step 0.14 for lambda 1e-4 and depth 12 with steps 0.14-0.07 for 2e-5; a 13th level cost
more bytes per dB than a finer step or a smaller lambda. With 6 dB and 3 dB per tier the rules
pick depth 11 / step 0.2 (tier 1), 12 / 0.14 (tier 2) and 13 / 0.07 (tier 3) there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..config import CodecConfig

#: lambda from which the tier-0 rules hold (the presets' default)
REFERENCE_LAMBDA = 1e-3
#: highest tier: its targets (78 dB covariance renders, 68 dB voxelized) pass the 65 dB that SPZ keeps
#: on the guitar. Tier 5's (72 and 65 dB) capped the guitar at 64.4 dB whatever the lambda (5e-7 and
#: 1.5e-7: 64.36 and 64.41 dB, the latents 12% larger at the second); tier 6 at 1.5e-7 renders
#: 69.04 dB for 9% more bytes than tier 5 at the same lambda (depth 14 against 13, covariance
#: section 618 against 548 kB). Tier 3's targets had capped it at 58 dB.
MAX_TIER = 6
#: levels a tier may add past the depth of tier 0 (each costs about 3 bits per sparse Gaussian)
MAX_EXTRA_LEVELS = 6


class OperatingPointError(ValueError):
    """A geometry tier or lambda that does not define an operating point."""


@dataclass(frozen=True)
class GeometryTier:
    """The geometry targets of one tier (render PSNRs against the uncoded model, in dB)."""

    index: int
    covariance_psnr: float  # quantized shapes against unquantized
    depth_psnr: Optional[float]  # voxelized against input; None: the merge rule alone (tier 0 without it)
    extends_depth: bool  # the depth may go past the merge rule's to reach depth_psnr (tiers > 0)

    def describe(self) -> str:
        depth = "merge rule" if self.depth_psnr is None else f"{self.depth_psnr:g} dB"
        return f"geometry tier {self.index} (covariance {self.covariance_psnr:g} dB, depth {depth})"


def tier_of_lambda(lmbda: float, tier_db: float = 6.0) -> int:
    """The tier whose geometry suits ``lmbda``: how many ``tier_db`` steps the attribute PSNR
    gains over ``REFERENCE_LAMBDA`` (10 dB per decade), rounded down, in [0, MAX_TIER]."""
    if not (isinstance(lmbda, (int, float)) and math.isfinite(lmbda) and lmbda > 0):
        raise OperatingPointError(f"lambda must be a positive number, got {lmbda!r}")
    if not tier_db > 0:
        raise OperatingPointError(f"geometry_tier_db must be > 0, got {tier_db!r}")
    gain_db = 10.0 * math.log10(REFERENCE_LAMBDA / lmbda)
    return int(min(MAX_TIER, max(0, math.floor(gain_db / tier_db + 1e-9))))


def tier_lambda(index: int, tier_db: float = 6.0) -> float:
    """The largest lambda of tier ``index`` (where it starts)."""
    check_tier(index)
    return REFERENCE_LAMBDA * 10.0 ** (-index * tier_db / 10.0)


def check_tier(index) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_TIER:
        raise OperatingPointError(f"a geometry tier is a whole number from 0 to {MAX_TIER}, got {index!r}")
    return index


def geometry_tier(config: CodecConfig) -> GeometryTier:
    """The tier ``config`` codes its geometry at: ``config.geometry_tier`` if set, else the tier
    of ``config.lmbda``."""
    index = config.geometry_tier
    index = tier_of_lambda(config.lmbda, config.geometry_tier_db) if index is None else check_tier(index)
    depth_psnr = config.depth_transparent_psnr
    if depth_psnr is None and index > 0:
        depth_psnr = 50.0  # the tier-0 transparency default, for the tiers that extend past the merge rule
    if depth_psnr is not None:
        depth_psnr += index * config.depth_tier_db
    return GeometryTier(index, config.covariance_min_psnr + index * config.geometry_tier_db, depth_psnr, index > 0)


def geometry_follows_lambda(config: CodecConfig) -> bool:
    """Whether the geometry of ``config`` changes with its lambda: not when a tier is fixed, nor
    when the depth and the covariance step are both fixed (a tier sets nothing else)."""
    return config.geometry_tier is None and not (config.depth is not None and config.covariance_step is not None)
