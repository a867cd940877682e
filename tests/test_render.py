"""The rasterizer against a slow per-pixel reference, finite differences, and itself across backends."""
import math
import sys
import types

import numpy as np
import pytest
import torch

from ralhe_me.gaussians import GaussianModel
from ralhe_me.render import Camera, RenderError, available_backends, render, render_model
from ralhe_me.render import covariance_3d, extension, rasterizer
from ralhe_me.render.sh import SH_C0, SH_C1, SH_C2, SH_C3, sh_basis

BACKENDS = [b for b in ("torch", "cpp") if b in available_backends()]
HAS_CPP = "cpp" in available_backends()


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny tensor ops: one intra-op thread is far faster than two on a shared, loaded machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------
# slow reference: every pixel, every Gaussian, plain Python floats
# ------------------------------------------------------------------------------------------------
def _qmul(a, b):
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw)


def _rotate(q, v):
    """q v q* with Hamilton products (no rotation-matrix formula involved)."""
    w, x, y, z = _qmul(_qmul(q, (0.0, *v)), (q[0], -q[1], -q[2], -q[3]))
    return np.array([x, y, z])


def _sh_color(coeffs, d):
    """INRIA SH, written term by term (coeffs [K, 3], d unit [3])."""
    x, y, z = d
    k = coeffs.shape[0]
    out = SH_C0 * coeffs[0]
    if k > 1:
        out = out - SH_C1 * y * coeffs[1] + SH_C1 * z * coeffs[2] - SH_C1 * x * coeffs[3]
    if k > 4:
        out = (out + SH_C2[0] * x * y * coeffs[4] + SH_C2[1] * y * z * coeffs[5]
               + SH_C2[2] * (2 * z * z - x * x - y * y) * coeffs[6] + SH_C2[3] * x * z * coeffs[7]
               + SH_C2[4] * (x * x - y * y) * coeffs[8])
    if k > 9:
        out = (out + SH_C3[0] * y * (3 * x * x - y * y) * coeffs[9] + SH_C3[1] * x * y * z * coeffs[10]
               + SH_C3[2] * y * (4 * z * z - x * x - y * y) * coeffs[11]
               + SH_C3[3] * z * (2 * z * z - 3 * x * x - 3 * y * y) * coeffs[12]
               + SH_C3[4] * x * (4 * z * z - x * x - y * y) * coeffs[13]
               + SH_C3[5] * z * (x * x - y * y) * coeffs[14] + SH_C3[6] * x * (x * x - 3 * y * y) * coeffs[15])
    return np.maximum(out + 0.5, 0.0)


