"""Training's subset decode kernels against their references: the native subset plan against
torch's, the row subsets' values and gradients against plain indexing (bit for bit), the skip
path against torch's product (float rounding), each on any thread count, with named errors."""
import numpy as np
import pytest
import torch

import ralhe_me.nn.neighbors as neighbors_module
import ralhe_me.nn.row_subset as row_subset_module
import ralhe_me.nn.skip_path as skip_path_module
from ralhe_me.nn.neighbors import NeighborMap, NeighborMapError, row_set
from ralhe_me.nn.row_subset import row_subsets
from ralhe_me.nn.skip_path import skip_add

native = pytest.mark.skipif(neighbors_module._native_module() is None,
                            reason="the _decode_cpu extension is not built")


def cloud(n: int, side: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, side, (n, 3), generator=g).unique(dim=0)


def sorted_rows(n: int, count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:count].sort().values


def test_row_set_is_sorted_unique_without_the_sentinel():
    g = torch.Generator().manual_seed(0)
    for m, size in ((0, 5), (1, 1), (1000, 50), (20000, 3000)):
        rows = torch.randint(0, size + 1, (m,), generator=g)  # ``size``: the empty neighbour
        want = torch.unique(rows)
        assert torch.equal(row_set(rows, size), want[want < size])


@native
def test_native_subset_plan_equals_the_torch_plan():
    for seed, (n, side) in enumerate(((3000, 14), (2000, 40), (50, 3))):
        nm = NeighborMap.from_coords(cloud(n, side, seed))
        m = nm.num_points
        g = torch.Generator().manual_seed(seed)
        for rows in (torch.randint(0, m, (m // 3,), generator=g),  # unsorted, with duplicates
                     torch.arange(min(m, 40)), torch.tensor([m - 1]), torch.zeros(0, dtype=torch.int64)):
            fast, slow = nm.subset_plan(rows), nm.subset_plan(rows, native=False)
            for name in ("in_rows", "mid_rows", "out_rows"):
                assert torch.equal(getattr(fast, name), getattr(slow, name)), name
            for a, b in ((fast.conv0, slow.conv0), (fast.conv1, slow.conv1)):
                assert torch.equal(a.fwd, b.fwd) and (a.num_in, a.num_out) == (b.num_in, b.num_out)


@pytest.mark.parametrize("use_native", [True, False])
def test_subset_plan_rejects_rows_outside_the_map(use_native):
    nm = NeighborMap.from_coords(cloud(300, 8, 1))
    for bad in (torch.tensor([0, nm.num_points]), torch.tensor([-1, 3])):
        with pytest.raises(NeighborMapError, match="out_rows must lie"):
            nm.subset_plan(bad, native=use_native)


def indexing_reference(values, bounds, in_rows, rows):
    edges = [0, *bounds, values.shape[0]]
    out = []
    for a0, a1 in zip(edges, edges[1:]):
        part = values[a0:a1]
        out += [part.contiguous()] if in_rows is None else [part[:, in_rows], part[:, rows]]
    return out


def gradients(fn, values, weights, used):
    """d(sum of weights * outputs, over the outputs ``used``)/d values; other outputs unused."""
    v = values.clone().requires_grad_()
    outs = fn(v)
    loss = sum((w * o).sum() for i, (w, o) in enumerate(zip(weights, outs)) if i in used)
    loss.backward()
    return [o.detach() for o in outs], v.grad


@pytest.mark.parametrize("use_native", [pytest.param(True, marks=native), False])
def test_row_subsets_equal_plain_indexing_bit_for_bit(use_native):
    torch.manual_seed(0)
    values = torch.randn(5, 3000, 3)
    in_rows = sorted_rows(3000, 1800, 1)
    rows = in_rows[::3]  # inside in_rows, as in a subset plan
    stray = sorted_rows(3000, 500, 2)  # and rows anywhere: the kernel does not rely on it
    for r in (rows, stray):
        weights = [torch.randn(o.shape) for o in indexing_reference(values, [2, 4], in_rows, r)]
        for used in ({0, 1, 2, 3, 4, 5}, {0, 3, 5}, {1}):  # unused outputs get no gradient
            got, got_grad = gradients(lambda v: row_subsets(v, [2, 4], in_rows, r, native=use_native),
                                      values, weights, used)
            want, want_grad = gradients(lambda v: indexing_reference(v, [2, 4], in_rows, r), values, weights, used)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
            assert torch.equal(got_grad, want_grad)
    # whole rows: the groups and a gradient that concatenates theirs
    weights = [torch.randn(2, 3000, 3), torch.randn(3, 3000, 3)]
    for used in ({0, 1}, {1}):
        got, got_grad = gradients(lambda v: row_subsets(v, [2]), values, weights, used)
        want, want_grad = gradients(lambda v: indexing_reference(v, [2], None, None), values, weights, used)
        assert all(torch.equal(a, b) for a, b in zip(got, want)) and torch.equal(got_grad, want_grad)


@native
def test_row_subsets_same_bits_on_any_thread_count():
    torch.manual_seed(1)
    values = torch.randn(17, 40000, 3)
    in_rows = sorted_rows(40000, 30000, 3)
    rows = in_rows[::2]
    weights = [torch.randn(o.shape) for o in indexing_reference(values, [16], in_rows, rows)]
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(gradients(lambda v: row_subsets(v, [16], in_rows, rows, native=True), values,
                                     weights, {0, 1, 2, 3}))
    finally:
        torch.set_num_threads(old)
    for outs, grad in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs, results[0][0])) and torch.equal(grad, results[0][1])


