"""The grouped 3x3x3 convolution in C++ (nn/csrc/decode.cpp ``grouped_conv``) against the torch
reference and a naive gather, its backward against autograd, the same bits on any thread count,
its reverse map against brute force, and named errors on bad maps."""
import numpy as np
import pytest
import torch

import ralhe_me.nn.grouped_decoder as grouped_module
from ralhe_me.nn.grouped_decoder import GroupedSparseDecoder, grouped_conv
from ralhe_me.nn.neighbors import NeighborMap
from ralhe_me.nn.sparse_decoder import DecoderConfig, DecoderInputError

EXT = grouped_module._native_module()
pytestmark = pytest.mark.skipif(EXT is None or not hasattr(EXT, "grouped_conv"),
                                reason="the _decode_cpu extension is not built")


def cloud(n, side, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(0, side, (n, 3), generator=g).unique(dim=0)
    return c[torch.randperm(len(c), generator=g)]


def naive_conv(x, kernel, fwd):
    """out[n, a] = sum_k x[fwd[n, k], a] @ kernel[a, k], in float64 (fwd == len(x): empty)."""
    xp = torch.cat([x, x.new_zeros(1, *x.shape[1:])]).double()
    return sum(torch.einsum("nac,aco->nao", xp[fwd[:, k]], kernel[:, k].double()) for k in range(27))


def maps(seed=1):
    """A full map (every voxel with itself at the centre) and the two maps of a row subset
    (input and output rows differ, some output rows without any neighbour but the centre)."""
    nm = NeighborMap.from_coords(cloud(900, 11, seed))
    n = nm.num_points
    rows = torch.sort(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: n // 3]).values
    plan = nm.subset_plan(rows)
    isolated = NeighborMap.from_coords(torch.tensor([[0, 0, 0], [5, 5, 5], [5, 5, 6]]))
    return [nm.conv_map(), plan.conv0, plan.conv1, isolated.conv_map()]


def case(cmap, a, c_in, c_out, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cmap.num_in, a, c_in, generator=g)
    kernel = torch.randn(a, 27, c_in, c_out, generator=g)
    grad = torch.randn(cmap.num_out, a, c_out, generator=g)
    return x, kernel, grad


def run(x, kernel, grad, cmap, native):
    xl, kl = x.clone().requires_grad_(), kernel.clone().requires_grad_()
    out = grouped_conv(xl, kl, cmap, native=native)
    gx, gk = torch.autograd.grad(out, (xl, kl), grad)
    return out.detach(), gx, gk


# (4, 2), (2, 3), (2, 1): the decoders' shapes, unrolled; (3, 5): the run-time loops
@pytest.mark.parametrize("a,c_in,c_out", [(16, 4, 2), (16, 2, 3), (1, 4, 2), (1, 2, 1), (3, 3, 5)])
def test_native_conv_matches_the_references(a, c_in, c_out):
    """Forward against a float64 gather (float32 rounding apart) and the torch convolution;
    gradients against autograd through the torch convolution."""
    for i, cmap in enumerate(maps()):
        x, kernel, grad = case(cmap, a, c_in, c_out, seed=i)
        out, gx, gk = run(x, kernel, grad, cmap, native=True)
        ref_out, ref_gx, ref_gk = run(x, kernel, grad, cmap, native=False)
        assert out.shape == (cmap.num_out, a, c_out) and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), naive_conv(x, kernel, cmap.fwd), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gk, ref_gk, rtol=1e-5, atol=1e-4)


def test_native_conv_gives_the_same_bits_on_any_thread_count():
    """Rows are summed in kernel order, input gradients in the reverse map's order and the
    kernel's gradient in fixed blocks of rows: the thread count does not enter."""
    cmap = NeighborMap.from_coords(cloud(30000, 40, 3)).conv_map()
    assert cmap.num_out > 3 * 4096  # several blocks of the kernel's gradient
    x, kernel, grad = case(cmap, 16, 4, 2, seed=5)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            cmap._reverse = None
            results.append(run(x, kernel, grad, cmap, native=True))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for u, v in zip(results[0], other):
            assert torch.equal(u.view(torch.int32), v.view(torch.int32))
    for u, v in zip(results[0], run(x, kernel, grad, cmap, native=False)):  # every block counted
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5 * float(v.abs().max()))


def test_reverse_map_lists_each_pair_under_its_input_row():
    """conv_reverse against brute force: the pairs (n * 27 + k) reading each input row, by output
    row then offset, on 1 and 3 threads."""
    for cmap in maps(seed=4):
        fwd = cmap.fwd.numpy()
        expected = [[] for _ in range(cmap.num_in)]
        for i, m in enumerate(fwd.ravel()):
            if m < cmap.num_in:
                expected[m].append(i)
        for threads in (1, 3):
            offsets, pairs = EXT.conv_reverse(fwd, cmap.num_in, threads=threads)
            assert offsets[0] == 0 and offsets[-1] == len(pairs) == int((fwd < cmap.num_in).sum())
            got = [list(pairs[offsets[m]:offsets[m + 1]]) for m in range(cmap.num_in)]
            assert got == expected


