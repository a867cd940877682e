"""The sparse attribute decoder: MinkowskiEngine layers against a dense conv3d reference,
the grouped torch decoder against single decoders, neighbour maps against brute force, the
native kernels (point-wise layers, neighbour tables, pair plans) against torch bit for bit."""
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ralhe_me.nn.grouped_decoder import GroupedSparseDecoder, grouped_conv
from ralhe_me.nn.neighbors import NeighborMap, NeighborMapError, brute_force_table, kernel_offsets
from ralhe_me.nn.sparse_decoder import (DecoderConfig, DecoderError, DecoderInputError,
                                        DecoderWeightsError)

ME = pytest.importorskip("ralhe_me.compat").import_minkowski()
from ralhe_me.nn.sparse_decoder import SparseAttributeDecoder  # noqa: E402


def random_cloud(n: int, side: int, seed: int, low: int = 0) -> torch.Tensor:
    """Unique integer voxels [M, 3] (M <= n) in [low, low + side)^3, in random order."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(low, low + side, (n, 3), generator=g).unique(dim=0)
    return c[torch.randperm(len(c), generator=g)]


def sparse_tensor(coords: torch.Tensor, feats: torch.Tensor, stride: int = 1):
    bc = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords.int()], dim=1)
    return ME.SparseTensor(features=feats, coordinates=bc, tensor_stride=stride)


def dense_reference(decoder: SparseAttributeDecoder, coords: torch.Tensor, feats: torch.Tensor):
    """The decoder computed on a dense grid with torch conv3d: voxels scattered into a
    [C, X, Y, Z] grid (zeros elsewhere), point-wise layers on the voxels, conv3d with the
    MinkowskiEngine kernel slice k = (dx+1) + 3(dy+1) + 9(dz+1) placed at [dx+1, dy+1, dz+1],
    empty voxels re-zeroed after each convolution, outputs read back at the voxels."""
    sd = decoder.state_dict()
    lo = coords.min(0).values
    c = (coords - lo).long()
    size = [int(s) + 1 for s in c.max(0).values]
    occupied = torch.zeros(size, dtype=torch.bool)
    occupied[c[:, 0], c[:, 1], c[:, 2]] = True

    def to_grid(v):  # [N, C] -> [1, C, X, Y, Z]
        g = torch.zeros([v.shape[1]] + size)
        g[:, c[:, 0], c[:, 1], c[:, 2]] = v.t()
        return g[None]

    def dense_kernel(kernel):  # [27, in, out] -> [out, in, 3, 3, 3]
        w = torch.zeros(kernel.shape[2], kernel.shape[1], 3, 3, 3)
        for dz in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    k = (dx + 1) + 3 * (dy + 1) + 9 * (dz + 1)
                    w[:, :, dx + 1, dy + 1, dz + 1] = kernel[k].t()
        return w

    h = torch.relu(feats @ sd["linear0.linear.weight"].t() + sd["linear0.linear.bias"])
    h = torch.relu(h @ sd["linear1.linear.weight"].t() + sd["linear1.linear.bias"])
    g = F.conv3d(to_grid(h), dense_kernel(sd["conv0.kernel"]), sd["conv0.bias"][0], padding=1)
    g = torch.relu(g) * occupied
    g = F.conv3d(g, dense_kernel(sd["conv1.kernel"]), sd["conv1.bias"][0], padding=1)
    return g[0][:, c[:, 0], c[:, 1], c[:, 2]].t()


# ---------------------------------------------------------------- configuration


def test_default_config_matches_paper_parameter_count():
    assert DecoderConfig().num_parameters() == 639  # Table 1
    assert SparseAttributeDecoder(DecoderConfig()).num_parameters == 639
    one = DecoderConfig(out_channels=1)
    assert one.num_parameters() == SparseAttributeDecoder(one).num_parameters == 529
    assert GroupedSparseDecoder(5, one).parameters().__next__().shape[0] == 5
    assert sum(p.numel() for p in GroupedSparseDecoder(5, one).parameters()) == 5 * 529


def test_bad_config_is_named_error():
    with pytest.raises(DecoderError, match="kernel_size"):
        DecoderConfig(kernel_size=2)
    with pytest.raises(DecoderError, match="widths"):
        DecoderConfig(hidden_linear=(0, 4))


# ---------------------------------------------------------------- neighbour maps


def test_neighbor_map_matches_brute_force_and_minkowski():
    coords = random_cloud(400, 8, seed=1, low=-3)  # negative coordinates too
    table = NeighborMap.from_coords(coords).table
    assert torch.equal(table, brute_force_table(coords))
    x = sparse_tensor(coords, torch.zeros(len(coords), 1))
    assert torch.equal(x.C[:, 1:].long(), coords.long())  # ME keeps the row order
    assert torch.equal(NeighborMap.from_sparse_tensor(x).table, table)
    assert (table < len(coords)).sum() > 3 * len(coords)  # the cloud has real neighbours


def test_neighbor_map_with_tensor_stride():
    coords = random_cloud(200, 6, seed=2) * 4
    x = sparse_tensor(coords, torch.zeros(len(coords), 1), stride=4)
    nm = NeighborMap.from_coords(coords, tensor_stride=4)
    assert torch.equal(nm.table, brute_force_table(coords, tensor_stride=4))
    assert torch.equal(NeighborMap.from_sparse_tensor(x).table, nm.table)
    with pytest.raises(NeighborMapError, match="multiples"):
        NeighborMap.from_coords(coords + 1, tensor_stride=4)


def test_neighbor_map_bad_input():
    with pytest.raises(NeighborMapError, match="unique"):
        NeighborMap.from_coords(torch.tensor([[0, 0, 0], [0, 0, 0]]))
    with pytest.raises(NeighborMapError, match=r"\[N, 3\]"):
        NeighborMap.from_coords(torch.zeros(4, 2, dtype=torch.int64))
    with pytest.raises(NeighborMapError, match="integers"):
        NeighborMap.from_coords(torch.zeros(4, 3))


def test_kernel_offsets_are_antisymmetric():
    off = kernel_offsets()
    assert torch.equal(off.flip(0), -off)
    assert torch.equal(off[13], torch.zeros(3, dtype=torch.int64))


# ---------------------------------------------------------------- single decoder


@pytest.mark.parametrize("out_channels", [3, 1])
def test_sparse_decoder_matches_dense_conv3d(out_channels):
    torch.manual_seed(0)
    coords = random_cloud(500, 10, seed=3)
    feats = torch.randn(len(coords), 7)
    decoder = SparseAttributeDecoder(DecoderConfig(out_channels=out_channels))
    with torch.no_grad():  # larger kernels than the default init so the test has teeth
        for p in decoder.parameters():
            p.normal_()
    y = decoder(sparse_tensor(coords, feats))
    assert y.F.shape == (len(coords), out_channels)
    assert torch.equal(y.C[:, 1:].long(), coords.long())
    ref = dense_reference(decoder, coords, feats)
    torch.testing.assert_close(y.F, ref, rtol=1e-4, atol=1e-4)
    # The reference does tell kernel orientations apart: a mirrored kernel differs.
    with torch.no_grad():
        decoder.conv1.kernel.copy_(decoder.conv1.kernel.flip(0))
    assert (decoder(sparse_tensor(coords, feats)).F - ref).abs().max() > 1e-2


def test_sparse_decoder_rejects_wrong_input():
    decoder = SparseAttributeDecoder()
    coords = random_cloud(50, 5, seed=4)
    with pytest.raises(DecoderInputError, match="7 input channels"):
        decoder(sparse_tensor(coords, torch.randn(len(coords), 6)))
    with pytest.raises(DecoderInputError, match="SparseTensor"):
        decoder(torch.randn(len(coords), 7))


def test_weights_round_trip_and_bad_weights():
    torch.manual_seed(1)
    coords = random_cloud(200, 8, seed=5)
    x = sparse_tensor(coords, torch.randn(len(coords), 7))
    decoder = SparseAttributeDecoder(DecoderConfig(out_channels=1))
    weights = decoder.export_weights()
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    clone = SparseAttributeDecoder.from_weights(weights)
    assert clone.config == decoder.config
    assert torch.equal(clone(x).F, decoder(x).F)
    bad = dict(weights)
    bad["conv0.kernel"] = torch.zeros(27, 4, 3)
    with pytest.raises(DecoderWeightsError, match="conv0.kernel"):
        decoder.load_weights(bad)
    del bad["conv0.kernel"]
    with pytest.raises(DecoderWeightsError, match="missing"):
        decoder.load_weights(bad)


# ---------------------------------------------------------------- grouped decoder


def naive_conv(x, kernel, fwd):
    """Autograd-differentiated reference on point-major features: the sum over the 27
    offsets of gathered rows times each attribute's kernel slice.
    x [M, A, C_in], kernel [A, 27, C_in, C_out], fwd [N, 27] with M meaning empty."""
    xp = torch.cat([x, x.new_zeros(1, x.shape[1], x.shape[2])], dim=0)
    return sum(torch.einsum("nac,aco->nao", xp[fwd[:, k]], kernel[:, k]) for k in range(27))


@pytest.mark.parametrize("c_in,c_out", [(4, 2), (2, 3)])
def test_grouped_conv_gradients(c_in, c_out):
    """The pair-wise convolution against autograd on a naive gather reference and against
    numerical Jacobians, on the full map and on a restricted (subset) map, with a budget
    small enough to split the pairs into several groups."""
    torch.manual_seed(5)
    coords = random_cloud(300, 7, seed=6)
    nm = NeighborMap.from_coords(coords)
    plan = nm.subset_plan(torch.tensor([3, 10, 11, 40]))
    for cmap in (nm.conv_map(), plan.conv0):
        x = torch.randn(cmap.num_in, 3, c_in, dtype=torch.float64, requires_grad=True)
        w = torch.randn(3, 27, c_in, c_out, dtype=torch.float64, requires_grad=True)
        g = torch.randn(cmap.num_out, 3, c_out, dtype=torch.float64)
        budget = 3 * max(c_in, c_out) * 60
        assert len(cmap.pair_plan(60).groups) > 2
        out = grouped_conv(x, w, cmap, budget=budget)
        ref = naive_conv(x, w, cmap.fwd)
        torch.testing.assert_close(out, ref)
        gx, gw = torch.autograd.grad(out, (x, w), g)
        rx, rw = torch.autograd.grad(ref, (x, w), g)
        torch.testing.assert_close(gx, rx)
        torch.testing.assert_close(gw, rw)
    small = NeighborMap.from_coords(random_cloud(40, 4, seed=11)).conv_map()
    x = torch.randn(small.num_in, 1, c_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 27, c_in, c_out, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: grouped_conv(x, w, small, budget=50), (x, w),
                                    fast_mode=True)


def test_pair_plan_covers_every_pair_once():
    coords = random_cloud(300, 7, seed=12)
    nm = NeighborMap.from_coords(coords)
    cmap = nm.conv_map()
    plan = cmap.pair_plan(50)
    assert plan.dense_center
    got = torch.stack([plan.out_rows, plan.in_rows], 1)
    table = brute_force_table(coords)
    n, k = torch.nonzero(table < len(coords), as_tuple=True)
    keep = k != 13
    want = torch.stack([n[keep], table[n[keep], k[keep]]], 1)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))
    assert [g.lo for g in plan.groups][0] == 0 and plan.groups[-1].hi == len(got)
    for g0, g1 in zip(plan.groups, plan.groups[1:]):
        assert g0.hi == g1.lo


def test_grouped_decoder_matches_single_decoders_forward_and_backward():
    torch.manual_seed(2)
    a = 3
    coords = random_cloud(600, 9, seed=7)
    n = len(coords)
    cfg = DecoderConfig(out_channels=3)
    singles = [SparseAttributeDecoder(cfg) for _ in range(a)]
    grouped = GroupedSparseDecoder.from_state_dicts([d.state_dict() for d in singles], budget=5000)
    nm = NeighborMap.from_coords(coords)
    latents = torch.randn(a, n, 7)
    target = torch.randn(a, n, 3)

    lat_g = latents.clone().requires_grad_()
    out_g = grouped(lat_g, nm)
    ((out_g - target) ** 2).sum().backward()

    for i, dec in enumerate(singles):
        lat_s = latents[i].clone().requires_grad_()
        out_s = dec(sparse_tensor(coords, lat_s)).F
        torch.testing.assert_close(out_g[i], out_s, rtol=1e-4, atol=1e-5)
        ((out_s - target[i]) ** 2).sum().backward()
        torch.testing.assert_close(lat_g.grad[i], lat_s.grad, rtol=1e-4, atol=1e-4)
        grads = {k: p.grad for k, p in dec.named_parameters()}
        torch.testing.assert_close(grouped.conv0_kernel.grad[i], grads["conv0.kernel"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(grouped.conv1_kernel.grad[i], grads["conv1.kernel"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(grouped.conv1_bias.grad[i], grads["conv1.bias"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(grouped.linear0_weight.grad[i].t(), grads["linear0.linear.weight"],
                                   rtol=1e-4, atol=1e-3)


def test_grouped_state_dicts_round_trip():
    torch.manual_seed(3)
    grouped = GroupedSparseDecoder(4, DecoderConfig(out_channels=1))
    sds = grouped.state_dicts()
    again = GroupedSparseDecoder.from_state_dicts(sds)
    for name, p in grouped.named_parameters():
        assert torch.equal(p, getattr(again, name)), name
    coords = random_cloud(150, 6, seed=8)
    latents = torch.randn(4, len(coords), 7)
    out = grouped(latents, NeighborMap.from_coords(coords))
    for i, dec in enumerate(grouped.to_decoders()):
        torch.testing.assert_close(dec(sparse_tensor(coords, latents[i])).F, out[i], rtol=1e-4, atol=1e-5)


def test_grouped_subset_equals_full_rows_and_gradients():
    torch.manual_seed(4)
    coords = random_cloud(700, 10, seed=9)
    nm = NeighborMap.from_coords(coords)
    grouped = GroupedSparseDecoder(2, DecoderConfig(out_channels=3), budget=3000)
    latents = torch.randn(2, len(coords), 7)
    rows = torch.arange(100, 180)
    plan = nm.subset_plan(rows)
    assert len(plan.in_rows) < len(coords)  # the test exercises a real restriction

    lat_sub = latents.clone().requires_grad_()
    out_sub = grouped(lat_sub, plan)
    out_sub.square().sum().backward()
    grad_sub = lat_sub.grad.clone()
    kgrad_sub = grouped.conv0_kernel.grad.clone()
    grouped.zero_grad()

    lat_full = latents.clone().requires_grad_()
    out_full = grouped(lat_full, nm)
    torch.testing.assert_close(out_sub, out_full[:, rows], rtol=1e-5, atol=1e-6)
    out_full[:, rows].square().sum().backward()
    torch.testing.assert_close(grad_sub, lat_full.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(kgrad_sub, grouped.conv0_kernel.grad, rtol=1e-4, atol=1e-5)


def test_grouped_decoder_rejects_wrong_input():
    grouped = GroupedSparseDecoder(3)
    coords = random_cloud(60, 5, seed=10)
    nm = NeighborMap.from_coords(coords)
    with pytest.raises(DecoderInputError, match=r"\[3, N, 7\]"):
        grouped(torch.randn(3, len(coords), 6), nm)
    with pytest.raises(DecoderInputError, match=r"\[3, N, 7\]"):
        grouped(torch.randn(2, len(coords), 7), nm)
    with pytest.raises(DecoderInputError, match="neighbour map"):
        grouped(torch.randn(3, len(coords) + 1, 7), nm)
    with pytest.raises(DecoderWeightsError, match="expected 3"):
        grouped.load_state_dicts(grouped.state_dicts()[:2])


# ---------------------------------------------------------------- reuse


def test_sparse_decoder_import_is_isolated():
    """Importing the reusable decoder pulls in no encoder, trainer, renderer or optimizer code."""
    code = textwrap.dedent("""
        import sys
        import ralhe_me.nn.sparse_decoder as m
        m.SparseAttributeDecoder(m.DecoderConfig())   # also imports MinkowskiEngine
        import ralhe_me.nn.grouped_decoder
        bad = sorted(k for k in sys.modules if k.startswith(("ralhe_me.train", "ralhe_me.render", "ralhe_me.decode",
                     "ralhe_me.encode", "ralhe_me.nn.arm", "ralhe_me.entropy", "ralhe_me.geometry",
                     "ralhe_me.gaussians")))
        mine = sorted(k for k in sys.modules if k.startswith("ralhe_me"))
        print("BAD", bad)
        print("MINE", mine)
        assert not bad, bad
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "MINE ['ralhe_me', 'ralhe_me.compat', 'ralhe_me.nn', 'ralhe_me.nn.grouped_decoder', " \
           "'ralhe_me.nn.neighbors', 'ralhe_me.nn.sparse_decoder']" in res.stdout, res.stdout


