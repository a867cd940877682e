"""The torch inverse RAHT against the numpy reference, its gradient (the forward transform,
since the transform is orthonormal), and the raht synthesis against a pyramid file decode;
the native in-place inverse (and the whole decode with every native kernel) against torch,
bit for bit."""
import numpy as np
import pytest
import torch

from ralhe_me.baselines.raht import build_plan, raht_forward_plan, raht_inverse_plan
from ralhe_me.nn.inverse_raht import InverseRaht


def cloud(n=3000, depth=7, seed=0):
    rng = np.random.default_rng(seed)
    pts = np.unique(rng.integers(0, 2 ** depth, size=(n, 3)), axis=0)
    return pts, depth


def test_matches_numpy_reference_and_gradient_is_the_forward_transform():
    pts, depth = cloud()
    plan = build_plan(pts, depth)
    inv = InverseRaht(plan)
    rng = np.random.default_rng(1)
    c = rng.normal(size=(len(pts), 5))
    ref = raht_inverse_plan(plan, c)
    out = inv(torch.as_tensor(c))
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(inv(torch.as_tensor(c, dtype=torch.float32)).numpy(), ref, atol=1e-4)
    x = torch.as_tensor(c).requires_grad_(True)
    g = rng.normal(size=ref.shape)
    (inv(x) * torch.as_tensor(g)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), raht_forward_plan(plan, g), atol=1e-12)
    with pytest.raises(ValueError, match="coefficients"):
        inv(torch.zeros(3, 2))


def test_single_point_and_batched_columns_are_independent():
    plan = build_plan(np.array([[3, 1, 2]]), 3)
    np.testing.assert_allclose(InverseRaht(plan)(torch.tensor([[2.0, -1.0]])).numpy(), [[2.0, -1.0]])
    pts, depth = cloud(500, 5, seed=2)
    plan = build_plan(pts, depth)
    inv = InverseRaht(plan)
    c = torch.randn(len(pts), 4, dtype=torch.float64)
    both = inv(c)
    for j in range(4):
        np.testing.assert_allclose(inv(c[:, j:j + 1]).numpy()[:, 0], both[:, j].numpy(), atol=0)


@pytest.mark.parametrize("transform", ["raht", "pyramid"])
def test_both_transforms_round_trip_through_a_file(transform):
    from ralhe_me.config import load_preset
    from ralhe_me.decode.decoder import decode_bytes
    from ralhe_me.default_scene import make_default_scene
    from ralhe_me.encode.encoder import encode_model

    cfg = load_preset("fast")
    cfg.architecture.transform = transform
    cfg.training.steps = 6
    cfg.covariance_codebook, cfg.covariance_step, cfg.importance_views = 16, 0.2, 0
    result = encode_model(make_default_scene(600, seed=4), cfg)
    assert result.header["architecture"]["transform"] == transform
    decoded = decode_bytes(result.data).model
    np.testing.assert_array_equal(decoded.sh, result.reconstruction.sh)
    np.testing.assert_array_equal(decoded.opacity_logits, result.reconstruction.opacity_logits)


# ---------------------------------------------------------------- the native in-place inverse

import ralhe_me.nn.inverse_raht as inverse_module  # noqa: E402
from ralhe_me.baselines.raht import RahtError  # noqa: E402

native = pytest.mark.skipif(not inverse_module.native_available(), reason="the _decode_cpu extension is not built")


def planes_for(m, p, q, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(q, m, generator=g, dtype=torch.float64) * 50).round().to(dtype) for _ in range(p)]


def same_bits(a, b):
    view = torch.int32 if a.dtype == torch.float32 else torch.int64
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(view), b.contiguous().view(view))


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_inverse_equals_torch_bit_for_bit(dtype):
    """Odd shapes too: 1 point, 2 adjacent or distant points, many columns; plans built by the
    extension from the points and derived from build_plan give the same bits."""
    clouds = [np.array([[3, 1, 2]]), np.array([[0, 0, 0], [1, 0, 0]]), np.array([[0, 0, 0], [7, 7, 7]]),
              cloud(300, 5, seed=3)[0], cloud(2000, 8, seed=4)[0]]
    depths = [3, 3, 3, 5, 8]
    for i, (pts, depth) in enumerate(zip(clouds, depths)):
        for p, q in ((1, 1), (3, 17), (2, 40)):
            planes = planes_for(len(pts), p, q, dtype, seed=10 * i + p)
            ref = InverseRaht(build_plan(pts, depth)).columns(planes, native=False)
            assert ref.shape == (q, len(pts), p)
            for inv in (InverseRaht(build_plan(pts, depth)), InverseRaht.from_coords(pts, depth)):
                assert same_bits(inv.columns(planes, native=True), ref), (i, p, q)
                assert same_bits(inv.columns(planes), ref)  # automatic: native when built
    # against the float64 numpy reference, for the layout
    pts, depth = cloud(500, 6, seed=5)
    planes = planes_for(len(pts), 2, 3, torch.float64, seed=1)
    out = InverseRaht.from_coords(pts, depth).columns(planes)
    coeffs = torch.stack(planes).permute(2, 1, 0).reshape(len(pts), 6).numpy()
    np.testing.assert_allclose(out.permute(1, 0, 2).reshape(len(pts), 6).numpy(),
                               raht_inverse_plan(build_plan(pts, depth), coeffs), atol=1e-9)


