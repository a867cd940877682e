"""A attribute decoders of one shape run as one batched module, in plain torch.

The 17 attributes of a 3DGS model each have a :class:`SparseAttributeDecoder`; running
them one by one through MinkowskiEngine walks the kernel map 17 times per layer. Here the
weights carry a leading attribute axis ([A, ...]) and:

* the two point-wise layers run in cache-sized chunks of points, their 21-wide hidden
  layer recomputed in the backward pass rather than stored; the forward's full chunks run in
  C++ (nn/csrc/decode.cpp) where that gives MKL's bits (:func:`native_mlp_agrees`), in
  training too; the backward runs in C++ where built (:func:`mlp_backward`), torch otherwise;
* the two 3x3x3 convolutions work on point-major features (one row of A * C values per
  voxel) over a precomputed :class:`~ralhe_me.nn.neighbors.NeighborMap`, visiting only the
  occupied neighbours. In C++ where built (``grouped_conv``: each output row sums its
  neighbours' small products in registers; the backward walks the map's reverse), 2.2-2.4x
  (first convolution) and 1.7-2.4x (second) faster forward and backward at 483k voxels than
  the torch reference, which per kernel offset gathers the rows of its pairs, multiplies them
  by the block-diagonal [A * C_in, A * C_out] kernel (all attributes in one GEMM), and sums the
  pair results into their output rows with ``embedding_bag``, its backward mirroring this into
  the input rows, so nothing scatter-adds. The two agree to float rounding, not bit for bit.

The block-diagonal products spend A times the arithmetic of separate products, which is
cheap at A <= 16 and tiny channel counts, where memory traffic is what costs.
Weights convert both ways to the state dicts of single :class:`SparseAttributeDecoder`
modules, so the codec trains grouped and users reuse single decoders with the same numbers::

    nm = NeighborMap.from_coords(coords)                 # [N, 3] int voxels, once per cloud
    sh = GroupedSparseDecoder(16, DecoderConfig(out_channels=3))
    rgb = sh(latents, nm)                                # [16, N, 7] -> [16, N, 3]
    singles = sh.to_decoders()                           # 16 SparseAttributeDecoder, same weights
    sh2 = GroupedSparseDecoder.from_state_dicts([d.state_dict() for d in singles])

Note: creating a MinkowskiEngine coordinate manager (any new ``ME.SparseTensor`` without one)
resets the OpenMP thread count to ``os.cpu_count()`` (or ``$OMP_NUM_THREADS``); call
``torch.set_num_threads`` again afterwards if you chose another count.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .neighbors import CENTER, KERNEL_VOLUME, ConvMap, NeighborMap, SubsetPlan, _native_module
from .sparse_decoder import (DecoderConfig, DecoderError, DecoderInputError, DecoderWeightsError,
                             check_weights)

DEFAULT_BUDGET = 1 << 25  # floats (128 MiB) per per-pair buffer
MLP_CHUNK = 1024  # points per chunk of the point-wise layers: [A, chunk, h1] stays in cache


def _block_diagonal(kernel: Tensor) -> Tensor:
    """[A, 27, C_in, C_out] -> [27, A * C_in, A * C_out], attribute a's slice in block (a, a):
    one dense product then applies all A kernels to point-major rows [P, A * C_in]."""
    a, kv, c_in, c_out = kernel.shape
    eye = torch.eye(a, dtype=kernel.dtype)
    return torch.einsum("ab,akco->kacbo", eye, kernel).reshape(kv, a * c_in, a * c_out)


def _per_attribute_gram(x: Tensor, g: Tensor, a: int) -> Tensor:
    """sum_p x[p, a]^T g[p, a] for each attribute: x [P, A * C_in], g [P, A * C_out] ->
    [A, C_in, C_out]. The full [A * C_in, A * C_out] product and its diagonal blocks is one
    plain GEMM, several times faster than a batched product over strided rows."""
    full = (x.t() @ g).view(a, x.shape[1] // a, a, g.shape[1] // a)
    return torch.diagonal(full, dim1=0, dim2=2).permute(2, 0, 1)


class _NativeGroupedConv(torch.autograd.Function):
    """:class:`_GroupedConv` in C++ (nn/csrc/decode.cpp ``grouped_conv``): each output row sums its
    occupied neighbours' products in registers, with no per-pair buffers, no block-diagonal
    products and no bags; the backward walks the map's reverse (pairs by input row) for the
    input's gradient and fixed blocks of output rows for the kernel's. The same bits on any
    thread count; torch's within float rounding (its order of sums differs)."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, bias: Optional[Tensor], cmap: ConvMap, module) -> Tensor:
        # x [N_in, A, C_in], kernel [A, 27, C_in, C_out], bias [A, C_out] or None -> [N_out, A, C_out]
        xc, kc = x.detach().contiguous(), kernel.detach().contiguous()
        ctx.save_for_backward(xc, kc)
        ctx.cmap, ctx.module, ctx.has_bias = cmap, module, bias is not None
        b = None if bias is None else bias.detach().contiguous().numpy()
        return torch.from_numpy(module.grouped_conv(xc.numpy(), kc.numpy(), cmap.fwd.numpy(), cmap.num_in, bias=b,
                                                    threads=torch.get_num_threads()))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, kernel = ctx.saved_tensors
        cmap, module = ctx.cmap, ctx.module
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        offsets, pairs = cmap.reverse(module)
        gx, gw = module.grouped_conv_backward(x.numpy(), kernel.numpy(), cmap.fwd.numpy(), cmap.num_in,
                                              grad_out.detach().contiguous().numpy(), offsets, pairs,
                                              bool(need_x), bool(need_w), threads=torch.get_num_threads())
        gb = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return (None if gx is None else torch.from_numpy(gx)), (None if gw is None else torch.from_numpy(gw)), \
            gb, None, None