def test_usage_snippet_in_docstring_runs():
    """The README snippet (module docstring of sparse_decoder) executes as written."""
    import ralhe_me.nn.sparse_decoder as module

    doc = module.__doc__
    code = textwrap.dedent(doc[doc.index("    import torch"):doc.index("The defaults")])
    scope = {}
    exec(code, scope)
    assert scope["y"].F.shape == (len(scope["coords"]), 3)
    assert torch.equal(scope["clone"](scope["x"]).F, scope["y"].F)


def test_neighbor_map_from_octree_rows_equals_from_coords():
    """The decoder builds the finest voxels' map from the occupancy decoder's neighbour rows."""
    import numpy as np

    from ralhe_me.geometry.occupancy import NEIGHBOUR_OFFSETS, decode_positions, encode_positions

    rng = np.random.default_rng(3)
    coords = np.unique(np.clip(rng.normal(32, 6, (3000, 3)).round(), 0, 63).astype(np.int64), axis=0)
    out, rows = decode_positions(encode_positions(coords, 6), 6, with_neighbours=True)
    fast = NeighborMap.from_neighbour_rows(rows, NEIGHBOUR_OFFSETS)
    assert torch.equal(fast.table, NeighborMap.from_coords(out).table)
    with pytest.raises(NeighborMapError):
        NeighborMap.from_neighbour_rows(rows[:, :25], NEIGHBOUR_OFFSETS[:25])