def test_row_subsets_reject_bad_input():
    values = torch.randn(3, 50, 3)
    rows = torch.arange(10)
    with pytest.raises(ValueError, match="strictly increasing"):
        row_subsets(values, [1], torch.tensor([3, 2]), rows)
    with pytest.raises(ValueError, match="strictly increasing"):
        row_subsets(values, [1], rows, torch.tensor([4, 50]))
    with pytest.raises(ValueError, match="split points"):
        row_subsets(values, [3], rows, rows)
    with pytest.raises(ValueError, match="both in_rows and rows"):
        row_subsets(values, [1], rows)
    with pytest.raises(ValueError, match="float32"):
        row_subsets(values.double(), [1])


def skip_case(a: int, n: int, c: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    point_major = torch.randn(n, a, d, generator=g)
    return [point_major, torch.randn(a, n, c, generator=g), torch.randn(a, c, d, generator=g),
            torch.randn(a, 1, d, generator=g), torch.randn(a, n, d, generator=g)]


def skip_gradients(case, native_flag):
    point_major, x, w, b, g = [t.clone().requires_grad_() for t in case[:4]] + [case[4]]
    out = skip_add(point_major.transpose(0, 1), x, w, b, native=native_flag)
    out.backward(g)
    return out.detach(), [t.grad for t in (point_major, x, w, b)]


@native
@pytest.mark.parametrize("a,c,d", [(16, 3, 3), (1, 3, 1), (2, 5, 2)])
def test_native_skip_path_equals_torch(a, c, d):
    case = skip_case(a, 5000, c, d, seed=a + c + d)
    out, grads = skip_gradients(case, True)
    ref_out, ref_grads = skip_gradients(case, False)
    assert out.is_contiguous() and out.shape == (a, 5000, d)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):  # the map's sums over 5000 points: float32 vs double
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


@native
def test_native_skip_path_same_bits_on_any_thread_count():
    case = skip_case(16, 9000, 3, 3, seed=5)
    old = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(skip_gradients(case, True))
    finally:
        torch.set_num_threads(old)
    for out, grads in runs[1:]:
        assert torch.equal(out, runs[0][0]) and all(torch.equal(x, y) for x, y in zip(grads, runs[0][1]))


def test_skip_path_rejects_bad_shapes():
    point_major, x, w, b, _ = skip_case(4, 100, 3, 3, seed=0)
    with pytest.raises(ValueError, match="do not fit"):
        skip_add(point_major.transpose(0, 1), x[:, :50], w, b)
    with pytest.raises(ValueError, match="do not fit"):
        skip_add(point_major.transpose(0, 1), x, w[:, :2], b)


def test_training_subset_decode_equals_the_full_decode_with_and_without_the_extension(monkeypatch):
    """AttributeSynthesis.decode on rows (subset plan, row subsets, skip path) against the full
    decode's rows: values and the latents' and decoders' gradients."""
    from ralhe_me.config import ArchitectureConfig
    from ralhe_me.decode.synthesis import AttributeSynthesis
    from ralhe_me.geometry.octree import OctreeLevels, morton_encode

    rng = np.random.default_rng(3)
    coords = np.unique(np.clip(rng.normal(32, 6, (3000, 3)).round(), 0, 63).astype(np.int64), axis=0)
    coords = coords[np.argsort(morton_encode(coords))]
    levels = OctreeLevels.build(coords, 4, 6)
    torch.manual_seed(2)
    syn = AttributeSynthesis(3, ArchitectureConfig(transform="raht", num_levels=4))
    syn.bind(levels)
    with torch.no_grad():
        for p in syn.parameters():
            p.normal_(0, 0.3)
    planes = [torch.randn(4, len(coords)) * 5 for _ in range(syn.arch.latent_channels)]
    rows = sorted_rows(len(coords), len(coords) // 4, 7)

    def run(subset: bool):
        q = [p.clone().requires_grad_() for p in planes]
        syn.zero_grad()
        sh, op = syn.decode(q, rows) if subset else [t[:, rows] for t in syn.decode(q)]
        (sh.square().sum() + op.sum()).backward()
        return [sh.detach(), op.detach()], [p.grad for p in q] + [syn.sh_skip.grad.clone(),
                                                                   syn.sh_decoder.conv0_kernel.grad.clone()]

    for hidden in (False, True):
        if hidden:
            for module in (neighbors_module, row_subset_module, skip_path_module):
                monkeypatch.setattr(module, "_native_module", lambda: None)
        outs, grads = run(True)
        ref_outs, ref_grads = run(False)
        for got, want in zip(outs + grads, ref_outs + ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