def reference_render(means, quats, log_scales, opacity_logits, sh, cam: Camera, background):
    """Per-pixel loop over all Gaussians in depth order; INRIA conventions throughout."""
    means, quats, log_scales, opacity_logits, sh = (np.asarray(a, dtype=np.float64) for a in
                                                    (means, quats, log_scales, opacity_logits, sh))
    R, t = cam.world_to_cam[:3, :3], cam.world_to_cam[:3, 3]
    cam_center = -R.T @ t
    tan_x, tan_y = cam.width / (2 * cam.fx), cam.height / (2 * cam.fy)
    gauss = []
    for i in range(len(means)):
        p = R @ means[i] + t
        if p[2] <= 0.2:
            continue
        q = quats[i] / np.linalg.norm(quats[i])
        rot = np.stack([_rotate(q, e) for e in np.eye(3)], axis=1)  # columns: rotated axes
        s = np.exp(log_scales[i])
        cov = sum(s[k] ** 2 * np.outer(rot[:, k], rot[:, k]) for k in range(3))
        x, y, z = p
        txz = min(max(x / z, -1.3 * tan_x), 1.3 * tan_x)
        tyz = min(max(y / z, -1.3 * tan_y), 1.3 * tan_y)
        J = np.array([[cam.fx / z, 0, -cam.fx * txz / z], [0, cam.fy / z, -cam.fy * tyz / z]])
        cov2 = J @ R @ cov @ R.T @ J.T + 0.3 * np.eye(2)
        det = np.linalg.det(cov2)
        if det <= 0:
            continue
        mid = 0.5 * (cov2[0, 0] + cov2[1, 1])
        radius = math.ceil(3 * math.sqrt(mid + math.sqrt(max(0.1, mid * mid - det))))
        u = cam.fx * x / z + cam.cx  # continuous image coordinates, pixel centers at +0.5
        v = cam.fy * y / z + cam.cy
        gx, gy = math.ceil(cam.width / 16), math.ceil(cam.height / 16)
        # INRIA tile rectangle of the 3-sigma square around (u - 0.5, v - 0.5)
        x0 = min(gx, max(0, math.floor((u - 0.5 - radius) / 16)))
        x1 = min(gx, max(0, math.floor((u - 0.5 + radius + 15) / 16)))
        y0 = min(gy, max(0, math.floor((v - 0.5 - radius) / 16)))
        y1 = min(gy, max(0, math.floor((v - 0.5 + radius + 15) / 16)))
        if (x1 - x0) * (y1 - y0) == 0:
            continue
        d = means[i] - cam_center
        color = _sh_color(sh[i], d / np.linalg.norm(d))
        opacity = 1 / (1 + math.exp(-opacity_logits[i]))
        gauss.append(dict(depth=z, index=i, uv=np.array([u, v]), inv=np.linalg.inv(cov2), color=color,
                          opacity=opacity, rect=(x0, y0, x1, y1)))
    gauss.sort(key=lambda g: (g["depth"], g["index"]))
    img = np.zeros((cam.height, cam.width, 3))
    for py in range(cam.height):
        for px in range(cam.width):
            tx, ty = px // 16, py // 16
            T, C = 1.0, np.zeros(3)
            for g in gauss:
                x0, y0, x1, y1 = g["rect"]
                if not (x0 <= tx < x1 and y0 <= ty < y1):
                    continue
                d = g["uv"] - np.array([px + 0.5, py + 0.5])
                power = -0.5 * d @ g["inv"] @ d
                if power > 0:
                    continue
                alpha = min(0.99, g["opacity"] * math.exp(power))
                if alpha < 1 / 255:
                    continue
                if T * (1 - alpha) < 1e-4:
                    break
                C += g["color"] * alpha * T
                T *= 1 - alpha
            img[py, px] = C + T * np.asarray(background)
    return img


# ------------------------------------------------------------------------------------------------
# scenes
# ------------------------------------------------------------------------------------------------
def small_camera(width=24, height=20):
    return Camera.look_at([0.3, -4.0, 0.8], [0.0, 0.0, 0.0], [0, 0, 1], width, height, fov_x_deg=40)


def random_scene(n=30, sh_degree=3, seed=0, dtype=torch.float64, spread=0.6, log_scale=-1.6):
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    means = torch.randn(n, 3, generator=g, dtype=dtype) * spread
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    log_scales = torch.randn(n, 3, generator=g, dtype=dtype) * 0.4 + log_scale
    opacity_logits = torch.randn(n, generator=g, dtype=dtype) * 2.0
    sh = torch.randn(n, k, 3, generator=g, dtype=dtype) * 0.4
    sh[:, 0] += 0.5
    return [means, quats, log_scales, opacity_logits, sh]


def edge_case_scene(dtype=torch.float64):
    """Random Gaussians plus: nearly opaque big ones (alpha clamp, early stop), one behind the camera,
    one between the camera and the near plane, one far outside the field of view (Jacobian clamp)."""
    means, quats, log_scales, opac, sh = random_scene(26, 3, seed=3, dtype=dtype)
    cam = small_camera()
    center = torch.as_tensor(cam.center, dtype=dtype)
    fwd = torch.as_tensor(cam.rotation[2], dtype=dtype)
    right = torch.as_tensor(cam.rotation[0], dtype=dtype)
    extra_means = torch.stack([
        torch.tensor([0.05, 0.3, 0.05], dtype=dtype), torch.tensor([-0.1, 0.6, -0.1], dtype=dtype),
        center - 1.0 * fwd,  # behind the camera
        center + 0.1 * fwd,  # in front, but closer than the near plane
        center + 3.0 * fwd + 2.2 * right,  # outside the horizontal field of view
    ])
    extra_ls = torch.tensor([[-0.7, -0.8, -0.9], [-0.5, -0.6, -0.5], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0],
                             [-0.3, -0.3, -0.3]], dtype=dtype)
    extra_op = torch.tensor([8.0, 6.0, 5.0, 5.0, 4.0], dtype=dtype)
    means = torch.cat([means, extra_means])
    quats = torch.cat([quats, torch.randn(5, 4, generator=torch.Generator().manual_seed(9), dtype=dtype)])
    log_scales = torch.cat([log_scales, extra_ls])
    opac = torch.cat([opac, extra_op])
    sh = torch.cat([sh, 0.3 * torch.ones(5, sh.shape[1], 3, dtype=dtype)])
    return [means, quats, log_scales, opac, sh], cam


