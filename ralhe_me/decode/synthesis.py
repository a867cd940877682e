"""From latents to attributes, and the rate of the latents: the networks of one model.

One :class:`AttributeSynthesis` holds the decoders of all attributes (the SH triplets as one
grouped decoder, opacity as another) and their ARMs (one batched module). Both the training
loop and the file decoder use it, so what the encoder optimizes is what the decoder runs.

Latent planes. Each attribute has ``C = latent_channels`` latents per voxel per level
(the paper: C = 1), stored as ``C * L`` planes in channel-major order (plane ``c * L + l``
holds channel ``c`` of level ``l``). The entropy coder sees planes exactly like levels: the
contexts of a latent are the K before it in its own plane. With C = 3 an RGB triplet is
not squeezed through one scalar per voxel.

Transform. ``arch.transform`` picks what a latent plane is: ``"pyramid"`` (the paper) has
one plane per level, whose latents are copied down to the finest voxels; ``"raht"`` has one
plane per channel holding RAHT coefficients (divided by the step), turned into per-point
values by the inverse transform (``nn/inverse_raht.py``; why: see there).

Decoder. The paper's 4-layer decoder (two point-wise layers, two 3x3x3 sparse
convolutions) plus, when ``skip`` is set, a point-wise linear map from the upsampled latents
to the output added to it: the classical "sum of the pyramid" reconstruction is then exactly
representable, training starts from it, and the 4 layers learn what it misses.

Native decoding. Once :meth:`AttributeSynthesis.set_quantized_weights` gave it the file's
integer weights (reconstruction.py load_decoders does), decoding all points without autograd runs the
native decoder's synthesis (``ralhe_me.decode._native``, decode/native/src/synthesis.h) when
it is built: one fixed order of float32 operations, so the encoder's reconstruction, this
decoder, the ``ralhe-decode`` command and WebAssembly give the same bits. The torch path
stays the reference: training, subsets of rows, float weights and builds without the
extension use it (it agrees with the native one to float32 rounding, not bit for bit).

Decode side: no optimizer, no renderer, no encoder import.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ArchitectureConfig
from ..entropy.laplace import LaplaceTableConfig, laplace_rate_bits
from ..geometry.octree import OctreeLevels
from ..nn.arm import ArmConfig, BatchedArm
from ..nn.grouped_decoder import GroupedSparseDecoder
from ..nn.inverse_raht import InverseRaht
from ..nn.neighbors import NeighborMap, row_set
from ..nn.row_subset import row_subsets
from ..nn.skip_path import skip_add
from ..nn.sparse_decoder import DecoderConfig

TRANSFORMS = ("raht", "pyramid")
NATIVE_API_VERSION = 1  # the API_VERSION of ralhe_me.decode._native these sources call (python/bindings.cpp)


def native_module():
    """The native decoder extension with its synthesis kernels (``synthesize``, ``denormalize``),
    or None when it is not built (or built from other sources)."""
    from ..native import load_native

    module = load_native("ralhe_me.decode._native", NATIVE_API_VERSION)
    return module if module is not None and hasattr(module, "synthesize") else None


def _neighbour_columns() -> Tuple[np.ndarray, np.ndarray]:
    """MinkowskiEngine kernel offsets k != 13 and the occupancy decoder's neighbour column of each
    (geometry/occupancy.py NEIGHBOUR_OFFSETS), what the native synthesis reads."""
    from ..geometry.occupancy import NEIGHBOUR_OFFSETS

    column = {tuple(int(v) for v in o): j for j, o in enumerate(NEIGHBOUR_OFFSETS)}
    ks = np.array([k for k in range(27) if k != 13])
    cols = np.array([column[(k % 3 - 1, k // 3 % 3 - 1, k // 9 - 1)] for k in ks])
    return ks, cols


def _int32_planes(planes: Sequence) -> Optional[List[np.ndarray]]:
    """Latent planes (numpy integers or integer-valued floats / tensors) as int32 [A, n] arrays, or
    None when some value is no int32 (then only the torch path can decode them)."""
    out = []
    for p in planes:
        a = p.detach().numpy() if isinstance(p, Tensor) else np.asarray(p)
        if a.ndim != 2 or a.dtype.kind not in "iuf":
            return None
        if a.dtype.kind in "iu":
            if a.size and (int(a.min()) < -(1 << 31) or int(a.max()) >= (1 << 31)):
                return None
            out.append(np.ascontiguousarray(a, dtype=np.int32))
            continue
        with np.errstate(invalid="ignore"):
            q = np.ascontiguousarray(a, dtype=np.int32)
        if not np.array_equal(q, a):  # fractions, NaN and values beyond int32 differ
            return None
        out.append(q)
    return out


def decoder_configs(arch: ArchitectureConfig) -> Tuple[DecoderConfig, DecoderConfig]:
    """The decoder shapes of an SH triplet (d=3) and of opacity (d=1)."""
    common = dict(in_channels=planes_per_channel(arch) * arch.latent_channels, hidden_linear=tuple(arch.decoder_linear),
                  hidden_conv=arch.decoder_conv)
    return DecoderConfig(out_channels=3, **common), DecoderConfig(out_channels=1, **common)


def arm_config(arch: ArchitectureConfig) -> ArmConfig:
    return ArmConfig(context_size=arch.arm_context, hidden=arch.arm_hidden)


def planes_per_channel(arch: ArchitectureConfig) -> int:
    if arch.transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {arch.transform!r} (choose from {', '.join(TRANSFORMS)})")
    return 1 if arch.transform == "raht" else arch.num_levels


def plane_sizes(level_sizes, arch: ArchitectureConfig) -> List[int]:
    """Sizes of the latent planes (channel-major): ``C * L`` level planes, or ``C`` RAHT planes."""
    if planes_per_channel(arch) == 1:
        return [int(level_sizes[0])] * arch.latent_channels
    return [int(n) for n in level_sizes] * arch.latent_channels


class AttributeSynthesis(nn.Module):
    """Decoders and ARMs of ``num_sh`` SH attributes plus opacity."""

    def __init__(self, num_sh: int, arch: ArchitectureConfig,
                 table_config: LaplaceTableConfig = LaplaceTableConfig()):
        super().__init__()
        self.arch = arch
        self.num_sh = num_sh
        sh_cfg, op_cfg = decoder_configs(arch)
        self.sh_decoder = GroupedSparseDecoder(num_sh, sh_cfg)
        self.opacity_decoder = GroupedSparseDecoder(1, op_cfg)
        if arch.skip:
            self.sh_skip = nn.Parameter(torch.zeros(num_sh, sh_cfg.in_channels, 3))
            self.sh_skip_bias = nn.Parameter(torch.zeros(num_sh, 1, 3))
            self.opacity_skip = nn.Parameter(torch.zeros(1, op_cfg.in_channels, 1))
            self.opacity_skip_bias = nn.Parameter(torch.zeros(1, 1, 1))
        self.arm = BatchedArm(num_sh + 1, arm_config(arch), table_config)
        self._plane_p2v: List[Tensor] = []
        self._neighbors: Optional[NeighborMap] = None
        self._segment_start: Optional[Tensor] = None
        self._gather_index = None
        self._inverse: Optional[InverseRaht] = None
        self._levels: Optional[OctreeLevels] = None
        self._native_inputs: Optional[tuple] = None  # (coords, depth, neighbours, point_to_voxel), per bind
        self._quantized: Optional[tuple] = None  # (ints, shift, parameters, their versions): set_quantized_weights

    @property
    def num_attributes(self) -> int:
        return self.num_sh + 1

    def decoder_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """The decoding networks' parameters in file order (SH group, opacity, skips)."""
        params = [(f"sh.{n}", p) for n, p in self.sh_decoder.named_parameters()]
        params += [(f"opacity.{n}", p) for n, p in self.opacity_decoder.named_parameters()]
        if self.arch.skip:
            params += [("sh.skip", self.sh_skip), ("sh.skip_bias", self.sh_skip_bias),
                       ("opacity.skip", self.opacity_skip), ("opacity.skip_bias", self.opacity_skip_bias)]
        return params

    def set_quantized_weights(self, ints: Sequence[np.ndarray], shift: int) -> None:
        """Record that the decoder parameters hold the fixed-point weights ``ints`` (file order, step
        2**-shift; reconstruction.py load_decoders sets both): native decoding needs the integers. Any later
        change of a parameter (training, load_state_dict) makes them stale, and decoding goes back
        to torch until they are set again."""
        params = [p for _, p in self.decoder_parameters()]
        if len(ints) != len(params):
            raise ValueError(f"{len(ints)} weight tensors for {len(params)} decoder parameters")
        ints = [np.ascontiguousarray(np.asarray(v, dtype=np.int64).reshape(p.shape)) for v, p in zip(ints, params)]
        self._quantized = (ints, int(shift), params, [p._version for p in params])

    def quantized_weights(self) -> Optional[Tuple[List[np.ndarray], int]]:
        """(ints, shift) of :meth:`set_quantized_weights` if the parameters still hold them, else None."""
        if self._quantized is None:
            return None
        ints, shift, params, versions = self._quantized
        now = [p for _, p in self.decoder_parameters()]
        if len(now) != len(params) or any(p is not q or p._version != v for p, q, v in zip(now, params, versions)):
            self._quantized = None
            return None
        return ints, shift

    def bind(self, levels: OctreeLevels, neighbors: Optional[NeighborMap] = None) -> None:
        """Attach the geometry: upsampling maps, the finest voxels' 3x3x3 neighbour map (built
        from the coordinates unless given, e.g. by the octree decoder) and the segment starts
        of the latent planes."""
        if levels.num_levels != self.arch.num_levels:
            raise ValueError(f"levels has {levels.num_levels} levels, the architecture {self.arch.num_levels}")
        p2v = [torch.as_tensor(p, dtype=torch.int64) for p in levels.point_to_voxel]
        self._plane_p2v = p2v * self.arch.latent_channels
        self._gather_index = None
        self._levels, self._native_inputs = levels, None
        if self.arch.transform == "raht":
            self._inverse = InverseRaht.from_coords(levels.coords[0], levels.depth)
        if neighbors is not None and neighbors.num_points != len(levels.coords[0]):
            raise ValueError(f"neighbour map of {neighbors.num_points} voxels for {len(levels.coords[0])}")
        self._neighbors = neighbors if neighbors is not None else NeighborMap.from_coords(levels.coords[0])
        starts, offset, seg = [], 0, self.arch.segment_length
        for n in plane_sizes(levels.sizes, self.arch):
            starts.append(offset + (torch.arange(n) // seg) * seg)
            offset += n
        self._segment_start = torch.cat(starts)

    def upsample(self, planes: List[Tensor]) -> Tensor:
        """Copy each plane's latents [A, n_l] to the finest voxels -> [A, N, C * L] (pyramid), or
        inverse-transform the C coefficient planes [A, N] -> [A, N, C] (raht)."""
        if self._inverse is not None:
            return self._inverse.columns(planes)  # contiguous [A, N, C]
        if torch.is_grad_enabled():
            return torch.stack([lat[:, p2v] for lat, p2v in zip(planes, self._plane_p2v)], dim=-1)
        # inference: the same copies as one gather from the concatenated planes
        if self._gather_index is None:
            offsets, off = [], 0
            for p2v, lat in zip(self._plane_p2v, planes):
                offsets.append(p2v + off)
                off += lat.shape[1]
            self._gather_index = (torch.stack(offsets, dim=1).reshape(-1), off)  # [N * C * L]
        index, total = self._gather_index
        values = torch.cat(planes, dim=1)
        if values.shape[1] != total:
            raise ValueError(f"planes hold {values.shape[1]} latents, the levels {total}")
        return values.index_select(1, index).view(values.shape[0], -1, len(planes))

    def _native_geometry(self) -> tuple:
        """(coords int32 [N, 3], depth, neighbour rows int32 [N, 26] in NEIGHBOUR_OFFSETS order
        (-1: empty), point_to_voxel int32 [N] per level (pyramid; else empty)) of the bound levels."""
        if self._native_inputs is None:
            levels, table = self._levels, self._neighbors.table.numpy()
            n = len(table)
            ks, cols = _neighbour_columns()
            rows = np.empty((n, 26), dtype=np.int32)
            rows[:, cols] = np.where(table[:, ks] == n, -1, table[:, ks])
            p2v = [] if self.arch.transform == "raht" else \
                [np.ascontiguousarray(p, dtype=np.int32) for p in levels.point_to_voxel]
            self._native_inputs = (np.ascontiguousarray(levels.coords[0], dtype=np.int32), int(levels.depth), rows, p2v)
        return self._native_inputs

    def native_decode(self, planes: Sequence) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Integer latent planes [A, n] -> normalized SH [N, K, 3] and opacity [N] (float32,
        point-major) by the native synthesis, or None where it cannot run (extension not built,
        no current :meth:`set_quantized_weights`, latents that are not int32)."""
        if self._neighbors is None:
            raise RuntimeError("bind() the octree levels before decoding")
        module = native_module()
        weights = self.quantized_weights() if module is not None else None
        if weights is None:
            return None
        ints = _int32_planes(planes)
        if ints is None:
            return None
        coords, depth, neighbours, p2v = self._native_geometry()
        arch = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self.arch).items()}
        return module.synthesize(arch, self.num_sh, weights[0], weights[1], coords, depth, neighbours, p2v, ints)

    def decode(self, planes: List[Tensor], rows: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Latent planes [A, n] -> normalized SH [K, N, 3] and opacity [1, N, 1], or only the
        finest voxels ``rows`` (sorted, unique) -> [K, S, 3] and [1, S, 1].

        Without autograd, for all rows, with the file's integer weights set
        (:meth:`set_quantized_weights`) and the native decoder built, the native synthesis runs
        (:meth:`native_decode`; views of point-major memory). Otherwise torch, where without
        autograd the inverse RAHT and the point-wise layers run in C++ when built, with torch's
        bits (see nn/inverse_raht.py and nn/grouped_decoder.py), and the results may be views
        of point-major memory too. With autograd (training), the rows' plan, the decoders'
        inputs and the skip path run in C++ when built too (nn/neighbors.py, nn/row_subset.py,
        nn/skip_path.py), the skip path's bits within float rounding of torch's."""
        if self._neighbors is None:
            raise RuntimeError("bind() the octree levels before decoding")
        if rows is None and not torch.is_grad_enabled():
            native = self.native_decode(planes)
            if native is not None:
                sh, opacity = (torch.from_numpy(a) for a in native)
                return sh.permute(1, 0, 2), opacity.view(1, -1, 1)
        up = self.upsample(planes)
        if rows is None:
            # the two groups as slices (views) without autograd, as copies whose gradient is one
            # concatenation with it (a slice's backward is a zero-filled copy of the whole input)
            up_sh, up_op = row_subsets(up, [self.num_sh]) if torch.is_grad_enabled() else \
                (up[: self.num_sh], up[self.num_sh:])
            sh = self.sh_decoder(up_sh, self._neighbors)
            opacity = self.opacity_decoder(up_op, self._neighbors)
            at, ao = up_sh, up_op
        else:
            plan = self._neighbors.subset_plan(rows)
            x_sh, at, x_op, ao = row_subsets(up, [self.num_sh], plan.in_rows, plan.out_rows)
            sh = self.sh_decoder.forward_gathered(x_sh, plan)
            opacity = self.opacity_decoder.forward_gathered(x_op, plan)
        if self.arch.skip and torch.is_grad_enabled():  # training: one native pass (nn/skip_path.py)
            sh = skip_add(sh, at, self.sh_skip, self.sh_skip_bias)
            opacity = skip_add(opacity, ao, self.opacity_skip, self.opacity_skip_bias)
        elif self.arch.skip:  # torch's products, whose bits the native decoder reproduces
            sh = sh + torch.baddbmm(self.sh_skip_bias, at, self.sh_skip)
            opacity = opacity + torch.baddbmm(self.opacity_skip_bias, ao, self.opacity_skip)
        return sh, opacity

    @property
    def segment_start(self) -> Tensor:  # [T] int64
        """Index of the segment start of every latent in the concatenation of all planes."""
        if self._segment_start is None:
            raise RuntimeError("bind() the geometry first")
        return self._segment_start

    def contexts(self, values: Tensor, positions: Tensor) -> Tensor:
        """Contexts [A, P, K] of ``positions`` [P] in the concatenation ``values`` [A, T] of
        all planes: the K latents before, zero where they fall before the segment start."""
        k = self.arch.arm_context
        src = positions[:, None] - k + torch.arange(k)[None, :]  # [P, K]
        valid = src >= self._segment_start[positions][:, None]
        return values[:, src.clamp(min=0)] * valid.to(values.dtype)

    def rate_bits(self, planes: List[Tensor], subsample: float = 1.0,
                  generator: Optional[torch.Generator] = None) -> Tensor:
        """Estimated bits of all latents under the float ARM (an unbiased estimate when
        only a random ``subsample`` fraction of the latents is evaluated)."""
        values = torch.cat(planes, dim=1)  # [A, T]
        positions, scale = sample_positions(values.shape[1], subsample, generator)
        return self.positions_rate_bits(values, positions) * scale

    def positions_rate_bits(self, values: Tensor, positions: Tensor) -> Tensor:
        """Bits under the float ARM of the latents at ``positions`` [P] of the concatenation
        ``values`` [A, T] of all planes (the ARM refit concatenates its fixed planes once)."""
        mu, log_scale = self.arm(self.contexts(values, positions))
        return laplace_rate_bits(values[:, positions], mu, log_scale).sum()


def sample_positions(total: int, subsample: float, generator: Optional[torch.Generator]) -> Tuple[Tensor, float]:
    """A random ``subsample`` fraction of ``total`` latent positions (all of them at 1) and the
    factor that makes their bits an unbiased estimate of all the latents' bits."""
    if subsample < 1.0:
        keep = max(1, int(total * subsample))
        return torch.randperm(total, generator=generator)[:keep], total / keep
    return torch.arange(total), 1.0


def sample_rows(num_points: int, fraction: float, chunk: int, generator: torch.Generator) -> Optional[Tensor]:
    """About ``fraction`` of ``num_points`` voxels as random Morton-contiguous runs of
    ``chunk`` (spatially compact, so few extra neighbours are needed); None for all."""
    if fraction >= 1.0 or num_points <= chunk:
        return None
    count = max(1, int(round(fraction * num_points / chunk)))
    starts = torch.randint(0, num_points - chunk + 1, (count,), generator=generator)
    return row_set((starts[:, None] + torch.arange(chunk)[None, :]).reshape(-1), num_points)
