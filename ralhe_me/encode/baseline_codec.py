"""Baseline files: the same container, positions and covariances as RALHE, with the attributes
coded by a classical coder (RAHT as GPCC-GS, or plain scalar quantization), so comparisons
isolate the attribute coder. The decoder reads them through the same ``decode_bytes``.
Encoder side.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from ..baselines.attribute_codecs import encode_attributes
from ..config import CodecConfig
from ..decode.bitstream import Container, pack
from ..decode.reconstruction import baseline_header
from ..geometry.octree import VoxelizedModel
from .encoder import GeometryCode, encode_geometry

SECTION_ATTRIBUTES = "attributes"
BASELINE_KINDS = ("raht", "scalar")


def encode_baseline(kind: str, vox: VoxelizedModel, base_step: float, config: CodecConfig,
                    geometry: Optional[GeometryCode] = None) -> Tuple[bytes, Dict[str, int]]:
    """A complete baseline file for ``vox`` at quantizer step ``base_step``, and its section sizes."""
    if kind not in BASELINE_KINDS:
        raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINE_KINDS)}")
    geometry = geometry or encode_geometry(vox, config)
    target = vox.model
    attributes = encode_attributes(kind, vox.coords, vox.depth, target.sh, target.opacity_logits, base_step,
                                   config.training.opacity_weight)
    header = baseline_header(kind, num_points=len(target), grid=vox.grid, sh_degree=target.sh_degree,
                             gain_level=geometry.gain_level)
    container = Container(header=header, sections={**geometry.sections(), SECTION_ATTRIBUTES: attributes})
    return pack(container), dict(container.section_sizes())
