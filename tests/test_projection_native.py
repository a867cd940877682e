"""The compiled fixed-geometry projection, SH basis and depth order against their torch references."""
import pytest
import torch

from ralhe_me.render import Camera, render
from ralhe_me.render.extension import cpp_extension
from ralhe_me.render.projection import ProjectionError, camera_tensors, project_gaussians
from ralhe_me.render.sh import sh_basis
from ralhe_me.threads import intra_op_threads

pytestmark = pytest.mark.skipif(cpp_extension() is None, reason="the compiled renderer is not built")

FIELDS = ("index", "means2d", "conics", "colors", "opacities", "depths", "radii", "rects")


def scene(n, sh_degree=3, seed=0, dtype=torch.float64, spread=1.5):
    """Random Gaussians around the origin; with spread 1.5 some lie behind the camera, between it
    and the near plane, and outside the image (culled)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * spread
    quats = torch.randn(n, 4, generator=g, dtype=dtype) * 3.0
    log_scales = torch.randn(n, 3, generator=g, dtype=dtype) * 0.8 - 2.5
    opacity_logits = torch.randn(n, generator=g, dtype=dtype) * 2.0
    sh = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype) * 0.4
    return [means, quats, log_scales, opacity_logits, sh]


def camera(width=64, height=48):
    return Camera.look_at([0.4, -3.0, 0.8], [0.0, 0.0, 0.0], [0, 0, 1], width, height, fov_x_deg=50)


def assert_same_projection(a, b, rtol):
    for name in ("index", "radii", "rects"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("means2d", "conics", "colors", "opacities", "depths"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.allclose(x, y, rtol=rtol, atol=rtol * 0.1), (name, (x - y).abs().max())


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("n,sh_degree", [(1, 0), (300, 3), (20000, 2)])
def test_native_projection_matches_torch(dtype, rtol, n, sh_degree):
    params = scene(n, sh_degree, seed=n, dtype=dtype)
    cam = camera()
    with torch.no_grad():
        native = project_gaussians(*params, cam, native=True)
        reference = project_gaussians(*params, cam, native=False)
    assert_same_projection(native, reference, rtol)
    if n == 20000:  # several blocks, some Gaussians culled in each
        assert 0 < len(native.index) < n
        assert native.index.diff().min() > 0
    with torch.no_grad():  # the automatic choice takes the compiled one when nothing needs gradients
        assert_same_projection(project_gaussians(*params, cam), native, 0.0)


def test_all_kept_and_none_kept():
    means, quats, log_scales, opacity, sh = scene(50, 1, spread=0.2)
    cam = camera()
    with torch.no_grad():
        kept = project_gaussians(means, quats, log_scales, opacity, sh, cam, native=True)
        assert torch.equal(kept.index, torch.arange(50))
        behind = means + torch.as_tensor(cam.center) * 3.0  # beyond the camera, seen from behind
        none = project_gaussians(behind, quats, log_scales, opacity, sh, cam, native=True)
        reference = project_gaussians(behind, quats, log_scales, opacity, sh, cam, native=False)
    assert len(none.index) == 0
    assert_same_projection(none, reference, 1e-12)


def test_render_gradients_of_sh_and_opacity_match_torch():
    params = scene(400, 3, seed=5)
    cam = camera()
    out = []
    for native in (True, False):
        opacity = params[3].clone().requires_grad_(True)
        sh = params[4].clone().requires_grad_(True)
        proj = project_gaussians(params[0], params[1], params[2], opacity, sh, cam, native=native)
        (proj.colors.square().sum() + proj.opacities.sum()).backward()
        out.append((opacity.grad, sh.grad))
    for a, b in zip(*out):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    opacity = params[3].clone().requires_grad_(True)
    sh = params[4].clone().requires_grad_(True)
    image = render(params[0], params[1], params[2], opacity, sh, cam)
    image.sum().backward()
    assert sh.grad.abs().sum() > 0 and opacity.grad.abs().sum() > 0


def test_geometry_with_gradients_goes_through_torch():
    means, quats, log_scales, opacity, sh = scene(200, 1, seed=2)
    cam = camera()
    log_scales = log_scales.clone().requires_grad_(True)
    proj = project_gaussians(means, quats, log_scales, opacity, sh, cam)
    proj.conics.sum().backward()
    assert log_scales.grad is not None and log_scales.grad.abs().sum() > 0
    with pytest.raises(ProjectionError, match="no gradients"):
        project_gaussians(means, quats, log_scales, opacity, sh, cam, native=True)
    with torch.no_grad():  # no autograd recording: the compiled one serves
        project_gaussians(means, quats, log_scales, opacity, sh, cam, native=True)


def test_same_bits_on_any_thread_count():
    params = scene(30000, 3, seed=9, dtype=torch.float32)
    cam = camera(200, 150)
    results = []
    for threads in (1, 2, 3):
        with intra_op_threads(threads), torch.no_grad():
            results.append((project_gaussians(*params, cam, native=True), render(*params, cam)))
    for proj, image in results[1:]:
        assert_same_projection(proj, results[0][0], 0.0)
        assert torch.equal(image, results[0][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_view_sh_basis_matches_reference(dtype):
    means = scene(500, 3, seed=4, dtype=dtype)[0]
    center = torch.tensor([0.5, -3.0, 1.0], dtype=dtype)
    index = torch.tensor([7, 3, 3, 499, 0])
    dirs = means - center
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    ext = cpp_extension()
    for degree in range(4):
        expected = sh_basis(dirs, degree)
        tol = 1e-13 if dtype == torch.float64 else 1e-6
        assert torch.allclose(ext.view_sh_basis(means, None, center, degree), expected, rtol=tol, atol=tol)
        assert torch.allclose(ext.view_sh_basis(means, index, center, degree), expected[index], rtol=tol, atol=tol)
    with pytest.raises(RuntimeError, match="outside"):
        ext.view_sh_basis(means, torch.tensor([500]), center, 1)
    with pytest.raises(RuntimeError, match="degree"):
        ext.view_sh_basis(means, None, center, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_depth_order_is_torch_stable_sort(dtype):
    g = torch.Generator().manual_seed(1)
    values = torch.cat([torch.randn(5000, generator=g, dtype=dtype) * 100,
                        torch.randint(0, 20, (5000,), generator=g).to(dtype),  # many ties
                        torch.tensor([0.0, -0.0, 0.0, -0.0, float("inf"), -float("inf"), 1e-40], dtype=dtype)])
    values = values[torch.randperm(len(values), generator=g)]
    order = cpp_extension().depth_order(values)
    assert torch.equal(order, torch.sort(values, stable=True).indices)
    assert torch.equal(cpp_extension().depth_order(values[:1]), torch.zeros(1, dtype=torch.int64))
    assert len(cpp_extension().depth_order(values[:0])) == 0
    with pytest.raises(RuntimeError, match="NaN"):
        cpp_extension().depth_order(torch.tensor([1.0, float("nan")], dtype=dtype))


def test_bad_arguments_are_named():
    means, quats, log_scales, *_ = scene(10, 0)
    rot, trans, _ = camera_tensors(camera(), torch.float64, None)
    ext = cpp_extension()
    args = (1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 8, 8)
    with pytest.raises(RuntimeError, match="quats must have shape"):
        ext.project_geometry(means, quats[:, :3], log_scales, rot, trans, *args)
    with pytest.raises(RuntimeError, match="dtype of means"):
        ext.project_geometry(means, quats.float(), log_scales, rot, trans, *args)
    with pytest.raises(RuntimeError, match="image size"):
        ext.project_geometry(means, quats, log_scales, rot, trans, *args[:6], 0, 8)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("permuted", [False, True])
@pytest.mark.parametrize("culled", [False, True])
def test_native_shading_matches_torch(dtype, tol, permuted, culled):
    """Colors within rounding of torch's (its product sums in another order), gradients equal bit
    for bit (one product per entry) and laid out as the SH it is given."""
    from ralhe_me.render.projection import _NativeShade
    from ralhe_me.render.sh import shade

    g = torch.Generator().manual_seed(int(permuted) + 2 * int(culled))
    n, k = 3000, 16
    basis_all = torch.randn(n, k, generator=g, dtype=dtype)
    raw = torch.randn(k, n, 3, generator=g, dtype=dtype) * 0.3  # some colors clamp at 0
    index = torch.sort(torch.randperm(n, generator=g)[: n // 3]).values if culled else None
    basis = basis_all if index is None else basis_all[index].contiguous()
    weights = torch.randn(len(basis), 3, generator=g, dtype=dtype)
    out = []
    for native in (True, False):
        leaf = raw.clone().requires_grad_(True)
        sh = leaf.permute(1, 0, 2) if permuted else leaf.detach().permute(1, 0, 2).contiguous().requires_grad_(True)
        colors = _NativeShade.apply(basis, sh, index) if native else shade(basis, sh if index is None else sh[index])
        (colors * weights).sum().backward()
        grad = leaf.grad if permuted else sh.grad
        out.append((colors.detach(), grad))
    (c_native, g_native), (c_torch, g_torch) = out
    assert (c_torch == 0).any() and (c_torch > 0).any()
    assert torch.allclose(c_native, c_torch, rtol=tol, atol=tol)
    assert torch.equal(g_native, g_torch)
    if permuted:  # the gradient of the decoders' [K, N, 3] output comes back contiguous
        assert g_native.is_contiguous()


def test_native_shading_named_errors():
    ext = cpp_extension()
    basis, sh = torch.zeros(4, 9), torch.zeros(6, 9, 3)
    with pytest.raises(RuntimeError, match="strictly increasing"):
        ext.shade_forward(basis, sh, torch.tensor([0, 2, 2, 5]))
    with pytest.raises(RuntimeError, match="strictly increasing"):
        ext.shade_forward(basis, sh, torch.tensor([0, 1, 2, 6]))
    with pytest.raises(RuntimeError, match="one row per SH row"):
        ext.shade_forward(basis, sh, None)
    with pytest.raises(RuntimeError, match="the K of sh"):
        ext.shade_forward(torch.zeros(6, 4), sh, None)
    with pytest.raises(RuntimeError, match="both be float32"):
        ext.shade_forward(basis.double(), sh, torch.tensor([0, 1, 2, 3]))
