"""The decoders' inputs, split by attribute group, from the inverse transform's output.

Training decodes random runs of voxels: the point-wise layers read the transform's output
[A, N, C] on the plan's ``in_rows``, the skip path on the output ``rows``, and the SH and
opacity decoders each their own attributes. Through plain indexing, autograd builds the
gradient of the whole output from one zero-filled tensor per slice and per gather, summed, and
``index_add_`` scatters along the middle axis element by element: about 0.2 s of a 1.5-s step
at 483k voxels. Here one function gathers every piece and its backward writes each element of
the gradient once (natively where ``_decode_cpu`` is built: nn/csrc/decode.cpp; the torch
version is its reference, with the same bits).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .neighbors import _native_module


def _groups(bounds: Sequence[int], num_attributes: int) -> List[Tuple[int, int]]:
    """Attribute ranges [(0, b_1), (b_1, b_2), ..., (b_k, A)] of the split points ``bounds``."""
    edges = [0, *bounds, num_attributes]
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"split points {list(bounds)} must increase strictly within (0, {num_attributes})")
    return list(zip(edges, edges[1:]))


class _RowSubsets(torch.autograd.Function):
    """Per attribute group: values on ``in_rows`` (all rows when None) and, when ``rows`` is
    given, on ``rows``."""

    @staticmethod
    def forward(ctx, values: Tensor, groups, in_rows: Optional[Tensor], rows: Optional[Tensor], module):
        src = values.detach().contiguous()
        ctx.groups, ctx.module, ctx.shape = groups, module, src.shape
        ctx.save_for_backward(in_rows, rows)
        threads = torch.get_num_threads()
        outs = []
        for a0, a1 in groups:
            if in_rows is None:
                outs.append(src[a0:a1].clone())
            elif module is not None:
                outs.extend(torch.from_numpy(a) for a in
                            module.gather_rows(src.numpy(), in_rows.numpy(), rows.numpy(), a0, a1, threads))
            else:
                part = src[a0:a1]
                outs.extend((part.index_select(1, in_rows), part.index_select(1, rows)))
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        in_rows, rows = ctx.saved_tensors
        a, n, c = ctx.shape
        if in_rows is None:  # each group's gradient fills its own attributes
            parts = [torch.zeros(a1 - a0, n, c) if g is None else g for (a0, a1), g in zip(ctx.groups, grads)]
            return torch.cat(parts), None, None, None, None
        grad = torch.empty(a, n, c)
        threads = torch.get_num_threads()
        for k, (a0, a1) in enumerate(ctx.groups):
            gx, gs = grads[2 * k], grads[2 * k + 1]
            gx = torch.zeros(a1 - a0, len(in_rows), c) if gx is None else gx.contiguous()
            gs = torch.zeros(a1 - a0, len(rows), c) if gs is None else gs.contiguous()
            if ctx.module is not None:
                ctx.module.scatter_rows(grad.numpy(), gx.numpy(), gs.numpy(), in_rows.numpy(), rows.numpy(), a0, threads)
            else:
                part = grad[a0:a1]
                part.zero_()
                part.index_copy_(1, in_rows, gx)
                part.index_add_(1, rows, gs)
        return grad, None, None, None, None


def row_subsets(values: Tensor,  # [A, N, C] float32
                bounds: Sequence[int],
                in_rows: Optional[Tensor] = None,  # [N2] int64, strictly increasing
                rows: Optional[Tensor] = None,  # [S] int64, strictly increasing
                native: Optional[bool] = None) -> List[Tensor]:
    """``values`` split into attribute groups at ``bounds`` (e.g. ``[K]``: SH and opacity), each
    restricted to ``in_rows`` [G, N2, C], followed by the same group on ``rows`` [G, S, C];
    without ``in_rows``, each whole group [G, N, C] (``rows`` then must be None). All outputs are
    contiguous copies whose gradients reach ``values`` through one pass. ``native``: None uses
    the extension when built, True requires it, False runs torch (the reference)."""
    if values.ndim != 3 or values.dtype != torch.float32:
        raise ValueError(f"values must be float32 [A, N, C], got {values.dtype} {tuple(values.shape)}")
    if (in_rows is None) != (rows is None):
        raise ValueError("give both in_rows and rows, or neither")
    groups = _groups(list(bounds), values.shape[0])
    n = values.shape[1]
    if in_rows is not None:
        in_rows, rows = (torch.as_tensor(r, dtype=torch.int64).contiguous() for r in (in_rows, rows))
        for name, r in (("in_rows", in_rows), ("rows", rows)):
            if r.ndim != 1 or (len(r) and (int(r[0]) < 0 or int(r[-1]) >= n or bool((r[1:] <= r[:-1]).any()))):
                raise ValueError(f"{name} must be strictly increasing rows in [0, {n})")
    module = None
    if native is not False and in_rows is not None:
        module = _native_module()
        if module is None and native:
            raise ImportError("the native row subsets (ralhe_me.nn._decode_cpu) are not built")
    return list(_RowSubsets.apply(values, tuple(groups), in_rows, rows, module))