@native
def test_native_plan_equals_build_plan():
    module = inverse_module._native_module()
    for n, depth, seed in ((1, 2, 0), (2, 1, 1), (700, 6, 2), (3000, 10, 3)):
        pts = cloud(n, depth, seed=seed)[0]
        plan = build_plan(pts, depth)
        left, right = module.raht_pairs(plan.num_points, [st.starts for st in plan.steps],
                                        [st.left for st in plan.steps])
        steps = plan.steps[::-1]
        a = np.concatenate([st.a for st in steps] + [np.zeros(0)])
        b = np.concatenate([st.b for st in steps] + [np.zeros(0)])
        ends = np.cumsum([len(st.left) for st in steps] + [0])[:-1] if steps else np.zeros(0, np.int64)
        bounds = np.array([[st.step, e - len(st.left), e] for st, e in zip(steps, ends)], np.int64).reshape(-1, 3)
        got = module.raht_plan(np.ascontiguousarray(pts, dtype=np.int64), depth)
        for x, y in zip(got, (left, right, a, b, plan.order, bounds)):
            assert x.dtype == np.asarray(y).dtype and np.array_equal(x, y)
        # the plan the Python side hands over when it has build_plan's (InverseRaht(plan))
        for x, y in zip(got, InverseRaht(plan)._build_native_plan(module)):
            assert x.dtype == np.asarray(y).dtype and np.array_equal(x, y)
        assert len(got) == 6


@native
def test_native_inverse_bad_input_is_named():
    with pytest.raises(RahtError, match="unique"):
        InverseRaht.from_coords(np.array([[1, 1, 1], [1, 1, 1]]), 2).columns([torch.zeros(1, 2)])
    with pytest.raises(RahtError, match="lie in"):
        InverseRaht.from_coords(np.array([[1, 1, 4]]), 2).columns([torch.zeros(1, 1)])
    with pytest.raises(RahtError, match="integers"):
        InverseRaht.from_coords(np.zeros((2, 3)), 2)
    inv = InverseRaht.from_coords(cloud(100, 4)[0], 4)
    with pytest.raises(ValueError, match="planes"):
        inv.columns([torch.zeros(2, inv.num_points + 1)])
    with pytest.raises(ValueError, match="float32/float64"):
        inv.columns([torch.zeros(2, inv.num_points, dtype=torch.int64)], native=True)
    module = inverse_module._native_module()
    left, right, a, b, order, steps = module.raht_plan(np.ascontiguousarray(cloud(100, 4)[0], dtype=np.int64), 4)
    planes = [np.zeros((2, len(order)), np.float32)]
    with pytest.raises(ValueError, match="merge rows"):  # a merge reading a row not yet created
        module.inverse_raht(planes, left[::-1].copy(), right[::-1].copy(), a, b, order, steps)


def test_inverse_falls_back_to_torch_without_extension(monkeypatch):
    pts, depth = cloud(400, 6, seed=6)
    planes = planes_for(len(pts), 3, 4, torch.float32, seed=2)
    fast = InverseRaht.from_coords(pts, depth).columns(planes)
    monkeypatch.setattr(inverse_module, "_native_module", lambda: None)
    slow = InverseRaht.from_coords(pts, depth).columns(planes)
    assert same_bits(fast, slow)
    with pytest.raises(ImportError):
        InverseRaht.from_coords(pts, depth).columns(planes, native=True)


