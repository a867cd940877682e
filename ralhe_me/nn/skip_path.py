"""Training's skip path: the decoder's output plus each attribute's linear map of its latents.

In training the decoders' output is point-major [N, A, d] (the convolutions' layout) and the
skip path a batched product with 3 inputs per output, which torch runs slowly (about 90 ms
forward and 190 ms backward for the SH at 483k voxels), after a transposing copy. One C++ pass
(nn/csrc/decode.cpp) adds both into the attribute-major result and its backward gives every
gradient in one more; the torch expression is its reference (equal within float rounding: the
products sum in another order). Decoding keeps torch's products, whose bits the native decoder
reproduces.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..native import native_choice
from .neighbors import _native_module


class _SkipAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, decoded: Tensor, x: Tensor, weight: Tensor, bias: Tensor, module) -> Tensor:
        point_major = decoded.detach().transpose(0, 1).contiguous()  # [N, A, d]; a view's base when it was one
        xs, w = x.detach().contiguous(), weight.detach().contiguous()
        ctx.save_for_backward(xs, w)
        ctx.module = module
        return torch.from_numpy(module.skip_add(point_major.numpy(), xs.numpy(), w.numpy(),
                                                bias.detach().contiguous().numpy(), torch.get_num_threads()))

    @staticmethod
    def backward(ctx, grad: Tensor):
        xs, w = ctx.saved_tensors
        g_dec, gx, gw, gb = (torch.from_numpy(a) for a in ctx.module.skip_add_backward(
            grad.contiguous().numpy(), xs.numpy(), w.numpy(), torch.get_num_threads()))
        return g_dec.transpose(0, 1), gx, gw, gb, None


def skip_add(decoded: Tensor,  # [A, N, d], e.g. a transposed view of point-major memory
             x: Tensor,  # [A, N, C] the latents the skip path maps
             weight: Tensor,  # [A, C, d]
             bias: Tensor,  # [A, 1, d]
             native: Optional[bool] = None) -> Tensor:  # [A, N, d] contiguous
    """``decoded + bias + x @ weight`` per attribute; ``native``: None uses the extension when
    built, True requires it, False runs torch (the reference)."""
    a, n, d = decoded.shape
    if x.ndim != 3 or x.shape[:2] != (a, n) or weight.shape != (a, x.shape[2], d) or bias.shape != (a, 1, d):
        raise ValueError(f"skip_add: decoded {tuple(decoded.shape)}, x {tuple(x.shape)}, weight "
                         f"{tuple(weight.shape)} and bias {tuple(bias.shape)} do not fit")
    module = native_choice(native, _native_module, "the native skip path (ralhe_me.nn._decode_cpu)")
    if module is None or any(t.dtype != torch.float32 for t in (decoded, x, weight, bias)):
        return decoded + torch.baddbmm(bias, x, weight)
    return _SkipAdd.apply(decoded, x, weight, bias, module)
