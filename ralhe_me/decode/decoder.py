"""Decode a ``.ralhe`` file into a 3DGS model.

Decode side only: imports no encoder, optimizer or renderer. Every failure on a bad file is
a :class:`~ralhe_me.decode.bitstream.BitstreamError` naming the problem, and output files are
written atomically (never a partial file).
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import torch

from ..entropy.integer_arm import QuantizedArm
from ..entropy.latent_coder import decode_latents
from ..entropy.static_latents import LATENT_CODERS, StaticLatentsError, coefficient_levels, decode_static_latents
from ..gaussians import GaussianModel, write_ply
from ..geometry.covariance_code import decode_shapes
from ..geometry.occupancy import NEIGHBOUR_OFFSETS, decode_positions
from ..native import REBUILD_HINT, load_native
from ..nn.neighbors import NeighborMap
from ..threads import intra_op_threads
from .bitstream import BitstreamError, CorruptDataError, unpack
from .gain_map import decode_gain_map, gain_voxels, point_gains
from .reconstruction import (SECTION_ARMS, SECTION_COVARIANCE, SECTION_DECODERS, SECTION_GAINS, SECTION_LATENTS,
                             SECTION_POSITIONS,
                             architecture_from_header, grid_from_header, levels_for, load_decoders,
                             reconstruct_attributes, table_config_from_header)
from .synthesis import AttributeSynthesis, plane_sizes
from .weights import decode_int_tensors


@dataclass
class DecodeResult:
    model: GaussianModel
    header: dict
    seconds: Dict[str, float] = field(default_factory=dict)


def _checked(header: dict) -> dict:
    required = ("num_points", "depth", "origin", "extent", "sh_degree")
    if header.get("attribute_codec", "ralhe") == "ralhe":
        required += ("attributes", "architecture", "table_config", "level_sizes", "signal_mean", "signal_std",
                     "decoder_shift")
    missing = [k for k in required if k not in header]
    if missing:
        raise CorruptDataError(f"header lacks {', '.join(missing)}")
    if not 0 <= int(header["sh_degree"]) <= 3:
        raise CorruptDataError(f"invalid SH degree {header['sh_degree']}")
    if not 1 <= int(header["depth"]) <= 21:
        raise CorruptDataError(f"invalid depth {header['depth']}")
    try:
        grid_from_header(header)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptDataError(f"invalid voxel grid in the header: {exc}") from None
    return header


# The decoder runs many small tensor operations; on a machine shared with other jobs more intra-op
# threads mostly wait on each other (2 threads measured 2x slower than 1 on a busy 2-core machine).
# Results do not depend on it where they must be exact (entropy coding); see decode_bytes.
DEFAULT_DECODE_THREADS = 1


#: Decoding engines: "native" is the C++ decoder (ralhe_me/decode/native, the extension
#: ralhe_me.decode._native), "python" this module's reference path. Both give the same
#: Gaussians: positions, covariance and every integer stage exactly; the attribute networks'
#: float32 results too (fixed operation order, no fused multiply-adds; see native/README.md).
ENGINES = ("native", "python")
#: ralhe_me/decode/native/python/bindings.cpp kApiVersion
NATIVE_API_VERSION = 1


@functools.lru_cache(maxsize=None)
def native_decoder():
    """The extension ralhe_me.decode._native if it is built, current and has the whole-file
    ``decode``; None otherwise (a stale build warns once)."""
    module = load_native("ralhe_me.decode._native", NATIVE_API_VERSION)
    return module if module is not None and hasattr(module, "decode") else None


def default_engine() -> str:
    """"native" when the native decoder is built, else "python"."""
    return "native" if native_decoder() is not None else "python"


def decode_bytes(data: bytes, num_threads: Optional[int] = DEFAULT_DECODE_THREADS,
                 engine: Optional[str] = None) -> DecodeResult:
    """Decode the bytes of a ``.ralhe`` file; raise a BitstreamError subclass if invalid.
    ``num_threads``: torch intra-op threads while decoding (restored after; None: leave as set;
    the native engine runs on one thread). ``engine``: one of :data:`ENGINES`, None for
    :func:`default_engine`. Files whose attributes a baseline coder wrote (header
    ``attribute_codec`` "raht" or "scalar") are always decoded by the Python engine."""
    if engine is None:
        engine = default_engine()
    if engine not in ENGINES:
        raise ValueError(f"unknown decoding engine {engine!r} (choose from {', '.join(ENGINES)})")
    container = unpack(data)
    try:
        if engine == "native" and container.header.get("attribute_codec", "ralhe") == "ralhe":
            return _decode_native(data, container.header)
        with intra_op_threads(num_threads):
            return _decode(container)
    except BitstreamError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError, OverflowError) as exc:
        # Checksums passed, so this is a consistent but invalid file (or a CRC collision).
        raise CorruptDataError(f"inconsistent file content ({type(exc).__name__}: {exc})") from None


def _decode_native(data: bytes, header: dict) -> DecodeResult:
    native = native_decoder()
    if native is None:
        raise ImportError(f"the native decoder (ralhe_me.decode._native) is not built: {REBUILD_HINT}, "
                          "or decode with the Python engine")
    out = native.decode(bytes(data))
    model = GaussianModel(means=out["means"], log_scales=out["log_scales"], quats=out["quats"],
                          opacity_logits=out["opacity_logits"], sh=out["sh"])
    seconds = {k: v for k, v in out["seconds"].items() if k != "container"}  # the Python engine's stages
    return DecodeResult(model=model, header=header, seconds=seconds)


def _decode(container) -> DecodeResult:
    header = _checked(container.header)
    times = {}
    t0 = time.perf_counter()
    n = int(header["num_points"])
    coords, neighbour_rows = decode_positions(container.section(SECTION_POSITIONS), int(header["depth"]),
                                              with_neighbours=True)
    if len(coords) != n:
        raise CorruptDataError(f"positions hold {len(coords)} points, the header says {n}")
    times["positions"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gain = None
    gain_level = header.get("gain_level")
    if gain_level is not None:
        if not 0 <= int(gain_level) <= int(header["depth"]):
            raise CorruptDataError(f"invalid gain level {gain_level}")
        p2v, count = gain_voxels(coords, int(gain_level))
        gain = point_gains(decode_gain_map(container.section(SECTION_GAINS), count), p2v)
    times["gains"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log_scales, quats = decode_shapes(container.section(SECTION_COVARIANCE), gain)
    if len(log_scales) != n:
        raise CorruptDataError(f"covariance holds {len(log_scales)} entries, the header says {n}")
    times["covariance"] = time.perf_counter() - t0

    kind = header.get("attribute_codec", "ralhe")
    grid = grid_from_header(header)
    if kind != "ralhe":
        t0 = time.perf_counter()
        sh, opacity_logits = _decode_baseline(kind, container, coords, header)
        times["attributes"] = time.perf_counter() - t0
        model = GaussianModel(means=grid.centers(coords), log_scales=log_scales, quats=quats,
                              opacity_logits=opacity_logits, sh=sh)
        return DecodeResult(model=model, header=header, seconds=times)

    t0 = time.perf_counter()
    levels = levels_for(coords, header)
    arch = architecture_from_header(header)
    planes = plane_sizes(levels.sizes, arch)
    if planes != [int(s) for s in header["level_sizes"]]:
        raise CorruptDataError("latent plane sizes differ from the header")
    table_config = table_config_from_header(header)
    num_sh = (int(header["sh_degree"]) + 1) ** 2
    synthesis = AttributeSynthesis(num_sh, arch, table_config)
    shapes = [tuple(p.shape) for _, p in synthesis.decoder_parameters()]
    ints = decode_int_tensors(container.section(SECTION_DECODERS), shapes)
    load_decoders(synthesis, ints, int(header["decoder_shift"]))
    latent_coder = header.get("latent_coder", "arm")
    if latent_coder not in LATENT_CODERS:
        raise CorruptDataError(f"unknown latent coder {latent_coder!r} (choose from {', '.join(LATENT_CODERS)})")
    if latent_coder == "static":
        if arch.transform != "raht":
            raise CorruptDataError(f"static latents need the raht transform, the header has {arch.transform!r}")
        if container.section(SECTION_ARMS):
            raise CorruptDataError("a file with static latents has a non-empty arms section")
        try:
            latents = decode_static_latents(container.section(SECTION_LATENTS), len(planes), num_sh + 1,
                                            coefficient_levels(coords, int(header["depth"])))
        except StaticLatentsError as err:
            raise CorruptDataError(str(err)) from None
    else:
        arms = QuantizedArm.from_bytes(container.section(SECTION_ARMS))
        if arms.num_attributes != num_sh + 1:
            raise CorruptDataError(f"{arms.num_attributes} ARMs for {num_sh + 1} attributes")
        latents = decode_latents(container.section(SECTION_LATENTS), planes, num_sh + 1, arms,
                                 arch.segment_length, table_config)
    times["latents"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    synthesis.bind(levels, NeighborMap.from_neighbour_rows(neighbour_rows, NEIGHBOUR_OFFSETS))
    mean = np.asarray(header["signal_mean"], dtype=np.float64)
    std = np.asarray(header["signal_std"], dtype=np.float64)
    sh, opacity_logits = reconstruct_attributes(synthesis, latents, mean, std, gain)
    times["attributes"] = time.perf_counter() - t0

    model = GaussianModel(means=grid.centers(coords), log_scales=log_scales, quats=quats,
                          opacity_logits=opacity_logits, sh=sh)
    return DecodeResult(model=model, header=header, seconds=times)


def _decode_baseline(kind: str, container, coords, header):
    from ..baselines.attribute_codecs import decode_attributes

    if kind not in ("raht", "scalar"):
        raise CorruptDataError(f"unknown attribute codec {kind!r}")
    num_sh = (int(header["sh_degree"]) + 1) ** 2
    return decode_attributes(kind, container.section("attributes"), coords, int(header["depth"]), num_sh)


def decode_file(path_in: str, path_out: str, threads: int | None = None,
                engine: Optional[str] = None) -> DecodeResult:
    """Decode ``path_in`` and write the INRIA ``.ply`` ``path_out`` (atomically); ``engine`` as
    :func:`decode_bytes`."""
    if threads:
        torch.set_num_threads(threads)
    if not os.path.isfile(path_in):
        raise FileNotFoundError(f"{path_in}: no such file")
    with open(path_in, "rb") as fh:
        data = fh.read()
    result = decode_bytes(data, num_threads=threads or DEFAULT_DECODE_THREADS, engine=engine)
    write_ply(result.model, path_out)
    return result