def test_columns_keep_the_gradient():
    """Planes that need a gradient get one, on the torch path and (where built) the native one."""
    pts, depth = cloud(300, 6, seed=7)
    inv = InverseRaht.from_coords(pts, depth)
    for native in ((False, True) if inverse_module.native_available() else (False,)):
        planes = [p.requires_grad_() for p in planes_for(len(pts), 2, 3, torch.float64, seed=3)]
        out = inv.columns(planes, native=native)
        out.square().sum().backward()
        assert all(p.grad is not None and p.grad.shape == p.shape for p in planes)


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_gradient_equals_torch_autograd_bit_for_bit(dtype):
    """Training's native inverse takes its gradient from the transform's adjoint (the butterflies
    transposed, finest first): the same bits as autograd through the torch reference, on odd
    shapes too (1 and 2 points, distant points, many columns)."""
    clouds = [np.array([[3, 1, 2]]), np.array([[0, 0, 0], [1, 0, 0]]), np.array([[0, 0, 0], [7, 7, 7]]),
              cloud(300, 5, seed=3)[0], cloud(2000, 8, seed=4)[0]]
    for i, (pts, depth) in enumerate(zip(clouds, [3, 3, 3, 5, 8])):
        inv = InverseRaht.from_coords(pts, depth)
        for p, q in ((1, 1), (3, 17)):
            planes = [x.requires_grad_() for x in planes_for(len(pts), p, q, dtype, seed=10 * i + p)]
            g = torch.Generator().manual_seed(i)
            weight = torch.randn(q, len(pts), p, generator=g, dtype=torch.float64).to(dtype)
            ref_out = inv.columns(planes, native=False)
            ref = torch.autograd.grad((ref_out * weight).sum(), planes)
            out = inv.columns(planes)  # automatic: native when built, with a gradient too
            assert out.grad_fn is not None and "Native" in type(out.grad_fn).__name__
            assert same_bits(out.detach(), ref_out.detach())
            got = torch.autograd.grad((out * weight).sum(), planes)
            assert all(same_bits(a, b) for a, b in zip(got, ref)), (i, p, q)
    pts, depth = cloud(200, 5, seed=8)
    inv = InverseRaht.from_coords(pts, depth)
    planes = [x.requires_grad_() for x in planes_for(len(pts), 2, 2, torch.float64, seed=4)]
    assert torch.autograd.gradcheck(lambda *xs: inv.columns(list(xs), native=True), planes)


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocked_inverse_and_adjoint_on_threads_equal_the_torch_reference(dtype):
    """Clouds of several row blocks (over 2048 points below depth 4's bit 12): the inverse runs
    its fine steps block by block, the adjoint too in reverse, on 1 and 2 threads; every result
    has the bits of the torch reference and of autograd through it."""
    module = inverse_module._native_module()
    for i, (n, depth) in enumerate(((9000, 9), (6000, 12))):
        pts = cloud(n, depth, seed=20 + i)[0]
        inv = InverseRaht.from_coords(pts, depth)
        plan = inv._build_native_plan(module)
        assert (plan[5][:, 0] < 12).any() and (plan[5][:, 0] >= 12).any()  # fine and coarse steps
        planes = [x.requires_grad_() for x in planes_for(len(pts), 3, 5, dtype, seed=30 + i)]
        weight = torch.randn(5, len(pts), 3, generator=torch.Generator().manual_seed(i), dtype=torch.float64).to(dtype)
        ref_out = inv.columns(planes, native=False)
        ref = torch.autograd.grad((ref_out * weight).sum(), planes)
        arrays = [p.detach().numpy() for p in planes]
        for threads in (1, 2):
            out = torch.from_numpy(module.inverse_raht(arrays, *plan, threads=threads))
            assert same_bits(out, ref_out.detach()), (n, threads)
            g = module.raht_adjoint((weight.expand_as(ref_out)).contiguous().numpy(), *plan, threads=threads)
            assert all(same_bits(torch.from_numpy(x), y) for x, y in zip(g, ref)), (n, threads)


