"""What encoder and decoder share: the header schema and the reconstruction path.

The encoder builds its reconstruction with :func:`reconstruct_attributes` from the very
integers and weights it writes, and the decoder calls the same function on what it reads,
so "what the encoder predicted" and "what the decoder outputs" are one computation.
Decode side: imports nothing of the encoder, optimizers or renderer.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..attributes import denormalize_opacity_logits, denormalize_sh
from ..config import ArchitectureConfig
from ..entropy.laplace import LaplaceTableConfig
from ..geometry.octree import Contraction, OctreeLevels, VoxelGrid
from .synthesis import AttributeSynthesis, native_module
from .weights import dequantize, quantize

SECTION_POSITIONS = "positions"
SECTION_COVARIANCE = "covariance"
SECTION_DECODERS = "decoders"
SECTION_ARMS = "arms"
SECTION_LATENTS = "latents"
SECTION_GAINS = "gains"  # only with a gain map (header "gain_level")
SECTIONS = (SECTION_POSITIONS, SECTION_COVARIANCE, SECTION_GAINS, SECTION_DECODERS, SECTION_ARMS, SECTION_LATENTS)


def quantize_decoders(synthesis: AttributeSynthesis, shift: int) -> List[np.ndarray]:
    return [quantize(p, shift) for _, p in synthesis.decoder_parameters()]


def load_decoders(synthesis: AttributeSynthesis, ints: Sequence[np.ndarray], shift: int) -> None:
    """Set the decoders to the fixed-point weights ``ints`` (step 2**-shift), and keep the
    integers on ``synthesis`` for the native synthesis (see :func:`reconstruct_attributes`)."""
    with torch.no_grad():
        for (_, p), v in zip(synthesis.decoder_parameters(), ints):
            p.copy_(dequantize(v, shift).reshape(p.shape))
    synthesis.set_quantized_weights(ints, shift)


def architecture_from_header(header: dict) -> ArchitectureConfig:
    values = dict(header["architecture"])
    values["decoder_linear"] = tuple(values["decoder_linear"])
    return ArchitectureConfig(**values)


def table_config_from_header(header: dict) -> LaplaceTableConfig:
    return LaplaceTableConfig(**header["table_config"])


def grid_from_header(header: dict) -> VoxelGrid:
    """The voxel grid of a file; ``contraction`` (absent in files without a far field) holds the
    foreground cube's center and half side (see :class:`~ralhe_me.geometry.octree.Contraction`)."""
    contraction = header.get("contraction")
    if contraction is not None:
        contraction = Contraction(center=tuple(float(v) for v in contraction["center"]),
                                  radius=float(contraction["radius"]), log_range=float(contraction["log_range"]))
    return VoxelGrid(origin=np.asarray(header["origin"], dtype=np.float64), extent=float(header["extent"]),
                     depth=int(header["depth"]), contraction=contraction)


def _with_contraction(header: dict, grid: VoxelGrid) -> dict:
    """``header`` with the grid's contraction, if any; a plain grid adds no key, so its files are
    byte for byte what they were before far-field contraction existed."""
    if grid.contraction is not None:
        header["contraction"] = {"center": [float(v) for v in grid.contraction.center],
                                 "radius": float(grid.contraction.radius),
                                 "log_range": float(grid.contraction.log_range)}
    return header


def make_header(*, num_points: int, grid: VoxelGrid, sh_degree: int, names: Sequence[str],
                arch: ArchitectureConfig, table_config: LaplaceTableConfig, level_sizes: Sequence[int],
                mean: np.ndarray, std: np.ndarray, decoder_shift: int, lmbda: float,
                gain_level: Optional[int] = None, latent_coder: str = "arm") -> dict:
    """``gain_level``: the octree level of the gain map (section ``gains``), None without one;
    ``latent_coder``: "arm" or "static" (entropy/static_latents.py; written only when static, so
    that ARM-coded files keep the header of earlier versions)."""
    extra = {} if latent_coder == "arm" else {"latent_coder": latent_coder}
    return _with_contraction({
        "num_points": int(num_points), "depth": int(grid.depth),
        "origin": [float(v) for v in grid.origin], "extent": float(grid.extent),
        "sh_degree": int(sh_degree), "attributes": list(names),
        "architecture": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(arch).items()},
        "table_config": dataclasses.asdict(table_config),
        "level_sizes": [int(n) for n in level_sizes],
        "signal_mean": np.asarray(mean, np.float64).tolist(), "signal_std": np.asarray(std, np.float64).tolist(),
        "decoder_shift": int(decoder_shift), "lambda": float(lmbda),
        "gain_level": None if gain_level is None else int(gain_level), **extra,
    }, grid)


def baseline_header(kind: str, *, num_points: int, grid: VoxelGrid, sh_degree: int,
                    gain_level: Optional[int] = None) -> dict:
    """Header of a file whose attributes a classical coder (``kind``) wrote (same geometry)."""
    return _with_contraction({
        "attribute_codec": kind, "num_points": int(num_points), "depth": int(grid.depth),
        "origin": [float(v) for v in grid.origin], "extent": float(grid.extent), "sh_degree": int(sh_degree),
        "gain_level": None if gain_level is None else int(gain_level)}, grid)


@torch.no_grad()
def reconstruct_attributes(synthesis: AttributeSynthesis, latents: Sequence[np.ndarray],
                           mean: np.ndarray, std: np.ndarray,
                           gain: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Integer latent planes [A, n] -> SH [N, K, 3] and opacity logits [N] (``gain`` [N]: the
    gain map's per-point gains of the SH signals).

    With the native decoder built (and the weights set by :func:`load_decoders`) the synthesis
    and the denormalization run in its C++ kernels (decode/native/src/synthesis.h,
    attributes.h): the encoder's reconstruction and every decoder then give the same bits.
    Without it, the torch synthesis and numpy denormalization (the references)."""
    module = native_module()
    decoded = synthesis.native_decode(latents) if module is not None else None
    if decoded is None:
        sh_norm, op_norm = synthesis.decode([torch.as_tensor(l, dtype=torch.float32) for l in latents])
        if module is None:
            return (denormalize_sh(sh_norm.numpy(), mean, std, gain),
                    denormalize_opacity_logits(op_norm.numpy(), mean, std))
        decoded = (np.ascontiguousarray(sh_norm.numpy().transpose(1, 0, 2)),
                   np.ascontiguousarray(op_norm.numpy().reshape(-1)))
    return module.denormalize(decoded[0], decoded[1], np.ascontiguousarray(mean, dtype=np.float64),
                              np.ascontiguousarray(std, dtype=np.float64),
                              None if gain is None else np.ascontiguousarray(gain, dtype=np.float64))


def levels_for(coords: np.ndarray, header: dict) -> OctreeLevels:
    return OctreeLevels.build(coords, int(header["architecture"]["num_levels"]), int(header["depth"]))