class _GroupedConv(torch.autograd.Function):
    """out[n, a] = sum_k x[fwd[n, k], a] @ kernel[a, k], empty neighbours contributing zero,
    on point-major features (one row of A * C values per voxel: gathers move whole rows).

    Only existing neighbour pairs are visited (a voxelized 3DGS model has about 1.5-4 of the
    27 per voxel, a dense surface up to ~14): the zero offset is a plain product; each other
    offset gathers its input rows and multiplies them by the block-diagonal kernel (all A
    attributes at once); the pair results are summed into their output rows with
    ``embedding_bag``. The backward pass mirrors it (pair gradients summed into input rows),
    so nothing scatter-adds.
    """

    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, cmap: ConvMap, budget: int) -> Tensor:
        # x [N_in, A, C_in], kernel [A, 27, C_in, C_out] -> [N_out, A, C_out]
        n_in, a, c_in = x.shape
        c_out = kernel.shape[3]
        xr = x.reshape(n_in, a * c_in)
        plan = cmap.pair_plan(max(1, budget // (a * max(c_in, c_out))))
        wbd = _block_diagonal(kernel)
        ctx.save_for_backward(x, kernel)
        ctx.plan, ctx.num_out = plan, cmap.num_out
        if plan.dense_center:
            out = torch.mm(xr, wbd[CENTER])
        else:
            out = x.new_zeros(cmap.num_out, a * c_out)
        for grp in plan.groups:
            y = x.new_empty(grp.hi - grp.lo, a * c_out)
            for k in range(KERNEL_VOLUME):
                s, e = max(int(plan.starts[k]), grp.lo), min(int(plan.starts[k + 1]), grp.hi)
                if e > s:
                    torch.mm(xr.index_select(0, plan.in_rows[s:e]), wbd[k], out=y[s - grp.lo:e - grp.lo])
            out += F.embedding_bag(grp.by_out, y, grp.out_offsets, mode="sum")
        return out.view(cmap.num_out, a, c_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, kernel = ctx.saved_tensors
        plan = ctx.plan
        n_in, a, c_in = x.shape
        c_out = kernel.shape[3]
        xr = x.reshape(n_in, a * c_in)
        g = grad_out.reshape(ctx.num_out, a * c_out)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        wbd_t = _block_diagonal(kernel.transpose(2, 3)) if need_x else None
        grad_x = grad_w = None
        if need_x:
            grad_x = torch.mm(g, wbd_t[CENTER]) if plan.dense_center else x.new_zeros(n_in, a * c_in)
        if need_w:
            grad_w = kernel.new_zeros(kernel.shape)
            if plan.dense_center:
                grad_w[:, CENTER] = _per_attribute_gram(xr, g, a)
        for grp in plan.groups:
            gx = x.new_empty(grp.hi - grp.lo, a * c_in) if need_x else None
            for k in range(KERNEL_VOLUME):
                s, e = max(int(plan.starts[k]), grp.lo), min(int(plan.starts[k + 1]), grp.hi)
                if e <= s:
                    continue
                gs = g.index_select(0, plan.out_rows[s:e])  # [B, A * C_out]
                if need_x:
                    torch.mm(gs, wbd_t[k], out=gx[s - grp.lo:e - grp.lo])
                if need_w:
                    grad_w[:, k] += _per_attribute_gram(xr.index_select(0, plan.in_rows[s:e]), gs, a)
            if need_x:
                grad_x += F.embedding_bag(grp.by_in, gx, grp.in_offsets, mode="sum")
        if need_x:
            grad_x = grad_x.view(n_in, a, c_in)
        return grad_x, grad_w, None, None


class _PointwiseMLP(torch.autograd.Function):
    """y = relu(relu(x @ W0 + b0) @ W1 + b1), in chunks of points that stay in cache, from
    attribute-major latents to point-major features (the layout the convolutions gather).

    The wide hidden layer (21 channels by default, the largest activation of the decoder)
    is never stored: the backward pass recomputes it (:func:`mlp_backward`). On a CPU shared
    by several processes this is bound by memory traffic, not arithmetic. Products with few
    output columns are computed transposed (W^T x^T), which MKL does several times faster.
    """

    @staticmethod
    def forward(ctx, x, w0, b0, w1, b1, chunk: int, native: Optional[bool] = None):
        # x [A, N, C0], w0 [A, C0, C1], b0 [A, 1, C1], w1 [A, C1, C2], b1 [A, 1, C2] -> [N, A, C2]
        a, n, _ = x.shape
        y = x.new_empty(n, a, w1.shape[2])
        _mlp_forward(x, w0, b0, w1, b1, chunk, y, native)
        ctx.save_for_backward(x, w0, b0, w1, y)
        ctx.chunk = chunk
        ctx.native = native
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w0, b0, w1, y = ctx.saved_tensors
        gx, gw0, gb0, gw1, gb1 = mlp_backward(x, w0, b0, w1, y, grad_y, ctx.chunk, ctx.needs_input_grad[0],
                                              ctx.native)
        return gx, gw0, gb0, gw1, gb1, None, None


def _native_mlp_usable(module, widths: Sequence[int], tensors: Sequence[Tensor]) -> bool:
    """Whether the native point-wise kernels can run: the extension built, an AVX2/FMA CPU, at
    most 64 channels per layer and float32 CPU tensors."""
    return (module is not None and module.mlp_supported() and max(widths) <= 64
            and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors))


def _mlp_backward_torch(x: Tensor, w0: Tensor, b0: Tensor, w1: Tensor, y: Tensor, grad_y: Tensor, chunk: int,
                        want_gx: bool) -> tuple:
    """The reference backward of the point-wise layers in torch, chunk by chunk (the hidden layer
    recomputed): (gx or None, gw0, gb0, gw1, gb1)."""
    g2 = (grad_y * (y > 0)).transpose(0, 1)  # [A, N, C2] view of point-major rows
    w1t = w1.transpose(1, 2).contiguous()
    gw0, gb0 = torch.zeros_like(w0), torch.zeros_like(b0)
    gw1 = torch.zeros_like(w1)
    gb1 = g2.sum(dim=1, keepdim=True)
    gx = torch.empty_like(x) if want_gx else None
    for s in range(0, x.shape[1], chunk):
        xs, gs = x[:, s:s + chunk], g2[:, s:s + chunk]
        h = torch.baddbmm(b0, xs, w0).clamp_(min=0)
        gw1.baddbmm_(h.transpose(1, 2), gs)
        gh = torch.bmm(gs, w1t).mul_(h > 0)  # [A, B, C1]
        gw0.baddbmm_(xs.transpose(1, 2), gh)
        gb0 += gh.sum(dim=1, keepdim=True)
        if gx is not None:
            gx[:, s:s + chunk] = torch.bmm(w0, gh.transpose(1, 2)).transpose(1, 2)
    return gx, gw0, gb0, gw1, gb1


def mlp_backward(x: Tensor,  # [A, N, C0]
                 w0: Tensor,  # [A, C0, C1]
                 b0: Tensor,  # [A, 1, C1]
                 w1: Tensor,  # [A, C1, C2]
                 y: Tensor,  # [N, A, C2] the forward's output
                 grad_y: Tensor,  # [N, A, C2]
                 chunk: int = MLP_CHUNK, want_gx: bool = True, native: Optional[bool] = None) -> tuple:
    """Gradients (gx [A, N, C0] or None, gw0, gb0, gw1, gb1) of the point-wise layers. The C++
    kernel (nn/csrc/decode.cpp: the same on any thread count, within float rounding of torch)
    where built, usable and ``native`` is not False; the torch reference otherwise."""
    module = _native_module() if native is not False else None
    usable = _native_mlp_usable(module, (x.shape[2], w0.shape[2], w1.shape[2]), (x, w0, b0, w1, y, grad_y))
    if native and not usable:
        raise DecoderError("the native point-wise backward needs the built extension, an AVX2/FMA CPU, "
                           "float32 CPU tensors and at most 64 channels per layer")
    if not usable:
        return _mlp_backward_torch(x, w0, b0, w1, y, grad_y, chunk, want_gx)
    out = module.pointwise_mlp_backward(*(t.detach().contiguous().numpy() for t in (x, w0, b0, w1, y, grad_y)),
                                        bool(want_gx), threads=torch.get_num_threads())
    return tuple(None if g is None else torch.from_numpy(g) for g in out)


def _mlp_chunks(x: Tensor, w0: Tensor, b0: Tensor, w1: Tensor, b1: Tensor, chunk: int, y: Tensor,
                start: int) -> None:
    """Fill the rows ``start:`` (a multiple of ``chunk``) of point-major ``y`` [N, A, C2] with the
    two layers, chunk by chunk, in torch (MKL products): the reference the native kernel matches."""
    n = x.shape[1]
    w1t, b1t = w1.transpose(1, 2).contiguous(), b1.transpose(1, 2).contiguous()
    rows = y.view(n, -1)  # [N, A * C2]
    for s in range(start, n, chunk):
        h = torch.baddbmm(b0, x[:, s:s + chunk], w0).clamp_(min=0)  # [A, B, C1]
        out = torch.baddbmm(b1t, w1t, h.transpose(1, 2))  # [A, C2, B]
        rows[s:s + chunk].copy_(out.view(rows.shape[1], -1).t())  # a 2-D transpose: a blocked copy
    y[start:].clamp_(min=0)


_NATIVE_MLP_AGREES: Dict[tuple, bool] = {}  # (A, C0, C1, C2, chunk) -> native equals torch here


def native_mlp_agrees(a: int, c0: int, c1: int, c2: int, chunk: int = MLP_CHUNK) -> bool:
    """Whether the native point-wise layers give torch's bits for full chunks of this shape on
    this machine; checked once per process on random data.

    Why a check: torch computes the layers with MKL, whose summation order depends on the
    shapes (and, presumably, the CPU): on the machine this was written on, chunks of 1024
    points are summed as a chain of fused multiply-adds, which the kernel reproduces, while
    e.g. fewer than 12 points use another order. Where they differ, decoding stays on torch."""
    a, c0, c1, c2, chunk = int(a), int(c0), int(c1), int(c2), int(chunk)
    module = _native_module()
    if module is None or not module.mlp_supported() or max(c0, c1, c2) > 64 or min(a, c0, c1, c2, chunk) < 1:
        return False
    key = (a, c0, c1, c2, chunk)
    if key not in _NATIVE_MLP_AGREES:
        g = torch.Generator().manual_seed(12345)
        full = 2 * chunk
        x = torch.randn(a, full + 5, c0, generator=g) * 4  # two full chunks and a partial one
        x[:, ::7] = 0.0
        ws = [torch.randn(a, c0, c1, generator=g), torch.randn(a, 1, c1, generator=g),
              torch.randn(a, c1, c2, generator=g), torch.randn(a, 1, c2, generator=g)]
        with torch.no_grad():
            ref = x.new_empty(full + 5, a, c2)
            _mlp_chunks(x, *ws, chunk, ref, 0)
            got = torch.full_like(ref, float("nan"))
            module.pointwise_mlp(x.numpy(), *(w.numpy() for w in ws), got.numpy(), full)
        _NATIVE_MLP_AGREES[key] = torch.equal(got[:full].view(torch.int32), ref[:full].view(torch.int32))
    return _NATIVE_MLP_AGREES[key]


def pointwise_mlp(x: Tensor, w0: Tensor, b0: Tensor, w1: Tensor, b1: Tensor,
                  chunk: int = MLP_CHUNK, native: Optional[bool] = None) -> Tensor:
    """relu(relu(x @ w0 + b0) @ w1 + b1) per attribute: x [A, N, C0] -> point-major [N, A, C2].

    The full chunks run in C++ (nn/csrc/decode.cpp) where :func:`native_mlp_agrees`
    (``native=None``), or whenever the extension can (``True``: for tests); the last partial
    chunk, and everything with ``native=False``, runs in torch. With autograd the forward is
    the same and the backward is :func:`mlp_backward` (:class:`_PointwiseMLP`)."""
    chunk = int(chunk)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w0, b0, w1, b1)):
        return _PointwiseMLP.apply(x, w0, b0, w1, b1, chunk, native)
    a, n, _ = x.shape
    y = x.new_empty(n, a, w1.shape[2])
    _mlp_forward(x, w0, b0, w1, b1, chunk, y, native)
    return y