# ---------------------------------------------------------------- native kernels (nn/csrc/decode.cpp)

import ralhe_me.nn.grouped_decoder as grouped_module  # noqa: E402
import ralhe_me.nn.neighbors as neighbors_module  # noqa: E402
from ralhe_me.nn.grouped_decoder import native_mlp_agrees, pointwise_mlp  # noqa: E402

native = pytest.mark.skipif(neighbors_module._native_module() is None,
                            reason="the _decode_cpu extension is not built")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 bit patterns (so -0.0 and +0.0 differ and NaN equals itself)."""
    return t.contiguous().view(torch.int32)


def without_extension(monkeypatch):
    for module in (neighbors_module, grouped_module):
        monkeypatch.setattr(module, "_native_module", lambda: None)


def mlp_weights(a, c0, c1, c2, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(a, c0, c1, generator=g), torch.randn(a, 1, c1, generator=g),
            torch.randn(a, c1, c2, generator=g), torch.randn(a, 1, c2, generator=g)]


@native
@pytest.mark.parametrize("a,c0,c1,c2", [(16, 3, 12, 4), (1, 3, 12, 4), (16, 21, 12, 4), (5, 3, 12, 4), (3, 3, 12, 3),
                                        (2, 1, 1, 1)])
def test_native_pointwise_layers_give_torch_bits(a, c0, c1, c2):
    """Full chunks in C++ against the MKL chunks, bit for bit, with partial chunks (torch) after
    them; every point count from below one chunk to several. Where MKL sums in another order on
    this machine the decoder keeps torch (the automatic mode must still equal torch)."""
    ws = mlp_weights(a, c0, c1, c2, seed=a + c0)
    g = torch.Generator().manual_seed(7)
    chunk = 64
    for n in (1, 63, 64, 65, 200, 256):
        x = torch.randn(a, n, c0, generator=g) * 3
        x[:, ::5] = 0.0
        with torch.no_grad():
            ref = pointwise_mlp(x, *ws, chunk=chunk, native=False)
            auto = pointwise_mlp(x, *ws, chunk=chunk)
            assert torch.equal(bits(auto), bits(ref)), n
            if native_mlp_agrees(a, c0, c1, c2, chunk):
                forced = pointwise_mlp(x, *ws, chunk=chunk, native=True)
                assert torch.equal(bits(forced), bits(ref)), n
        # the autograd path is the same forward
        train = pointwise_mlp(x, *(w.clone().requires_grad_() for w in ws), chunk=chunk)
        assert torch.equal(bits(train.detach()), bits(ref)), n


@native
def test_training_runs_the_native_forward_with_torch_bits_and_gradients(monkeypatch):
    """With autograd the full chunks' forward runs in C++ too (where it agrees with MKL); the
    outputs and every gradient keep the bits of the all-torch path."""
    a, c0, c1, c2, chunk = 16, 3, 12, 4, 64
    if not native_mlp_agrees(a, c0, c1, c2, chunk):
        pytest.skip("MKL sums in another order on this machine: training keeps torch")
    ws = mlp_weights(a, c0, c1, c2, seed=3)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(a, 200, c0, generator=g)
    weight = torch.randn(200, a, c2, generator=g)
    ext = grouped_module._native_module()
    calls = []

    class Counting:
        mlp_supported = staticmethod(ext.mlp_supported)
        pointwise_mlp_backward = staticmethod(ext.pointwise_mlp_backward)

        @staticmethod
        def pointwise_mlp(*args):
            calls.append(args[-1])
            return ext.pointwise_mlp(*args)

    results = {}
    for mode in (False, None):
        leaves = [x.clone().requires_grad_()] + [w.clone().requires_grad_() for w in ws]
        with monkeypatch.context() as m:
            m.setattr(grouped_module, "_native_module", lambda: Counting)
            out = pointwise_mlp(*leaves, chunk=chunk, native=mode)
        results[mode] = (out.detach(), torch.autograd.grad((out * weight).sum(), leaves))
    assert calls == [192]  # the native=None run: the 3 full chunks, the last 8 points in torch
    assert torch.equal(bits(results[None][0]), bits(results[False][0]))
    # the backward runs natively (test_native_pointwise_backward_matches_reference): float rounding apart
    for u, v in zip(results[None][1], results[False][1]):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


def mlp_backward_case(a, c0, c1, c2, n, seed):
    """Inputs of the point-wise backward with dead units on both layers and zero inputs."""
    g = torch.Generator().manual_seed(seed)
    ws = mlp_weights(a, c0, c1, c2, seed=seed)
    x = torch.randn(a, n, c0, generator=g) * 2
    x[:, ::7] = 0.0
    y = x.new_empty(n, a, c2)
    with torch.no_grad():
        grouped_module._mlp_chunks(x, *ws, 64, y, 0)
    grad_y = torch.randn(n, a, c2, generator=g)
    return x, ws, y, grad_y


@native
@pytest.mark.parametrize("a,c0,c1,c2,n", [(16, 3, 12, 4, 2200), (1, 3, 12, 4, 33), (3, 21, 12, 4, 700),
                                          (2, 64, 64, 64, 65), (2, 1, 1, 1, 1), (1, 3, 12, 4, 530_000)])
def test_native_pointwise_backward_matches_reference(a, c0, c1, c2, n):
    """The C++ gradients against the torch reference run in float64: every gradient within
    float32 rounding, at point counts inside one strip of 32, across strips and blocks of 2,048
    and past 256 blocks (larger blocks); both layers have dead units (their masks matter)."""
    x, ws, y, grad_y = mlp_backward_case(a, c0, c1, c2, n, seed=a * 100 + c0 + n)
    assert (y == 0).any() and (y > 0).any()
    got = grouped_module.mlp_backward(x, ws[0], ws[1], ws[2], y, grad_y, want_gx=True, native=True)
    ref = grouped_module.mlp_backward(x.double(), *(w.double() for w in ws[:3]), y.double(), grad_y.double(),
                                      want_gx=True, native=False)
    for name, u, v in zip(("gx", "gw0", "gb0", "gw1", "gb1"), got, ref):
        assert u.dtype == torch.float32 and u.shape == v.shape, name
        scale = float(v.abs().max()) + 1e-6
        assert float((u.double() - v).abs().max()) <= 2e-5 * scale * max(1.0, math.sqrt(n) / 30), name
    assert grouped_module.mlp_backward(x, ws[0], ws[1], ws[2], y, grad_y, want_gx=False, native=True)[0] is None


@native
def test_native_pointwise_backward_is_the_same_on_any_thread_count():
    x, ws, y, grad_y = mlp_backward_case(5, 3, 12, 4, 9000, seed=4)
    module = neighbors_module._native_module()
    arrays = [t.numpy() for t in (x, ws[0], ws[1], ws[2], y, grad_y)]
    one = module.pointwise_mlp_backward(*arrays, True, threads=1)
    for threads in (2, 3):
        other = module.pointwise_mlp_backward(*arrays, True, threads=threads)
        assert all(np.array_equal(u.view(np.int32), v.view(np.int32)) for u, v in zip(one, other)), threads


@native
def test_native_pointwise_backward_rejects_bad_input():
    x, ws, y, grad_y = mlp_backward_case(2, 3, 4, 2, 100, seed=5)
    module = neighbors_module._native_module()
    with pytest.raises(ValueError, match="shapes"):
        module.pointwise_mlp_backward(x.numpy(), ws[0].numpy(), ws[1].numpy(), ws[2].numpy(), y[:99].numpy(),
                                      grad_y.numpy(), True)
    wide = torch.zeros(2, 3, 65)
    with pytest.raises(ValueError, match="widths"):
        module.pointwise_mlp_backward(x.numpy(), wide.numpy(), torch.zeros(2, 1, 65).numpy(),
                                      torch.zeros(2, 65, 2).numpy(), y.numpy(), grad_y.numpy(), True)
    with pytest.raises(DecoderError, match="native point-wise backward"):
        grouped_module.mlp_backward(x.double(), *(w.double() for w in ws[:3]), y.double(), grad_y.double(),
                                    native=True)


@native
def test_native_pointwise_layers_reject_bad_input():
    ws = mlp_weights(2, 3, 4, 2, seed=1)
    x = torch.randn(2, 100, 3)
    with torch.no_grad():
        with pytest.raises(DecoderError, match="native point-wise"):
            pointwise_mlp(x.double(), *(w.double() for w in ws), chunk=16, native=True)
    module = neighbors_module._native_module()
    y = torch.empty(100, 2, 2)
    with pytest.raises(ValueError, match="shapes"):
        module.pointwise_mlp(x.numpy(), ws[0].numpy(), ws[1].numpy(), ws[2].numpy(), ws[3][:, :, :1].numpy(),
                             y.numpy(), 100)
    with pytest.raises(ValueError, match="rows"):
        module.pointwise_mlp(x.numpy(), *(w.numpy() for w in ws), y.numpy(), 101)


def test_inference_forward_equals_autograd_forward():
    """Without autograd the decoder runs its in-place/native path and returns a view; the
    values equal the training path's bit for bit (on the full map and on a subset plan)."""
    torch.manual_seed(8)
    coords = random_cloud(900, 9, seed=13)
    nm = NeighborMap.from_coords(coords)
    for a, out in ((5, 3), (1, 1)):
        grouped = GroupedSparseDecoder(a, DecoderConfig(in_channels=3, out_channels=out), budget=4000)
        with torch.no_grad():
            for p in grouped.parameters():
                p.normal_()
        latents = torch.randn(a, len(coords), 3)
        train = grouped(latents, nm)
        with torch.no_grad():
            infer = grouped(latents, nm)
        assert torch.equal(bits(infer), bits(train.detach()))
        plan = nm.subset_plan(torch.arange(10, 300))
        train_sub = grouped(latents, plan)
        with torch.no_grad():
            assert torch.equal(bits(grouped(latents, plan)), bits(train_sub.detach()))