def test_the_decoder_trains_through_the_native_conv(monkeypatch):
    """With autograd and the extension built, the decoders' convolutions run natively (counted),
    and their outputs and gradients agree with the all-torch convolution."""
    coords = cloud(800, 10, 7)
    nm = NeighborMap.from_coords(coords)
    dec = GroupedSparseDecoder(4, DecoderConfig(in_channels=3, out_channels=3))
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.5)
    latents = torch.randn(4, len(coords), 3, generator=torch.Generator().manual_seed(2))
    calls = []
    real = grouped_module._NativeGroupedConv.apply

    def counting(*args):
        calls.append(args[3].num_out)
        return real(*args)

    results = {}
    for mode in ("native", "torch"):
        with monkeypatch.context() as m:
            if mode == "native":
                m.setattr(grouped_module._NativeGroupedConv, "apply", counting)
            else:
                m.setattr(grouped_module, "_native_conv_module", lambda native: None)
            dec.zero_grad()
            lat = latents.clone().requires_grad_()
            out = dec(lat, nm)
            (out * out).sum().backward()
            results[mode] = [out.detach(), lat.grad] + [p.grad.clone() for p in dec.parameters()]
    assert calls == [len(coords), len(coords)]
    for u, v in zip(results["native"], results["torch"]):  # sums in other orders: rounding, relative to the scale
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5 * float(v.abs().max()))


@pytest.mark.parametrize("native", [True, False])
def test_the_bias_is_added_after_the_sum(native):
    """With a bias, each output row is its sum plus the bias (bit for bit, both paths); the bias'
    gradient is the output gradient summed over the rows."""
    cmap = maps()[1]
    x, kernel, grad = case(cmap, 16, 4, 2, seed=8)
    bias = torch.randn(16, 2, generator=torch.Generator().manual_seed(4))
    xl, kl, bl = x.clone().requires_grad_(), kernel.clone().requires_grad_(), bias.clone().requires_grad_()
    out = grouped_conv(xl, kl, cmap, native=native, bias=bl)
    plain = grouped_conv(x, kernel, cmap, native=native)
    assert torch.equal(out.detach(), plain + bias)
    gx, gk, gb = torch.autograd.grad(out, (xl, kl, bl), grad)
    ref = run(x, kernel, grad, cmap, native=native)
    assert torch.equal(gx, ref[1]) and torch.equal(gk, ref[2])
    torch.testing.assert_close(gb, grad.sum(0))
    with torch.no_grad():
        assert torch.equal(grouped_conv(x, kernel, cmap, native=native, bias=bias), plain + bias)
    with pytest.raises(DecoderInputError, match="bias"):
        grouped_conv(x, kernel, cmap, native=native, bias=torch.zeros(16, 3))


def test_bad_maps_and_inputs_are_named_errors():
    cmap = maps()[0]
    x, kernel, grad = case(cmap, 2, 4, 2, seed=1)
    fwd = cmap.fwd.numpy().copy()
    fwd[3, 5] = cmap.num_in + 1
    with pytest.raises(ValueError, match="fwd entries must lie in"):
        EXT.grouped_conv(x.numpy(), kernel.numpy(), fwd, cmap.num_in)
    offsets, pairs = EXT.conv_reverse(cmap.fwd.numpy(), cmap.num_in)
    with pytest.raises(ValueError, match="fwd entries must lie in"):
        EXT.grouped_conv_backward(x.numpy(), kernel.numpy(), fwd, cmap.num_in, grad.numpy(), offsets, pairs,
                                  False, True)
    with pytest.raises(ValueError, match="fwd entries must lie in"):
        EXT.conv_reverse(fwd, cmap.num_in)
    shuffled = pairs.copy()
    shuffled[[0, -1]] = shuffled[[-1, 0]]  # a pair filed under another input row
    with pytest.raises(ValueError, match="reverse map"):
        EXT.grouped_conv_backward(x.numpy(), kernel.numpy(), cmap.fwd.numpy(), cmap.num_in, grad.numpy(), offsets,
                                  shuffled, True, False)
    with pytest.raises(ValueError, match="reverse map"):
        EXT.grouped_conv_backward(x.numpy(), kernel.numpy(), cmap.fwd.numpy(), cmap.num_in, grad.numpy(),
                                  offsets[:-1], pairs, True, False)
    with pytest.raises(ValueError, match="does not fit"):
        EXT.grouped_conv(x.numpy(), np.zeros((2, 27, 3, 2), np.float32), cmap.fwd.numpy(), cmap.num_in)
    with pytest.raises(ValueError, match="bias must hold"):
        EXT.grouped_conv(x.numpy(), kernel.numpy(), cmap.fwd.numpy(), cmap.num_in, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="input rows"):
        EXT.grouped_conv(x.numpy()[1:], kernel.numpy(), cmap.fwd.numpy(), cmap.num_in)
    with pytest.raises(DecoderInputError, match="float32 CPU"):
        grouped_conv(x.double(), kernel.double(), cmap, native=True)