def _mlp_forward(x: Tensor, w0: Tensor, b0: Tensor, w1: Tensor, b1: Tensor, chunk: int, y: Tensor,
                 native: Optional[bool]) -> None:
    """Fill point-major ``y`` [N, A, C2] with the two layers: the native kernel on the full chunks
    where it gives torch's bits (see :func:`pointwise_mlp`), torch on the rest."""
    a, n, c0 = x.shape
    c1, c2 = w0.shape[2], w1.shape[2]
    full = n - n % chunk
    module = _native_module() if native is not False else None
    usable = _native_mlp_usable(module, (c0, c1, c2), (x, w0, b0, w1, b1))
    if native and not usable:
        raise DecoderError("the native point-wise layers need the built extension, an AVX2/FMA CPU, "
                           "float32 CPU tensors and at most 64 channels per layer")
    if native is None:
        usable = usable and full > 0 and native_mlp_agrees(a, c0, c1, c2, chunk)
    start = 0
    if usable and full:
        module.pointwise_mlp(*(t.detach().contiguous().numpy() for t in (x, w0, b0, w1, b1)), y.numpy(), full)
        start = full
    _mlp_chunks(x, w0, b0, w1, b1, chunk, y, start)


def _native_conv_module(native: Optional[bool]):
    """The extension when its convolution is to run (``native``: None where built, True required,
    False never). Imported on first use, as neighbors.py does, so importing the decoder loads nothing more."""
    from ..native import native_choice

    return native_choice(native, _native_module, "the native grouped convolution (ralhe_me.nn._decode_cpu)")