def test_decoder_without_extension_gives_the_same_bits(monkeypatch):
    """The native point-wise layers and neighbour maps keep torch's bits; the native convolution
    (which sums in another order: tests/test_grouped_conv_native.py) agrees to float rounding."""
    torch.manual_seed(9)
    coords = random_cloud(700, 9, seed=14)
    grouped = GroupedSparseDecoder(4, DecoderConfig(in_channels=3, out_channels=3))
    latents = torch.randn(4, len(coords), 3)
    with torch.no_grad():
        fast = grouped(latents, NeighborMap.from_coords(coords))
        with monkeypatch.context() as m:
            m.setattr(grouped_module, "_native_conv_module", lambda native: None)
            fast_torch_conv = grouped(latents, NeighborMap.from_coords(coords))
        without_extension(monkeypatch)
        slow = grouped(latents, NeighborMap.from_coords(coords))
    assert torch.equal(bits(fast_torch_conv), bits(slow))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def octree_rows(seed=3, n=3000):
    import numpy as np

    from ralhe_me.geometry.occupancy import NEIGHBOUR_OFFSETS, decode_positions, encode_positions

    rng = np.random.default_rng(seed)
    coords = np.unique(np.clip(rng.normal(32, 6, (n, 3)).round(), 0, 63).astype(np.int64), axis=0)
    out, rows = decode_positions(encode_positions(coords, 6), 6, with_neighbours=True)
    return out, rows, NEIGHBOUR_OFFSETS