@native
def test_a_plan_whose_fine_merges_leave_their_blocks_is_refused():
    """The blocked loops trust the steps to keep fine merges inside blocks of rows: arrays that
    break it (a fine merge reading row 0 from a far block, which check_raht_merges alone
    accepts) are refused by name, not raced on."""
    module = inverse_module._native_module()
    left, right, a, b, order, steps = module.raht_plan(np.ascontiguousarray(cloud(9000, 9)[0], dtype=np.int64), 9)
    fine = int(steps[steps[:, 0] < 12][0, 1])  # the first merge of the coarsest fine step
    far = fine + int(np.argmax(right[fine:] > 3 * 2048))
    assert steps[np.searchsorted(steps[:, 2], far, side="right"), 0] < 12
    moved = left.copy()
    moved[far] = 0
    planes = [np.zeros((1, len(order)), np.float32)]
    module.inverse_raht(planes, left, right, a, b, order, steps)  # the plan as made is accepted
    with pytest.raises(ValueError, match="leaves its block"):
        module.inverse_raht(planes, moved, right, a, b, order, steps)
    with pytest.raises(ValueError, match="leaves its block"):
        module.raht_adjoint(np.zeros((1, len(order), 1), np.float32), moved, right, a, b, order, steps)
    with pytest.raises(ValueError, match="coarsest first"):
        module.inverse_raht(planes, left, right, a, b, order, steps[::-1].copy())
    with pytest.raises(ValueError, match=r"\[S, 3\]"):
        module.inverse_raht(planes, left, right, a, b, order, steps[:, :2].copy())


@native
def test_native_adjoint_bad_input_is_named():
    module = inverse_module._native_module()
    left, right, a, b, order, steps = module.raht_plan(np.ascontiguousarray(cloud(100, 4)[0], dtype=np.int64), 4)
    m = len(order)
    with pytest.raises(ValueError, match=r"\[Q, M, P\]"):
        module.raht_adjoint(np.zeros((2, m), np.float32), left, right, a, b, order, steps)
    with pytest.raises(ValueError, match="plan of"):
        module.raht_adjoint(np.zeros((2, m + 1, 3), np.float32), left, right, a, b, order, steps)
    with pytest.raises(ValueError, match="float32 or float64"):
        module.raht_adjoint(np.zeros((2, m, 3), np.int32), left, right, a, b, order, steps)
    with pytest.raises(ValueError, match="merge rows"):
        module.raht_adjoint(np.zeros((2, m, 3), np.float32), left[::-1].copy(), right[::-1].copy(), a, b, order, steps)
    far = order.copy()
    far[3] = m
    with pytest.raises(ValueError, match="raht_adjoint: order out of range"):
        module.raht_adjoint(np.zeros((2, m, 3), np.float32), left, right, a, b, far, steps)
    planes = [np.zeros((2, m), np.float32)]
    with pytest.raises(ValueError, match="inverse_raht: order out of range"):
        module.inverse_raht(planes, left, right, a, b, far, steps)
    repeated = order.copy()
    repeated[3] = repeated[4]
    with pytest.raises(ValueError, match="inverse_raht: order is not a permutation"):
        module.inverse_raht(planes, left, right, a, b, repeated, steps)
    with pytest.raises(ValueError, match="inverse_raht: plan of"):
        module.inverse_raht(planes, left, right, a, b, order[1:].copy(), steps)


def test_synthesis_decode_equals_the_pure_torch_decode(monkeypatch):
    """The torch decode (no autograd, float weights) with every native kernel but the convolution
    against the same decode with the extension hidden, bit for bit, and with the native
    convolution too (it sums in another order) within float rounding: random decoder weights,
    raht transform."""
    import ralhe_me.nn.grouped_decoder as grouped_module
    import ralhe_me.nn.neighbors as neighbors_module
    from ralhe_me.config import ArchitectureConfig
    from ralhe_me.geometry.octree import OctreeLevels, morton_encode
    from ralhe_me.decode.synthesis import AttributeSynthesis

    rng = np.random.default_rng(8)
    coords = np.unique(np.clip(rng.normal(32, 7, (2500, 3)).round(), 0, 63).astype(np.int64), axis=0)
    coords = coords[np.argsort(morton_encode(coords))]
    arch = ArchitectureConfig(transform="raht", num_levels=4)
    levels = OctreeLevels.build(coords, 4, 6)
    torch.manual_seed(1)
    syn = AttributeSynthesis(16, arch)
    with torch.no_grad():
        for p in syn.parameters():
            p.normal_(0, 0.5)
    planes = [(torch.randn(17, len(coords)) * 20).round() for _ in range(arch.latent_channels)]

    def decode():
        syn.bind(levels)
        with torch.no_grad():
            return [t.contiguous() for t in syn.decode(planes)]

    fastest = decode()
    with monkeypatch.context() as m:
        m.setattr(grouped_module, "_native_conv_module", lambda native: None)
        fast = decode()
    for module in (neighbors_module, grouped_module, inverse_module):
        monkeypatch.setattr(module, "_native_module", lambda: None)
    slow = decode()
    for f, s, t in zip(fast, slow, fastest):
        assert same_bits(f, s)
        torch.testing.assert_close(t, s, rtol=1e-5, atol=1e-5 * float(s.abs().max()))