def grouped_conv(x: Tensor, kernel: Tensor, cmap: ConvMap, budget: int = DEFAULT_BUDGET,
                 native: Optional[bool] = None, bias: Optional[Tensor] = None) -> Tensor:
    """Batched 3x3x3 sparse convolution on point-major features: x [N_in, A, C_in], kernel
    [A, 27, C_in, C_out] (MinkowskiEngine layout and order), ``bias`` [A, C_out] or None ->
    [N_out, A, C_out] (the bias added to each row's sum: the native kernel adds it in its pass).
    In C++ where built and the tensors are float32 on the CPU (``native``: None, as available;
    True: required; False: torch, the reference, whose per-pair buffers ``budget`` bounds, in
    floats)."""
    if x.ndim != 3 or kernel.ndim != 4 or kernel.shape[:3] != (x.shape[1], KERNEL_VOLUME, x.shape[2]):
        raise DecoderInputError(f"grouped_conv: x {tuple(x.shape)} does not fit kernel {tuple(kernel.shape)}")
    if x.shape[0] != cmap.num_in:
        raise DecoderInputError(f"grouped_conv: x has {x.shape[0]} rows, the map {cmap.num_in}")
    fits = all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (x, kernel))
    if native and not fits:
        raise DecoderInputError("the native grouped convolution takes float32 CPU tensors")
    if bias is not None and tuple(bias.shape) != (kernel.shape[0], kernel.shape[3]):
        raise DecoderInputError(f"grouped_conv: bias {tuple(bias.shape)} does not fit kernel {tuple(kernel.shape)}")
    module = _native_conv_module(native) if fits and (bias is None or bias.dtype == torch.float32) else None
    if module is not None:
        return _NativeGroupedConv.apply(x, kernel, bias, cmap, module)
    out = _GroupedConv.apply(x, kernel, cmap, int(budget))
    if bias is None:
        return out
    return out + bias if torch.is_grad_enabled() else out.add_(bias)