# ------------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_float64(backend):
    params, cam = edge_case_scene()
    bg = (0.2, 0.5, 0.8)
    expect = reference_render(*[p.numpy() for p in params], cam, bg)
    got = render(*params, cam, background=bg, backend=backend).numpy()
    assert got.shape == (20, 24, 3)
    np.testing.assert_allclose(got, expect, atol=1e-9, rtol=0)
    # the scene really exercises the image: not just background
    assert np.abs(expect - np.asarray(bg)).max() > 0.3


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_float32(backend):
    params, cam = edge_case_scene()
    expect = reference_render(*[p.numpy() for p in params], cam, (1.0, 1.0, 1.0))
    got = render(*[p.float() for p in params], cam, backend=backend)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expect, atol=2e-5, rtol=0)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sh_degrees_match_reference(degree, backend):
    params = random_scene(20, degree, seed=10 + degree)
    cam = small_camera(20, 18)
    expect = reference_render(*[p.numpy() for p in params], cam, (0.0, 0.0, 0.0))
    got = render(*params, cam, background=(0.0, 0.0, 0.0), backend=backend).numpy()
    np.testing.assert_allclose(got, expect, atol=1e-9, rtol=0)


def test_sh_basis_is_orthonormal():
    """The INRIA constants give an orthonormal real basis on the sphere (exact quadrature)."""
    nodes, weights = np.polynomial.legendre.leggauss(12)  # in cos(theta)
    phis = np.arange(24) * 2 * np.pi / 24
    ct, ph = np.meshgrid(nodes, phis, indexing="ij")
    st = np.sqrt(1 - ct ** 2)
    dirs = np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1).reshape(-1, 3)
    w = (weights[:, None] * np.full(len(phis), 2 * np.pi / len(phis))[None, :]).reshape(-1)
    basis = sh_basis(torch.as_tensor(dirs), 3).numpy()  # [P, 16]
    gram = (basis * w[:, None]).T @ basis
    np.testing.assert_allclose(gram, np.eye(16), atol=1e-12)