def assert_same_plans(p, q):
    assert p.dense_center == q.dense_center
    for name in ("in_rows", "out_rows", "starts"):
        assert torch.equal(getattr(p, name), getattr(q, name)), name
    assert [(g.lo, g.hi) for g in p.groups] == [(g.lo, g.hi) for g in q.groups]
    for g, h in zip(p.groups, q.groups):
        for name in ("by_out", "out_offsets", "by_in", "in_offsets"):
            assert torch.equal(getattr(g, name), getattr(h, name)), name


@native
def test_native_neighbour_table_and_pair_plans_equal_the_reference():
    """The one-pass C++ table (with its pairs) against numpy and the torch pair plan, on
    octree rows (full map, several budgets) and on a restricted subset map."""
    import numpy as np

    out, rows, offsets = octree_rows()
    fast = NeighborMap.from_neighbour_rows(rows, offsets)
    slow = NeighborMap.from_neighbour_rows(rows, offsets, native=False)
    assert torch.equal(fast.table, slow.table)
    assert torch.equal(fast.table, NeighborMap.from_coords(out).table)
    for budget in (1 << 62, 500, 37):
        assert_same_plans(fast.conv_map().pair_plan(budget), slow.conv_map().pair_plan(budget, native=False))
    sub = fast.subset_plan(torch.arange(100, 400))
    for cmap in (sub.conv0, sub.conv1):
        assert_same_plans(cmap.pair_plan(200), cmap.pair_plan(200, native=False))
    # one cached plan for every budget above the pair count
    cmap = fast.conv_map()
    assert cmap.pair_plan(1 << 40) is cmap.pair_plan(len(cmap.pair_plan().in_rows))
    # one point, no neighbours
    one = NeighborMap.from_neighbour_rows(np.full((1, 26), -1), offsets)
    assert one.table.tolist() == [[1] * 13 + [0] + [1] * 13]
    assert len(one.conv_map().pair_plan().in_rows) == 0


@pytest.mark.parametrize("use_native", [True, False])
def test_bad_neighbour_rows_are_named_errors(use_native):
    if use_native and neighbors_module._native_module() is None:
        pytest.skip("the _decode_cpu extension is not built")
    _, rows, offsets = octree_rows(n=400)
    for bad in (-2, len(rows)):
        broken = rows.copy()
        broken[5, 3] = bad
        with pytest.raises(NeighborMapError, match="neighbour rows"):
            NeighborMap.from_neighbour_rows(broken, offsets, native=use_native)


@native
def test_native_bags_are_a_stable_sort():
    g = torch.Generator().manual_seed(2)
    for p, n in ((0, 5), (1, 1), (1000, 7), (5000, 3000)):
        rows = torch.randint(0, n, (p,), generator=g)
        order, offsets = neighbors_module._bags(rows, n)
        ref_order, ref_offsets = neighbors_module._bags(rows, n, native=False)
        assert torch.equal(order, ref_order) and torch.equal(offsets, ref_offsets)
