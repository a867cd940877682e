"""Differentiable inverse RAHT in torch: coefficients to point values on an octree.

The latents of the ``raht`` synthesis are RAHT coefficients (divided by a step): one per
point per channel, critically sampled and orthonormal, so a quantization error costs the same
wherever it falls and no rate is spent on redundant coarse copies. Measured on the real
models with uniform steps and zeroth-order entropies, the 7-level difference pyramid of the
paper needed about 1.7x the bits of RAHT for 2 dB less (donut: 19.6 bits/point give
30.9 dB with RAHT, 16.8 dB with the pyramid).

The plan (merge steps, weights) comes from ``baselines/raht.py`` and the geometry alone, so
encoder and decoder build the same one; this module runs its inverse batched over columns
with index copies, which autograd differentiates and which are exact elementwise float32
operations: no reductions, so no dependence on the thread count. Where the ``_decode_cpu``
extension is built (nn/csrc/decode.cpp) the same operations run in place in C++ (every node
stays in the row of its first point, so only the two rows of each butterfly are touched), with
equal bits, and training takes its gradient from the transform's adjoint there; the torch
version is the test reference of both.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..baselines.raht import RahtError, RahtPlan, build_plan
from ..native import native_choice
from .neighbors import _native_module


def native_available() -> bool:
    """Whether the in-place inverse (the ``_decode_cpu`` extension, nn/csrc/decode.cpp) is built."""
    return _native_module() is not None


class InverseRaht:
    """The inverse transform of one plan, ready to apply to [M, X] coefficient columns.

    ``__call__`` is the torch version (differentiable, the reference); :meth:`columns` runs the
    native in-place version when it is built and no gradient is needed, with equal results."""

    def __init__(self, plan: RahtPlan):
        self.num_points = plan.num_points
        self._plan: Optional[RahtPlan] = plan
        self._coords: Optional[np.ndarray] = None
        self._depth = plan.depth
        self._stages: Optional[List[Tuple]] = None  # torch tensors, built on the first torch call
        self._inverse_order: Optional[Tensor] = None
        self._native_plan: Optional[Tuple] = None  # (left rows, right rows, a, b, order), first native call

    @classmethod
    def from_coords(cls, coords: np.ndarray, depth: int) -> "InverseRaht":
        """The inverse for points ``coords`` [M, 3] (unique, in [0, 2^depth)). The plan is built
        when first needed: by the extension straight from the points for :meth:`columns`
        (no per-step arrays), by ``build_plan`` for the torch path."""
        coords = np.asarray(coords)
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise RahtError(f"coords must have shape [M, 3], got {coords.shape}")
        if coords.dtype.kind not in "iu":
            raise RahtError(f"coords must be integers, got dtype {coords.dtype}")
        coords = np.ascontiguousarray(coords, dtype=np.int64)
        self = cls.__new__(cls)
        self.num_points = len(coords)
        self._plan, self._coords, self._depth = None, coords, int(depth)
        self._stages, self._inverse_order, self._native_plan = None, None, None
        return self

    @property
    def plan(self) -> RahtPlan:
        if self._plan is None:
            self._plan = build_plan(self._coords, self._depth)
        return self._plan

    def _torch_stages(self) -> List[Tuple]:
        if self._stages is None:
            plan = self.plan
            sizes = [len(st.left) for st in reversed(plan.steps)]
            bounds = [1]
            for s in sizes:
                bounds.append(bounds[-1] + s)
            stages = []
            # coarsest step first (the order the inverse runs in); each with its high-pass slice
            for i, st in enumerate(reversed(plan.steps)):
                stages.append((
                    st.num_in,
                    torch.as_tensor(st.starts, dtype=torch.int64),
                    torch.as_tensor(st.left, dtype=torch.int64),
                    torch.as_tensor(st.left + 1, dtype=torch.int64),
                    torch.as_tensor(st.pair_out, dtype=torch.int64),
                    torch.as_tensor(st.a, dtype=torch.float64)[:, None],
                    torch.as_tensor(st.b, dtype=torch.float64)[:, None],
                    (bounds[i], bounds[i + 1]),
                ))
            inverse_order = torch.empty(plan.num_points, dtype=torch.int64)
            inverse_order[torch.as_tensor(plan.order)] = torch.arange(plan.num_points)
            self._inverse_order = inverse_order
            self._stages = stages
        return self._stages

    def __call__(self, coeffs: Tensor) -> Tensor:  # [M, X] (coefficient order) -> [M, X] (point order)
        if coeffs.ndim != 2 or coeffs.shape[0] != self.num_points:
            raise ValueError(f"coefficients must be [{self.num_points}, X], got {tuple(coeffs.shape)}")
        v = coeffs[:1]
        for num_in, starts, left, right, pair_out, a, b, (lo, hi) in self._torch_stages():
            high = coeffs[lo:hi]
            low = v.index_select(0, pair_out)
            a, b = a.to(coeffs.dtype), b.to(coeffs.dtype)  # the weights rounded to the data's precision
            prev = coeffs.new_zeros((num_in, coeffs.shape[1])).index_copy(0, starts, v)
            prev = prev.index_copy(0, left, a * low - b * high).index_copy(0, right, b * low + a * high)
            v = prev
        return v.index_select(0, self._inverse_order)

    def columns(self, planes: Sequence[Tensor], native: Optional[bool] = None) -> Tensor:
        """P coefficient planes [Q, M] (column (p, q) is ``planes[p][q]``) -> values [Q, M, P]
        (point order), contiguous. ``native``: the in-place C++ inverse (None: when it is built,
        the planes are float32/float64 and no gradient is needed; True: require it; False: torch);
        both give the same bits."""
        planes = list(planes)
        if not planes or any(p.ndim != 2 or p.shape != planes[0].shape for p in planes):
            raise ValueError("coefficient planes must be P tensors [Q, M] of one shape")
        q, m = planes[0].shape
        if m != self.num_points:
            raise ValueError(f"coefficient planes must be [Q, {self.num_points}], got {tuple(planes[0].shape)}")
        module = native_choice(native, _native_module, "the native inverse RAHT (ralhe_me.nn._decode_cpu)")
        usable = (module is not None and planes[0].dtype in (torch.float32, torch.float64)
                  and all(p.dtype == planes[0].dtype and p.device.type == "cpu" for p in planes))
        if native and not usable:
            raise ValueError("the native inverse RAHT takes float32/float64 CPU planes")
        if native is None:
            native = usable
        if not native:
            coeffs = torch.stack(planes, dim=0).permute(2, 1, 0).reshape(m, q * len(planes))
            return self(coeffs).reshape(m, q, len(planes)).permute(1, 0, 2).contiguous()
        if self._native_plan is None:
            self._native_plan = self._build_native_plan(module)
        if torch.is_grad_enabled() and any(p.requires_grad for p in planes):
            return _NativeInverse.apply(module, self._native_plan, *planes)
        arrays = [p.detach().contiguous().numpy() for p in planes]
        return torch.from_numpy(module.inverse_raht(arrays, *self._native_plan, threads=torch.get_num_threads()))

    def _build_native_plan(self, module) -> Tuple:
        """(left rows, right rows, a, b, order, steps) of every merge, coarsest first (see
        decode.cpp); steps [S, 3]: bit, first merge and end of each step."""
        if self._plan is None:
            try:
                return tuple(module.raht_plan(self._coords, self._depth))
            except ValueError as exc:
                raise RahtError(str(exc)) from None
        plan = self._plan
        left, right = module.raht_pairs(plan.num_points, [st.starts for st in plan.steps],
                                        [st.left for st in plan.steps])
        steps = plan.steps[::-1]
        a = np.concatenate([st.a for st in steps]) if steps else np.zeros(0)
        b = np.concatenate([st.b for st in steps]) if steps else np.zeros(0)
        counts = np.array([len(st.left) for st in steps], dtype=np.int64)
        ends = np.cumsum(counts)
        bits = np.array([st.step for st in steps], dtype=np.int64)
        bounds = np.stack([bits, ends - counts, ends], axis=1).reshape(-1, 3)
        return left, right, a, b, np.ascontiguousarray(plan.order, dtype=np.int64), bounds


class _NativeInverse(torch.autograd.Function):
    """The native inverse with its gradient: the transform's adjoint (``raht_adjoint``, the
    butterflies transposed, finest first). Training runs it instead of recording the torch
    version's index copies level by level (their saved tensors and backward were most of a
    step's transform time and memory); the torch version stays the reference the tests hold
    it to."""

    @staticmethod
    def forward(ctx, module, plan: Tuple, *planes: Tensor) -> Tensor:  # P x [Q, M] -> [Q, M, P]
        ctx.module, ctx.plan = module, plan
        arrays = [p.detach().contiguous().numpy() for p in planes]
        return torch.from_numpy(module.inverse_raht(arrays, *plan, threads=torch.get_num_threads()))

    @staticmethod
    def backward(ctx, grad: Tensor):  # [Q, M, P] -> P x [Q, M]
        grads = ctx.module.raht_adjoint(grad.detach().contiguous().numpy(), *ctx.plan,
                                        threads=torch.get_num_threads())
        return (None, None) + tuple(torch.from_numpy(g) for g in grads)