def test_covariance_matches_quaternion_rotation():
    params = random_scene(6, 0, seed=13)
    cov = covariance_3d(params[1], params[2]).numpy()
    for i in range(6):
        q = params[1][i].numpy() / np.linalg.norm(params[1][i].numpy())
        rot = np.stack([_rotate(q, e) for e in np.eye(3)], axis=1)
        expect = rot @ np.diag(np.exp(2 * params[2][i].numpy())) @ rot.T
        np.testing.assert_allclose(cov[i], expect, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_background_and_transmittance(backend):
    params = random_scene(25, 1, seed=4)
    cam = small_camera()
    a = render(*params, cam, background=(0.0, 0.0, 0.0), backend=backend)
    b = render(*params, cam, background=(1.0, 0.5, 0.25), backend=backend)
    diff = (b - a) / torch.tensor([1.0, 0.5, 0.25], dtype=a.dtype)  # = final transmittance, same per channel
    assert torch.allclose(diff[..., 0], diff[..., 1]) and torch.allclose(diff[..., 0], diff[..., 2])
    assert diff.min() >= 0 and diff.max() <= 1 and diff.min() < 0.5  # something is in front
    # background given as a tensor works the same
    c = render(*params, cam, background=torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64), backend=backend)
    assert torch.equal(b, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gaussian_behind_camera_is_culled(backend):
    cam = small_camera()
    dtype = torch.float64
    center = torch.as_tensor(cam.center, dtype=dtype)
    fwd = torch.as_tensor(cam.rotation[2], dtype=dtype)
    # huge, opaque and right on the optical axis: visible everywhere if it were not culled
    for offset in (-1.0, 0.15):
        means = (center + offset * fwd)[None]
        args = [means, torch.tensor([[1.0, 0, 0, 0]], dtype=dtype), torch.full((1, 3), 1.0, dtype=dtype),
                torch.tensor([10.0], dtype=dtype), torch.zeros(1, 1, 3, dtype=dtype)]
        img = render(*args, cam, background=(0.3, 0.6, 0.9), backend=backend)
        assert torch.equal(img, torch.tensor([0.3, 0.6, 0.9], dtype=dtype).expand(20, 24, 3))
    # the same Gaussian in front of the near plane covers the image
    args[0] = (center + 2.0 * fwd)[None]
    img = render(*args, cam, background=(0.3, 0.6, 0.9), backend=backend)
    assert (img - 0.5 * torch.ones(3, dtype=dtype)).abs().max() < 0.1  # SH 0 -> color 0.5, opaque


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_matches_torch_on_bigger_scene(dtype):
    params = random_scene(5000, 2, seed=7, dtype=dtype, spread=0.8, log_scale=-3.0)
    cam = small_camera(100, 76)
    weights = torch.rand(76, 100, 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    out, grads = {}, {}
    for backend in ("torch", "cpp"):
        leaves = [p.clone().requires_grad_() for p in params]
        img = render(*leaves, cam, background=(0.1, 0.2, 0.3), backend=backend)
        (img * weights).sum().backward()
        out[backend], grads[backend] = img.detach(), [p.grad for p in leaves]
    old = torch.get_num_threads()
    torch.set_num_threads(2)  # the C++ binning splits the list between threads above 4096 Gaussians
    try:  # geometry with gradients, as above (the torch projection)
        img = render(*[p.clone().requires_grad_() for p in params], cam, background=(0.1, 0.2, 0.3), backend="cpp")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(img, out["cpp"])
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert torch.allclose(out["torch"], out["cpp"], atol=tol, rtol=0)
    for gt, gc in zip(grads["torch"], grads["cpp"]):
        scale = gt.abs().max().item()
        assert scale > 0
        assert (gt - gc).abs().max().item() <= tol * max(1.0, scale) * 10


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_all_parameters(backend):
    """Finite differences (float64) for means, quats, log_scales, opacities and SH together."""
    params = random_scene(8, 1, seed=21, spread=0.4, log_scale=-1.3)
    params[3] = params[3] + 1.0
    cam = small_camera(18, 14)
    leaves = [p.clone().requires_grad_() for p in params]
    # a few random projections of the image: every input is still checked, with 6 backward passes
    proj = torch.randn(14 * 18 * 3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def fn(*xs):
        return render(*xs, cam, background=(0.3, 0.4, 0.5), backend=backend).reshape(-1) @ proj

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_with_clamp_early_stop_and_sh3(backend):
    """Directional finite differences on the edge-case scene (alpha clamp, early stop, culled ones)."""
    params, cam = edge_case_scene()
    weights = torch.rand(20, 24, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    leaves = [p.clone().requires_grad_() for p in params]
    loss = (render(*leaves, cam, backend=backend) * weights).sum()
    grads = torch.autograd.grad(loss, leaves)
    g = torch.Generator().manual_seed(3)
    for i, p in enumerate(params):
        for _ in range(3):
            direction = torch.randn(p.shape, generator=g, dtype=p.dtype)
            eps = 1e-6
            hi = [q if j != i else q + eps * direction for j, q in enumerate(params)]
            lo = [q if j != i else q - eps * direction for j, q in enumerate(params)]
            num = ((render(*hi, cam, backend=backend) - render(*lo, cam, backend=backend)) * weights).sum() / (2 * eps)
            ana = (grads[i] * direction).sum()
            assert abs(num.item() - ana.item()) <= 1e-5 * max(1.0, abs(num.item())), (i, num.item(), ana.item())


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_cpp_is_deterministic_across_thread_counts():
    params = random_scene(9000, 0, seed=5, dtype=torch.float32, spread=0.8, log_scale=-2.8)  # > 4096: split binning
    cam = small_camera(64, 48)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = [p.clone().requires_grad_() for p in params]
            img = render(*leaves, cam, backend="cpp")
            img.square().sum().backward()
            results.append([img.detach()] + [p.grad for p in leaves])
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# API
# ------------------------------------------------------------------------------------------------
def test_render_model_matches_render():
    params = random_scene(15, 2, seed=8, dtype=torch.float32)
    model = GaussianModel(means=params[0].numpy(), log_scales=params[2].numpy(), quats=params[1].numpy(),
                          opacity_logits=params[3].numpy(), sh=params[4].numpy())
    cam = small_camera()
    img = render_model(model, cam, background=(0, 0, 0), backend="torch")
    assert not img.requires_grad
    assert torch.equal(img, render(*params, cam, background=(0, 0, 0), backend="torch"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_fully_culled_scenes_give_background(backend):
    cam = small_camera()
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    for n, offset in ((0, 0.0), (4, -2.0)):  # nothing at all; everything behind the camera
        params = random_scene(n, 1, seed=6)
        params[0] = params[0] * 0.1 + torch.as_tensor(cam.center + offset * cam.rotation[2])
        leaves = [p.clone().requires_grad_() for p in params]
        img = render(*leaves, cam, background=bg, backend=backend)
        assert torch.equal(img, bg.expand(20, 24, 3))
        img.sum().backward()
        for p in leaves:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_background_gradient(backend):
    params = random_scene(20, 0, seed=12)
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64, requires_grad=True)
    img = render(*params, small_camera(), background=bg, backend=backend)
    (grad,) = torch.autograd.grad(img.sum(), bg)
    t_final = (render(*params, small_camera(), background=(1.0, 1.0, 1.0), backend=backend)
               - render(*params, small_camera(), background=(0.0, 0.0, 0.0), backend=backend))[..., 0]
    assert torch.allclose(grad, t_final.sum().expand(3))


def test_bad_inputs_raise_named_errors():
    params = random_scene(5, 0, seed=1)
    cam = small_camera()
    with pytest.raises(RenderError, match="backend"):
        render(*params, cam, backend="opengl")
    with pytest.raises(RenderError, match="quats"):
        render(params[0], params[1][:, :3], *params[2:], cam)
    with pytest.raises(RenderError, match="sh"):
        render(*params[:4], params[4][:, :, :2], cam)
    with pytest.raises(RenderError, match="dtype"):
        render(params[0], params[1].float(), *params[2:], cam)
    with pytest.raises(RenderError, match="CUDA"):
        render(*params, cam, backend="gsplat")
    with pytest.raises(RenderError, match="float32 or float64"):
        render(*[p.half() for p in params], cam)


def test_falls_back_to_torch_without_extension(monkeypatch):
    monkeypatch.setattr(extension, "_EXT", None)
    monkeypatch.setattr(extension, "_EXT_TRIED", True)
    assert rasterizer.available_backends()[:1] == ["torch"] and "cpp" not in rasterizer.available_backends()
    params = random_scene(10, 0, seed=2)
    cam = small_camera()
    img = render(*params, cam)  # auto -> torch
    assert torch.allclose(img, render(*params, cam, backend="torch"))
    with pytest.raises(RenderError, match="not built"):
        render(*params, cam, backend="cpp")


def test_cpu_path_never_imports_gsplat(monkeypatch):
    poisoned = types.ModuleType("gsplat")

    def boom(*args, **kwargs):
        raise AssertionError("gsplat used on the CPU path")

    poisoned.rasterization = boom
    monkeypatch.setitem(sys.modules, "gsplat", poisoned)
    params = random_scene(10, 0, seed=2)
    for backend in ["auto"] + BACKENDS:
        render(*params, small_camera(), backend=backend)