_NAMES = ("linear0_weight", "linear0_bias", "linear1_weight", "linear1_bias",
          "conv0_kernel", "conv0_bias", "conv1_kernel", "conv1_bias")


class GroupedSparseDecoder(nn.Module):
    """``num_decoders`` decoders of one :class:`DecoderConfig`, parameters stacked on a
    leading axis: linear weights ``[A, in, out]``, biases ``[A, 1, out]``, kernels
    ``[A, 27, in, out]``."""

    def __init__(self, num_decoders: int, config: DecoderConfig = DecoderConfig(),
                 budget: int = DEFAULT_BUDGET):
        super().__init__()
        if num_decoders < 1:
            raise DecoderError(f"num_decoders must be >= 1, got {num_decoders}")
        if config.kernel_size != 3:
            raise DecoderError(f"the grouped decoder supports kernel_size 3 only, got {config.kernel_size}")
        self.config = config
        self.num_decoders = a = int(num_decoders)
        self.budget = int(budget)
        h1, h2 = config.hidden_linear
        shapes = {
            "linear0_weight": (a, config.in_channels, h1), "linear0_bias": (a, 1, h1),
            "linear1_weight": (a, h1, h2), "linear1_bias": (a, 1, h2),
            "conv0_kernel": (a, KERNEL_VOLUME, h2, config.hidden_conv),
            "conv0_bias": (a, 1, config.hidden_conv),
            "conv1_kernel": (a, KERNEL_VOLUME, config.hidden_conv, config.out_channels),
            "conv1_bias": (a, 1, config.out_channels),
        }
        for name in _NAMES:
            self.register_parameter(name, nn.Parameter(torch.empty(shapes[name])))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initial distributions of the single decoder's layers: U(+-1/sqrt(fan_in)),
        fan_in = in (torch.nn.Linear) or 27 * in (MinkowskiConvolution)."""
        h1, h2 = self.config.hidden_linear
        fan = {"linear0": self.config.in_channels, "linear1": h1,
               "conv0": KERNEL_VOLUME * h2, "conv1": KERNEL_VOLUME * self.config.hidden_conv}
        with torch.no_grad():
            for name in _NAMES:
                bound = 1.0 / math.sqrt(fan[name.split("_")[0]])
                getattr(self, name).uniform_(-bound, bound)

    # ------------------------------------------------------------ forward

    def forward(self, latents: Tensor, neighbors: Union[NeighborMap, SubsetPlan]) -> Tensor:
        """latents [A, N, in_channels] of all N voxels -> attributes [A, N, d], or [A, S, d]
        for the rows ``neighbors.out_rows`` when ``neighbors`` is a :class:`SubsetPlan`
        (a view of point-major [N, A, d] memory)."""
        a, cfg = self.num_decoders, self.config
        if not isinstance(latents, Tensor) or latents.ndim != 3:
            raise DecoderInputError(f"latents must be a tensor [A, N, C], got "
                                    f"{getattr(latents, 'shape', type(latents).__name__)}")
        if latents.shape[0] != a or latents.shape[2] != cfg.in_channels:
            raise DecoderInputError(f"latents must have shape [{a}, N, {cfg.in_channels}], "
                                    f"got {tuple(latents.shape)}")
        if isinstance(neighbors, NeighborMap):
            if neighbors.num_points != latents.shape[1]:
                raise DecoderInputError(f"neighbour map has {neighbors.num_points} voxels, "
                                        f"latents {latents.shape[1]}")
            x = latents
            cmap0 = cmap1 = neighbors.conv_map()
        elif isinstance(neighbors, SubsetPlan):
            if len(neighbors.in_rows) and int(neighbors.in_rows[-1]) >= latents.shape[1]:
                raise DecoderInputError("subset plan refers to rows beyond the latents")
            x = latents.index_select(1, neighbors.in_rows)
            cmap0, cmap1 = neighbors.conv0, neighbors.conv1
        else:
            raise DecoderInputError(f"neighbors must be a NeighborMap or SubsetPlan, got "
                                    f"{type(neighbors).__name__}")
        return self._layers(x, cmap0, cmap1)

    def forward_gathered(self, latents: Tensor,  # [A, N2, in_channels]: the latents on plan.in_rows
                         plan: SubsetPlan) -> Tensor:  # [A, S, d]
        """:meth:`forward` on ``plan.out_rows`` from latents already restricted to ``plan.in_rows``
        (training gathers them with the skip path's in one pass: nn/row_subset.py)."""
        if not isinstance(plan, SubsetPlan):
            raise DecoderInputError(f"plan must be a SubsetPlan, got {type(plan).__name__}")
        if not isinstance(latents, Tensor) or latents.ndim != 3 or latents.shape[0] != self.num_decoders \
                or latents.shape[2] != self.config.in_channels or latents.shape[1] != len(plan.in_rows):
            raise DecoderInputError(f"latents must have shape [{self.num_decoders}, {len(plan.in_rows)}, "
                                    f"{self.config.in_channels}], got {tuple(getattr(latents, 'shape', ()))}")
        return self._layers(latents, plan.conv0, plan.conv1)

    def _layers(self, x: Tensor, cmap0, cmap1) -> Tensor:
        # Point-major [N, A, C] from here on: the convolutions gather whole rows.
        h = pointwise_mlp(x, self.linear0_weight, self.linear0_bias, self.linear1_weight,
                          self.linear1_bias)
        h = grouped_conv(h, self.conv0_kernel, cmap0, self.budget, bias=self.conv0_bias[:, 0])
        h = torch.relu(h) if torch.is_grad_enabled() else h.relu_()
        out = grouped_conv(h, self.conv1_kernel, cmap1, self.budget, bias=self.conv1_bias[:, 0])
        # the point-major result as an [A, N, d] view (no transposing copy; training's skip path reads
        # it point-major, inference's consumers add to it or hand it to numpy)
        return out.transpose(0, 1)

    # ------------------------------------------------------------ weights

    def load_state_dicts(self, state_dicts: Sequence[Dict[str, Tensor]]) -> "GroupedSparseDecoder":
        """Load A single-decoder weight dicts (:meth:`SparseAttributeDecoder.export_weights`
        or its ``state_dict()``), in attribute order."""
        if len(state_dicts) != self.num_decoders:
            raise DecoderWeightsError(f"expected {self.num_decoders} weight dicts, got {len(state_dicts)}")
        for sd in state_dicts:
            check_weights(self.config, sd)

        def stack(key, fn):
            return torch.stack([fn(torch.as_tensor(sd[key], dtype=torch.float32)) for sd in state_dicts])

        with torch.no_grad():
            self.linear0_weight.copy_(stack("linear0.linear.weight", lambda w: w.t()))
            self.linear0_bias.copy_(stack("linear0.linear.bias", lambda b: b[None]))
            self.linear1_weight.copy_(stack("linear1.linear.weight", lambda w: w.t()))
            self.linear1_bias.copy_(stack("linear1.linear.bias", lambda b: b[None]))
            self.conv0_kernel.copy_(stack("conv0.kernel", lambda k: k))
            self.conv0_bias.copy_(stack("conv0.bias", lambda b: b))
            self.conv1_kernel.copy_(stack("conv1.kernel", lambda k: k))
            self.conv1_bias.copy_(stack("conv1.bias", lambda b: b))
        return self

    def state_dicts(self) -> List[Dict[str, Tensor]]:
        """A single-decoder weight dict per attribute (detached copies), loadable by
        :meth:`SparseAttributeDecoder.load_weights` / ``load_state_dict``."""
        out = []
        for i in range(self.num_decoders):
            out.append({
                "linear0.linear.weight": self.linear0_weight[i].detach().t().clone(),
                "linear0.linear.bias": self.linear0_bias[i, 0].detach().clone(),
                "linear1.linear.weight": self.linear1_weight[i].detach().t().clone(),
                "linear1.linear.bias": self.linear1_bias[i, 0].detach().clone(),
                "conv0.kernel": self.conv0_kernel[i].detach().clone(),
                "conv0.bias": self.conv0_bias[i].detach().clone(),
                "conv1.kernel": self.conv1_kernel[i].detach().clone(),
                "conv1.bias": self.conv1_bias[i].detach().clone(),
            })
        return out

    @classmethod
    def from_state_dicts(cls, state_dicts: Sequence[Dict[str, Tensor]], budget: int = DEFAULT_BUDGET):
        from .sparse_decoder import config_from_weights

        if not state_dicts:
            raise DecoderWeightsError("no weight dicts given")
        config = config_from_weights(state_dicts[0])
        return cls(len(state_dicts), config, budget).load_state_dicts(state_dicts)

    def to_decoders(self) -> list:
        """Single MinkowskiEngine decoders with these weights (imports MinkowskiEngine)."""
        from .sparse_decoder import SparseAttributeDecoder

        return [SparseAttributeDecoder(self.config).load_weights(sd) for sd in self.state_dicts()]
